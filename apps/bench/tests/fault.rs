//! Fault test (issue 6): the bench app on Redis with a SQLite fallback, signed-in users under a
//! bounded load, `redis-server` killed and restarted (empty) twice: no non-2xx response, every
//! user still signed in at the end with all their writes present.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessionkit_testkit::redis::RedisServer;
use support::{BenchApp, User};

const USERS: usize = 24;

#[test]
fn redis_killed_twice_under_load_keeps_everyone_signed_in() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let fallback = format!("sqlite://{}", dir.path().join("fallback.db").display());
    let app = Arc::new(BenchApp::spawn(&[
        ("SESSION_TYPE", "redis"),
        ("REDIS_URL", &redis.url()),
        ("SESSION_FALLBACK", &fallback),
    ]));

    let mut users = Vec::new();
    for _ in 0..USERS {
        let mut u = User::default();
        assert_eq!(u.call("POST", &app.url("/login"), None).status, 200);
        users.push(u);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let latencies = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
    let mut workers = Vec::new();
    for (n, mut u) in users.into_iter().enumerate() {
        let (app, stop, failures, latencies) = (
            app.clone(),
            stop.clone(),
            failures.clone(),
            latencies.clone(),
        );
        workers.push(std::thread::spawn(move || {
            let mut count = 0u64;
            let mut last_kv = [None::<u64>; 4];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                i += 1;
                let t = Instant::now();
                let r = u.call("GET", &app.url("/counter"), None);
                latencies.lock().unwrap().push((t, t.elapsed()));
                if r.status != 200 {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("user {n}: /counter {} {}", r.status, r.body));
                    continue;
                }
                count += 1;
                if r.body != count.to_string() {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("user {n}: counter {} expected {count}", r.body));
                    count = r.body.parse().unwrap_or(count);
                }
                let slot = (i % 4) as usize;
                let t = Instant::now();
                let r = u.call(
                    "PUT",
                    &app.url(&format!("/kv/k{slot}")),
                    Some(&i.to_string()),
                );
                latencies.lock().unwrap().push((t, t.elapsed()));
                if r.status != 200 {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("user {n}: PUT {} {}", r.status, r.body));
                } else {
                    last_kv[slot] = Some(i);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (u, count, last_kv)
        }));
    }

    let mut outages = Vec::new();
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..2 {
        let down = Instant::now();
        redis.kill();
        std::thread::sleep(Duration::from_millis(1500));
        redis.restart();
        outages.push((down, Instant::now()));
        std::thread::sleep(Duration::from_millis(2500));
    }
    stop.store(true, Ordering::Relaxed);

    let mut finals = Vec::new();
    for w in workers {
        finals.push(w.join().unwrap());
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );

    for (n, (mut u, count, last_kv)) in finals.into_iter().enumerate() {
        let r = u.call("GET", &app.url("/read"), None);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "42"),
            "user {n} signed out"
        );
        let all = u.call("GET", &app.url("/kv"), None).body;
        assert!(
            all.contains(&format!("\"counter\":{count}")),
            "user {n}: {all}, expected counter {count}"
        );
        for (slot, v) in last_kv.iter().enumerate() {
            if let Some(v) = v {
                assert!(
                    all.contains(&format!("\"k{slot}\":{v}")),
                    "user {n}: k{slot} should be {v}: {all}"
                );
            }
        }
    }

    let lat = latencies.lock().unwrap().clone();
    let during: Vec<Duration> = lat
        .iter()
        .filter(|(t, _)| outages.iter().any(|(a, b)| t >= a && t <= b))
        .map(|(_, d)| *d)
        .collect();
    let report = |name: &str, mut v: Vec<Duration>| {
        v.sort();
        if v.is_empty() {
            return;
        }
        let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
        println!(
            "FAULT {name}: {} requests, p50 {:?}, p99 {:?}, max {:?}",
            v.len(),
            p(0.5),
            p(0.99),
            v[v.len() - 1]
        );
    };
    report("all", lat.iter().map(|(_, d)| *d).collect());
    report("during outages", during);
}
