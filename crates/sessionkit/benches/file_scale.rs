//! The file store at scale: fills a store with N sessions (a quarter of them signed in, ten per
//! user), reopens it (the count walk), times random loads and saves at that size and a cleanup
//! that finds nothing to do, then one cleanup that removes all of them once expired, with the
//! process's peak memory around it.
//!
//! `cargo bench -p sessionkit --bench file_scale`; `FILE_SCALE_N` sets N (default 1,000,000),
//! `FILE_SCALE_DIR` the parent folder of the data (default: the system temp folder),
//! `FILE_SCALE_CLEANUP_THREADS` the store's cleanup workers (default: the store's default).
//! The data is deleted at the end. Under `cargo test --all-targets` (no `--bench` argument) it
//! runs with N = 2,000 as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[cfg(unix)]
mod support;

#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the file store is Unix only");
}

#[cfg(unix)]
mod unix {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use sessionkit::clock::{Clock, SystemClock};
    use sessionkit::id::SessionId;
    use sessionkit::store::{
        CreateOutcome, Delta, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey,
        Timestamp, Value,
    };
    use sessionkit::stores::file::{FileOptions, FileStore};

    const HOUR: Duration = Duration::from_secs(3600);
    const MAX_OPS: u64 = 10_000;
    const FILL_TASKS: u64 = 16;

    pub(super) fn main() {
        // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this as a smoke test.
        let benching = std::env::args().any(|a| a == "--bench");
        let n: u64 = std::env::var("FILE_SCALE_N")
            .ok()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or(if benching { 1_000_000 } else { 2_000 });
        let parent = std::env::var_os("FILE_SCALE_DIR").map_or_else(std::env::temp_dir, Into::into);
        let tmp = tempfile::Builder::new()
            .prefix("file-scale-")
            .tempdir_in(parent)
            .unwrap();
        println!("file_scale: N = {n}, data in {}", tmp.path().display());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(n, tmp.path()));
        let t = Instant::now();
        super::support::remove_parallel(tmp.path());
        drop(tmp);
        println!("data removed in {:.1?}", t.elapsed());
    }

    /// Key `i`: a fixed function of `i`, so nothing needs to keep the keys in memory.
    fn key(i: u64) -> StorageKey {
        let mut b = [0x5a; 32];
        b[..8].copy_from_slice(&i.to_le_bytes());
        SessionId::from_bytes(b).storage_key()
    }

    fn record(i: u64, users: u64, at: Timestamp) -> Record {
        let mut r = Record::default();
        if i.is_multiple_of(4) {
            r.meta.user_id = Some(format!("user-{}", (i / 4) % users));
            r.meta.auth_time = Some(at);
        }
        r.meta.created_at = at;
        r.meta.last_seen_at = at;
        r.meta.idle_expires_at = at.add(HOUR);
        r.meta.absolute_expires_at = at.add(24 * HOUR);
        r.meta.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) file_scale/1.0".into());
        r.meta.ip = Some("127.0.0.1".into());
        r.data.insert("counter".into(), Value::to_json(&i).unwrap());
        r.data.insert(
            "csrf".into(),
            Value::to_json(&key(i).as_str()[..32]).unwrap(),
        );
        r
    }

    async fn run(n: u64, dir: &Path) {
        let mut opts = FileOptions::default().with_max_sessions(None);
        if let Some(t) = std::env::var("FILE_SCALE_CLEANUP_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            opts = opts.with_cleanup_threads(t);
        }
        println!(
            "cleanup threads: {}; load average at start: {}",
            opts.cleanup_threads,
            loadavg()
        );
        let store = FileStore::open(dir, opts.clone()).unwrap();
        let t0 = SystemClock.now();
        let users = (n / 40).max(1);
        let disk_before = disk_used(dir);

        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..FILL_TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    let out = store
                        .create(&key(i), &record(i, users, t0), SessionLimit::UNLIMITED, t0)
                        .await
                        .unwrap();
                    assert!(matches!(out, CreateOutcome::Created { .. }));
                    if w == 0 && i.is_multiple_of(100_000) && i > 0 {
                        println!("  filled {i} in {:.1?}", start.elapsed());
                    }
                    i += FILL_TASKS;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let fill = start.elapsed();
        println!(
            "fill: {n} creates in {fill:.1?} ({:.0}/s, {:.1} µs each with {FILL_TASKS} in flight); disk {:.0} MiB",
            n as f64 / fill.as_secs_f64(),
            fill.as_secs_f64() * 1e6 / n as f64,
            (disk_used(dir).saturating_sub(disk_before)) as f64 / (1 << 20) as f64,
        );
        drop(store);

        let t = Instant::now();
        let store = FileStore::open(dir, opts).unwrap();
        let count = store.count().await.unwrap();
        println!(
            "open with {count} sessions (counts them by listing): {:.1?}",
            t.elapsed()
        );
        assert_eq!(count, n);

        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let ops = MAX_OPS.min(n);
        let mut lat = Vec::with_capacity(ops as usize);
        for _ in 0..ops {
            let i = next(&mut rng) % n;
            let t = Instant::now();
            let got = store.load(&key(i), t0).await.unwrap();
            lat.push(t.elapsed());
            assert!(got.is_some());
        }
        report("load", &mut lat);

        lat.clear();
        for j in 0..ops {
            let i = next(&mut rng) % n;
            let delta = Delta {
                changes: vec![("counter".into(), Some(Value::to_json(&j).unwrap()))],
                touch: None,
                // As the session sends it: the default cap, checked by the store.
                max_size: Some(64 * 1024),
            };
            let t = Instant::now();
            let out = store.save_delta(&key(i), &delta, t0).await.unwrap();
            lat.push(t.elapsed());
            assert!(matches!(out, SaveOutcome::Saved { .. }));
        }
        report("save_delta", &mut lat);

        // The routine case: a cleanup that finds nothing expired.
        let t = Instant::now();
        let removed = store.cleanup_expired(t0).await.unwrap();
        assert_eq!(removed, 0);
        println!(
            "cleanup with nothing expired (walks {n} live sessions): {:.1?}",
            t.elapsed()
        );

        // The fill leaves gigabytes of dirty pages: flush them first, so that the cleanup is
        // timed on its own, as when sessions expire over hours.
        let t = Instant::now();
        let synced = std::process::Command::new("sync")
            .status()
            .is_ok_and(|s| s.success());
        println!("sync before cleanup ({synced}): {:.1?}", t.elapsed());
        println!("load average before cleanup: {}", loadavg());
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let (hwm0, rss0) = mem();
        let t = Instant::now();
        let removed = store.cleanup_expired(t0.add(48 * HOUR)).await.unwrap();
        let took = t.elapsed();
        let (hwm1, rss1) = mem();
        println!(
            "cleanup: removed {removed} expired sessions in {took:.1?} ({:.1} µs each)",
            took.as_secs_f64() * 1e6 / removed.max(1) as f64
        );
        println!(
            "memory: VmHWM {hwm0} -> {hwm1} kB, VmRSS {rss0} -> {rss1} kB{}",
            if reset {
                " (peak reset before cleanup)"
            } else {
                " (peak not resettable here)"
            }
        );
        assert_eq!(removed, n);
        assert_eq!(store.count().await.unwrap(), 0);
        assert_eq!(store.scan(None, 10).await.unwrap().records.len(), 0);
    }

    fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn report(what: &str, lat: &mut [Duration]) {
        lat.sort();
        let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!(
            "{what}: {} random ops, mean {mean:.1?}, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
            lat.len(),
            pct(0.50),
            pct(0.99),
            lat[lat.len() - 1]
        );
    }

    fn next(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// (VmHWM, VmRSS) in kB.
    fn mem() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// Bytes in use on the file system holding `dir`.
    fn disk_used(dir: &Path) -> u64 {
        rustix::fs::statvfs(dir).map_or(0, |s| (s.f_blocks - s.f_bfree).saturating_mul(s.f_frsize))
    }
}
