//! The record size cap, enforced atomically with the merge of a save.

use super::*;

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
