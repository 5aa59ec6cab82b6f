//! Bytes at rest and time per save of 1, 8 and 60 KiB sessions with compression and encryption
//! off and on (issue 16 item 5), on the file store (the default store), printed as a markdown
//! table for docs/PERFORMANCE.md.
//!
//! `cargo bench -p sessionkit --bench at_rest`; `AT_REST_SAVES` sets the saves timed per row
//! (default 300). Each save rewrites every key of the session in one delta (the worst case for
//! sealing: every value is sealed again); bytes at rest are the record as the file store encodes
//! it (MessagePack of the stored fields). The data is JSON as a shop keeps it: a profile, a cart
//! of items with names, SKUs and prices, recently viewed URLs and a random CSRF token. Under
//! `cargo test --all-targets` (no `--bench`) it runs 5 saves per row as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkit::config::{Compression, Secret};
use sessionkit::id::SessionId;
use sessionkit::store::{Delta, Record, SessionLimit, SessionStore, Timestamp, Value};
use sessionkit::stores::file::{FileOptions, FileStore};
use sessionkit::stores::sealed::SealedStore;

const NOW: Timestamp = Timestamp(1_000_000);

/// A deterministic generator, so every run measures the same data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.next() as usize % from.len()]
    }
}

/// Session data of about `target` bytes in clear, as `Record::data_size` counts it.
fn session(target: usize, rng: &mut Lcg) -> Vec<(String, Value)> {
    let words = [
        "organic", "cotton", "shirt", "blue", "linen", "trousers", "wool", "socks", "leather",
        "boots", "canvas", "bag", "silver", "ring", "cedar", "candle", "green", "tea", "ceramic",
        "mug", "large", "small", "classic", "slim", "fit", "pack", "of", "two",
    ];
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rng.next() as u8))
        .collect();
    let mut data = vec![
        (
            "user".to_owned(),
            Value::from_json_text(&format!(
                r#"{{"id":{},"name":"Alex Morgan","email":"alex.morgan{}@example.com","locale":"en-GB","roles":["customer"]}}"#,
                rng.next() % 100_000,
                rng.next() % 1000
            ))
            .unwrap(),
        ),
        ("csrf".to_owned(), Value::to_json(&token).unwrap()),
    ];
    let mut cart = Vec::new();
    let mut recent = Vec::new();
    let size = |data: &[(String, Value)], cart: &[String], recent: &[String]| {
        data.iter()
            .map(|(k, v)| k.len() + v.as_json().len() + 4)
            .sum::<usize>()
            + cart.iter().map(|s| s.len() + 1).sum::<usize>()
            + recent.iter().map(|s| s.len() + 1).sum::<usize>()
            + 2 * (4 + 6 + 2)
    };
    while size(&data, &cart, &recent) < target {
        if rng.next().is_multiple_of(3) {
            recent.push(format!(
                "\"/p/{}-{}-{}\"",
                rng.pick(&words),
                rng.pick(&words),
                rng.next() % 100_000
            ));
        } else {
            cart.push(format!(
                r#"{{"sku":"SKU-{:06}","name":"{} {} {}","qty":{},"price":"{}.{:02}","added":{}}}"#,
                rng.next() % 1_000_000,
                rng.pick(&words),
                rng.pick(&words),
                rng.pick(&words),
                1 + rng.next() % 4,
                rng.next() % 300,
                rng.next() % 100,
                1_733_000_000 + rng.next() % 1_000_000
            ));
        }
    }
    data.push((
        "cart".to_owned(),
        Value::from_json_text(&format!("[{}]", cart.join(","))).unwrap(),
    ));
    data.push((
        "recent".to_owned(),
        Value::from_json_text(&format!("[{}]", recent.join(","))).unwrap(),
    ));
    data
}

struct Row {
    clear: usize,
    at_rest: usize,
    median: Duration,
    p90: Duration,
}

async fn measure(
    data: &[(String, Value)],
    compression: Compression,
    seal: bool,
    saves: usize,
) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let raw: Arc<dyn SessionStore> =
        Arc::new(FileStore::open(dir.path().join("s"), FileOptions::default()).unwrap());
    let wrapped = compression != Compression::Off || seal;
    let store: Arc<dyn SessionStore> = if wrapped {
        let keys = [Secret::new("at-rest-bench-secret-0123456789abcdefghijkl")];
        Arc::new(SealedStore::new(raw.clone(), &keys, seal, compression))
    } else {
        raw.clone()
    };
    let key = SessionId::generate().unwrap().storage_key();
    let mut record = Record::default();
    record.meta.idle_expires_at = Timestamp(u64::MAX / 4);
    record.meta.absolute_expires_at = Timestamp(u64::MAX / 4);
    let _ = store
        .create(&key, &record, SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    let delta = Delta {
        changes: data
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
        touch: None,
        max_size: Some(4 * 1024 * 1024),
    };
    let mut times = Vec::with_capacity(saves);
    for _ in 0..saves {
        let start = Instant::now();
        let out = store.save_delta(&key, &delta, NOW).await.unwrap();
        times.push(start.elapsed());
        assert!(matches!(out, sessionkit::store::SaveOutcome::Saved { .. }));
    }
    times.sort();
    let stored = raw.load(&key, NOW).await.unwrap().unwrap();
    let opened = store.load(&key, NOW).await.unwrap().unwrap();
    assert_eq!(opened.data.len(), data.len(), "the session round-trips");
    Row {
        clear: opened.data_size(),
        at_rest: stored.encode().len(),
        median: times[times.len() / 2],
        p90: times[times.len() * 9 / 10],
    }
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let saves = if benching {
        std::env::var("AT_REST_SAVES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300)
    } else {
        5
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| session | compression | encryption | data in clear | bytes at rest | at rest / clear | save p50 | save p90 |");
    println!("|---|---|---|---|---|---|---|---|");
    for kib in [1usize, 8, 60] {
        let data = session(kib * 1024, &mut Lcg(kib as u64));
        for (compression, seal) in [
            (Compression::Off, false),
            (Compression::Zstd, false),
            (Compression::Off, true),
            (Compression::Zstd, true),
        ] {
            let row = rt.block_on(measure(&data, compression, seal, saves));
            println!(
                "| {kib} KiB | {} | {} | {} | {} | {:.2} | {:.0} µs | {:.0} µs |",
                if compression == Compression::Zstd {
                    "zstd"
                } else {
                    "off"
                },
                if seal { "on" } else { "off" },
                row.clear,
                row.at_rest,
                row.at_rest as f64 / row.clear as f64,
                row.median.as_secs_f64() * 1e6,
                row.p90.as_secs_f64() * 1e6,
            );
        }
    }
}
