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
//!   the tracking command was refused (the cache's connection is gone), a batch failed, or the
//!   data connection is not the one the cache identified (`CLIENT ID` differs: the old one's
//!   tracking died with it, and the new one may even be on another server, behind a proxy or
//!   a DNS failover, where the redirect's ID means another client). The link reports a lapse
//!   before handing out the batch's replies, so no load in that batch can cache its result
//!   (the cache's flush voids the tickets taken before it); a replaced connection also makes
//!   the cache start over and identify the new one ([`TrackingHandle::identify`]).
//! - A connection that dies while nothing is sent is noticed by the cache's periodic probe
//!   (one `PING` through the batcher, which carries the same prefix).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use redis::{Cmd, RedisResult, Value};

use super::batcher::Batcher;

/// A lapse, as the cache is told of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lapse {
    /// Flush (the reason, for the logs).
    Flush(&'static str),
    /// The data connection is not the one identified: flush, and identify it again before
    /// caching anything more.
    Replaced,
}

/// What the cache is told a lapse with.
pub(crate) type OnLapse = Arc<dyn Fn(Lapse) + Send + Sync>;

/// `CLIENT TRACKING ON REDIRECT <to> NOLOOP`.
fn tracking_on(to: i64) -> Cmd {
    let mut on = redis::cmd("CLIENT");
    on.arg("TRACKING")
        .arg("ON")
        .arg("REDIRECT")
        .arg(to)
        .arg("NOLOOP");
    on
}

fn client_id() -> Cmd {
    let mut id = redis::cmd("CLIENT");
    id.arg("ID");
    id
}

/// Shared by a standalone store's batcher and the cache's invalidation source.
#[derive(Default)]
pub(super) struct TrackingLink {
    /// `CLIENT ID` of the connection that receives invalidations; 0: no cache attached now.
    redirect: AtomicI64,
    /// `CLIENT ID` of the data connection the cache identified; 0: none.
    data_client: AtomicI64,
    on_lapse: Mutex<Option<OnLapse>>,
}

impl TrackingLink {
    /// The commands that start a batch, if a cache is attached.
    pub(super) fn prefix(&self) -> Option<[Cmd; 2]> {
        let to = self.redirect.load(Ordering::Acquire);
        (to != 0).then(|| [tracking_on(to), client_id()])
    }

    /// Checks the replies to [`prefix`](Self::prefix) (`None`: the batch failed as a whole);
    /// reports a lapse first if tracking may have lapsed.
    pub(super) fn check(&self, replies: Option<(&Value, &Value)>) {
        let lapse = match replies {
            None => Some(Lapse::Flush("a batch on the data connection failed")),
            Some((Value::Okay, Value::Int(id))) => {
                (self.data_client.load(Ordering::Acquire) != *id).then_some(Lapse::Replaced)
            }
            Some(_) => Some(Lapse::Flush(
                "the server refused to track the data connection's reads",
            )),
        };
        if let Some(lapse) = lapse {
            let hook = self.on_lapse.lock().clone();
            if let Some(hook) = hook {
                hook(lapse);
            }
        }
    }
}

/// The handle a cache's invalidation source holds on a standalone [`RedisStore`](super::RedisStore).
#[derive(Clone)]
pub(crate) struct TrackingHandle {
    pub(super) batcher: Batcher,
    /// The store's URL is `rediss://`: what the cache's own connection must speak TLS with.
    pub(crate) tls: Option<super::tls::TlsRoots>,
}

impl TrackingHandle {
    /// Starts (`Some(id)`: invalidations go to client `id`) or stops tracking the data
    /// connection's reads from the next batch on, with `on_lapse` told of every lapse.
    pub(crate) fn attach(&self, redirect: Option<i64>, on_lapse: Option<OnLapse>) {
        let link = &self.batcher.link;
        *link.on_lapse.lock() = on_lapse;
        link.redirect
            .store(redirect.unwrap_or(0), Ordering::Release);
    }

    /// Identifies the data connection (call it detached): its server's `run_id`, for the cache
    /// to check that it is its own tracking connection's server, and its `CLIENT ID`, which
    /// every later batch is checked against. `None` if the connection changed meanwhile.
    pub(crate) async fn identify(&self) -> RedisResult<Option<String>> {
        let id = |v: Value| match v {
            Value::Int(n) => Some(n),
            _ => None,
        };
        let before = id(self.batcher.query(client_id()).await?);
        let info = self
            .batcher
            .query(redis::cmd("INFO").arg("server").clone())
            .await?;
        let after = id(self.batcher.query(client_id()).await?);
        let run_id = super::info_field::<String>(&info, "run_id");
        match (before, after, run_id) {
            (Some(a), Some(b), Some(run_id)) if a == b => {
                self.batcher.link.data_client.store(a, Ordering::Release);
                Ok(Some(run_id))
            }
            _ => Ok(None),
        }
    }

    /// Asks the server now to track the data connection's reads for client `redirect`, so that
    /// a server that refuses (an ACL without `client|tracking`) keeps the cache bypassed with
    /// the server's reason, rather than flushing it at every batch.
    pub(crate) async fn check_tracking(&self, redirect: i64) -> RedisResult<()> {
        self.batcher.query(tracking_on(redirect)).await.map(drop)
    }

    /// One `PING` through the batcher: checks the data connection (a lapse is reported if it
    /// was replaced or fails) and keeps it from idling out.
    pub(crate) async fn probe(&self) -> RedisResult<Value> {
        self.batcher.query(redis::cmd("PING")).await
    }
}
