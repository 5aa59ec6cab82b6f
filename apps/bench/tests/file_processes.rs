//! The file store across processes: two bench app instances on one `SESSION_FILE_DIR`, and a
//! restart, driven over HTTP against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use support::{BenchApp, User};

#[test]
fn two_instances_share_one_folder_and_lose_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let a = BenchApp::spawn(&[("SESSION_TYPE", "filesystem"), ("SESSION_FILE_DIR", d)]);
    let b = BenchApp::spawn(&[("SESSION_TYPE", "filesystem"), ("SESSION_FILE_DIR", d)]);
    let mut u = User::default();
    assert_eq!(u.call("POST", &a.url("/login"), None).status, 200);
    // signed in through A, seen through B
    assert_eq!(u.call("GET", &b.url("/read"), None).body, "42");
    assert_eq!(u.call("GET", &b.url("/counter"), None).body, "1");
    assert_eq!(u.call("GET", &a.url("/counter"), None).body, "2");

    // concurrent writes of different keys through both processes are all kept
    let mut threads = Vec::new();
    for (name, url) in [("a", a.url("/kv/")), ("b", b.url("/kv/"))] {
        for t in 0..3 {
            let mut u = u.clone();
            let url = url.clone();
            threads.push(std::thread::spawn(move || {
                for i in 0..15 {
                    let r = u.call("PUT", &format!("{url}{name}{t}_{i}"), Some(&i.to_string()));
                    assert_eq!(r.status, 200);
                }
            }));
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    let all = u.call("GET", &a.url("/kv"), None).body;
    for name in ["a", "b"] {
        for t in 0..3 {
            for i in 0..15 {
                assert!(
                    all.contains(&format!("\"{name}{t}_{i}\":{i}")),
                    "{name}{t}_{i} lost: {all}"
                );
            }
        }
    }
    assert!(all.contains("\"counter\":2"), "{all}");
    // logout through B is final for A too
    let mut replay = u.clone();
    assert_eq!(u.call("POST", &b.url("/logout"), None).status, 200);
    assert!(replay.cookie.is_some());
    assert_eq!(replay.call("GET", &a.url("/read"), None).status, 401);
}

#[test]
fn sessions_survive_a_restart_even_with_the_development_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // no SECRET_KEY: the development key is generated and kept beside the data
    let env = [("SESSION_FILE_DIR", d), ("SECRET_KEY", "")];
    let app = BenchApp::spawn(&env);
    let mut u = User::default();
    assert_eq!(u.call("POST", &app.url("/login"), None).status, 200);
    assert_eq!(u.call("GET", &app.url("/counter"), None).body, "1");
    app.stop();
    let app = BenchApp::spawn(&env);
    assert_eq!(
        u.call("GET", &app.url("/read"), None).body,
        "42",
        "still signed in"
    );
    assert_eq!(u.call("GET", &app.url("/counter"), None).body, "2");
}
