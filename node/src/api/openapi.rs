//! The OpenAPI 3.1 document, generated from the route table and from the
//! request and reply types themselves (their `JsonSchema` derives), so that
//! it cannot drift from what the server parses and sends. `.ci/run` holds
//! the server to it with schemathesis (docs/api.md).

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use super::Route;

/// Produces a schema, registering the named types it uses as components.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// A `$ref` to `T`'s component (or `T`'s schema inline for simple types).
pub fn reference<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// `T`'s own schema, for a query string whose fields become parameters.
pub fn fields<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    T::json_schema(g)
}

/// What a route reads and answers, beyond its path parameters.
#[derive(Clone, Copy, Default)]
pub struct Shapes {
    /// The JSON body.
    pub body: Option<SchemaFn>,
    /// The query string's fields.
    pub query: Option<SchemaFn>,
    /// The JSON reply.
    pub reply: Option<SchemaFn>,
    /// The reply is text of this media type (instance logs, metrics).
    pub text: Option<&'static str>,
    /// The operation may be sent to another site (`?site=`): the reply is
    /// then that site's answer or, while it has not settled, the intent
    /// (202 Accepted).
    pub remote: bool,
    /// Operations on what a successful reply names (OpenAPI links, which
    /// schemathesis follows in its stateful phase).
    pub links: &'static [Link],
}

/// An operation on the thing a reply names: `(method, path)` and, for each
/// of its path parameters, the reply's field that fills it.
pub struct Link {
    pub to: (&'static str, &'static str),
    pub params: &'static [(&'static str, &'static str)],
}

/// A stable `operationId`: `get /v1/instances/{project}/{name}` is
/// `get_v1_instances_project_name`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(part.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()));
    }
    id
}

fn error() -> Value {
    json!({"description": "refused, with the reason", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn operation(r: &Route, g: &mut SchemaGenerator) -> Value {
    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            // Every path parameter is a name (of a site, user, project,
            // image or instance) but an intent's id.
            let schema = if name == "id" {
                json!({"type": "string"})
            } else {
                json!({"type": "string", "minLength": 1, "maxLength": 63, "pattern": atoll_crdt::NAME_PATTERN})
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect();
    if let Some(query) = r.shapes.query {
        let schema = query(g).to_value();
        let required: Vec<&str> =
            schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        for (name, field) in schema["properties"].as_object().into_iter().flatten() {
            params.push(json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": field}));
        }
    }
    let reply = r.shapes.reply.map(|f| f(g).to_value());
    let mut ok = json!({"description": "success"});
    if let Some(media) = r.shapes.text {
        ok["content"] = json!({media: {"schema": {"type": "string"}}});
    } else if let Some(reply) = &reply {
        let schema = if r.shapes.remote {
            json!({"anyOf": [reply, reference::<atoll_proto::api::IntentView>(g).to_value()]})
        } else {
            reply.clone()
        };
        ok["content"] = json!({"application/json": {"schema": schema}});
    }
    if !r.shapes.links.is_empty() {
        let links: serde_json::Map<String, Value> = r
            .shapes
            .links
            .iter()
            .map(|l| {
                let params: serde_json::Map<String, Value> = l
                    .params
                    .iter()
                    .map(|(p, field)| (p.to_string(), json!(format!("$response.body#/{field}"))))
                    .collect();
                (
                    operation_id(l.to.0, l.to.1),
                    json!({"operationId": operation_id(l.to.0, l.to.1), "parameters": params}),
                )
            })
            .collect();
        ok["links"] = Value::Object(links);
    }
    let mut responses = json!({"200": ok, "4XX": error()});
    if r.shapes.remote {
        let intent = reference::<atoll_proto::api::IntentView>(g).to_value();
        responses["202"] = json!({"description": "sent to the site, not settled yet", "content": {"application/json": {"schema": intent}}});
    }
    let mut op = json!({
        "operationId": operation_id(r.method, r.path),
        "summary": r.summary,
        "parameters": params,
        "responses": responses,
    });
    if r.auth {
        op["security"] = json!([{"bearer": []}]);
    }
    if r.path == "/v1/images" && r.method == "post" {
        op["requestBody"] = json!({"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}});
    } else if let Some(body) = r.shapes.body {
        op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": body(g).to_value()}}});
    }
    op
}

pub fn document(routes: &[Route]) -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let mut paths = serde_json::Map::new();
    for r in routes {
        let op = operation(r, &mut g);
        let entry = paths.entry(r.path).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    let mut schemas = g.take_definitions(true);
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
            "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Atoll peer API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    #[test]
    fn every_route_is_documented_with_its_shapes() {
        let routes = super::super::routes();
        let doc = super::document(&routes);
        for r in &routes {
            let op = &doc["paths"][r.path][r.method];
            assert!(op.is_object(), "{} {} missing", r.method, r.path);
            let has_body = op.get("requestBody").is_some();
            assert_eq!(has_body, r.shapes.body.is_some() || r.path == "/v1/images" && r.method == "post");
            assert!(
                r.shapes.reply.is_some() || r.shapes.text.is_some(),
                "{} {} has no reply schema",
                r.method,
                r.path
            );
        }
        assert_eq!(
            doc["paths"]["/v1/instances/{project}/{name}"]["get"]["parameters"].as_array().unwrap().len(),
            4,
            "project, name, site, wait"
        );
        // Every reference resolves.
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(doc["components"]["schemas"][name].is_object(), "dangling $ref {name}");
        }
        // Every link names an operation of the document, and fills each of
        // its path parameters.
        for r in &routes {
            for l in r.shapes.links {
                let target = routes.iter().find(|t| (t.method, t.path) == l.to);
                let target =
                    target.unwrap_or_else(|| panic!("{} {} links to a missing {:?}", r.method, r.path, l.to));
                let wanted: Vec<&str> =
                    target.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
                let given: Vec<&str> = l.params.iter().map(|(p, _)| *p).collect();
                assert_eq!(wanted, given, "{} {} -> {:?}", r.method, r.path, l.to);
            }
        }
        let new_instance = &doc["components"]["schemas"]["NewInstance"];
        assert_eq!(new_instance["properties"]["cpus"]["maximum"], Value::from(atoll_proto::api::MAX_CPUS));
    }
}
