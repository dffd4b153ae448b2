//! The OpenAPI 3.1 document, generated from the route table so it cannot drift.

use serde_json::{Value, json};

use super::Route;

pub fn document(routes: &[Route]) -> Value {
    let mut paths = serde_json::Map::new();
    for r in routes {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "parameters": params,
            "responses": {
                "200": {"description": "success", "content": {"application/json": {}}},
                "4XX": {"description": "refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if r.auth {
            op["security"] = json!([{"bearer": []}]);
        }
        if matches!(r.method, "post" | "put")
            && r.path != "/v1/images"
            && !r.path.ends_with("/start")
            && !r.path.ends_with("/stop")
        {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {}}});
        }
        if r.path == "/v1/images" && r.method == "post" {
            op["requestBody"] = json!({"required": true, "content": {"application/octet-stream": {}}});
            for (name, required) in [
                ("name", true),
                ("format", true),
                ("project", false),
                ("visibility", false),
                ("digest", false),
            ] {
                if let Some(params) = op["parameters"].as_array_mut() {
                    params.push(json!({"name": name, "in": "query", "required": required, "schema": {"type": "string"}}));
                }
            }
        }
        let entry = paths.entry(r.path).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Atoll peer API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}}}}},
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented() {
        let routes = super::super::routes();
        let doc = super::document(&routes);
        for r in &routes {
            assert!(doc["paths"][r.path][r.method].is_object(), "{} {} missing", r.method, r.path);
        }
        assert_eq!(
            doc["paths"]["/v1/instances/{project}/{name}"]["get"]["parameters"].as_array().unwrap().len(),
            2
        );
    }
}
