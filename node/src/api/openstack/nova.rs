//! Nova 2.1 (a subset) under `/compute/{region}/v2.1`: flavors, servers
//! (an Atoll instance is a server; its site is the region), their actions
//! and console output, limits and quota sets.

use atoll_crdt::{Desired, Flavor, Instance, Observed, Resources, SiteId};
use atoll_proto::api::{NewFlavor, NewInstance, default_wait};
use atoll_proto::{Command, Reply};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{OsError, OsResult, Scoped, Service, bad_body, iso, json, origin, region, unsupported, uuid_of};
use crate::api::AppState;

const NOVA: Service = Service::Compute;
/// Lines of console output when the client asks for no length.
const CONSOLE_LINES: usize = 1000;

pub fn routes() -> Router<AppState> {
    let v = "/compute/{region}/v2.1";
    Router::new()
        .route("/compute/{region}", get(versions))
        .route("/compute/{region}/", get(versions))
        .route(v, get(version))
        .route(&format!("{v}/"), get(version))
        .route(&format!("{v}/flavors"), get(flavors).post(create_flavor))
        .route(&format!("{v}/flavors/detail"), get(flavors))
        .route(&format!("{v}/flavors/{{id}}"), get(flavor).delete(delete_flavor))
        .route(
            &format!("{v}/flavors/{{id}}/os-extra_specs"),
            get(|| async { json(StatusCode::OK, json!({"extra_specs": {}})) }),
        )
        .route(&format!("{v}/servers"), get(servers).post(create_server))
        .route(&format!("{v}/servers/detail"), get(servers))
        .route(&format!("{v}/servers/{{id}}"), get(server).delete(delete_server))
        .route(&format!("{v}/servers/{{id}}/action"), post(action))
        .route(&format!("{v}/limits"), get(limits))
        .route(&format!("{v}/os-quota-sets/{{project}}"), get(quota_set).put(set_quota_set))
        .route(&format!("{v}/os-quota-sets/{{project}}/defaults"), get(quota_set))
        .route(&format!("{v}/{{*rest}}"), any(|| async { unsupported(NOVA, "this compute route") }))
}

fn version_json(base: &str, region: &str) -> Value {
    json!({
        "id": "v2.1", "status": "CURRENT", "version": "2.1", "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{base}/compute/{region}/v2.1/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}],
    })
}

async fn versions(State(s): State<AppState>, h: HeaderMap, Path(r): Path<String>) -> OsResult<Response> {
    let r = region(NOVA, &r)?;
    Ok(json(StatusCode::OK, json!({"versions": [version_json(&origin(&s, &h), r.as_str())]})))
}

async fn version(State(s): State<AppState>, h: HeaderMap, Path(r): Path<String>) -> OsResult<Response> {
    let r = region(NOVA, &r)?;
    Ok(json(StatusCode::OK, json!({"version": version_json(&origin(&s, &h), r.as_str())})))
}

fn flavor_json(f: &Flavor) -> Value {
    json!({
        "id": f.name, "name": f.name, "vcpus": f.cpus, "ram": f.memory_mib, "disk": f.disk_mib / 1024,
        "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": false, "swap": "",
        "rxtx_factor": 1.0, "os-flavor-access:is_public": true, "links": [],
    })
}

async fn all_flavors(s: &AppState, me: &Scoped) -> OsResult<Vec<Flavor>> {
    match me.call(s, NOVA, Command::ListFlavors).await? {
        Reply::Flavors(f) => Ok(f),
        _ => Err(OsError::new(NOVA, 500, "unexpected reply to a flavor listing")),
    }
}

async fn flavors(State(s): State<AppState>, h: HeaderMap, Path(r): Path<String>) -> OsResult<Response> {
    region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let all: Vec<Value> = all_flavors(&s, &me).await?.iter().map(flavor_json).collect();
    Ok(json(StatusCode::OK, json!({ "flavors": all })))
}

async fn flavor(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, id)): Path<(String, String)>,
) -> OsResult<Response> {
    region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let all = all_flavors(&s, &me).await?;
    let f = all
        .iter()
        .find(|f| f.name == id)
        .ok_or_else(|| OsError::new(NOVA, 404, format!("Flavor {id} could not be found.")))?;
    Ok(json(StatusCode::OK, json!({"flavor": flavor_json(f)})))
}

#[derive(Deserialize)]
struct FlavorBody {
    flavor: OsFlavor,
}

#[derive(Deserialize)]
struct OsFlavor {
    name: String,
    vcpus: i64,
    ram: i64,
    #[serde(default)]
    disk: i64,
}

async fn create_flavor(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(r): Path<String>,
    b: Result<axum::Json<FlavorBody>, axum::extract::rejection::JsonRejection>,
) -> OsResult<Response> {
    region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let axum::Json(b) = b.map_err(|r| bad_body(NOVA, r))?;
    let f = b.flavor;
    let disk_mib = f.disk.checked_mul(1024).ok_or_else(|| OsError::new(NOVA, 400, "disk too large"))?;
    let new = NewFlavor { name: f.name, cpus: f.vcpus, memory_mib: f.ram, disk_mib };
    match me.call(&s, NOVA, Command::CreateFlavor(new)).await? {
        Reply::Flavor(f) => Ok(json(StatusCode::OK, json!({"flavor": flavor_json(&f)}))),
        _ => Err(OsError::new(NOVA, 500, "unexpected reply to a flavor creation")),
    }
}

async fn delete_flavor(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, id)): Path<(String, String)>,
) -> OsResult<StatusCode> {
    region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    me.call(&s, NOVA, Command::DeleteFlavor { name: id }).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Nova's status, VM state, task state and power state of an instance.
fn states(i: &Instance) -> (&'static str, &'static str, Option<&'static str>, u8) {
    if i.desired == Desired::Deleted {
        return ("ACTIVE", "active", Some("deleting"), 1);
    }
    match i.observed {
        Observed::Pending | Observed::Starting => ("BUILD", "building", Some("spawning"), 0),
        Observed::Running if i.desired == Desired::Stopped => ("ACTIVE", "active", Some("powering-off"), 1),
        Observed::Running => ("ACTIVE", "active", None, 1),
        Observed::Stopping => ("ACTIVE", "active", Some("powering-off"), 1),
        Observed::Stopped | Observed::Exited => ("SHUTOFF", "stopped", None, 4),
        Observed::Failed => ("ERROR", "error", None, 0),
    }
}

/// The flavor whose sizes an instance has, if any.
fn flavor_of<'a>(i: &Instance, flavors: &'a [Flavor]) -> Option<&'a Flavor> {
    flavors.iter().find(|f| f.cpus == i.cpus && f.memory_mib == i.memory_mib && f.disk_mib == i.disk_mib)
}

fn server_json(base: &str, i: &Instance, flavors: &[Flavor]) -> Value {
    let id = uuid_of("server", &i.project, &i.name);
    let (status, vm, task, power) = states(i);
    let (image_project, image_name) = i.image.split_once('/').unwrap_or((&i.project, &i.image));
    let flavor = flavor_of(i, flavors).map_or("custom", |f| f.name.as_str());
    let href = format!("{base}/compute/{}/v2.1/servers/{id}", i.site);
    let mut v = json!({
        "id": id, "name": i.name, "status": status, "tenant_id": i.project, "user_id": i.created_by,
        "metadata": {}, "hostId": uuid_of("host", &i.project, i.site.as_str()).replace('-', ""),
        "image": {"id": uuid_of("image", image_project, image_name), "links": []},
        "flavor": {"id": flavor, "links": []},
        "created": iso(i.created_at), "updated": iso(i.observed_at.max(i.created_at)),
        "addresses": {}, "accessIPv4": "", "accessIPv6": "", "key_name": null, "config_drive": "",
        "progress": 0, "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-STS:vm_state": vm, "OS-EXT-STS:task_state": task, "OS-EXT-STS:power_state": power,
        "OS-EXT-AZ:availability_zone": i.site, "OS-EXT-SRV-ATTR:host": i.site,
        "OS-SRV-USG:launched_at": null, "OS-SRV-USG:terminated_at": null,
        "security_groups": [{"name": "default"}], "os-extended-volumes:volumes_attached": [],
        "links": [{"rel": "self", "href": href}],
    });
    if status == "ERROR" {
        v["fault"] = json!({"code": 500, "message": i.reason, "created": iso(i.observed_at)});
    }
    v
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all_tenants: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// The region's instances the caller sees: of the token's project, or all
/// of them with `all_tenants` (what the core lets the caller read).
async fn region_servers(s: &AppState, me: &Scoped, site: &SiteId, all: bool) -> OsResult<Vec<Instance>> {
    let Reply::Instances(list) =
        me.call(s, NOVA, Command::ListInstances { site: Some(site.clone()) }).await?
    else {
        return Err(OsError::new(NOVA, 500, "unexpected reply to an instance listing"));
    };
    let project = if all { None } else { Some(me.project(NOVA)?) };
    Ok(list
        .instances
        .into_iter()
        .filter(|i| &i.site == site && project.is_none_or(|p| i.project == p))
        .collect())
}

async fn servers(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(r): Path<String>,
    q: Query<ListQuery>,
) -> OsResult<Response> {
    let site = region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let all = q.all_tenants.as_deref().is_some_and(|a| a != "0" && !a.eq_ignore_ascii_case("false"));
    let flavors = all_flavors(&s, &me).await?;
    let base = origin(&s, &h);
    let shown: Vec<Value> = region_servers(&s, &me, &site, all)
        .await?
        .iter()
        .filter(|i| q.name.as_ref().is_none_or(|n| &i.name == n))
        .map(|i| server_json(&base, i, &flavors))
        .collect();
    Ok(json(StatusCode::OK, json!({"servers": shown, "servers_links": []})))
}

/// The server `id` (its id, or its name in the token's project) of the region.
async fn find(s: &AppState, me: &Scoped, site: &SiteId, id: &str) -> OsResult<Instance> {
    let project = me.project(NOVA)?.to_owned();
    region_servers(s, me, site, true)
        .await?
        .into_iter()
        .find(|i| uuid_of("server", &i.project, &i.name) == id || (i.project == project && i.name == id))
        .ok_or_else(|| OsError::new(NOVA, 404, format!("Instance {id} could not be found.")))
}

async fn server(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, id)): Path<(String, String)>,
) -> OsResult<Response> {
    let site = region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let i = find(&s, &me, &site, &id).await?;
    let flavors = all_flavors(&s, &me).await?;
    Ok(json(StatusCode::OK, json!({"server": server_json(&origin(&s, &h), &i, &flavors)})))
}

/// Runs `then` on the region's site, where the instance is.
async fn on_site(s: &AppState, me: &Scoped, site: &SiteId, then: Command) -> OsResult<Reply> {
    let cmd = Command::Anywhere { site: Some(site.clone()), wait_ms: default_wait(), then: Box::new(then) };
    me.call(s, NOVA, cmd).await
}

async fn delete_server(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, id)): Path<(String, String)>,
) -> OsResult<StatusCode> {
    let site = region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let i = find(&s, &me, &site, &id).await?;
    on_site(&s, &me, &site, Command::DeleteInstance { project: i.project, name: i.name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ServerBody {
    server: NewServer,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewServer {
    name: String,
    image_ref: String,
    flavor_ref: String,
}

async fn create_server(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(r): Path<String>,
    b: Result<axum::Json<ServerBody>, axum::extract::rejection::JsonRejection>,
) -> OsResult<Response> {
    let site = region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let project = me.project(NOVA)?.to_owned();
    let axum::Json(b) = b.map_err(|r| bad_body(NOVA, r))?;
    let b = b.server;
    let flavors = all_flavors(&s, &me).await?;
    let flavor = flavors
        .iter()
        .find(|f| f.name == b.flavor_ref || uuid_of("flavor", "", &f.name) == b.flavor_ref)
        .ok_or_else(|| OsError::new(NOVA, 400, format!("Flavor {} could not be found.", b.flavor_ref)))?;
    let image = super::glance::find_image(&s, &me, NOVA, &b.image_ref).await?;
    let image_ref = if image.project == project {
        image.name.clone()
    } else {
        format!("{}/{}", image.project, image.name)
    };
    let new: NewInstance = serde_json::from_value(json!({
        "name": b.name, "project": project, "image": image_ref,
        "cpus": flavor.cpus, "memory_mib": flavor.memory_mib, "disk_mib": flavor.disk_mib,
    }))
    .map_err(|e| OsError::new(NOVA, 400, e.to_string()))?;
    let id = uuid_of("server", &new.project, &new.name);
    let cmd = Command::Remote {
        site: site.clone(),
        wait_ms: default_wait(),
        then: Box::new(Command::CreateInstance(new)),
    };
    // Done, or accepted for later (the region is out of reach): either way
    // the server exists from now on under its id.
    me.call(&s, NOVA, cmd).await?;
    let href = format!("{}/compute/{site}/v2.1/servers/{id}", origin(&s, &h));
    Ok(json(
        StatusCode::ACCEPTED,
        json!({"server": {"id": id, "links": [{"rel": "self", "href": href}], "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}], "adminPass": ""}}),
    ))
}

async fn action(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, id)): Path<(String, String)>,
    b: Result<axum::Json<Value>, axum::extract::rejection::JsonRejection>,
) -> OsResult<Response> {
    let site = region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let axum::Json(b) = b.map_err(|r| bad_body(NOVA, r))?;
    let Some((verb, args)) = b.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
        return Err(OsError::new(NOVA, 400, "an action body names exactly one action"));
    };
    let i = find(&s, &me, &site, &id).await?;
    let (project, name) = (i.project.clone(), i.name.clone());
    match verb.as_str() {
        "os-start" => {
            on_site(&s, &me, &site, Command::StartInstance { project, name }).await?;
        }
        "os-stop" => {
            on_site(&s, &me, &site, Command::StopInstance { project, name }).await?;
        }
        "reboot" => {
            on_site(&s, &me, &site, Command::StopInstance { project: project.clone(), name: name.clone() })
                .await?;
            on_site(&s, &me, &site, Command::StartInstance { project, name }).await?;
        }
        "os-getConsoleOutput" => {
            let lines = args.get("length").and_then(Value::as_u64).map_or(CONSOLE_LINES, |n| n as usize);
            let bytes = crate::api::read_logs(
                &s,
                Some(me.token.clone()),
                Some(site),
                project,
                name,
                crate::api::MAX_LOG_TAIL,
            )
            .await
            .map_err(|f| OsError::api(NOVA, f.0))?;
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            return Ok(json(StatusCode::OK, json!({"output": tail})));
        }
        other => return Err(unsupported(NOVA, &format!("the server action {other}"))),
    }
    Ok(json(StatusCode::ACCEPTED, Value::Null))
}

async fn quota(s: &AppState, me: &Scoped, project: &str) -> OsResult<atoll_proto::api::QuotaView> {
    match me.call(s, NOVA, Command::ShowQuota { project: project.to_owned() }).await? {
        Reply::Quota(q) => Ok(q),
        _ => Err(OsError::new(NOVA, 500, "unexpected reply to a quota query")),
    }
}

async fn limits(State(s): State<AppState>, h: HeaderMap, Path(r): Path<String>) -> OsResult<Response> {
    region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let q = quota(&s, &me, me.project(NOVA)?).await?;
    let (t, u) = (q.total, q.used_known);
    Ok(json(
        StatusCode::OK,
        json!({"limits": {"rate": [], "absolute": {
            "maxTotalInstances": t.instances, "maxTotalCores": t.cpus, "maxTotalRAMSize": t.memory_mib,
            "totalInstancesUsed": u.instances, "totalCoresUsed": u.cpus, "totalRAMUsed": u.memory_mib,
            "maxServerMeta": 0, "maxImageMeta": 0, "maxPersonality": 0, "maxPersonalitySize": 0,
            "maxTotalKeypairs": 0, "maxServerGroups": 0, "maxServerGroupMembers": 0, "totalServerGroupsUsed": 0,
            "maxSecurityGroups": 0, "maxSecurityGroupRules": 0, "totalSecurityGroupsUsed": 0,
            "maxTotalFloatingIps": 0, "totalFloatingIpsUsed": 0,
        }}}),
    ))
}

fn quota_json(project: &str, t: Resources) -> Value {
    json!({"quota_set": {
        "id": project, "instances": t.instances, "cores": t.cpus, "ram": t.memory_mib,
        "key_pairs": 0, "metadata_items": 0, "injected_files": 0, "injected_file_content_bytes": 0,
        "injected_file_path_bytes": 0, "server_groups": 0, "server_group_members": 0,
    }})
}

async fn quota_set(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, project)): Path<(String, String)>,
) -> OsResult<Response> {
    region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let q = quota(&s, &me, &project).await?;
    Ok(json(StatusCode::OK, quota_json(&project, q.total)))
}

#[derive(Deserialize)]
struct QuotaBody {
    quota_set: QuotaChange,
}

#[derive(Deserialize)]
struct QuotaChange {
    instances: Option<i64>,
    cores: Option<i64>,
    ram: Option<i64>,
}

async fn set_quota_set(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((r, project)): Path<(String, String)>,
    b: Result<axum::Json<QuotaBody>, axum::extract::rejection::JsonRejection>,
) -> OsResult<Response> {
    region(NOVA, &r)?;
    let me = Scoped::of(&h, NOVA)?;
    let axum::Json(b) = b.map_err(|r| bad_body(NOVA, r))?;
    let now = quota(&s, &me, &project).await?.total;
    let c = b.quota_set;
    let total = Resources::new(
        c.instances.unwrap_or(now.instances),
        c.cores.unwrap_or(now.cpus),
        c.ram.unwrap_or(now.memory_mib),
    );
    match me.call(&s, NOVA, Command::SetQuota { project: project.clone(), total }).await? {
        Reply::Quota(q) => Ok(json(StatusCode::OK, quota_json(&project, q.total))),
        _ => Err(OsError::new(NOVA, 500, "unexpected reply to a quota change")),
    }
}
