//! MigratingStore (issue 16, item 8): the conformance suite on memory in front of memory; old
//! sessions move on first use with their expiry and user; lists, counts and scans see both
//! stores; and the races between a move and a destroy, in one process and across two (two
//! migrating stores over the same pair of stores), never leave an ended session anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Delta, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey, StoreError,
    Timestamp, Value,
};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::stores::migrating::MigratingStore;
use sessionkit_testkit::conformance::{record_at, Store};
use sessionkit_testkit::store_conformance;
use tokio::sync::Notify;

store_conformance!(|| async {
    Arc::new(MigratingStore::new(
        Arc::new(MemoryStore::new()),
        Arc::new(MemoryStore::new()),
    )) as Store
});

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_races_over_a_move() {
    let old: Store = Arc::new(MemoryStore::new());
    let migrating: Store = Arc::new(MigratingStore::new(
        Arc::new(MemoryStore::new()),
        old.clone(),
    ));
    sessionkit_testkit::session_races::old_sessions_race_moves_rotates_and_logout(old, migrating)
        .await;
}

#[tokio::test]
async fn create_and_server_stats_reach_the_primary() {
    sessionkit_testkit::forwarding::check(
        |s| Arc::new(MigratingStore::new(s, Arc::new(MemoryStore::new()))),
        &[
            "name",
            "load",
            "save_delta",
            "touch",
            "destroy",
            "list_user",
            "destroy_user",
            "count",
            "cleanup_expired",
            "scan",
            "health",
        ],
    )
    .await;
}

async fn add(store: &dyn SessionStore, user: Option<&str>, note: &str) -> StorageKey {
    let now = SystemClock.now();
    let mut r = record_at(user, now);
    r.data.insert("note".into(), Value::to_json(note).unwrap());
    let key = SessionId::generate().unwrap().storage_key();
    let out = store
        .create(&key, &r, SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    key
}

fn note(r: &Record) -> String {
    r.data["note"].as_json().to_owned()
}

#[tokio::test]
async fn old_sessions_move_on_first_use_and_both_stores_are_seen_until_then() {
    let (primary, old) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let store = MigratingStore::new(primary.clone(), old.clone());
    let now = SystemClock.now();
    let a1 = add(&*old, Some("alice"), "a1").await;
    let a2 = add(&*old, Some("alice"), "a2").await;
    let anon = add(&*old, None, "anon").await;
    let a3 = add(&store, Some("alice"), "a3").await;
    assert!(
        old.load(&a3, now).await.unwrap().is_none(),
        "new sessions go to the primary"
    );

    // Lists and counts see both stores.
    let mut listed: Vec<_> = store.list_user("alice", now).await.unwrap();
    listed.sort_by(|x, y| x.0.cmp(&y.0));
    let mut expected = vec![a1.clone(), a2.clone(), a3.clone()];
    expected.sort();
    assert_eq!(
        listed.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(store.count().await.unwrap(), 4);
    let mut scanned = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.scan(cursor.take(), 1).await.unwrap();
        scanned.extend(page.records.into_iter().map(|(k, _)| k));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    scanned.sort();
    let mut all = vec![a1.clone(), a2.clone(), a3.clone(), anon.clone()];
    all.sort();
    assert_eq!(scanned, all);

    // A load moves the session: same record, now in the primary only, in its user's index.
    let was = old.load(&a1, now).await.unwrap().unwrap();
    let moved = store.load(&a1, now).await.unwrap().unwrap();
    assert_eq!(moved, was);
    assert!(old.load(&a1, now).await.unwrap().is_none());
    assert_eq!(primary.load(&a1, now).await.unwrap().unwrap(), was);
    assert!(primary
        .list_user("alice", now)
        .await
        .unwrap()
        .iter()
        .any(|(k, _)| *k == a1));

    // A save to a session not yet moved moves it, then applies.
    let delta = Delta {
        changes: vec![("note".into(), Some(Value::to_json("anon 2").unwrap()))],
        touch: None,
        max_size: None,
    };
    let out = store.save_delta(&anon, &delta, now).await.unwrap();
    assert!(matches!(out, SaveOutcome::Saved { .. }), "{out:?}");
    assert!(old.load(&anon, now).await.unwrap().is_none());
    assert_eq!(
        note(&primary.load(&anon, now).await.unwrap().unwrap()),
        "\"anon 2\""
    );

    // Sign out everywhere ends the user's sessions in both stores.
    let mut ended = store.destroy_user("alice", None).await.unwrap();
    ended.sort();
    let mut expected = vec![a1.clone(), a2.clone(), a3.clone()];
    expected.sort();
    assert_eq!(ended, expected);
    for k in [&a1, &a2, &a3] {
        assert!(store.load(k, now).await.unwrap().is_none());
        assert!(old.load(k, now).await.unwrap().is_none());
    }
    assert!(store.list_user("alice", now).await.unwrap().is_empty());

    // A destroy of an old session ends it in the old store, once.
    let b = add(&*old, Some("bob"), "b").await;
    assert!(store.destroy(&b).await.unwrap());
    assert!(!store.destroy(&b).await.unwrap());
    assert!(store.load(&b, now).await.unwrap().is_none());
}

/// Where a [`Paused`] store stops: before (or just after) one of its operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    AfterLoad,
    BeforeDestroy,
}

/// One process's view of the shared old store: stops once at `at` until released, so a test
/// can run another process's operations in between.
#[derive(Debug)]
struct Paused {
    inner: Arc<dyn SessionStore>,
    at: Mutex<Option<At>>,
    reached: Notify,
    go: Notify,
}

impl Paused {
    fn new(inner: Arc<dyn SessionStore>, at: At) -> Arc<Self> {
        Arc::new(Self {
            inner,
            at: Mutex::new(Some(at)),
            reached: Notify::new(),
            go: Notify::new(),
        })
    }

    async fn stop_if(&self, here: At) {
        let stop = {
            let mut at = self.at.lock();
            let stop = *at == Some(here);
            if stop {
                *at = None;
            }
            stop
        };
        if stop {
            self.reached.notify_one();
            self.go.notified().await;
        }
    }
}

#[async_trait]
impl sessionkit::store::StoreWrapper for Paused {
    type Inner = dyn SessionStore;
    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }
    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let r = self.inner.load(key, now).await;
        self.stop_if(At::AfterLoad).await;
        r
    }
    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.stop_if(At::BeforeDestroy).await;
        self.inner.destroy(key).await
    }
}

/// Two processes over the same primary and old store: A moves a session and stops at `at`;
/// B destroys it meanwhile; A goes on. The session ends for everyone: A's load reports nothing,
/// neither store holds it, its user lists nothing, and B's destroy said `true`.
async fn a_destroy_in_another_process_overtakes_a_move(at: At) {
    let primary: Store = Arc::new(MemoryStore::new());
    let old: Store = Arc::new(MemoryStore::new());
    let paused = Paused::new(old.clone(), at);
    let process_a = Arc::new(MigratingStore::new(primary.clone(), paused.clone()));
    let process_b = MigratingStore::new(primary.clone(), old.clone());
    let key = add(&*old, Some("carol"), "c").await;
    let now = SystemClock.now();

    let mover = {
        let (a, key) = (process_a.clone(), key.clone());
        tokio::spawn(async move { a.load(&key, now).await.unwrap() })
    };
    paused.reached.notified().await;
    assert!(process_b.destroy(&key).await.unwrap(), "{at:?}");
    paused.go.notify_one();
    let loaded = mover.await.unwrap();

    assert!(loaded.is_none(), "{at:?}: the move served an ended session");
    for (name, s) in [("primary", &primary), ("old", &old)] {
        assert!(s.load(&key, now).await.unwrap().is_none(), "{at:?}: {name}");
        assert!(
            s.list_user("carol", now).await.unwrap().is_empty(),
            "{at:?}: {name}"
        );
    }
    assert!(process_a.load(&key, now).await.unwrap().is_none());
    assert!(process_b.load(&key, now).await.unwrap().is_none());
    assert!(!process_a.destroy(&key).await.unwrap(), "ended once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_between_the_moves_load_and_copy_ends_the_session() {
    a_destroy_in_another_process_overtakes_a_move(At::AfterLoad).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_between_the_moves_copy_and_removal_ends_the_session() {
    a_destroy_in_another_process_overtakes_a_move(At::BeforeDestroy).await;
}

/// In one process a destroy waits for the move of its key: the move completes (the load sees
/// the session, as it was live when the request began), then the destroy ends it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_one_process_a_destroy_takes_its_turn_after_the_move() {
    let primary: Store = Arc::new(MemoryStore::new());
    let old: Store = Arc::new(MemoryStore::new());
    let paused = Paused::new(old.clone(), At::AfterLoad);
    let store = Arc::new(MigratingStore::new(primary.clone(), paused.clone()));
    let key = add(&*old, Some("dave"), "d").await;
    let now = SystemClock.now();
    let mover = {
        let (s, key) = (store.clone(), key.clone());
        tokio::spawn(async move { s.load(&key, now).await.unwrap() })
    };
    paused.reached.notified().await;
    let destroyer = {
        let (s, key) = (store.clone(), key.clone());
        tokio::spawn(async move { s.destroy(&key).await.unwrap() })
    };
    tokio::task::yield_now().await;
    paused.go.notify_one();
    assert!(mover.await.unwrap().is_some());
    assert!(destroyer.await.unwrap());
    assert!(primary.load(&key, now).await.unwrap().is_none());
    assert!(old.load(&key, now).await.unwrap().is_none());
    assert!(!store.destroy(&key).await.unwrap());
}
