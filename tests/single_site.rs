//! A new user's walk through one site, with the real daemon and the real CLI.

use atoll_e2e::*;

const HELLO: &str = "echo \"hello from $ATOLL_INSTANCE: $1\"\nwhile true; do echo tick; sleep 1; done\n";

#[test]
fn admin_runs_a_workload_and_other_projects_cannot_touch_it() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "edge-1");
    d.login_admin();
    let tag = d.tag();

    let image = process_image(root.path(), "hello", HELLO);
    let out = d.cli().ok(&["image", "add", image.to_str().unwrap(), "--name", "hello"]);
    assert!(out.contains("Added image default/hello"), "{out}");
    let images = d.cli().json(&["image", "list"]);
    assert_eq!(images[0]["name"], "hello");
    assert_eq!(images[0]["format"], "process");

    let out = d.cli().ok(&["instance", "create", "web", "--image", "hello", "--memory", "64", "--", &tag]);
    assert!(out.contains("running"), "{out}");
    assert!(
        eventually(std::time::Duration::from_secs(10), || d
            .cli()
            .ok(&["instance", "logs", "web"])
            .contains("tick")),
        "the workload's output never showed up"
    );
    let logs = d.cli().ok(&["instance", "logs", "web"]);
    assert!(logs.contains("hello from default/web"), "{logs}");

    // The site tells its own memory: the process, and what its core holds.
    let site = d.cli().json(&["site", "show"]);
    let rss = site["memory"]["process"]["rss_kib"].as_u64().unwrap();
    assert!(rss > 1024 && rss < 4 << 20, "{site}");
    let held = site["memory"]["held"].as_array().unwrap();
    assert!(held.iter().any(|h| h["what"].as_str().unwrap().starts_with("this site's document")), "{site}");
    let table = d.cli().ok(&["site", "show"]);
    assert!(table.contains("resident") && table.contains("change signatures"), "{table}");

    let out = d.cli().ok(&["instance", "stop", "web"]);
    assert!(out.contains("stopped"), "{out}");
    let listed = d.cli().json(&["instance", "list"]);
    assert_eq!(listed["instances"][0]["observed"], "stopped");
    assert_eq!(listed["instances"][0]["site"], listed["sites"][0]["site"]);
    assert!(d.cli().ok(&["instance", "start", "web"]).contains("running"));

    // A member of another project sees nothing and can touch nothing.
    d.cli().ok(&["project", "create", "other", "--instances", "2"]);
    d.cli().env("ATOLL_NEW_PASSWORD", "bob-password").ok(&["user", "create", "bob"]);
    d.cli().ok(&["role", "grant", "bob", "other", "member"]);
    let bob_home = tempfile::tempdir().unwrap();
    let bob = || d.cli().home(bob_home.path());
    bob().env("ATOLL_PASSWORD", "bob-password").ok(&["login", "--user", "bob"]);
    assert_eq!(bob().json(&["instance", "list"])["instances"].as_array().unwrap().len(), 0);
    assert_eq!(bob().json(&["image", "list"]).as_array().unwrap().len(), 0);
    for verb in ["show", "stop", "delete", "logs"] {
        let err = bob().fails(&["instance", verb, "default/web"]);
        assert!(err.contains("no role in project default"), "{verb}: {err}");
    }
    let err = bob().fails(&["instance", "create", "x", "--image", "default/hello", "--project", "other"]);
    assert!(err.contains("no image default/hello usable by project other"), "{err}");
    // The instance still runs, untouched.
    assert_eq!(d.cli().json(&["instance", "show", "web"])["observed"], "running");

    let out = d.cli().ok(&["instance", "delete", "web"]);
    assert!(out.contains("Deleted web"), "{out}");
    assert!(d.cli().json(&["instance", "list"])["instances"].as_array().unwrap().is_empty());
    d.cli().ok(&["image", "rm", "hello"]);
    assert!(d.cli().json(&["image", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn openapi_document_is_served_and_lists_the_routes() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "edge-1");
    let r = http(&d.addr(), "GET", "/v1/openapi.json", None, b"");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in ["/v1/login", "/v1/images", "/v1/instances/{project}/{name}/logs", "/v1/quotas/{project}"] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
}

#[test]
fn users_passwords_roles_projects_and_tokens_are_administered_and_taken_back() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "edge-1");
    d.login_admin();
    d.cli().ok(&["project", "create", "lab", "--instances", "2"]);
    d.cli().env("ATOLL_NEW_PASSWORD", "bob-password").ok(&["user", "create", "bob"]);
    d.cli().ok(&["role", "grant", "bob", "lab", "member"]);
    let bob_home = tempfile::tempdir().unwrap();
    let bob = || d.cli().home(bob_home.path());
    bob().env("ATOLL_PASSWORD", "bob-password").ok(&["login", "--user", "bob"]);
    let old = saved_token_at(bob_home.path(), &d.endpoint);

    // Bob changes his password: the current one is checked, his old token dies,
    // and the CLI logs him in again.
    let err = bob()
        .env("ATOLL_PASSWORD", "not-it")
        .env("ATOLL_NEW_PASSWORD", "bob-new-pass")
        .fails(&["user", "passwd"]);
    assert!(err.contains("wrong user name or password"), "{err}");
    let err = bob()
        .env("ATOLL_PASSWORD", "bob-password")
        .env("ATOLL_NEW_PASSWORD", "long-enough-1")
        .fails(&["user", "passwd", "admin"]);
    assert!(err.contains("only realm admins"), "{err}");
    bob()
        .env("ATOLL_PASSWORD", "bob-password")
        .env("ATOLL_NEW_PASSWORD", "bob-new-pass")
        .ok(&["user", "passwd"]);
    assert_eq!(http(&d.addr(), "GET", "/v1/whoami", Some(&old), b"").status, 401);
    assert_eq!(bob().json(&["whoami"])["user"], "bob");
    // Another user's password: refused before it is checked, so a right and
    // a wrong guess get the same answer.
    let mine = saved_token_at(bob_home.path(), &d.endpoint);
    for guess in [d.password.as_str(), "wrong-guess"] {
        let body = serde_json::json!({"password": "taken-over-1", "current": guess}).to_string();
        let r = http(&d.addr(), "PUT", "/v1/users/admin/password", Some(&mine), body.as_bytes());
        assert_eq!(r.status, 403, "{}", r.body);
    }

    // Logout revokes the token itself, not only the saved copy.
    let current = saved_token_at(bob_home.path(), &d.endpoint);
    bob().ok(&["logout"]);
    let r = http(&d.addr(), "GET", "/v1/whoami", Some(&current), b"");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("revoked"), "{:?}", r.json());
    bob().env("ATOLL_PASSWORD", "bob-new-pass").ok(&["login", "--user", "bob"]);

    // The admin takes bob's role, then bob, away.
    d.cli().ok(&["role", "revoke", "bob", "lab"]);
    assert!(bob().json(&["whoami"])["roles"].as_array().unwrap().is_empty());
    d.cli().ok(&["token", "revoke", "bob"]);
    assert!(bob().fails(&["whoami"]).contains("revoked"));
    bob().env("ATOLL_PASSWORD", "bob-new-pass").ok(&["login", "--user", "bob"]);
    d.cli().ok(&["user", "delete", "bob"]);
    assert!(bob().fails(&["whoami"]).contains("user no longer exists"));
    assert!(d.cli().fails(&["user", "delete", "admin"]).contains("cannot delete yourself"));

    // A project with an instance stays; empty, it goes.
    let image = process_image(root.path(), "idle", "sleep 600\n");
    d.cli().ok(&["image", "add", image.to_str().unwrap(), "--name", "idle", "--project", "lab"]);
    d.cli().ok(&[
        "instance",
        "create",
        "w",
        "--image",
        "idle",
        "--project",
        "lab",
        "--memory",
        "32",
        "--",
        &d.tag(),
    ]);
    assert!(d.cli().fails(&["project", "delete", "lab"]).contains("still has images: idle"));
    assert!(d.cli().fails(&["image", "rm", "lab/idle"]).contains("used by instances lab/w on edge-1"));
    d.cli().ok(&["instance", "delete", "lab/w"]);
    d.cli().ok(&["image", "rm", "lab/idle"]);
    d.cli().ok(&["project", "delete", "lab"]);
    assert!(d.cli().fails(&["quota", "show", "lab"]).contains("no project lab"));

    // The genesis password changed, the daemon forgets the file that held it.
    d.cli()
        .env("ATOLL_PASSWORD", &d.password)
        .env("ATOLL_NEW_PASSWORD", "admin-new-pass")
        .ok(&["user", "passwd"]);
    let mut d = d;
    d.terminate();
    d.boot();
    assert!(!d.data.join("admin-password").exists(), "a stale admin-password stayed");
    d.cli().env("ATOLL_PASSWORD", "admin-new-pass").ok(&["login"]);
}

/// A daemon on 0.0.0.0 speaks only HTTPS; the CLI pins its certificate on
/// first use, refuses a changed one, and trusts the certificates that the
/// realm lists for its other members.
#[test]
fn a_public_daemon_serves_https_and_the_cli_pins_its_certificate() {
    let root = tempfile::tempdir().unwrap();
    let mut d = Daemon::public(root.path(), "edge-1", None);
    assert!(d.endpoint.starts_with("https://127.0.0.1:"), "{}", d.endpoint);
    let first = d.certificate.clone().expect("the daemon printed its certificate");
    let plain = format!("http://{}", d.addr());
    let err = d.cli().env("ATOLL_ENDPOINT", &plain).fails(&["site", "show"]);
    assert!(err.contains("cannot reach"), "plain HTTP must not be served: {err}");

    let out = d.cli().env("ATOLL_PASSWORD", &d.password.clone()).run(&["login"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("first connection") && stderr.contains(&first), "{stderr}");
    let out = d.cli().run(&["site", "show"]);
    assert!(out.status.success() && out.stderr.is_empty(), "pinned once: {out:?}");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = d.cli().fails(&["--fingerprint", &wrong, "site", "show"]);
    assert!(err.contains("given with --fingerprint"), "{err}");

    // A new certificate (the files deleted, as a thief with another box would
    // present) is refused until the user pins it explicitly.
    d.kill9();
    std::fs::remove_file(d.data.join("api.crt")).unwrap();
    std::fs::remove_file(d.data.join("api.key")).unwrap();
    d.boot();
    let second = d.certificate.clone().unwrap();
    assert_ne!(first, second);
    let err = d.cli().fails(&["site", "show"]);
    assert!(err.contains("changed") && err.contains(&second), "{err}");
    d.cli().ok(&["--fingerprint", &second, "site", "show"]);
    d.cli().ok(&["site", "show"]);

    // A second public site: the realm publishes its certificate, so the
    // CLI logged in at the first trusts it without a first-use guess.
    let inv = d.cli().ok(&["site", "invite", "--name", "edge-2"]).trim().to_owned();
    let e2 = Daemon::public(root.path(), "edge-2", Some((&inv, &d.password)));
    let published = || {
        let sites = d.cli().json(&["site", "list"]);
        sites
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["member"]["api_cert"] == e2.certificate.as_deref().unwrap())
    };
    assert!(
        eventually(std::time::Duration::from_secs(30), published),
        "edge-2's certificate never reached edge-1"
    );
    d.cli().env("ATOLL_PASSWORD", &d.password.clone()).ok(&["login"]);
    let out = d.cli().env("ATOLL_ENDPOINT", &e2.endpoint).run(&["whoami"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("listed by its realm"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("admin"), "the realm's token was used: {out:?}");
}
