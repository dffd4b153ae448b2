//! Glance v2 (a subset) under `/image/{region}`: the realm's image catalog,
//! each image with the sites that hold its bytes as its locations.

use atoll_crdt::{Image, ImageFormat, Visibility};
use atoll_proto::api::ImageView;
use atoll_proto::{Command, Reply};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{any, get};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{OsError, OsResult, Scoped, Service, iso, json, origin, region, unsupported, uuid_of};
use crate::api::AppState;

const GLANCE: Service = Service::Compute;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/image/{region}", get(versions))
        .route("/image/{region}/", get(versions))
        .route("/image/{region}/versions", get(versions))
        .route("/image/{region}/v2/images", get(images))
        .route("/image/{region}/v2/images/{id}", get(image).delete(delete_image))
        .route("/image/{region}/{*rest}", any(|| async { unsupported(GLANCE, "this image route") }))
}

async fn versions(State(s): State<AppState>, h: HeaderMap, Path(r): Path<String>) -> OsResult<Response> {
    let r = region(GLANCE, &r)?;
    let href = format!("{}/image/{r}/v2/", origin(&s, &h));
    Ok(json(
        StatusCode::OK,
        json!({"versions": [{"id": "v2.9", "status": "CURRENT", "links": [{"rel": "self", "href": href}]}]}),
    ))
}

/// Glance's disk and container formats of an Atoll image format.
fn formats(f: ImageFormat) -> (&'static str, &'static str) {
    match f {
        ImageFormat::Raw => ("raw", "bare"),
        ImageFormat::Qcow2 => ("qcow2", "bare"),
        ImageFormat::DockerArchive => ("raw", "docker"),
        ImageFormat::Process => ("raw", "ova"),
    }
}

fn image_json(v: &ImageView, region: &str) -> Value {
    let i = &v.image;
    let id = uuid_of("image", &i.project, &i.name);
    let (disk, container) = formats(i.format);
    let held = v.holders.iter().any(|s| s.as_str() == region);
    let locations: Vec<Value> = v
        .holders
        .iter()
        .map(|s| json!({"url": format!("atoll://{s}/{}", i.digest), "metadata": {"site": s}}))
        .collect();
    let stores: Vec<&str> = v.holders.iter().map(|s| s.as_str()).collect();
    json!({
        "id": id, "name": i.name, "status": "active", "owner": i.project,
        "visibility": match i.visibility { Visibility::Public => "public", Visibility::Private => "private" },
        "disk_format": disk, "container_format": container, "size": i.size, "virtual_size": null,
        "checksum": null, "os_hash_algo": "sha256", "os_hash_value": i.digest.trim_start_matches("sha256:"),
        "protected": false, "os_hidden": false, "min_disk": 0, "min_ram": 0, "tags": [],
        "created_at": iso(i.created_at), "updated_at": iso(i.created_at),
        "locations": locations, "stores": stores.join(","), "atoll_held_in_region": held,
        "self": format!("/v2/images/{id}"), "file": format!("/v2/images/{id}/file"), "schema": "/v2/schemas/image",
    })
}

async fn all_images(s: &AppState, me: &Scoped, service: Service) -> OsResult<Vec<ImageView>> {
    match me.call(s, service, Command::ListImages).await? {
        Reply::Images(i) => Ok(i),
        _ => Err(OsError::new(service, 500, "unexpected reply to an image listing")),
    }
}

/// The image an id or a name names: the token's project's first, then a
/// public one.
pub async fn find_image(s: &AppState, me: &Scoped, service: Service, id: &str) -> OsResult<Image> {
    let project = me.project(service)?.to_owned();
    let all = all_images(s, me, service).await?;
    let by_id = all.iter().find(|v| uuid_of("image", &v.image.project, &v.image.name) == id);
    let by_name = || {
        let named = all.iter().filter(|v| v.image.name == id);
        let mut named: Vec<&ImageView> = named.collect();
        named.sort_by_key(|v| v.image.project != project);
        named.into_iter().next()
    };
    by_id
        .or_else(by_name)
        .map(|v| v.image.clone())
        .ok_or_else(|| OsError::new(service, 404, format!("No image found with ID {id}")))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    name: Option<String>,
}

async fn images(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(r): Path<String>,
    q: Query<ListQuery>,
) -> OsResult<Response> {
    let r = region(GLANCE, &r)?;
    let me = Scoped::of(&h, GLANCE)?;
    let shown: Vec<Value> = all_images(&s, &me, GLANCE)
        .await?
        .iter()
        .filter(|v| q.name.as_ref().is_none_or(|n| &v.image.name == n))
        .map(|v| image_json(v, r.as_str()))
        .collect();
    Ok(json(StatusCode::OK, json!({"images": shown, "first": "/v2/images", "schema": "/v2/schemas/images"})))
}

async fn image(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, id)): Path<(String, String)>,
) -> OsResult<Response> {
    let r = region(GLANCE, &r)?;
    let me = Scoped::of(&h, GLANCE)?;
    let all = all_images(&s, &me, GLANCE).await?;
    let v = all
        .iter()
        .find(|v| uuid_of("image", &v.image.project, &v.image.name) == id)
        .ok_or_else(|| OsError::new(GLANCE, 404, format!("No image found with ID {id}")))?;
    Ok(json(StatusCode::OK, image_json(v, r.as_str())))
}

async fn delete_image(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, id)): Path<(String, String)>,
) -> OsResult<StatusCode> {
    region(GLANCE, &r)?;
    let me = Scoped::of(&h, GLANCE)?;
    let all = all_images(&s, &me, GLANCE).await?;
    let v = all
        .iter()
        .find(|v| uuid_of("image", &v.image.project, &v.image.name) == id)
        .ok_or_else(|| OsError::new(GLANCE, 404, format!("No image found with ID {id}")))?;
    let cmd = Command::RemoveImage { project: v.image.project.clone(), name: v.image.name.clone() };
    me.call(&s, GLANCE, cmd).await?;
    Ok(StatusCode::NO_CONTENT)
}
