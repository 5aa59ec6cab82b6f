#![allow(clippy::unwrap_used)]

use super::*;
use crate::record::{Touch, Value};
use crate::stores::memory::MemoryStore;

const KEY: &str = "first-secret-key-0123456789abcdefghijkl";
const OLD: &str = "older-secret-key-0123456789abcdefghijkl";
const MARKER: &str = "MARKER-7f3a9c";
const NOW: Timestamp = Timestamp(1_000);

fn sk(n: u8) -> StorageKey {
    StorageKey::parse(&format!("{n:02x}").repeat(32)).unwrap()
}

fn record(entries: &[(&str, &str)]) -> Record {
    let mut r = Record::default();
    r.meta.user_id = Some("u1".into());
    r.meta.user_agent = Some(format!("agent {MARKER}"));
    r.meta.ip = Some("203.0.113.9".into());
    r.meta.idle_expires_at = Timestamp(1_000_000);
    r.meta.absolute_expires_at = Timestamp(2_000_000);
    r.meta.version = 1;
    for (k, v) in entries {
        r.data.insert((*k).into(), Value::to_json(v).unwrap());
    }
    r
}

fn sealed(inner: &Arc<MemoryStore>, keys: &[&str], seal: bool, c: Compression) -> SealedStore {
    let keys: Vec<Secret> = keys.iter().map(|k| Secret::new(*k)).collect();
    SealedStore::new(inner.clone(), &keys, seal, c)
}

/// The raw record the inner store holds, as text that a dump would show.
async fn raw(inner: &MemoryStore, key: &StorageKey) -> (Record, String) {
    let r = inner.load(key, NOW).await.unwrap().unwrap();
    let text = format!(
        "{:?} {:?} {:?}",
        r.data
            .iter()
            .map(|(k, v)| (k, v.as_json()))
            .collect::<Vec<_>>(),
        r.meta.user_agent,
        r.meta.ip
    );
    (r, text)
}

fn set(k: &str, v: &str) -> Delta {
    Delta {
        changes: vec![(k.into(), Some(Value::to_json(v).unwrap()))],
        touch: None,
        max_size: Some(64 * 1024),
    }
}

#[tokio::test]
async fn sealed_records_hold_nothing_in_clear_and_round_trip() {
    let inner = Arc::new(MemoryStore::new());
    let store = sealed(&inner, &[KEY], true, Compression::Zstd);
    let r = record(&[("secret", MARKER), ("big", &MARKER.repeat(300))]);
    let _ = store
        .create(&sk(1), &r, SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    let (stored, text) = raw(&inner, &sk(1)).await;
    assert!(!text.contains(MARKER), "{text}");
    assert!(
        !text.contains("secret") && !text.contains("203.0.113"),
        "{text}"
    );
    assert_eq!(
        stored.meta.user_id.as_deref(),
        Some("u1"),
        "the index stays"
    );
    assert_eq!(store.load(&sk(1), NOW).await.unwrap(), Some(r.clone()));
    // A delta is applied per key by the store, still sealed.
    assert!(matches!(
        store
            .save_delta(&sk(1), &set("secret", "other"), NOW)
            .await
            .unwrap(),
        SaveOutcome::Saved { .. }
    ));
    let (stored, text) = raw(&inner, &sk(1)).await;
    assert_eq!(stored.data.len(), 2, "one field per key: {text}");
    assert!(!text.contains("other"));
    let loaded = store.load(&sk(1), NOW).await.unwrap().unwrap();
    assert_eq!(loaded.data["secret"].as_json(), "\"other\"");
    assert_eq!(loaded.data["big"], r.data["big"]);
    // Listing and scanning open the metadata and the data.
    let listed = store.list_user("u1", NOW).await.unwrap();
    assert_eq!(listed[0].1.user_agent, r.meta.user_agent);
    let page = store.scan(None, 10).await.unwrap();
    assert_eq!(page.records[0].1.data, loaded.data);
}

#[tokio::test]
async fn a_record_copied_under_another_key_does_not_open() {
    let inner = Arc::new(MemoryStore::new());
    let store = sealed(&inner, &[KEY], true, Compression::Zstd);
    let _ = store
        .create(
            &sk(1),
            &record(&[("secret", MARKER)]),
            SessionLimit::UNLIMITED,
            NOW,
        )
        .await
        .unwrap();
    let _ = store
        .create(
            &sk(2),
            &record(&[("secret", "mine")]),
            SessionLimit::UNLIMITED,
            NOW,
        )
        .await
        .unwrap();
    // Copy 1 over 2 with the raw store, as someone with write access to the store could.
    let (stolen, _) = raw(&inner, &sk(1)).await;
    assert!(inner.destroy(&sk(2)).await.unwrap());
    let _ = inner
        .create(&sk(2), &stolen, SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    assert!(matches!(
        store.load(&sk(2), NOW).await,
        Err(StoreError::Corrupt(DecodeError::Unopenable))
    ));
    assert!(store.scan(None, 10).await.unwrap().records.len() == 1);
    // Swapping two fields of one record does not open either.
    let r = record(&[("a", "1"), ("b", "2")]);
    let _ = store
        .create(&sk(3), &r, SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    let (mut stored, _) = raw(&inner, &sk(3)).await;
    let mut fields: Vec<_> = stored.data.keys().cloned().collect();
    fields.sort();
    let a = stored.data[&fields[0]].clone();
    let b = stored.data[&fields[1]].clone();
    stored.data.insert(fields[0].clone(), b);
    stored.data.insert(fields[1].clone(), a);
    assert!(inner.destroy(&sk(3)).await.unwrap());
    let _ = inner
        .create(&sk(3), &stored, SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    assert!(matches!(
        store.load(&sk(3), NOW).await,
        Err(StoreError::Corrupt(DecodeError::Unopenable))
    ));
}

#[tokio::test]
async fn keys_rotate_as_for_cookies() {
    let inner = Arc::new(MemoryStore::new());
    let before = sealed(&inner, &[OLD], true, Compression::Zstd);
    let r = record(&[("a", "1"), ("b", "2")]);
    let _ = before
        .create(&sk(1), &r, SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    let after = sealed(&inner, &[KEY, OLD], true, Compression::Zstd);
    assert_eq!(after.load(&sk(1), NOW).await.unwrap(), Some(r.clone()));
    // A write under the new key replaces the old key's field, never sits beside it.
    let _ = after.save_delta(&sk(1), &set("a", "3"), NOW).await.unwrap();
    let (stored, _) = raw(&inner, &sk(1)).await;
    assert_eq!(stored.data.len(), 2);
    let loaded = after.load(&sk(1), NOW).await.unwrap().unwrap();
    assert_eq!(loaded.data["a"].as_json(), "\"3\"");
    // Without the old key, what only it sealed no longer opens.
    let dropped = sealed(&inner, &[KEY], true, Compression::Zstd);
    assert!(matches!(
        dropped.load(&sk(1), NOW).await,
        Err(StoreError::Corrupt(DecodeError::Unopenable))
    ));
}

#[tokio::test]
async fn records_written_in_clear_still_load_and_move_to_the_sealed_form() {
    let inner = Arc::new(MemoryStore::new());
    let r = record(&[("a", "1"), ("big", &"y".repeat(4000))]);
    let _ = inner
        .create(&sk(1), &r, SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    let store = sealed(&inner, &[KEY], true, Compression::Zstd);
    assert_eq!(store.load(&sk(1), NOW).await.unwrap(), Some(r));
    let _ = store
        .save_delta(&sk(1), &set("a", MARKER), NOW)
        .await
        .unwrap();
    let delta = Delta {
        changes: vec![("big".into(), None)],
        touch: Some(Touch {
            last_seen_at: NOW,
            idle_expires_at: Timestamp(1_500_000),
        }),
        max_size: None,
    };
    let _ = store.save_delta(&sk(1), &delta, NOW).await.unwrap();
    // The data moves to the sealed form key by key; the metadata stays as the record was
    // created (it is sealed when a session is created with encryption on).
    let (stored, _) = raw(&inner, &sk(1)).await;
    let text = format!("{:?}", stored.data);
    assert_eq!(stored.data.len(), 1, "{text}");
    assert!(!text.contains(MARKER) && !text.contains("\"a\""), "{text}");
    let loaded = store.load(&sk(1), NOW).await.unwrap().unwrap();
    assert_eq!(loaded.data["a"].as_json(), format!("\"{MARKER}\""));
    assert_eq!(loaded.meta.idle_expires_at, Timestamp(1_500_000));
}

#[tokio::test]
async fn large_values_are_smaller_at_rest_and_old_ones_still_load() {
    let inner = Arc::new(MemoryStore::new());
    let store = sealed(&inner, &[KEY], false, Compression::Zstd);
    let cart: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "{{\"sku\":\"SKU-{i:05}\",\"qty\":{},\"price\":\"{}.99\"}}",
                i % 7,
                i
            )
        })
        .collect();
    let big = format!("[{}]", cart.join(","));
    let mut r = record(&[("small", "s")]);
    r.data
        .insert("cart".into(), Value::from_json_text(&big).unwrap());
    let _ = store
        .create(&sk(1), &r, SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    let (stored, _) = raw(&inner, &sk(1)).await;
    assert!(
        stored.data_size() * 2 < r.data_size(),
        "{} at rest for {} in clear",
        stored.data_size(),
        r.data_size()
    );
    assert_eq!(
        stored.data["small"], r.data["small"],
        "small values stay as they are"
    );
    assert_eq!(store.load(&sk(1), NOW).await.unwrap(), Some(r.clone()));
    // Written before compression (no marker): loads as it is.
    let _ = inner
        .create(&sk(2), &r, SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    assert_eq!(store.load(&sk(2), NOW).await.unwrap(), Some(r.clone()));
    // Compression off: what was compressed still loads.
    let off = sealed(&inner, &[KEY], false, Compression::Off);
    assert_eq!(off.load(&sk(1), NOW).await.unwrap(), Some(r));
}

#[tokio::test]
async fn the_size_cap_counts_data_in_clear() {
    let inner = Arc::new(MemoryStore::new());
    let store = sealed(&inner, &[KEY], true, Compression::Zstd);
    let _ = store
        .create(&sk(1), &record(&[]), SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    // 120 one-byte values under two-byte keys nearly fill a 1 KiB cap in clear (120 * 7
    // bytes): sealed they take ~14 times that, and the store still takes them.
    let changes = (0..120)
        .map(|i| (format!("{i:02x}"), Some(Value::to_json(&0).unwrap())))
        .collect::<Vec<_>>();
    let delta = Delta {
        changes,
        touch: None,
        max_size: Some(1024),
    };
    assert!(matches!(
        store.save_delta(&sk(1), &delta, NOW).await.unwrap(),
        SaveOutcome::Saved { .. }
    ));
    let (stored, _) = raw(&inner, &sk(1)).await;
    assert!(stored.data_size() > 10 * 1024, "{}", stored.data_size());
    // One more byte in clear is over the cap: refused, though far below it at rest.
    let over = set("zz", &"z".repeat(200));
    let over = Delta {
        max_size: Some(1024),
        ..over
    };
    assert_eq!(
        store.save_delta(&sk(1), &over, NOW).await.unwrap(),
        SaveOutcome::TooLarge
    );
    // Far over the cap is refused.
    let huge = Delta {
        changes: vec![(
            "x".into(),
            Some(Value::to_json(&"z".repeat(30_000)).unwrap()),
        )],
        touch: None,
        max_size: Some(1024),
    };
    let huge = Delta {
        changes: (0..40)
            .map(|i| (format!("x{i}"), huge.changes[0].1.clone()))
            .collect(),
        ..huge
    };
    assert_eq!(
        store.save_delta(&sk(1), &huge, NOW).await.unwrap(),
        SaveOutcome::TooLarge
    );
}

#[tokio::test]
async fn damaged_values_are_refused_not_panics() {
    let inner = Arc::new(MemoryStore::new());
    let store = sealed(&inner, &[KEY], true, Compression::Zstd);
    let _ = store
        .create(
            &sk(1),
            &record(&[("a", &"q".repeat(3000))]),
            SessionLimit::UNLIMITED,
            NOW,
        )
        .await
        .unwrap();
    let (stored, _) = raw(&inner, &sk(1)).await;
    let (field, value) = stored.data.iter().next().unwrap();
    let text = value.parse::<String>().unwrap();
    for cut in [0, 1, 10, 30, text.len() - 1] {
        for flip in [0usize, 5, 40] {
            let mut bytes = text.as_bytes()[..cut].to_vec();
            if let Some(b) = bytes.get_mut(flip) {
                *b = if *b == b'A' { b'B' } else { b'A' };
            }
            let mut damaged = stored.clone();
            damaged.data.insert(
                field.clone(),
                Value::to_json(&String::from_utf8(bytes).unwrap()).unwrap(),
            );
            assert!(store.decode(&sk(1), damaged).is_err());
        }
    }
    // A packed value whose frame claims more than a record may hold is refused before
    // anything is allocated for it.
    use base64::Engine as _;
    let mut frame = vec![1u8];
    let mut json = vec![b' '; 1 << 20];
    json[0] = b'"';
    json[(1 << 20) - 1] = b'"';
    frame.extend(zstd::bulk::compress(&json, 3).unwrap());
    let mut bomb = Record::default();
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&frame);
    bomb.data.insert(
        format!("{}x", codec::PACKED),
        Value::to_json(&text).unwrap(),
    );
    assert!(
        store.decode(&sk(1), bomb.clone()).is_ok(),
        "1 MiB is within the budget"
    );
    let mut budget = 1000;
    let (f, v) = bomb.data.into_iter().next().unwrap();
    assert!(matches!(
        store.codec.decode_entry(&sk(1), &f, &v, &mut budget),
        Err(DecodeError::TooLarge(_))
    ));
}

/// With encryption off, a save of small values goes straight to the store with the cap as
/// configured (no read first); a record still holding values sealed before encryption was
/// turned off is not refused for their size at rest, and the cap in clear still holds.
#[tokio::test]
async fn saves_in_clear_keep_the_cap_exact_and_refuse_nothing_it_allows() {
    let inner = Arc::new(MemoryStore::new());
    let plain = sealed(&inner, &[KEY], false, Compression::Zstd);
    let _ = plain
        .create(&sk(1), &record(&[]), SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    let capped = |d: Delta| Delta {
        max_size: Some(1024),
        ..d
    };
    assert!(matches!(
        plain
            .save_delta(&sk(1), &capped(set("a", &"x".repeat(900))), NOW)
            .await
            .unwrap(),
        SaveOutcome::Saved { .. }
    ));
    // 900 + 200 bytes in clear pass the cap: the store refuses it on its own.
    assert_eq!(
        plain
            .save_delta(&sk(1), &capped(set("b", &"y".repeat(200))), NOW)
            .await
            .unwrap(),
        SaveOutcome::TooLarge
    );
    // Sealed with encryption on, then encryption turned off: ~14 times larger at rest than in
    // clear, yet a small save within the cap in clear is taken.
    let _ = plain
        .create(&sk(2), &record(&[]), SessionLimit::UNLIMITED, NOW)
        .await
        .unwrap();
    let on = sealed(&inner, &[KEY], true, Compression::Zstd);
    let changes = (0..120)
        .map(|i| (format!("{i:02x}"), Some(Value::to_json(&0).unwrap())))
        .collect::<Vec<_>>();
    let many = Delta {
        changes,
        touch: None,
        max_size: Some(1024),
    };
    assert!(matches!(
        on.save_delta(&sk(2), &many, NOW).await.unwrap(),
        SaveOutcome::Saved { .. }
    ));
    assert!(matches!(
        plain
            .save_delta(&sk(2), &capped(set("zz", "1")), NOW)
            .await
            .unwrap(),
        SaveOutcome::Saved { .. }
    ));
    assert_eq!(
        plain
            .save_delta(&sk(2), &capped(set("zy", &"z".repeat(200))), NOW)
            .await
            .unwrap(),
        SaveOutcome::TooLarge
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// A stored record is input: whatever its field names and values (plain, "packed" or
    /// "sealed" by their names, values of arbitrary bytes in base64url or arbitrary text, a
    /// sealed user agent of arbitrary bytes), loading it through the sealed store answers a
    /// record or `Corrupt`, never panics; what decodes is never over the decode ceiling.
    #[test]
    fn arbitrary_stored_records_load_without_panic(
        entries in proptest::collection::vec(
            (0..3u8, ".{0,12}", proptest::collection::vec(proptest::num::u8::ANY, 0..200), proptest::bool::ANY),
            0..6,
        ),
        agent in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        seal in proptest::bool::ANY,
    ) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let inner = Arc::new(MemoryStore::new());
        let store = sealed(&inner, &[KEY], seal, Compression::Zstd);
        let mut stored = record(&[]);
        for (kind, name, bytes, as_b64) in entries {
            let field = match kind {
                0 => name,
                1 => format!("{}{name}", codec::PACKED),
                _ => format!("{}{name}", codec::SEALED),
            };
            let text = if as_b64 {
                b64.encode(&bytes)
            } else {
                String::from_utf8_lossy(&bytes).into_owned()
            };
            stored.data.insert(field, Value::to_json(&text).unwrap());
        }
        stored.meta.user_agent = Some(format!("{}{}", codec::SEALED, b64.encode(&agent)));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let _ = inner
                .create(&sk(9), &stored, SessionLimit::UNLIMITED, NOW)
                .await
                .unwrap();
            match store.load(&sk(9), NOW).await {
                Ok(Some(r)) => proptest::prop_assert!(r.data_size() <= crate::record::DECODE_CEILING),
                Ok(None) => proptest::prop_assert!(false, "the record is there"),
                Err(e) => proptest::prop_assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
            }
            Ok(())
        })?;
    }
}
