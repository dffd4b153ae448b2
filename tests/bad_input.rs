//! Wrong input gets a clear 4xx JSON error or CLI message, and the daemon keeps serving.

use atoll_e2e::*;

#[test]
fn wrong_input_is_refused_clearly() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "edge-1");
    d.login_admin();
    let token = saved_token(&d);
    let addr = d.addr();
    let tag = d.tag();
    let error_of = |r: &HttpReply| r.json()["error"]["code"].as_str().unwrap_or("").to_owned();

    // Unknown image.
    let err = d.cli().fails(&["instance", "create", "x", "--image", "nope"]);
    assert!(err.contains("no image default/nope"), "{err}");

    // Malformed JSON and wrong shapes.
    let r = http(&addr, "POST", "/v1/instances", Some(&token), b"{not json");
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid"));
    let r = http(&addr, "POST", "/v1/users", Some(&token), br#"{"name": 5}"#);
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid"));

    // A `?wait=` above its documented maximum, even where no site is named
    // and nothing would wait (schemathesis found an image copy accepted).
    let r = http(&addr, "POST", "/v1/images/default/any/copy?wait=6807", Some(&token), b"");
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid"), "{}", r.body);
    assert!(r.body.contains("wait at most 300 s"), "{}", r.body);

    // Bad or missing token.
    let r = http(&addr, "GET", "/v1/instances", Some("forged.token"), b"");
    assert_eq!((r.status, error_of(&r).as_str()), (401, "unauthenticated"));
    let r = http(&addr, "GET", "/v1/instances", None, b"");
    assert_eq!(r.status, 401);
    // A stranger's body is not even read: 401, not a verdict on its shape.
    for (method, path) in [("POST", "/v1/instances"), ("POST", "/v1/users"), ("PUT", "/v1/quotas/default")] {
        let r = http(&addr, method, path, None, b"{not json");
        assert_eq!((r.status, error_of(&r).as_str()), (401, "unauthenticated"), "{method} {path}");
    }
    let err = d.cli().env("ATOLL_TOKEN", "garbage").fails(&["instance", "list"]);
    assert!(err.contains("invalid token"), "{err}");
    let err = d.cli().env("ATOLL_PASSWORD", "wrong-password").fails(&["login"]);
    assert!(err.contains("wrong user name or password"), "{err}");

    // Oversized body.
    let big = vec![b' '; 200 << 10];
    let r = http(&addr, "POST", "/v1/projects", Some(&token), &big);
    assert_eq!((r.status, error_of(&r).as_str()), (413, "too_large"));

    // An image whose bytes do not match the announced digest.
    let zero = format!("sha256:{}", "0".repeat(64));
    let r = http(
        &addr,
        "POST",
        &format!("/v1/images?name=bad&format=process&digest={zero}"),
        Some(&token),
        b"some bytes",
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("digest mismatch"), "{}", r.body);
    assert!(d.cli().json(&["image", "list"]).as_array().unwrap().is_empty());
    let r = http(&addr, "POST", "/v1/images?name=bad&format=nonsense", Some(&token), b"x");
    assert_eq!(r.status, 400);

    // Quota exceeded.
    let image = process_image(root.path(), "s", "sleep 600\n");
    d.cli().ok(&["image", "add", image.to_str().unwrap(), "--name", "s"]);
    d.cli().ok(&["quota", "set", "default", "--instances", "1"]);
    d.cli().ok(&["instance", "create", "a", "--image", "s", "--", &tag]);
    let err = d.cli().fails(&["instance", "create", "b", "--image", "s", "--", &tag]);
    assert!(err.contains("local quota share exhausted") && err.contains("HTTP 403"), "{err}");
    let q = d.cli().json(&["quota", "show", "default"]);
    assert_eq!(q["total"]["instances"], 1);
    assert_eq!(q["available_here"]["instances"], 0);

    // A process image without a manifest fails to start, with the reason.
    let bare = root.path().join("bare.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&bare).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "x.txt", &b"hi"[..]).unwrap();
    b.finish().unwrap();
    drop(b);
    d.cli().ok(&["quota", "set", "default", "--instances", "5"]);
    d.cli().ok(&["image", "add", bare.to_str().unwrap(), "--name", "bare"]);
    let err = d.cli().fails(&["instance", "create", "c", "--image", "bare"]);
    assert!(err.contains("no manifest.json"), "{err}");

    // A project's images fit its storage quota, realm-wide: 1 MiB here.
    d.cli().ok(&["project", "create", "small", "--storage", "1"]);
    let big = padded_process_image(root.path(), "big", "sleep 1\n", 1 << 20);
    let err = d.cli().fails(&["image", "add", big.to_str().unwrap(), "--name", "big", "--project", "small"]);
    assert!(err.contains("storage quota") && err.contains("HTTP 403"), "{err}");
    d.cli().ok(&["image", "add", image.to_str().unwrap(), "--name", "s", "--project", "small"]);
    d.cli().ok(&["project", "storage", "small", "4"]);
    d.cli().ok(&["image", "add", big.to_str().unwrap(), "--name", "big", "--project", "small"]);
    assert_eq!(
        d.cli()
            .json(&["project", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["storage_mib"] == 4)
            .count(),
        1
    );

    // Unknown routes and names.
    let r = http(&addr, "GET", "/v1/nowhere", Some(&token), b"");
    assert_eq!((r.status, error_of(&r).as_str()), (404, "not_found"));
    let err = d.cli().fails(&["project", "create", "Bad Name"]);
    assert!(err.contains("invalid project name"), "{err}");

    // Still serving.
    assert_eq!(http(&addr, "GET", "/v1/health", None, b"").status, 200);
    assert_eq!(d.cli().json(&["instance", "show", "a"])["observed"], "running");
}

/// Password guessing: after five failures in a minute a user name and the
/// guessing address are refused with 429 and a JSON body, even with the
/// right password.
#[test]
fn failed_logins_are_limited() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "guessed");
    let addr = d.addr();
    let login = |user: &str, password: &str| {
        let body = serde_json::json!({"user": user, "password": password}).to_string();
        http(&addr, "POST", "/v1/login", None, body.as_bytes())
    };
    for _ in 0..5 {
        let r = login("admin", "wrong-guess");
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = login("admin", &d.password);
    assert_eq!(r.status, 429, "{}", r.body);
    let err: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(err["error"]["code"], "too_many", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("too many failed logins"), "{err}");
    // Unknown users cost a hash too, and count the same way.
    let r = login("nobody", "x");
    assert_eq!(r.status, 429, "the address used up its failures: {}", r.body);
}
