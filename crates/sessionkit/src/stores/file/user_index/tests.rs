//! The per-user index file under damage: a torn, corrupted or huge file never lets a login past
//! the limit, and is rebuilt from the records.

use super::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use crate::record::Record;
use crate::store::{CreateOutcome, LimitPolicy, SessionLimit};
use crate::stores::file::files::wall_millis;
use crate::stores::file::layout::user_hash;
use crate::stores::file::{FileOptions, FileStore};

const USER: &str = "idx-user";
const MAX: u32 = 3;

fn key_of(i: u64) -> StorageKey {
    StorageKey::parse(&user_hash(&format!("index key {i}"))).unwrap()
}

fn session(now: Timestamp, i: u64) -> Record {
    let mut r = Record::default();
    r.meta.user_id = Some(USER.into());
    r.meta.created_at = Timestamp(now.0 + i);
    r.meta.last_seen_at = Timestamp(now.0 + i);
    r.meta.idle_expires_at = now.add(Duration::from_secs(3600));
    r.meta.absolute_expires_at = now.add(Duration::from_secs(7200));
    r
}

fn limit(policy: LimitPolicy) -> SessionLimit {
    SessionLimit {
        max: Some(MAX),
        policy,
    }
}

fn index_path(root: &Path) -> PathBuf {
    let uh = user_hash(USER);
    root.join("users")
        .join(&uh[..2])
        .join(&uh[2..4])
        .join(index_name(&uh))
}

/// A store whose user has `MAX` live sessions (the limit), filed in an index this process
/// has read (so the next login reads only what was appended since).
fn at_the_limit() -> (tempfile::TempDir, FileStore, Timestamp) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("s"), FileOptions::default()).unwrap();
    let now = Timestamp(wall_millis());
    for i in 0..u64::from(MAX) {
        let out = store
            .inner
            .create(&key_of(i), &session(now, i), limit(LimitPolicy::Deny), now)
            .unwrap();
        assert!(matches!(out, CreateOutcome::Created { .. }), "{out:?}");
    }
    (dir, store, now)
}

/// What a damaged index file is made of: bytes of any kind, the real file cut anywhere
/// (at an operation's boundary too), or the real file with garbage appended.
#[derive(Debug, Clone)]
enum Damage {
    Replace(Vec<u8>),
    Truncate(usize),
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(Damage::Replace),
        // Not an empty tail: a header alone is a well-formed empty index, which a process
        // that never read the file cannot tell from a real one (see `index_open`).
        proptest::collection::vec(any::<u8>(), 1..400).prop_map(|tail| {
            let mut b = INDEX_MAGIC.to_vec();
            b.extend_from_slice(&[7; 8]);
            b.extend(tail);
            Damage::Replace(b)
        }),
        prop_oneof![
            0..(INDEX_HEADER + 3 * INDEX_OP + 1),
            (0usize..3).prop_map(|n| INDEX_HEADER + n * INDEX_OP),
        ]
        .prop_map(Damage::Truncate),
        proptest::collection::vec(any::<u8>(), 1..300).prop_map(Damage::Append),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the index file holds, a login neither panics nor goes past the per-user
    /// limit: `deny` refuses, an evicting policy takes exactly one live session of the
    /// user, and the user is left with `MAX` live sessions.
    #[test]
    fn a_damaged_index_file_never_lets_a_login_past_the_limit(d in damage(), evict in any::<bool>()) {
        let (dir, store, now) = at_the_limit();
        let path = index_path(&dir.path().join("s"));
        let real = std::fs::read(&path).unwrap();
        let bytes = match d {
            Damage::Replace(b) => b,
            Damage::Truncate(n) => real[..n.min(real.len())].to_vec(),
            Damage::Append(tail) => [real, tail].concat(),
        };
        std::fs::write(&path, &bytes).unwrap();
        let policy = if evict { LimitPolicy::EvictOldest } else { LimitPolicy::Deny };
        let new = key_of(99);
        let out = store.inner.create(&new, &session(now, 99), limit(policy), now).unwrap();
        match (policy, out) {
            (LimitPolicy::Deny, CreateOutcome::LimitReached) => {}
            (LimitPolicy::EvictOldest, CreateOutcome::Created { evicted }) => {
                prop_assert_eq!(evicted, vec![key_of(0)]);
            }
            (_, out) => prop_assert!(false, "{:?} under {:?}", out, policy),
        }
        let live = store.inner.list_user(USER, now).unwrap();
        prop_assert_eq!(live.len(), MAX as usize);
    }
}

/// A huge index file (here a sparse 1 TiB one behind a valid header) is read in bounded
/// pieces: the login rebuilds the index instead of allocating the file's size (which
/// aborted the process: "memory allocation failed").
#[test]
fn a_huge_index_file_is_rebuilt_without_reading_it_whole() {
    let (dir, store, now) = at_the_limit();
    let path = index_path(&dir.path().join("s"));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(1 << 40).unwrap();
    drop(f);
    let out = store
        .inner
        .create(
            &key_of(99),
            &session(now, 99),
            limit(LimitPolicy::Deny),
            now,
        )
        .unwrap();
    assert_eq!(out, CreateOutcome::LimitReached);
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(size, (INDEX_HEADER + MAX as usize * INDEX_OP) as u64);
}
