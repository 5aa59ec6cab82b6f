//! The store's side of server-assisted client-side caching: the data connection asks the
//! server to track the keys it reads and to tell another connection (the cache's, see
//! `RedisInvalidation`) when anyone else changes one.
//!
//! - Every batch that the `Batcher` sends while a cache is attached starts with
//!   `CLIENT TRACKING ON REDIRECT <id> NOLOOP` and `CLIENT ID`. So every read in the batch
//!   is tracked, whatever connection the `ConnectionManager` is on by then, and invalidations
//!   go to the cache's current connection (`<id>`). `NOLOOP`: this connection's own writes,
//!   scripts included, are not reported back; the cache knows them already (it keeps what it
//!   wrote, see `CachedStore::save_delta`).
//! - A *lapse* is anything after which a key this process cached may no longer be tracked:
//!   the data connection changed (`CLIENT ID` differs: the old one's tracking died with it),
//!   the tracking command was refused (the cache's connection is gone), or a batch failed.
//!   The link reports a lapse before handing out the batch's replies, so no load in that batch
//!   can cache its result (the cache's flush voids the tickets taken before it).
//! - A connection that dies while nothing is sent is noticed by the cache's periodic probe
//!   (one `PING` through the batcher, which carries the same prefix).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use redis::{Cmd, RedisResult, Value};

use super::batcher::Batcher;

/// What the cache is told on a lapse (a reason, for the logs).
pub(crate) type Lapse = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Shared by a standalone store's batcher and the cache's invalidation source.
#[derive(Default)]
pub(super) struct TrackingLink {
    /// `CLIENT ID` of the connection that receives invalidations; 0: no cache attached now.
    redirect: AtomicI64,
    /// `CLIENT ID` of the data connection, as last seen; 0: none yet.
    data_client: AtomicI64,
    on_lapse: Mutex<Option<Lapse>>,
}

impl TrackingLink {
    /// The commands that start a batch, if a cache is attached.
    pub(super) fn prefix(&self) -> Option<[Cmd; 2]> {
        let to = self.redirect.load(Ordering::Acquire);
        (to != 0).then(|| {
            let mut on = redis::cmd("CLIENT");
            on.arg("TRACKING")
                .arg("ON")
                .arg("REDIRECT")
                .arg(to)
                .arg("NOLOOP");
            let mut id = redis::cmd("CLIENT");
            id.arg("ID");
            [on, id]
        })
    }

    /// Checks the replies to [`prefix`](Self::prefix) (`None`: the batch failed as a whole);
    /// reports a lapse first if tracking may have lapsed.
    pub(super) fn check(&self, replies: Option<(&Value, &Value)>) {
        let why = match replies {
            None => Some("a batch on the data connection failed"),
            Some((Value::Okay, Value::Int(id))) => {
                let before = self.data_client.swap(*id, Ordering::AcqRel);
                (before != 0 && before != *id).then_some("the data connection was replaced")
            }
            Some(_) => Some("the server refused to track the data connection's reads"),
        };
        if let Some(why) = why {
            let hook = self.on_lapse.lock().clone();
            if let Some(hook) = hook {
                hook(why);
            }
        }
    }
}

/// The handle a cache's invalidation source holds on a standalone [`RedisStore`](super::RedisStore).
#[derive(Clone)]
pub(crate) struct TrackingHandle {
    pub(super) batcher: Batcher,
}

impl TrackingHandle {
    /// Starts (`Some(id)`: invalidations go to client `id`) or stops tracking the data
    /// connection's reads from the next batch on, with `on_lapse` told of every lapse.
    pub(crate) fn attach(&self, redirect: Option<i64>, on_lapse: Option<Lapse>) {
        let link = &self.batcher.link;
        *link.on_lapse.lock() = on_lapse;
        link.redirect
            .store(redirect.unwrap_or(0), Ordering::Release);
    }

    /// One `PING` through the batcher: checks the data connection (a lapse is reported if it
    /// was replaced or fails) and keeps it from idling out.
    pub(crate) async fn probe(&self) -> RedisResult<Value> {
        self.batcher.query(redis::cmd("PING")).await
    }
}
