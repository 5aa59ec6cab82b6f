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

/// A delta that sets one value, `name` to `value` (as JSON), and touches nothing.
pub fn set_delta(name: &str, value: impl serde::Serialize) -> Delta {
    delta(vec![(
        name.to_owned(),
        Some(Value::to_json(&value).expect("json")),
    )])
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

mod cap;
mod records;
mod upkeep;
mod users;

pub use cap::*;
pub use records::*;
pub use upkeep::*;
pub use users::*;
// The session-level races (issue 14, item 2) run in the same suite.
pub use crate::session_races::{
    destroy_reports_the_removal_once, elevate_race_leaves_one_successor,
    login_keeps_only_its_own_users_data, rotate_after_logout_and_revoke_brings_nothing_back,
    rotate_logout_race_leaves_at_most_one, rotate_race_leaves_one_successor,
};

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
