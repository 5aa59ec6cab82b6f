//! Opening a directory: sessions survive a restart, directories of older layouts are upgraded
//! (unknown ones refused), and `file://` URLs open the store.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let key = new_key();
    {
        let store = open(&dir);
        create(&store, &key, &record_at(Some("carol"), now())).await;
        let saved = store
            .save_delta(&key, &set_delta("k", "v"), now())
            .await
            .unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }));
    }
    let store = open(&dir);
    let got = store.load(&key, now()).await.unwrap().unwrap();
    assert_eq!(got.data["k"].as_json(), "\"v\"");
    assert_eq!(got.meta.user_id.as_deref(), Some("carol"));
    assert_eq!(store.list_user("carol", now()).await.unwrap().len(), 1);
    assert_eq!(store.count().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_of_older_layouts_are_upgraded_and_unknown_ones_refused() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let key = new_key();
    create(&open(&dir), &key, &record_at(Some("erin"), now())).await;
    let current = std::fs::read_to_string(dir.join("VERSION")).unwrap();
    for old in [
        "sessionkit-file 1\n",
        "sessionkit-file 2\n",
        "sessionkit-file 3\n",
    ] {
        std::fs::write(dir.join("VERSION"), old).unwrap();
        let store = open(&dir);
        assert_eq!(
            std::fs::read_to_string(dir.join("VERSION")).unwrap(),
            current
        );
        saved(&store, &key, &set_delta("layout", old.trim()), now()).await;
        assert_eq!(store.list_user("erin", now()).await.unwrap().len(), 1);
    }
    std::fs::write(dir.join("VERSION"), "sessionkit-file 99\n").unwrap();
    assert!(FileStore::open(&dir, FileOptions::default()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_urls_open_the_file_store() {
    let guard = fresh_dir();
    let dir = guard.path().join("via-url");
    // A key of its own: without one the configuration would write a development key into
    // `./data`, the crate's folder.
    let config = sessionkit::Config::from_lookup(|k| {
        (k == "SECRET_KEY").then(|| "file-url-test-key-0123456789abcdefghijklmnop".to_owned())
    })
    .unwrap();
    let url = format!("file://{}", dir.display());
    let store = sessionkit::stores::open_url(&url, &config).await.unwrap();
    assert_eq!(store.name(), "file");
    let key = new_key();
    let out = store
        .create(
            &key,
            &record_at(None, now()),
            SessionLimit::UNLIMITED,
            now(),
        )
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    assert!(record_path(&dir, &key).exists());
}
