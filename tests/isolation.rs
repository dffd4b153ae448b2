//! Workloads and members that try to reach what is not theirs (docs/drivers.md).

use std::time::Duration;

use atoll_e2e::*;

/// `a/b__c` and `a__b/c` were one directory (`a__b__c`) before instance names
/// became injective: a member of `a` could read, wipe or delete `a__b`'s
/// instance through its own. Now each keeps its own files, logs and life.
#[test]
fn instances_whose_names_once_collided_stay_apart() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "iso-names");
    d.login_admin();
    for p in ["a", "a__b"] {
        d.cli().ok(&["project", "create", p]);
    }
    let speaker = |who: &str| format!("echo I am {who}; exec sleep 600\n");
    let img_a = process_image(root.path(), "talk-a", &speaker("a-of-a"));
    let img_ab = process_image(root.path(), "talk-ab", &speaker("c-of-a__b"));
    d.cli().ok(&["image", "add", img_a.to_str().unwrap(), "--name", "talk", "-p", "a"]);
    d.cli().ok(&["image", "add", img_ab.to_str().unwrap(), "--name", "talk", "-p", "a__b"]);
    let out = d.cli().ok(&["instance", "create", "b__c", "--image", "talk", "-p", "a"]);
    assert!(out.contains("running"), "{out}");
    let out = d.cli().ok(&["instance", "create", "c", "--image", "talk", "-p", "a__b"]);
    assert!(out.contains("running"), "{out}");

    let logs = |p: &str, n: &str| d.cli().ok(&["instance", "logs", n, "-p", p]);
    assert!(eventually(Duration::from_secs(10), || logs("a", "b__c").contains("I am a-of-a")));
    assert!(eventually(Duration::from_secs(10), || logs("a__b", "c").contains("I am c-of-a__b")));
    assert!(!logs("a", "b__c").contains("c-of-a__b"), "a's instance reads a__b's log");

    // Deleting a's instance leaves a__b's running, with its files.
    d.cli().ok(&["instance", "delete", "b__c", "-p", "a"]);
    let shown = d.cli().json(&["instance", "show", "c", "-p", "a__b"]);
    assert_eq!(shown["observed"], "running", "{shown}");
    assert!(logs("a__b", "c").contains("I am c-of-a__b"));
}
