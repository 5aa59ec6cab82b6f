//! Write-through: a process's own write keeps the session cached (the next load is a hit, and
//! the write was the only round trip), and no write of another process, however it
//! interleaves, is ever hidden.

use super::*;

fn n_of(r: &sessionkit::store::Record, name: &str) -> Option<u64> {
    r.data.get(name).map(|v| v.parse().unwrap())
}

/// A session this process reads stays cached across its own writes: each load after a save is
/// a hit with the value just written, and nothing but the writes reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn own_writes_keep_the_session_cached() {
    let a = process(&shared_server().url(), &unique_prefix()).await;
    let key = new_key();
    must_create(&a.store, &key, &record_at(Some("wt"), now())).await;
    assert!(a.store.load(&key, now()).await.unwrap().is_some());
    let before = a.store.stats();
    for i in 0..100u64 {
        let saved = a
            .store
            .save_delta(&key, &set_delta("n", i), now())
            .await
            .unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }), "{saved:?}");
        let got = a.store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(value(&got, "n"), i);
    }
    // A touch is a write too.
    let touch = Touch {
        last_seen_at: now(),
        idle_expires_at: now().add(Duration::from_secs(7200)),
    };
    let _ = a.store.touch(&key, touch, now()).await.unwrap();
    let got = a.store.load(&key, now()).await.unwrap().unwrap();
    assert_eq!(got.meta.idle_expires_at, touch.idle_expires_at);

    let after = a.store.stats();
    assert_eq!(
        after.misses, before.misses,
        "a load after an own write missed: {after:?}"
    );
    assert_eq!(after.hits - before.hits, 101, "{after:?}");
    assert_eq!(after.kept_writes - before.kept_writes, 101, "{after:?}");
    // The first load only: a write costs no read.
    assert_eq!(a.remote_loads(), 1);
}

/// Process A writes, B writes, A writes, with both caching the session: each read, in either
/// process, returns the last write, and A's reads after its own writes are hits. B destroys
/// it: A sees nothing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_between_two_of_another_process_is_seen() {
    let url = shared_server().url();
    let prefix = unique_prefix();
    let a = process(&url, &prefix).await;
    let b = process(&url, &prefix).await;
    let rounds = 100u64;
    let mut a_hits = 0;
    for i in 0..rounds {
        let key = new_key();
        must_create(&a.store, &key, &record_at(Some("ab"), now())).await;
        assert!(a.store.load(&key, now()).await.unwrap().is_some());
        assert!(b.store.load(&key, now()).await.unwrap().is_some());

        let _ = a
            .store
            .save_delta(&key, &set_delta("n", 3 * i), now())
            .await
            .unwrap();
        let got = b.store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(
            value(&got, "n"),
            3 * i,
            "round {i}: B missed A's first write"
        );

        let _ = b
            .store
            .save_delta(&key, &set_delta("n", 3 * i + 1), now())
            .await
            .unwrap();
        let got = a.store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(value(&got, "n"), 3 * i + 1, "round {i}: A hid B's write");

        let _ = a
            .store
            .save_delta(&key, &set_delta("n", 3 * i + 2), now())
            .await
            .unwrap();
        let misses = a.store.stats().misses;
        let got = a.store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(
            value(&got, "n"),
            3 * i + 2,
            "round {i}: A lost its own write"
        );
        if a.store.stats().misses == misses {
            a_hits += 1;
        }
        let got = b.store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(
            value(&got, "n"),
            3 * i + 2,
            "round {i}: B missed A's second write"
        );

        assert!(b.store.destroy(&key).await.unwrap());
        assert!(
            a.store.load(&key, now()).await.unwrap().is_none(),
            "round {i}: A served a session B destroyed"
        );
        assert!(b.store.load(&key, now()).await.unwrap().is_none());
    }
    eprintln!(
        "A's reads after its own write: {a_hits}/{rounds} hits; A {:?}",
        a.store.stats()
    );
    assert_eq!(
        a_hits, rounds,
        "A's write-through did not keep the session cached"
    );
}

/// Both processes write one session at once, each its own value, and read it back after each
/// write. A read must show every write the other process had finished before the read began
/// (`done` is published after the save returns), and its own last write: write-through never
/// hides a concurrent write, however the two interleave on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_read_stale() {
    let url = shared_server().url();
    let prefix = unique_prefix();
    let a = Arc::new(process(&url, &prefix).await);
    let b = Arc::new(process(&url, &prefix).await);
    let key = new_key();
    must_create(&a.store, &key, &record_at(Some("race"), now())).await;
    let done = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let names = ["a", "b"];
    let writer = |me: usize, p: Arc<Process>| {
        let done = done.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let other = 1 - me;
            for i in 1..=300u64 {
                let _ = p
                    .store
                    .save_delta(&key, &set_delta(names[me], i), now())
                    .await
                    .unwrap();
                done[me].store(i, Ordering::SeqCst);
                let floor = done[other].load(Ordering::SeqCst);
                let got = p.store.load(&key, now()).await.unwrap().unwrap();
                assert_eq!(
                    n_of(&got, names[me]),
                    Some(i),
                    "{}: lost its own write",
                    names[me]
                );
                let seen = n_of(&got, names[other]).unwrap_or(0);
                assert!(
                    seen >= floor,
                    "{} read {}={seen} after {} had written {floor}",
                    names[me],
                    names[other],
                    names[other]
                );
            }
        })
    };
    let (ra, rb) = tokio::join!(writer(0, a.clone()), writer(1, b.clone()));
    ra.unwrap();
    rb.unwrap();
    eprintln!("A {:?}\nB {:?}", a.store.stats(), b.store.stats());
    assert!(a.store.stats().hits + b.store.stats().hits > 0);
}
