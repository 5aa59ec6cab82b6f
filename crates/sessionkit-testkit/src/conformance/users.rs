//! The per-user index: listing, revoking, pruning, and the per-user limit's atomicity and choice
//! of victim, up to thousands of sessions per user.

use super::*;

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
