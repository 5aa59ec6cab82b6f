//! The store conformance suite: one async function per property, each taking a fresh, isolated
//! store. [`store_conformance!`](crate::store_conformance) turns them into `#[tokio::test]`s.
//!
//! Time is passed explicitly (`now`), so expiry is tested without sleeping; records expire an
//! hour or more after the real time, so stores that also set a server-side TTL keep them during
//! the test.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Delta, LimitPolicy, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey,
    Timestamp, Touch, Value,
};

/// The store type the suite runs against.
pub type Store = Arc<dyn SessionStore>;

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> Timestamp {
    SystemClock.now()
}

fn new_key() -> StorageKey {
    SessionId::generate().expect("rng").storage_key()
}

/// A unique user name, so stores shared between tests never mix users.
fn new_user() -> String {
    format!("user-{}", &new_key().as_str()[..16])
}

/// A record created at `at`, idle expiry in 1 h, absolute in 24 h.
pub fn record_at(user: Option<&str>, at: Timestamp) -> Record {
    let mut r = Record::default();
    r.meta.user_id = user.map(str::to_owned);
    r.meta.created_at = at;
    r.meta.last_seen_at = at;
    r.meta.idle_expires_at = at.add(HOUR);
    r.meta.absolute_expires_at = at.add(24 * HOUR);
    r.meta.auth_time = user.map(|_| at);
    r.meta.user_agent = Some("conformance/1.0".into());
    r.meta.ip = Some("127.0.0.1".into());
    r
}

fn set(k: &str, v: impl serde_json_like::ToJson) -> (String, Option<Value>) {
    (k.to_owned(), Some(v.to_value()))
}

/// Tiny shim so the suite reads naturally without depending on serde_json directly.
mod serde_json_like {
    use sessionkit::store::Value;
    pub(super) trait ToJson {
        fn to_value(&self) -> Value;
    }
    impl ToJson for i64 {
        fn to_value(&self) -> Value {
            Value::to_json(self).expect("json")
        }
    }
    impl ToJson for &str {
        fn to_value(&self) -> Value {
            Value::to_json(self).expect("json")
        }
    }
    impl ToJson for String {
        fn to_value(&self) -> Value {
            Value::to_json(self).expect("json")
        }
    }
}

fn delta(changes: Vec<(String, Option<Value>)>) -> Delta {
    Delta {
        changes,
        touch: None,
        max_size: None,
    }
}

async fn must_create(store: &Store, key: &StorageKey, r: &Record) {
    let out = store
        .create(key, r, SessionLimit::UNLIMITED, now())
        .await
        .expect("create");
    assert!(
        matches!(out, CreateOutcome::Created { .. }),
        "create: {out:?}"
    );
}

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

/// The user index lists sessions, and revokes one or all but one.
pub async fn user_index_list_and_revoke(store: Store) {
    let user = new_user();
    let other = new_user();
    let keys: Vec<StorageKey> = (0..3).map(|_| new_key()).collect();
    for k in &keys {
        must_create(&store, k, &record_at(Some(&user), now())).await;
    }
    let stranger = new_key();
    must_create(&store, &stranger, &record_at(Some(&other), now())).await;
    let anon = new_key();
    must_create(&store, &anon, &record_at(None, now())).await;

    let listed: HashSet<StorageKey> = store
        .list_user(&user, now())
        .await
        .expect("list")
        .into_iter()
        .map(|(k, m)| {
            assert_eq!(m.user_id.as_deref(), Some(user.as_str()));
            k
        })
        .collect();
    assert_eq!(listed, keys.iter().cloned().collect());

    // revoke one
    assert!(store.destroy(&keys[0]).await.expect("destroy"));
    assert_eq!(store.list_user(&user, now()).await.expect("list").len(), 2);

    // revoke all but one
    let gone = store
        .destroy_user(&user, Some(&keys[1]))
        .await
        .expect("destroy_user");
    assert_eq!(gone, vec![keys[2].clone()]);
    let left = store.list_user(&user, now()).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, keys[1]);
    assert!(store.load(&keys[2], now()).await.expect("load").is_none());
    assert!(store.load(&keys[1], now()).await.expect("load").is_some());
    // other users and anonymous sessions are untouched
    assert!(store.load(&stranger, now()).await.expect("load").is_some());
    assert!(store.load(&anon, now()).await.expect("load").is_some());
    assert_eq!(store.list_user(&other, now()).await.expect("list").len(), 1);

    // revoke everything
    let gone = store.destroy_user(&user, None).await.expect("destroy_user");
    assert_eq!(gone, vec![keys[1].clone()]);
    assert!(store
        .list_user(&user, now())
        .await
        .expect("list")
        .is_empty());
}

/// Expired sessions drop out of the user index on read.
pub async fn user_index_prunes_expired(store: Store) {
    let user = new_user();
    let t = now();
    let old = new_key();
    let mut r = record_at(Some(&user), t);
    r.meta.idle_expires_at = t.add(HOUR / 2);
    must_create(&store, &old, &r).await;
    let fresh = new_key();
    must_create(&store, &fresh, &record_at(Some(&user), t)).await;
    let listed = store
        .list_user(&user, t.add(HOUR * 3 / 4))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, fresh);
}

async fn parallel_logins(store: &Store, policy: LimitPolicy) -> (String, usize, usize) {
    let user = new_user();
    let limit = SessionLimit {
        max: Some(3),
        policy,
    };
    let t0 = now();
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let store = store.clone();
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = record_at(Some(&user), Timestamp(t0.0 + i));
            r.meta.last_seen_at = Timestamp(t0.0 + 100 - i);
            store
                .create(&new_key(), &r, limit, t0)
                .await
                .expect("create")
        }));
    }
    let (mut created, mut denied, mut evicted) = (0, 0, 0);
    for t in tasks {
        match t.await.expect("task") {
            CreateOutcome::Created { evicted: e } => {
                created += 1;
                evicted += e.len();
            }
            CreateOutcome::LimitReached => denied += 1,
            CreateOutcome::Exists => panic!("fresh key reported as existing"),
        }
    }
    let live = store.list_user(&user, t0).await.expect("list").len();
    assert_eq!(live, 3, "{policy:?}: exactly 3 live sessions");
    assert_eq!(created + denied, 50);
    (user, created, denied + evicted)
}

/// 50 parallel logins, limit 3, `deny`: exactly 3 succeed.
pub async fn limit_deny_is_atomic(store: Store) {
    let (_, created, denied) = parallel_logins(&store, LimitPolicy::Deny).await;
    assert_eq!(created, 3);
    assert_eq!(denied, 47);
}

/// 50 parallel logins, limit 3, `evict_oldest`: all succeed, 47 evicted, the 3 newest remain.
pub async fn limit_evict_oldest_is_atomic(store: Store) {
    let (user, created, evicted) = parallel_logins(&store, LimitPolicy::EvictOldest).await;
    assert_eq!(created, 50);
    assert_eq!(evicted, 47);
    // sequentially, the oldest goes first
    let limit = SessionLimit {
        max: Some(3),
        policy: LimitPolicy::EvictOldest,
    };
    let live = store.list_user(&user, now()).await.expect("list");
    let oldest = live
        .iter()
        .min_by_key(|(_, m)| m.created_at)
        .expect("three live")
        .0
        .clone();
    let r = record_at(Some(&user), now().add(Duration::from_secs(1)));
    let out = store
        .create(&new_key(), &r, limit, now())
        .await
        .expect("create");
    assert_eq!(
        out,
        CreateOutcome::Created {
            evicted: vec![oldest.clone()]
        }
    );
    assert!(store.load(&oldest, now()).await.expect("load").is_none());
}

/// 50 parallel logins, limit 3, `evict_idlest`: all succeed, 47 evicted; the least recently seen
/// goes first.
pub async fn limit_evict_idlest_is_atomic(store: Store) {
    let (user, created, evicted) = parallel_logins(&store, LimitPolicy::EvictIdlest).await;
    assert_eq!(created, 50);
    assert_eq!(evicted, 47);
    let limit = SessionLimit {
        max: Some(3),
        policy: LimitPolicy::EvictIdlest,
    };
    let live = store.list_user(&user, now()).await.expect("list");
    let idlest = live
        .iter()
        .min_by_key(|(_, m)| m.last_seen_at)
        .expect("three live")
        .0
        .clone();
    let out = store
        .create(&new_key(), &record_at(Some(&user), now()), limit, now())
        .await
        .expect("create");
    assert_eq!(
        out,
        CreateOutcome::Created {
            evicted: vec![idlest.clone()]
        }
    );
    assert!(store.load(&idlest, now()).await.expect("load").is_none());
}

/// Cleanup removes expired records (and their index entries) and nothing else; count follows.
pub async fn cleanup_and_count(store: Store) {
    let t = now();
    let user = new_user();
    let base = store.count().await.expect("count");
    let mut dead = Vec::new();
    for i in 0..5 {
        let k = new_key();
        let mut r = record_at((i % 2 == 0).then_some(user.as_str()), t);
        r.meta.idle_expires_at = t.add(HOUR / 4);
        must_create(&store, &k, &r).await;
        dead.push(k);
    }
    let mut live = Vec::new();
    for _ in 0..3 {
        let k = new_key();
        must_create(&store, &k, &record_at(Some(&user), t)).await;
        live.push(k);
    }
    assert_eq!(store.count().await.expect("count"), base + 8);
    let removed = store
        .cleanup_expired(t.add(HOUR / 2))
        .await
        .expect("cleanup");
    assert_eq!(removed, 5);
    assert_eq!(store.count().await.expect("count"), base + 3);
    for k in &live {
        assert!(store
            .load(k, t.add(HOUR / 2))
            .await
            .expect("load")
            .is_some());
    }
    for k in &dead {
        assert!(store.load(k, t).await.expect("load").is_none());
    }
    assert_eq!(
        store.list_user(&user, t).await.expect("list").len(),
        3,
        "expired entries left the index"
    );
    assert_eq!(
        store
            .cleanup_expired(t.add(HOUR / 2))
            .await
            .expect("cleanup"),
        0
    );
    store.destroy(&live[0]).await.expect("destroy");
    assert_eq!(store.count().await.expect("count"), base + 2);
}

/// Scan visits every record exactly once, in pages.
pub async fn scan_visits_every_record(store: Store) {
    let mut want = HashSet::new();
    for _ in 0..25 {
        let k = new_key();
        must_create(&store, &k, &record_at(None, now())).await;
        want.insert(k);
    }
    let mut seen = HashSet::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store.scan(cursor.take(), 7).await.expect("scan");
        pages += 1;
        for (k, r) in page.records {
            assert!(r.meta.idle_expires_at > Timestamp(0));
            assert!(seen.insert(k), "scan returned a key twice");
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 1000, "scan does not terminate");
    }
    assert!(want.is_subset(&seen), "scan missed records");
}

/// Health answers ok on a working store.
pub async fn health_ok(store: Store) {
    let h = store.health().await;
    assert!(h.ok, "{h:?}");
}

// --- Size cap on merge (issue 14, item 8) ---

/// The cap the record-cap test uses: `SESSION_MAX_SIZE`'s default, 64 KiB.
const CAP: usize = 64 * 1024;

/// Writes `writers` values of `len` bytes each, under different keys, to one fresh session at
/// once, each delta capped at [`CAP`]; returns the keys saved and the record left.
async fn race_capped_writes(store: &Store, writers: usize, len: usize) -> (Vec<String>, Record) {
    let key = new_key();
    must_create(store, &key, &record_at(None, now())).await;
    let start = Arc::new(tokio::sync::Barrier::new(writers));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, key, start) = (store.clone(), key.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("w{w}");
            let mut d = delta(vec![set(&name, "x".repeat(len))]);
            d.max_size = Some(CAP);
            start.wait().await;
            (name, store.save_delta(&key, &d, now()).await.expect("save"))
        }));
    }
    let mut saved = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (name, SaveOutcome::Saved { .. }) => saved.push(name),
            (_, SaveOutcome::TooLarge) => {}
            (name, out) => panic!("{name}: unexpected {out:?}"),
        }
    }
    saved.sort();
    let got = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("present");
    (saved, got)
}

/// The size cap holds under concurrency: 20 concurrent writes of 60 KiB to one session, each
/// under its own key and capped at 64 KiB, leave exactly one saved (the others are refused
/// with `TooLarge`) and the record within the cap; with 20 KB values, exactly three fit. The
/// store keeps its size count right through removals, touches and a lowered cap.
pub async fn record_cap_holds_under_concurrency(store: Store) {
    let (saved, got) = race_capped_writes(&store, 20, 60 * 1024).await;
    assert_eq!(saved.len(), 1, "exactly one 60 KiB write fits: {saved:?}");
    assert!(
        got.data_size() <= CAP,
        "record grew to {} bytes",
        got.data_size()
    );
    let keys: Vec<String> = got.data.keys().cloned().collect();
    assert_eq!(
        keys, saved,
        "the record holds exactly the writes reported saved"
    );

    let (saved, got) = race_capped_writes(&store, 20, 20_000).await;
    assert_eq!(saved.len(), 3, "exactly three 20 KB writes fit: {saved:?}");
    assert!(
        got.data_size() <= CAP,
        "record grew to {} bytes",
        got.data_size()
    );
    let keys: Vec<String> = got.data.keys().cloned().collect();
    assert_eq!(
        keys, saved,
        "the record holds exactly the writes reported saved"
    );

    // The count follows removals and replacements: after one value goes, another fits, and
    // replacing a value by a larger one is measured against what it replaces.
    let key = new_key();
    must_create(&store, &key, &record_at(None, now())).await;
    let capped = |changes| {
        let mut d = delta(changes);
        d.max_size = Some(CAP);
        d
    };
    let big = "y".repeat(60 * 1024);
    let save = |d: Delta| {
        let (store, key) = (store.clone(), key.clone());
        async move { store.save_delta(&key, &d, now()).await.expect("save") }
    };
    assert!(matches!(
        save(capped(vec![set("a", big.as_str())])).await,
        SaveOutcome::Saved { .. }
    ));
    assert_eq!(
        save(capped(vec![set("b", big.as_str())])).await,
        SaveOutcome::TooLarge
    );
    assert!(matches!(
        save(capped(vec![("a".to_owned(), None)])).await,
        SaveOutcome::Saved { .. }
    ));
    assert!(matches!(
        save(capped(vec![set("b", big.as_str())])).await,
        SaveOutcome::Saved { .. }
    ));
    let bigger = "z".repeat(CAP - 12); // counts CAP - 5
    assert!(matches!(
        save(capped(vec![set("b", bigger.as_str())])).await,
        SaveOutcome::Saved { .. }
    ));
    assert_eq!(
        save(capped(vec![set("b", bigger.as_str()), set("c", 1)])).await,
        SaveOutcome::TooLarge
    );
    // A cap lowered below the record: it may still be touched and shrink, not grow.
    let mut touch = delta(vec![]);
    touch.max_size = Some(1024);
    touch.touch = Some(Touch {
        last_seen_at: now(),
        idle_expires_at: now().add(2 * HOUR),
    });
    assert!(matches!(save(touch).await, SaveOutcome::Saved { .. }));
    let mut grow = delta(vec![set("c", 1)]);
    grow.max_size = Some(1024);
    assert_eq!(save(grow).await, SaveOutcome::TooLarge);
    let mut shrink = delta(vec![set("b", "small"), set("c", 1)]);
    shrink.max_size = Some(1024);
    assert!(matches!(save(shrink).await, SaveOutcome::Saved { .. }));
    let got = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("present");
    assert_eq!(got.data.keys().collect::<Vec<_>>(), ["b", "c"]);
    // Refused saves wrote nothing: the version counts the six saved deltas.
    assert_eq!(got.meta.version, 6);
    // A save to a destroyed session is still `Missing`, not `TooLarge`.
    assert!(store.destroy(&key).await.expect("destroy"));
    assert_eq!(
        save(capped(vec![set("d", big.as_str())])).await,
        SaveOutcome::Missing
    );
}

pub use crate::session_races::{
    destroy_reports_the_removal_once, elevate_race_leaves_one_successor,
    login_keeps_only_its_own_users_data, rotate_after_logout_and_revoke_brings_nothing_back,
    rotate_logout_race_leaves_at_most_one, rotate_race_leaves_one_successor,
};

/// Creates `n` sessions with `make(i)` as record, 32 at a time.
async fn create_many(store: &Store, n: u64, make: impl Fn(u64) -> Record) {
    let mut pending = Vec::new();
    for i in 0..n {
        let store = store.clone();
        let r = make(i);
        pending.push(tokio::spawn(async move {
            must_create(&store, &new_key(), &r).await
        }));
        if pending.len() == 32 || i + 1 == n {
            for task in pending.drain(..) {
                task.await.expect("create task");
            }
        }
    }
}

/// A user with thousands of expired index entries: successive logins (with a limit, so that
/// every store judges the user's sessions) leave only the live ones, and the expired records
/// are gone from the store (a load as of before their expiry finds nothing).
pub async fn user_index_prunes_expired_over_logins(store: Store) {
    let user = new_user();
    let t = now();
    let dead_at = t.add(HOUR / 2);
    create_many(&store, 2000, |i| {
        let mut r = record_at(Some(&user), Timestamp(t.0 - 10_000 + i));
        r.meta.idle_expires_at = dead_at;
        r
    })
    .await;
    let later = t.add(HOUR * 3 / 4);
    let limit = SessionLimit {
        max: Some(100_000),
        policy: LimitPolicy::EvictOldest,
    };
    let mut fresh = HashSet::new();
    for _ in 0..100 {
        let key = new_key();
        let out = store
            .create(&key, &record_at(Some(&user), later), limit, later)
            .await
            .expect("create");
        assert_eq!(out, CreateOutcome::Created { evicted: vec![] });
        fresh.insert(key);
    }
    let listed: HashSet<StorageKey> = store
        .list_user(&user, later)
        .await
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(listed, fresh);
    // Nothing expired is left to clean up: the logins (or the listing) removed it all.
    assert_eq!(store.cleanup_expired(later).await.expect("cleanup"), 0);
}

/// A user with thousands of sessions, expired ones among them: the limit counts only the live
/// ones, and each policy picks the right live victim (never an expired session, though the
/// expired ones are older and idler).
pub async fn limit_picks_the_right_victim_among_thousands(store: Store) {
    let user = new_user();
    let t = now();
    // 1000 expired sessions, created and seen before everything else.
    create_many(&store, 1000, |i| {
        let mut r = record_at(Some(&user), Timestamp(t.0 - 100_000 + i));
        r.meta.idle_expires_at = t.add(HOUR / 4);
        r
    })
    .await;
    // 2000 live ones: created in order, seen in an order unrelated to creation.
    let n = 2000u64;
    let seen = |i: u64| Timestamp(t.0 + 10_000 + (i * 7919) % n);
    create_many(&store, n, |i| {
        let mut r = record_at(Some(&user), Timestamp(t.0 + i));
        r.meta.last_seen_at = seen(i);
        r
    })
    .await;
    let at = t.add(HOUR / 2);
    let live = store.list_user(&user, at).await.expect("list");
    assert_eq!(live.len(), n as usize);
    let by = |f: fn(&sessionkit::store::Meta) -> Timestamp| {
        let mut v: Vec<(Timestamp, StorageKey)> =
            live.iter().map(|(k, m)| (f(m), k.clone())).collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect::<Vec<_>>()
    };
    let oldest = by(|m| m.created_at);
    let idlest = by(|m| m.last_seen_at);
    let login = |max: u32, policy: LimitPolicy| {
        let store = store.clone();
        let user = user.clone();
        async move {
            let limit = SessionLimit {
                max: Some(max),
                policy,
            };
            let r = record_at(Some(&user), at);
            store
                .create(&new_key(), &r, limit, at)
                .await
                .expect("create")
        }
    };
    // At the limit (the expired sessions do not count), deny refuses; one above, it admits.
    assert_eq!(
        login(n as u32, LimitPolicy::Deny).await,
        CreateOutcome::LimitReached
    );
    assert_eq!(
        login(n as u32 + 1, LimitPolicy::Deny).await,
        CreateOutcome::Created { evicted: vec![] }
    );
    // Now n + 1 live: evict_oldest at n + 1 takes the first created.
    assert_eq!(
        login(n as u32 + 1, LimitPolicy::EvictOldest).await,
        CreateOutcome::Created {
            evicted: vec![oldest[0].clone()]
        }
    );
    // evict_idlest at n + 1 takes the least recently seen still there.
    let idle_victim = idlest
        .iter()
        .find(|k| **k != oldest[0])
        .expect("a victim")
        .clone();
    assert_eq!(
        login(n as u32 + 1, LimitPolicy::EvictIdlest).await,
        CreateOutcome::Created {
            evicted: vec![idle_victim.clone()]
        }
    );
    // n + 1 live; lowering the limit to n - 1 evicts three at once, oldest first.
    let next: Vec<StorageKey> = oldest
        .iter()
        .filter(|k| **k != oldest[0] && **k != idle_victim)
        .take(3)
        .cloned()
        .collect();
    match login(n as u32 - 1, LimitPolicy::EvictOldest).await {
        CreateOutcome::Created { mut evicted } => {
            evicted.sort();
            let mut want = next.clone();
            want.sort();
            assert_eq!(evicted, want);
        }
        other => panic!("create: {other:?}"),
    }
    for k in [&oldest[0], &idle_victim, &next[0], &next[1], &next[2]] {
        assert!(store.load(k, at).await.expect("load").is_none());
    }
    assert_eq!(
        store.list_user(&user, at).await.expect("list").len(),
        n as usize - 1
    );
}

/// Declares one `#[tokio::test]` per conformance property for the store that `$factory` (an
/// async closure or fn returning a fresh, isolated `Arc<dyn SessionStore>`) builds.
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        $crate::__conformance_tests!($factory;
            create_never_overwrites, create_replaces_expired_record, round_trips_record, load_absent_is_none,
            load_after_expiry_is_none, save_delta_applies_per_key,
            save_delta_keeps_the_last_change_and_large_deltas,
            tricky_keys_and_values_round_trip,
            concurrent_writers_keep_every_key, save_after_destroy_does_not_resurrect,
            user_index_list_and_revoke, user_index_prunes_expired, limit_deny_is_atomic,
            limit_evict_oldest_is_atomic, limit_evict_idlest_is_atomic, cleanup_and_count,
            scan_visits_every_record, health_ok,
            record_cap_holds_under_concurrency,
            // Session-level races (issue 14, item 2), in `session_races`.
            rotate_race_leaves_one_successor, rotate_logout_race_leaves_at_most_one,
            rotate_after_logout_and_revoke_brings_nothing_back, elevate_race_leaves_one_successor,
            login_keeps_only_its_own_users_data, destroy_reports_the_removal_once,
            user_index_prunes_expired_over_logins, limit_picks_the_right_victim_among_thousands
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let store: $crate::conformance::Store = ($factory)().await;
                $crate::conformance::$name(store).await;
            }
        )*
    };
}
