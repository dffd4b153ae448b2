//! Glance v2 (a subset) under `/image/{region}`: the realm's image catalog,
//! each image with the sites that hold its bytes as its locations, and
//! uploads in Glance's two steps (name the image, then send its bytes; the
//! digest Glance clients do not send is computed while receiving). The bytes
//! are stored on the site that serves the call, whatever the region: any
//! site fetches them from there when it needs them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atoll_crdt::{Image, ImageFormat, Visibility};
use atoll_proto::api::ImageView;
use atoll_proto::{Command, Reply};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{any, get, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{OsError, OsResult, Scoped, Service, bad_body, iso, json, origin, region, unsupported, uuid_of};
use crate::api::AppState;
use crate::api::upload::{Meta, store_image};

const GLANCE: Service = Service::Compute;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/image/{region}", get(versions))
        .route("/image/{region}/", get(versions))
        .route("/image/{region}/versions", get(versions))
        .route("/image/{region}/v2/images", get(images).post(create))
        .route("/image/{region}/v2/images/{id}/file", put(upload).layer(DefaultBodyLimit::disable()))
        .route("/image/{region}/v2/images/{id}", get(image).delete(delete_image))
        .route("/image/{region}/{*rest}", any(|| async { unsupported(GLANCE, "this image route") }))
}

/// Images named but not yet sent (Glance's `queued`), by id: at most
/// [`MAX_QUEUED`] ([`MAX_QUEUED_PER_PROJECT`] of one project), each
/// forgotten after [`QUEUED_FOR`]; only a user who may upload to the
/// project names one.
#[derive(Clone, Default)]
pub struct Queued(Arc<Mutex<HashMap<String, (Instant, Pending)>>>);

const MAX_QUEUED: usize = 256;
/// Of which one project may hold at most.
const MAX_QUEUED_PER_PROJECT: usize = 16;
const QUEUED_FOR: Duration = Duration::from_secs(3600);

#[derive(Clone)]
struct Pending {
    project: String,
    name: String,
    format: ImageFormat,
    visibility: Visibility,
}

impl Queued {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Pending)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, id: &str, p: Pending) -> OsResult<()> {
        let mut t = self.table();
        t.retain(|_, (at, _)| at.elapsed() < QUEUED_FOR);
        let of_project = t.values().filter(|(_, q)| q.project == p.project).count();
        if !t.contains_key(id) && (t.len() >= MAX_QUEUED || of_project >= MAX_QUEUED_PER_PROJECT) {
            return Err(OsError::new(GLANCE, 413, "too many images wait for their data; send theirs first"));
        }
        t.insert(id.to_owned(), (Instant::now(), p));
        Ok(())
    }

    /// A queued image of `project` (the caller's): another project's is not shown.
    fn get(&self, id: &str, project: &str) -> Option<Pending> {
        let t = self.table();
        t.get(id).filter(|(at, p)| at.elapsed() < QUEUED_FOR && p.project == project).map(|(_, p)| p.clone())
    }

    fn remove(&self, id: &str) {
        self.table().remove(id);
    }

    fn of_project(&self, project: &str) -> Vec<(String, Pending)> {
        let t = self.table();
        t.iter()
            .filter(|(_, (at, p))| p.project == project && at.elapsed() < QUEUED_FOR)
            .map(|(id, (_, p))| (id.clone(), p.clone()))
            .collect()
    }
}

async fn versions(State(s): State<AppState>, h: HeaderMap, Path(r): Path<String>) -> OsResult<Response> {
    let r = region(GLANCE, &r)?;
    let href = format!("{}/image/{r}/v2/", origin(&s, &h));
    Ok(json(
        StatusCode::OK,
        json!({"versions": [{"id": "v2.9", "status": "CURRENT", "links": [{"rel": "self", "href": href}]}]}),
    ))
}

/// The Atoll format of Glance's disk and container formats: `docker` is a
/// `docker save` archive, `ova` a process image (Atoll's tar with a
/// manifest), otherwise a VM disk in the disk format.
fn format_of(disk: Option<&str>, container: Option<&str>) -> OsResult<ImageFormat> {
    match (container.unwrap_or("bare"), disk.unwrap_or("raw")) {
        ("docker", _) => Ok(ImageFormat::DockerArchive),
        ("ova", _) => Ok(ImageFormat::Process),
        (_, "raw") => Ok(ImageFormat::Raw),
        (_, "qcow2") => Ok(ImageFormat::Qcow2),
        (c, d) => Err(OsError::new(
            GLANCE,
            400,
            format!("unsupported formats: disk {d}, container {c} (docs/openstack.md)"),
        )),
    }
}

fn queued_json(id: &str, p: &Pending) -> Value {
    let (disk, container) = formats(p.format);
    json!({
        "id": id, "name": p.name, "status": "queued", "owner": p.project,
        "visibility": match p.visibility { Visibility::Public => "public", Visibility::Private => "private" },
        "disk_format": disk, "container_format": container, "size": null, "virtual_size": null,
        "checksum": null, "os_hash_algo": null, "os_hash_value": null, "protected": false, "os_hidden": false,
        "min_disk": 0, "min_ram": 0, "tags": [], "locations": [], "stores": "",
        "self": format!("/v2/images/{id}"), "file": format!("/v2/images/{id}/file"), "schema": "/v2/schemas/image",
    })
}

#[derive(Deserialize)]
struct NewImage {
    name: String,
    #[serde(default)]
    disk_format: Option<String>,
    #[serde(default)]
    container_format: Option<String>,
    #[serde(default)]
    visibility: Option<String>,
}

async fn create(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(r): Path<String>,
    b: Result<axum::Json<NewImage>, axum::extract::rejection::JsonRejection>,
) -> OsResult<Response> {
    region(GLANCE, &r)?;
    let me = Scoped::of(&h, GLANCE)?;
    let project = me.project(GLANCE)?.to_owned();
    let axum::Json(b) = b.map_err(|r| bad_body(GLANCE, r))?;
    let format = format_of(b.disk_format.as_deref(), b.container_format.as_deref())?;
    let visibility =
        if b.visibility.as_deref() == Some("public") { Visibility::Public } else { Visibility::Private };
    // Only who may upload to the project names an image in it.
    me.call(&s, GLANCE, Command::UploadRoom { project: project.clone() }).await?;
    let id = uuid_of("image", &project, &b.name);
    let pending = Pending { project, name: b.name, format, visibility };
    s.glance.add(&id, pending.clone())?;
    Ok(json(StatusCode::CREATED, queued_json(&id, &pending)))
}

async fn upload(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, id)): Path<(String, String)>,
    body: axum::body::Body,
) -> OsResult<StatusCode> {
    region(GLANCE, &r)?;
    let me = Scoped::of(&h, GLANCE)?;
    let p = s
        .glance
        .get(&id, me.project(GLANCE)?)
        .ok_or_else(|| OsError::new(GLANCE, 404, format!("No image {id} waits for data")))?;
    let meta = Meta { name: p.name, project: p.project, format: p.format, visibility: p.visibility };
    store_image(&s, Some(me.token.clone()), meta, None, body).await.map_err(|f| OsError::api(GLANCE, f.0))?;
    s.glance.remove(&id);
    Ok(StatusCode::NO_CONTENT)
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

/// The catalog image whose stable id is `id`.
fn by_id<'a>(all: &'a [ImageView], id: &str) -> Option<&'a ImageView> {
    all.iter().find(|v| uuid_of("image", &v.image.project, &v.image.name) == id)
}

/// The image an id or a name names: the token's project's first, then a
/// public one.
pub async fn find_image(s: &AppState, me: &Scoped, service: Service, id: &str) -> OsResult<Image> {
    let project = me.project(service)?.to_owned();
    let all = all_images(s, me, service).await?;
    let by_id = by_id(&all, id);
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
    let mut shown: Vec<Value> = all_images(&s, &me, GLANCE)
        .await?
        .iter()
        .filter(|v| q.name.as_ref().is_none_or(|n| &v.image.name == n))
        .map(|v| image_json(v, r.as_str()))
        .collect();
    if let Some(project) = &me.project {
        let queued = s.glance.of_project(project).into_iter();
        let queued = queued.filter(|(_, p)| q.name.as_ref().is_none_or(|n| &p.name == n));
        shown.extend(queued.map(|(id, p)| queued_json(&id, &p)));
    }
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
    if let Some(v) = by_id(&all, &id) {
        return Ok(json(StatusCode::OK, image_json(v, r.as_str())));
    }
    match me.project.as_deref().and_then(|p| s.glance.get(&id, p)) {
        Some(p) => Ok(json(StatusCode::OK, queued_json(&id, &p))),
        None => Err(OsError::new(GLANCE, 404, format!("No image found with ID {id}"))),
    }
}

async fn delete_image(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, id)): Path<(String, String)>,
) -> OsResult<StatusCode> {
    region(GLANCE, &r)?;
    let me = Scoped::of(&h, GLANCE)?;
    let all = all_images(&s, &me, GLANCE).await?;
    let v =
        by_id(&all, &id).ok_or_else(|| OsError::new(GLANCE, 404, format!("No image found with ID {id}")))?;
    let cmd = Command::RemoveImage { project: v.image.project.clone(), name: v.image.name.clone() };
    me.call(&s, GLANCE, cmd).await?;
    Ok(StatusCode::NO_CONTENT)
}
