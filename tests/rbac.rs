//! The access matrix: every route of the OpenAPI document, called by no one,
//! a user with no role, a reader, a member, an admin of another project, an
//! admin of the project and a realm admin. Each route names the least caller
//! it admits; every caller below is refused (401 or 403) and every caller at
//! or above is not (it may still get a 404 or 409 once an earlier caller has
//! deleted or created the thing).

use std::collections::BTreeSet;

use atoll_e2e::*;

/// Callers, least to most trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    Nobody,
    NoRole,
    OtherAdmin,
    Reader,
    Member,
    ProjectAdmin,
    RealmAdmin,
}

use Caller::*;

/// Refused callers come first, so that no admitted caller has deleted the
/// thing before a refused one tries it.
const CALLERS: [Caller; 7] = [Nobody, NoRole, OtherAdmin, Reader, Member, ProjectAdmin, RealmAdmin];

impl Caller {
    fn user(self) -> Option<&'static str> {
        match self {
            Nobody => None,
            NoRole => Some("norole"),
            Reader => Some("reader"),
            Member => Some("member"),
            OtherAdmin => Some("otheradmin"),
            ProjectAdmin => Some("padmin"),
            RealmAdmin => Some("admin"),
        }
    }

    /// Whether a route open to `least` admits this caller. An admin of
    /// another project holds no role in `p`: it ranks with `NoRole` there.
    fn admitted(self, least: Caller) -> bool {
        let rank = |c: Caller| match c {
            OtherAdmin => NoRole,
            c => c,
        };
        match least {
            Nobody => true,
            NoRole => self != Nobody,
            least => self != OtherAdmin && rank(self) >= least,
        }
    }
}

/// A route, how to call it, and the least caller it admits. `{u}` in the
/// path is replaced by the caller's user name (routes about oneself).
struct Case {
    method: &'static str,
    template: &'static str,
    path: &'static str,
    body: &'static str,
    least: Caller,
    /// The call ends the caller's token: it gets a fresh one.
    spends_token: bool,
    /// A private thing: to callers who may not see it, it does not exist
    /// (404), which is a refusal too.
    hidden: bool,
}

const fn case(
    method: &'static str,
    template: &'static str,
    path: &'static str,
    body: &'static str,
    least: Caller,
) -> Case {
    Case { method, template, path, body, least, spends_token: false, hidden: false }
}

/// A case about a private image.
fn hidden(c: Case) -> Case {
    Case { hidden: true, ..c }
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        case("get", "/v1/health", "/v1/health", "", Nobody),
        case("get", "/v1/openapi.json", "/v1/openapi.json", "", Nobody),
        case("get", "/v1/realm", "/v1/realm", "", Nobody),
        case("post", "/v1/login", "/v1/login", r#"{"user":"norole","password":"norole-password"}"#, Nobody),
        case("get", "/v1/whoami", "/v1/whoami", "", NoRole),
        case("get", "/v1/site", "/v1/site", "", NoRole),
        case("get", "/v1/users", "/v1/users", "", NoRole),
        case("get", "/v1/projects", "/v1/projects", "", NoRole),
        case("get", "/v1/roles", "/v1/roles", "", NoRole),
        case("get", "/v1/images", "/v1/images", "", NoRole),
        case("get", "/v1/intents", "/v1/intents", "", NoRole),
        case("get", "/v1/intents/{id}", "/v1/intents/no-such-intent", "", NoRole),
        case("get", "/v1/instances", "/v1/instances", "", NoRole),
        case("get", "/v1/sites", "/v1/sites", "", NoRole),
        case("get", "/v1/sites/reachability", "/v1/sites/reachability", "", NoRole),
        case("get", "/v1/network", "/v1/network", "", NoRole),
        // Open to loopback clients (these are); a token from elsewhere.
        case("get", "/metrics", "/metrics", "", Nobody),
        case("get", "/v1/quotas/{project}", "/v1/quotas/p", "", Reader),
        hidden(case("get", "/v1/images/{project}/{name}", "/v1/images/p/img", "", Reader)),
        case("get", "/v1/instances/{project}/{name}", "/v1/instances/p/w", "", Reader),
        case("get", "/v1/instances/{project}/{name}/logs", "/v1/instances/p/w/logs", "", Reader),
        case(
            "post",
            "/v1/images",
            "/v1/images?name=up&project=p&format=process&digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "not the digest",
            Member,
        ),
        hidden(case("post", "/v1/images/{project}/{name}/copy", "/v1/images/p/img/copy", "", Member)),
        case(
            "post",
            "/v1/instances",
            "/v1/instances",
            r#"{"name":"x","project":"p","image":"img","memory_mib":32}"#,
            Member,
        ),
        case(
            "post",
            "/v1/deployments/plan",
            "/v1/deployments/plan",
            r#"{"name":"d","project":"p","services":{"s":{"image":"img","replicas":1}}}"#,
            Member,
        ),
        case(
            "post",
            "/v1/deployments",
            "/v1/deployments",
            r#"{"name":"d","project":"p","services":{"s":{"image":"img","replicas":0}}}"#,
            Member,
        ),
        case("get", "/v1/deployments", "/v1/deployments", "", NoRole),
        case("get", "/v1/deployments/{project}/{name}", "/v1/deployments/p/d", "", Reader),
        case(
            "post",
            "/v1/deployments/{project}/{name}/scale",
            "/v1/deployments/p/d/scale",
            r#"{"service":"s","replicas":0}"#,
            Member,
        ),
        case("delete", "/v1/deployments/{project}/{name}", "/v1/deployments/p/d", "", Member),
        case("post", "/v1/instances/{project}/{name}/stop", "/v1/instances/p/w/stop", "", Member),
        case("post", "/v1/instances/{project}/{name}/start", "/v1/instances/p/w/start", "", Member),
        case(
            "post",
            "/v1/roles",
            "/v1/roles",
            r#"{"user":"norole","project":"p","role":"reader"}"#,
            ProjectAdmin,
        ),
        case("delete", "/v1/roles/{project}/{user}", "/v1/roles/p/norole", "", ProjectAdmin),
        case(
            "post",
            "/v1/quotas/{project}/give",
            "/v1/quotas/p/give",
            r#"{"to":["nowhere"],"amount":{"instances":1,"cpus":0,"memory_mib":0}}"#,
            ProjectAdmin,
        ),
        case(
            "put",
            "/v1/users/{name}/password",
            "/v1/users/victim1/password",
            r#"{"password":"a-new-password"}"#,
            RealmAdmin,
        ),
        case("delete", "/v1/users/{name}/tokens", "/v1/users/victim1/tokens", "", RealmAdmin),
        case(
            "post",
            "/v1/users",
            "/v1/users",
            r#"{"name":"made","password":"made-password","realm_admin":false}"#,
            RealmAdmin,
        ),
        case(
            "post",
            "/v1/projects",
            "/v1/projects",
            r#"{"name":"made","quota":{"instances":1,"cpus":1,"memory_mib":64}}"#,
            RealmAdmin,
        ),
        case(
            "put",
            "/v1/projects/{project}/spread",
            "/v1/projects/p/spread",
            r#"{"spread":"even"}"#,
            RealmAdmin,
        ),
        case(
            "put",
            "/v1/quotas/{project}",
            "/v1/quotas/p",
            r#"{"instances":10,"cpus":20,"memory_mib":20480}"#,
            RealmAdmin,
        ),
        case(
            "put",
            "/v1/projects/{project}/storage",
            "/v1/projects/p/storage",
            r#"{"storage_mib":1024}"#,
            RealmAdmin,
        ),
        case("post", "/v1/sites/invitations", "/v1/sites/invitations", r#"{"ttl_secs":60}"#, RealmAdmin),
        case("post", "/v1/realm/finish-upgrade", "/v1/realm/finish-upgrade", "", RealmAdmin),
        case("delete", "/v1/sites/{site}", "/v1/sites/not-a-member", "", RealmAdmin),
        case("delete", "/v1/users/{name}", "/v1/users/victim2", "", RealmAdmin),
        case("delete", "/v1/projects/{project}", "/v1/projects/doomed", "", RealmAdmin),
        // Destructive ones on `p` last: the earlier rows need its instance and image.
        case("delete", "/v1/instances/{project}/{name}", "/v1/instances/p/w", "", Member),
        case("delete", "/v1/images/{project}/{name}", "/v1/images/p/img", "", ProjectAdmin),
    ];
    // About oneself: any user, with a token of its own to spend.
    for (method, template, path, body) in [
        ("post", "/v1/logout", "/v1/logout", ""),
        ("delete", "/v1/users/{name}/tokens", "/v1/users/{u}/tokens", ""),
    ] {
        v.push(Case { method, template, path, body, least: NoRole, spends_token: true, hidden: false });
    }
    v
}

fn login(d: &Daemon, user: &str, password: &str) -> String {
    let body = serde_json::json!({"user": user, "password": password}).to_string();
    let r = http(&d.addr(), "POST", "/v1/login", None, body.as_bytes());
    assert_eq!(r.status, 200, "login {user}: {}", r.body);
    r.json()["token"].as_str().unwrap().to_owned()
}

#[test]
fn every_route_admits_exactly_the_callers_it_should() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "edge-1");
    d.login_admin();
    let cli = || d.cli();
    cli().ok(&["project", "create", "p", "--instances", "5"]);
    cli().ok(&["project", "create", "q", "--instances", "1"]);
    cli().ok(&["project", "create", "doomed", "--instances", "1"]);
    for (user, role) in [
        ("norole", None),
        ("reader", Some(("p", "reader"))),
        ("member", Some(("p", "member"))),
        ("otheradmin", Some(("q", "admin"))),
        ("padmin", Some(("p", "admin"))),
        ("victim1", None),
        ("victim2", None),
    ] {
        cli().env("ATOLL_NEW_PASSWORD", &format!("{user}-password")).ok(&["user", "create", user]);
        if let Some((project, role)) = role {
            cli().ok(&["role", "grant", user, project, role]);
        }
    }
    let image = process_image(root.path(), "img", "sleep 600\n");
    cli().ok(&["image", "add", image.to_str().unwrap(), "--name", "img", "--project", "p"]);
    cli().ok(&[
        "instance",
        "create",
        "w",
        "--image",
        "img",
        "--project",
        "p",
        "--memory",
        "32",
        "--",
        &d.tag(),
    ]);

    let password = |c: Caller| match c {
        RealmAdmin => d.password.clone(),
        c => format!("{}-password", c.user().unwrap()),
    };
    let mut tokens: Vec<Option<String>> =
        CALLERS.iter().map(|&c| c.user().map(|u| login(&d, u, &password(c)))).collect();

    // Every route of the document is in the matrix, and nothing else.
    let doc = http(&d.addr(), "GET", "/v1/openapi.json", None, b"").json();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let cases = cases();
    let covered: BTreeSet<(String, String)> =
        cases.iter().map(|c| (c.method.to_owned(), c.template.to_owned())).collect();
    assert_eq!(documented, covered, "the matrix and the routes differ");

    let mut wrong = Vec::new();
    for case in &cases {
        for (i, &caller) in CALLERS.iter().enumerate() {
            let path = case.path.replace("{u}", caller.user().unwrap_or("nobody"));
            let r = http(
                &d.addr(),
                &case.method.to_uppercase(),
                &path,
                tokens[i].as_deref(),
                case.body.as_bytes(),
            );
            let refused = matches!(r.status, 401 | 403) || (case.hidden && r.status == 404);
            let expected = caller.admitted(case.least);
            if refused == expected || r.status >= 500 || r.status == 0 {
                wrong.push(format!("{} {path} as {caller:?}: {} {}", case.method, r.status, r.body));
            }
            if case.spends_token
                && let Some(user) = caller.user()
            {
                tokens[i] = Some(login(&d, user, &password(caller)));
            }
        }
    }
    assert!(wrong.is_empty(), "{} calls broke the matrix:\n{}", wrong.len(), wrong.join("\n"));
}
