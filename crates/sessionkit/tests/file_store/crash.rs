//! Writers killed with SIGKILL mid-write (child processes running this binary again) leave no
//! corrupt record, no lost update, no record missing from its user's index and no lock held.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::*;

const CHILD_ENV: &str = "SESSIONKIT_FILE_CRASH_CHILD_DIR";
const CRASH_USER: &str = "crash-user";
const CRASH_LIMIT: SessionLimit = SessionLimit {
    max: Some(5),
    policy: LimitPolicy::EvictOldest,
};

/// The session both the parent and the killed children write to.
fn shared_key() -> StorageKey {
    SessionId::from_bytes([0xaa; 32]).storage_key()
}

fn fixed_key(i: u8) -> StorageKey {
    SessionId::from_bytes([i; 32]).storage_key()
}

/// Not a test on its own: the killed child of `killed_writers_leave_no_corrupt_record`, which
/// runs this binary again with `--exact crash::child_writer` and the directory in `CHILD_ENV`.
/// Without it, it returns at once.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = FileStore::open(&dir, FileOptions::default()).unwrap();
        let big = "x".repeat(200 * 1024);
        let mut tasks = Vec::new();
        for t in 0..4u8 {
            let store = store.clone();
            let big = big.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    i += 1;
                    let value = format!("{i}{}", &big[..(i as usize * 4099) % big.len()]);
                    // Read-modify-write of the shared session, big values to widen the window.
                    let out = store
                        .save_delta(&shared_key(), &set_delta(&format!("c{t}"), &value), now())
                        .await
                        .unwrap();
                    assert!(matches!(out, SaveOutcome::Saved { .. }));
                    // Logins of one user under a limit: evictions under the user lock.
                    let mut r = record_at(Some(CRASH_USER), now());
                    r.data.insert("v".into(), Value::to_json(&value).unwrap());
                    let _ = store
                        .create(&new_key(), &r, CRASH_LIMIT, now())
                        .await
                        .unwrap();
                    // Fixed keys, created, replaced and destroyed over and over.
                    let k = fixed_key(t * 16 + (i % 16) as u8);
                    match i % 3 {
                        0 => {
                            store.destroy(&k).await.unwrap();
                        }
                        _ => {
                            let out = store
                                .save_delta(&k, &set_delta("v", &value), now())
                                .await
                                .unwrap();
                            if out == SaveOutcome::Missing {
                                let _ = store
                                    .create(
                                        &k,
                                        &record_at(None, now()),
                                        SessionLimit::UNLIMITED,
                                        now(),
                                    )
                                    .await
                                    .unwrap();
                            }
                        }
                    }
                    if t == 0 && i == 1 {
                        println!("child-writer: started");
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_writers_leave_no_corrupt_record() {
    const ROUNDS: u64 = 30;
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let mut shared = record_at(None, now());
    shared.meta.idle_expires_at = now().add(48 * HOUR);
    shared.meta.absolute_expires_at = now().add(48 * HOUR);
    create(&store, &shared_key(), &shared).await;
    let exe = std::env::current_exe().unwrap();

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let started = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains("child-writer: started"))
        });
        let started = tokio::time::timeout(Duration::from_secs(120), started)
            .await
            .expect("child did not start writing in time")
            .unwrap();
        assert!(started, "child exited before writing: {:?}", child.wait());
        // The parent writes its own key of the shared session while the child writes.
        let d = set_delta(&format!("p{round}"), round.to_string());
        let out = store.save_delta(&shared_key(), &d, now()).await.unwrap();
        assert!(matches!(out, SaveOutcome::Saved { .. }));
        tokio::time::sleep(Duration::from_millis(3 + (round * 37) % 150)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "child died on its own: {:?}",
            child.wait()
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    // Every record file decodes; a killed write leaves at most a temp file.
    let mut all = Vec::new();
    walk(&dir.join("sessions"), &mut all);
    let (mut records, mut temps) = (0, 0);
    let mut of_user = BTreeSet::new();
    for p in &all {
        let name = p.file_name().unwrap().to_str().unwrap();
        if let Some(key) = StorageKey::parse(name) {
            let r = FileStore::decode_file(&std::fs::read(p).unwrap())
                .unwrap_or_else(|e| panic!("{} is corrupt: {e}", p.display()));
            if r.meta.user_id.as_deref() == Some(CRASH_USER) {
                of_user.insert(key.clone());
            }
            assert!(
                !matches!(store.load(&key, now()).await, Err(StoreError::Corrupt(_))),
                "{name}"
            );
            records += 1;
        } else if name.starts_with(".tmp.") {
            temps += 1;
        }
    }
    println!("after {ROUNDS} kills: {records} records, {temps} temp files left by killed writes");
    assert!(records > 0);

    // No lost update across processes: every key the parent wrote is there.
    let got = store.load(&shared_key(), now()).await.unwrap().unwrap();
    for round in 0..ROUNDS {
        assert_eq!(
            got.data.get(&format!("p{round}")).map(Value::as_json),
            Some(round.to_string())
                .map(|s| format!("\"{s}\""))
                .as_deref(),
            "the parent's write of round {round} was lost"
        );
    }
    // Every record of the user is in the user index (marker before record), and the limit held.
    let listed: BTreeSet<StorageKey> = store
        .list_user(CRASH_USER, now())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(listed, of_user, "a record is missing from its user's index");
    assert!(listed.len() <= 5, "limit broken: {}", listed.len());

    // No lock is left held, and the store still works.
    for i in 0..64 {
        let _ = store
            .save_delta(&fixed_key(i), &set_delta("after", "1"), now())
            .await
            .unwrap();
    }
    create(&store, &new_key(), &record_at(Some(CRASH_USER), now())).await;
    store.cleanup_expired(now()).await.unwrap();
    let gone = store.destroy_user(CRASH_USER, None).await.unwrap();
    assert!(!gone.is_empty());
    assert!(store.list_user(CRASH_USER, now()).await.unwrap().is_empty());
}
