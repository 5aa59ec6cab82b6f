//! Records: create-if-absent, round trips, expiry by the given time, per-key deltas, and no
//! save that brings a destroyed session back.

use super::*;

/// `create` is create-if-absent: a second create under the same key changes nothing.
pub async fn create_never_overwrites(store: Store) {
    let key = new_key();
    let mut first = record_at(None, now());
    first
        .data
        .insert("owner".into(), Value::to_json("first").expect("json"));
    must_create(&store, &key, &first).await;
    let mut second = record_at(Some(&new_user()), now());
    second
        .data
        .insert("owner".into(), Value::to_json("attacker").expect("json"));
    let out = store
        .create(&key, &second, SessionLimit::UNLIMITED, now())
        .await
        .expect("create");
    assert_eq!(out, CreateOutcome::Exists);
    let got = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("present");
    assert_eq!(got.data, first.data);
    assert_eq!(got.meta.user_id, None);
}

/// A record expired at `now` does not block `create` under its key: the new record replaces it
/// (anonymous or signed-in, either way round) and leaves no trace in the old user's index,
/// while a live record still blocks it.
pub async fn create_replaces_expired_record(store: Store) {
    let t = now();
    let later = t.add(HOUR / 2);
    for (old_user, new_owner) in [
        (Some(new_user()), None),
        (None, Some(new_user())),
        (Some(new_user()), Some(new_user())),
    ] {
        let key = new_key();
        let mut old = record_at(old_user.as_deref(), t);
        old.meta.idle_expires_at = t.add(HOUR / 4);
        must_create(&store, &key, &old).await;
        let mut new = record_at(new_owner.as_deref(), later);
        new.data
            .insert("gen".into(), Value::to_json("second").expect("json"));
        let out = store
            .create(&key, &new, SessionLimit::UNLIMITED, t)
            .await
            .expect("create");
        assert_eq!(out, CreateOutcome::Exists, "the old record is live at t");
        let out = store
            .create(&key, &new, SessionLimit::UNLIMITED, later)
            .await
            .expect("create");
        assert!(
            matches!(out, CreateOutcome::Created { .. }),
            "create over an expired record: {out:?}"
        );
        let got = store
            .load(&key, later)
            .await
            .expect("load")
            .expect("present");
        assert_eq!(got.data, new.data);
        assert_eq!(got.meta.user_id, new.meta.user_id);
        if let Some(u) = &old_user {
            assert!(store.list_user(u, later).await.expect("list").is_empty());
        }
        if let Some(u) = &new_owner {
            assert_eq!(store.list_user(u, later).await.expect("list").len(), 1);
        }
    }
}

/// A record comes back exactly as stored, metadata included.
pub async fn round_trips_record(store: Store) {
    let key = new_key();
    let user = new_user();
    let mut r = record_at(Some(&user), now());
    r.data.insert("n".into(), Value::to_json(&7).expect("json"));
    r.data.insert(
        "unicode ключ ✓".into(),
        Value::to_json("значение ✓").expect("json"),
    );
    r.data.insert(
        "big".into(),
        Value::to_json(&"x".repeat(60_000)).expect("json"),
    );
    must_create(&store, &key, &r).await;
    let got = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("present");
    assert_eq!(got.data, r.data);
    assert_eq!(got.meta.user_id, r.meta.user_id);
    assert_eq!(got.meta.created_at, r.meta.created_at);
    assert_eq!(got.meta.idle_expires_at, r.meta.idle_expires_at);
    assert_eq!(got.meta.absolute_expires_at, r.meta.absolute_expires_at);
    assert_eq!(got.meta.auth_time, r.meta.auth_time);
    assert_eq!(got.meta.user_agent, r.meta.user_agent);
    assert_eq!(got.meta.ip, r.meta.ip);
}

/// Absent keys load as `None`.
pub async fn load_absent_is_none(store: Store) {
    assert!(store.load(&new_key(), now()).await.expect("load").is_none());
    let out = store
        .save_delta(&new_key(), &delta(vec![set("a", 1)]), now())
        .await
        .expect("save");
    assert_eq!(out, SaveOutcome::Missing);
    assert!(!store.destroy(&new_key()).await.expect("destroy"));
}

/// Idle and absolute expiry are judged by the `now` given, whatever the store's own TTL says.
pub async fn load_after_expiry_is_none(store: Store) {
    let t = now();
    let idle = new_key();
    must_create(&store, &idle, &record_at(None, t)).await;
    assert!(store
        .load(&idle, t.add(HOUR / 2))
        .await
        .expect("load")
        .is_some());
    assert!(store
        .load(&idle, t.add(HOUR))
        .await
        .expect("load")
        .is_none());

    // Touching moves the idle expiry, never past the absolute one.
    let abs = new_key();
    let mut r = record_at(None, t);
    r.meta.absolute_expires_at = t.add(2 * HOUR);
    must_create(&store, &abs, &r).await;
    let touch = Touch {
        last_seen_at: t.add(HOUR / 2),
        idle_expires_at: t.add(3 * HOUR / 2),
    };
    let out = store
        .touch(&abs, touch, t.add(HOUR / 2))
        .await
        .expect("touch");
    assert!(matches!(out, SaveOutcome::Saved { .. }));
    assert!(store
        .load(&abs, t.add(5 * HOUR / 4))
        .await
        .expect("load")
        .is_some());
    assert!(store
        .load(&abs, t.add(3 * HOUR / 2))
        .await
        .expect("load")
        .is_none());
    // An expired record cannot be written either.
    let out = store
        .save_delta(&abs, &delta(vec![set("a", 1)]), t.add(3 * HOUR))
        .await
        .expect("save");
    assert_eq!(out, SaveOutcome::Missing);
}

/// Deltas set and remove single keys and bump the version.
pub async fn save_delta_applies_per_key(store: Store) {
    let key = new_key();
    let mut r = record_at(None, now());
    r.data
        .insert("keep".into(), Value::to_json(&1).expect("json"));
    r.data
        .insert("drop".into(), Value::to_json(&2).expect("json"));
    must_create(&store, &key, &r).await;
    let before = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("present");
    let out = store
        .save_delta(
            &key,
            &delta(vec![set("new", "v"), ("drop".into(), None)]),
            now(),
        )
        .await
        .expect("save");
    let SaveOutcome::Saved { version } = out else {
        panic!("save: {out:?}");
    };
    let got = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("present");
    assert!(version > before.meta.version);
    assert_eq!(got.meta.version, version);
    assert_eq!(got.data.len(), 2);
    assert_eq!(got.data["keep"].as_json(), "1");
    assert_eq!(got.data["new"].as_json(), "\"v\"");
    assert!(!got.data.contains_key("drop"));
}

/// A delta that names a key several times ends with its last change, whatever came before
/// (set after remove, remove after set); a delta of hundreds of keys is applied whole; a touch
/// that moves the idle expiry of a signed-in session is kept, and the session stays listed.
/// The result equals the reference [`Record::apply`].
pub async fn save_delta_keeps_the_last_change_and_large_deltas(store: Store) {
    let key = new_key();
    let user = new_user();
    let t = now();
    let mut r = record_at(Some(&user), t);
    for i in 0..300 {
        r.data
            .insert(format!("old{i}"), Value::to_json(&i).expect("json"));
    }
    r.data.insert("b".into(), Value::to_json(&1).expect("json"));
    must_create(&store, &key, &r).await;
    let mut changes = vec![
        set("a", 1i64),
        ("a".into(), None),
        set("a", 2i64),
        set("b", 3i64),
        ("b".into(), None),
        ("c".into(), None),
        set("c", "x"),
    ];
    for i in 0..450 {
        changes.push(set(&format!("new{i}"), i as i64));
    }
    for i in 0..250 {
        changes.push((format!("old{i}"), None));
    }
    let later = t.add(Duration::from_secs(60));
    let d = Delta {
        changes,
        touch: Some(Touch {
            last_seen_at: later,
            idle_expires_at: later.add(2 * HOUR),
        }),
        max_size: None,
    };
    let out = store.save_delta(&key, &d, later).await.expect("save");
    assert!(matches!(out, SaveOutcome::Saved { .. }), "{out:?}");
    let got = store
        .load(&key, later)
        .await
        .expect("load")
        .expect("present");
    let mut want = r.clone();
    want.apply(&d);
    assert_eq!(got.data, want.data);
    assert_eq!(got.data["a"].as_json(), "2");
    assert!(!got.data.contains_key("b"));
    assert_eq!(got.data.len(), 1 + 1 + 450 + 50);
    assert_eq!(got.meta.idle_expires_at, later.add(2 * HOUR));
    assert_eq!(got.meta.last_seen_at, later);
    // Past the old idle expiry, the session is still live and listed.
    let past_old = t.add(HOUR + Duration::from_secs(1));
    assert!(store.load(&key, past_old).await.expect("load").is_some());
    let listed = store.list_user(&user, past_old).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, key);
}

/// Any key and any JSON text survive create and per-key deltas byte for byte: keys with path
/// or SQL syntax, quotes, backslashes, control characters and non-ASCII; values with odd
/// spacing, key order and escapes (a store must not reformat JSON).
pub async fn tricky_keys_and_values_round_trip(store: Store) {
    let keys = [
        "",
        "a.b",
        "x[0]",
        "$",
        "$.\"q\"",
        "quote\"d",
        "back\\slash",
        "tab\tand\nnewline",
        "k'; DROP TABLE sessions; --",
        "ключ ✓",
        "emoji 🦀",
        "%s %n {}",
    ];
    let values = [
        r#"{ "z" : 1,"a":[1, 2.50, 1e3] }"#,
        r#""nul \u0000 esc \" \\ \/ \u00e9 é""#,
        "null",
        "-0.0",
        "[]",
        "  true ",
    ];
    let value = |i: usize| Value::from_json_text(values[i % values.len()]).expect("json");
    let key = new_key();
    let mut r = record_at(None, now());
    for (i, k) in keys.iter().enumerate().step_by(2) {
        r.data.insert((*k).to_owned(), value(i));
    }
    must_create(&store, &key, &r).await;
    let got = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("present");
    assert_eq!(
        got.data, r.data,
        "create kept every key and value as written"
    );

    let mut want = got;
    for round in 0..2 {
        let changes: Vec<(String, Option<Value>)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let v = ((i + round) % 3 != 0).then(|| value(i + round + 1));
                ((*k).to_owned(), v)
            })
            .collect();
        let d = delta(changes);
        want.apply(&d);
        let out = store.save_delta(&key, &d, now()).await.expect("save");
        assert!(matches!(out, SaveOutcome::Saved { .. }), "save: {out:?}");
        let got = store
            .load(&key, now())
            .await
            .expect("load")
            .expect("present");
        assert_eq!(got.data, want.data, "round {round}");
    }
    // One key per delta too, so stores that take a different path for some keys are covered.
    for (i, k) in keys.iter().enumerate() {
        for v in [Some(value(i + 3)), None, Some(value(i + 4))] {
            let d = delta(vec![((*k).to_owned(), v)]);
            want.apply(&d);
            let out = store.save_delta(&key, &d, now()).await.expect("save");
            assert!(matches!(out, SaveOutcome::Saved { .. }), "save: {out:?}");
        }
    }
    let got = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("present");
    assert_eq!(got.data, want.data, "single-key deltas");
}

/// Concurrent writers of different keys on one session all keep their changes.
pub async fn concurrent_writers_keep_every_key(store: Store) {
    let key = new_key();
    must_create(&store, &key, &record_at(None, now())).await;
    let writers = 16;
    let rounds = 10;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..rounds {
                let d = delta(vec![set(&format!("w{w}"), i64::from(i))]);
                let out = store.save_delta(&key, &d, now()).await.expect("save");
                assert!(matches!(out, SaveOutcome::Saved { .. }));
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let got = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("present");
    for w in 0..writers {
        assert_eq!(
            got.data.get(&format!("w{w}")).map(Value::as_json),
            Some((rounds - 1).to_string().as_str()),
            "writer {w} lost its update"
        );
    }
}

/// After destroy, a save does not bring the session back (rack-session CVE-2025-46336).
pub async fn save_after_destroy_does_not_resurrect(store: Store) {
    let user = new_user();
    let key = new_key();
    must_create(&store, &key, &record_at(Some(&user), now())).await;
    assert!(store.destroy(&key).await.expect("destroy"));
    let out = store
        .save_delta(&key, &delta(vec![set("late", 1)]), now())
        .await
        .expect("save");
    assert_eq!(out, SaveOutcome::Missing);
    let touch = Touch {
        last_seen_at: now(),
        idle_expires_at: now().add(HOUR),
    };
    assert_eq!(
        store.touch(&key, touch, now()).await.expect("touch"),
        SaveOutcome::Missing
    );
    assert!(store.load(&key, now()).await.expect("load").is_none());
    assert!(store
        .list_user(&user, now())
        .await
        .expect("list")
        .is_empty());
    assert!(!store.destroy(&key).await.expect("destroy again"));
}
