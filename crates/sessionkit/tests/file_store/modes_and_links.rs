//! File modes whatever the umask, and symbolic links planted in the directory (a record,
//! a shard folder, a spare, a user's index): never followed.

use std::os::unix::fs::symlink;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_0600_and_folders_0700_whatever_the_umask() {
    // The most permissive umask: modes must come from the store, not from the umask.
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let tmp = fresh_dir();
    let dir = tmp.path().join("not-yet-there");
    let store = open(&dir);
    let key = new_key();
    create(&store, &key, &record_at(Some("alice"), now())).await;
    let saved = store
        .save_delta(&key, &set_delta("a", "b"), now())
        .await
        .unwrap();
    assert!(matches!(saved, SaveOutcome::Saved { .. }));
    create(&store, &new_key(), &record_at(None, now())).await;
    store.cleanup_expired(now()).await.unwrap();
    rustix::process::umask(old);

    assert_eq!(mode(&dir), 0o700);
    let mut all = Vec::new();
    walk(&dir, &mut all);
    assert!(all.len() > 10, "{all:?}");
    for p in all {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{}", p.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_directory_open_to_others_is_tightened() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _store = open(&dir);
    assert_eq!(mode(&dir), 0o700);
}

/// A valid record file with a secret in it, as an attacker would plant outside the directory.
fn canary_record() -> Vec<u8> {
    let mut r = record_at(Some("victim"), now());
    r.data
        .insert("secret".into(), Value::to_json("canary").unwrap());
    r.encode()
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    walk(dir, &mut all);
    all.sort();
    all.into_iter()
        .map(|p| {
            let bytes = if p.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (p, bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_inside_the_directory_are_never_followed() {
    let outside_guard = fresh_dir();
    let outside = outside_guard.path().to_path_buf();
    let canary = outside.join("canary");
    std::fs::write(&canary, canary_record()).unwrap();
    // A tree outside that looks like a shard folder with a record in it.
    let key_b = StorageKey::parse(&format!("ee01{}", "0".repeat(60))).unwrap();
    std::fs::create_dir_all(outside.join("tree/01")).unwrap();
    std::fs::write(
        outside.join("tree/01").join(key_b.as_str()),
        canary_record(),
    )
    .unwrap();
    let before = snapshot(&outside);

    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);

    // 1. The record itself is a link to the canary.
    let key_a = StorageKey::parse(&format!("aa01{}", "1".repeat(60))).unwrap();
    let path_a = record_path(&dir, &key_a);
    std::fs::create_dir_all(path_a.parent().unwrap()).unwrap();
    symlink(&canary, &path_a).unwrap();
    // 2. A first-level shard folder is a link to the outside tree.
    symlink(outside.join("tree"), dir.join("sessions/ee")).unwrap();
    let key_c = StorageKey::parse(&format!("ee02{}", "2".repeat(60))).unwrap();
    // 3. The spare file of a real record (what the next save rewrites) is a link to the canary.
    let key_e = StorageKey::parse(&format!("cc01{}", "4".repeat(60))).unwrap();
    create(&store, &key_e, &record_at(None, now())).await;
    symlink(
        &canary,
        record_path(&dir, &key_e).with_file_name(format!(".spare.{}", key_e.as_str())),
    )
    .unwrap();
    // 4. Every user shard folder is a link to the outside tree.
    for i in 0..=255u8 {
        symlink(outside.join("tree"), dir.join(format!("users/{i:02x}"))).unwrap();
    }

    let t = now();
    for key in [&key_a, &key_b, &key_c] {
        let got = store.load(key, t).await;
        assert!(
            !matches!(got, Ok(Some(_)) | Err(StoreError::Corrupt(_))),
            "load read through a link: {got:?}"
        );
        let saved = store.save_delta(key, &set_delta("x", "y"), t).await;
        assert!(!matches!(saved, Ok(SaveOutcome::Saved { .. })), "{saved:?}");
        let created = store
            .create(key, &record_at(None, t), SessionLimit::UNLIMITED, t)
            .await;
        assert!(
            !matches!(created, Ok(CreateOutcome::Created { .. })),
            "{created:?}"
        );
        let _ = store.destroy(key).await;
    }
    // A save that would write through the planted spare fails; the record is unchanged.
    assert!(store
        .save_delta(&key_e, &set_delta("x", "y"), t)
        .await
        .is_err());
    let e = store.load(&key_e, t).await.unwrap().unwrap();
    assert!(!e.data.contains_key("x"));
    // A user shard is a link: logins fail rather than write outside.
    let login = store
        .create(
            &new_key(),
            &record_at(Some("mallory"), t),
            SessionLimit::UNLIMITED,
            t,
        )
        .await;
    assert!(login.is_err(), "{login:?}");
    assert!(store.list_user("victim", t).await.is_err());
    // Cleanup walks past all of it.
    store.cleanup_expired(t.add(48 * HOUR)).await.unwrap();
    let _ = store.scan(None, 100).await.unwrap();

    assert_eq!(snapshot(&outside), before, "something outside was changed");
    assert!(canary.exists());
}

/// A user's index file replaced by a link to a file outside: logins, destroys and the revoke of
/// every session of the user never write through it (they fail, or replace the link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_index_planted_as_a_link_is_never_followed() {
    let outside_guard = fresh_dir();
    let canary = outside_guard.path().join("canary");
    // A valid index header: an index opened through the link would be appended to.
    let canary_bytes = b"skidx 1\n12345678".to_vec();
    std::fs::write(&canary, &canary_bytes).unwrap();
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    let limit = SessionLimit {
        max: Some(3),
        policy: LimitPolicy::EvictOldest,
    };
    let first = new_key();
    let out = store
        .create(&first, &record_at(Some("ivy"), t), limit, t)
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    let files = index_files(&dir);
    assert_eq!(files.len(), 1);
    std::fs::remove_file(&files[0]).unwrap();
    symlink(&canary, &files[0]).unwrap();
    let login = store
        .create(&new_key(), &record_at(Some("ivy"), t), limit, t)
        .await;
    assert!(login.is_err(), "{login:?}");
    let _ = store.destroy(&first).await;
    let _ = store.destroy_user("ivy", None).await;
    assert_eq!(std::fs::read(&canary).unwrap(), canary_bytes);
    assert!(std::fs::symlink_metadata(&canary).unwrap().is_file());
}
