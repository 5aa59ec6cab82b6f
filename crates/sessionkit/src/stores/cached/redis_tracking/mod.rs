//! [`RedisInvalidation`]: invalidations from a standalone Redis server by server-assisted
//! client-side caching (`CLIENT TRACKING ... REDIRECT ... NOLOOP`).
//!
//! # How
//! A dedicated RESP3 connection receives the invalidations; the store's own data connection
//! asks for them: each batch it sends starts with `CLIENT TRACKING ON REDIRECT <this
//! connection's id> NOLOOP` (see the Redis store's `tracking.rs`). So the server tracks the
//! keys this process *reads* and reports a later write to any of them by anyone else, while
//! this process's own writes, scripts included, are not reported back (`NOLOOP`; checked
//! against Redis 7.0, where it holds for script writes in this mode but not in `BCAST` mode).
//! A write ends the tracking of its key; the save scripts read the record once more at their
//! end, so a session this process wrote stays tracked and the cache can keep what it wrote.
//!
//! # The race this module closes
//! The invalidation's journey: the server pushes it in the same event-loop turn as it answers
//! the writer, and (Redis 7, I/O threads off, the default) it writes the pushes first, so on
//! one host (loopback) an invalidation is already in this process's socket buffer when
//! process A learns that its write is done. The push would still wait for a task to be
//! scheduled to read it; to close that gap, every lookup first reads, without waiting,
//! whatever has arrived on the tracking socket (a non-blocking read, not a round trip:
//! [`CacheInvalidator::set_sync_hook`]) and applies it. The read is tokio's `try_read`, which
//! makes no system call unless the runtime's reactor has seen the socket readable. A request
//! that waited for its bytes was itself reported by the reactor, and the same `epoll_wait` (or
//! an earlier one) reports a push that arrived before it, so such a `load` never serves the
//! old record. A request read without a new event (HTTP/1.1 pipelining, several HTTP/2
//! streams in one read) can begin before the reactor's next turn notices a push that had
//! arrived; a `recv` before every lookup would close that too, but cost 9 % of the cached
//! `/read` rate (82,000 against 90,000 requests/s, 1.1 µs more per hit, measured
//! 2026-12-05). Across hosts, what remains is the network's delivery time of the push.
//! Over `rediss://` the same read feeds rustls, which decrypts what has arrived (see
//! `transport.rs`); the figures above are over plain TCP.
//!
//! # Lapses
//! Tracking lives with a connection, and a client ID means something on one server only.
//! - On (re)connecting, the tracking connection reads its server's `run_id`, and the store's
//!   data connection is identified (its `CLIENT ID` and its server's `run_id`): the cache
//!   serves only if both are on the same server, and once the server has accepted to track the
//!   data connection (a user whose ACL denies `client|tracking` keeps the cache bypassed, with
//!   the server's refusal as the status).
//! - If the tracking connection dies (noticed at once on a reset, or by an unanswered check,
//!   default within 2 s, on a silent death), the cache is bypassed until it is back.
//! - If the *data* connection is not the identified one, its reads are no longer tracked: the
//!   store reports it before handing out that batch's replies, and the cache is bypassed until
//!   both connections are set up and identified again. A failed batch or a refused tracking
//!   command flushes. A `PING` through the store every ping interval finds a data connection
//!   that died while idle.
//! - With `NOLOOP`, a key that Redis evicts for memory while running this process's own
//!   command is not reported to it: the periodic check reads the server's `evicted_keys`
//!   (`INFO stats`) and flushes when it rises. (A `maxmemory-policy` of `noeviction` avoids
//!   this, and losing sessions to eviction, altogether: `sessionkit check` says so.)
//! - Until a silent death or an eviction is noticed (at most about two ping intervals), stale
//!   loads are possible.

mod transport;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use self::transport::{write_all, Wire};
use super::{CacheInvalidator, InvalidationSource};
use crate::id::StorageKey;
use crate::stores::redis::{info_field, Lapse, OnLapse, RedisStore, TrackingHandle};

/// Why the cache starts over when the store's data connection was replaced.
const REPLACED: &str = "the store's data connection was replaced";

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Invalidations from a standalone Redis server by server-assisted client-side caching, for
/// a cache in front of one [`RedisStore`]: the store's reads are tracked and the invalidations
/// redirected to one dedicated RESP3 connection, checked every second. Before each cache hit,
/// whatever the server has already pushed on it is read without waiting (no round trip;
/// the module documentation says exactly which pushes that applies). A lost connection makes the cache incoherent (flushed, bypassed)
/// and a background task reconnects with backoff (50 ms doubling to 2 s). Needs Redis 6 or
/// later and the store's own URL: `redis://`, or `rediss://` (TLS with the roots the store
/// trusts, see `transport.rs`); against a Cluster it stays incoherent (the cache is bypassed).
///
/// The RESP3 decoding is redis-rs's own ([`redis::Parser`], kept across reads so that a value
/// cut between two reads is finished later); the socket is a plain one rather than a redis-rs
/// connection, because such a connection reads pushes in its own task (they reach the app
/// through a channel only once that task has run), which cannot be asked to "apply what has
/// arrived" synchronously before a hit.
pub struct RedisInvalidation {
    url: String,
    /// The store's side (`None`: a Cluster store, never tracked).
    store: Option<TrackingHandle>,
    timeout: Duration,
    ping_interval: Duration,
}

impl fmt::Debug for RedisInvalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("RedisInvalidation")
            .field("timeout", &self.timeout)
            .field("ping_interval", &self.ping_interval)
            .finish_non_exhaustive()
    }
}

/// Why a tracking connection could not be set up or ended.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the server is a Redis Cluster")]
    Cluster,
    #[error("Redis refused {0}")]
    Refused(String),
    #[error("unsupported Redis URL (redis:// or rediss:// over TCP)")]
    Url,
    #[error("the URL is not the store's own: one of them is rediss:// and the other is not")]
    NotTheStores,
    #[error(
        "`#insecure` is refused: the tracking connection always verifies the server's certificate"
    )]
    Insecure,
    #[error("TLS roots: {0}")]
    Roots(crate::store::StoreError),
    #[error("no answer in time")]
    TimedOut,
    #[error("connection closed or unreadable")]
    Broken,
    #[error("the store's data connection is on another Redis server (run_id differs)")]
    OtherServer,
    #[error("the store's data connection changed while it was identified")]
    DataChanged,
}

struct ReadState {
    wire: Wire,
    replies: VecDeque<redis::Value>,
    broken: bool,
}

/// The live tracking connection, shared by its task and the cache's pre-hit hook.
struct Tracker {
    stream: TcpStream,
    state: Mutex<ReadState>,
    invalidator: CacheInvalidator,
    lost: Notify,
    /// Set when `lost` means that the store's data connection was replaced.
    replaced: std::sync::atomic::AtomicBool,
    /// Set once tracking is on: from then on a broken read makes the cache incoherent.
    live: std::sync::atomic::AtomicBool,
}

impl Tracker {
    /// Reads and applies whatever has arrived, without waiting. False once broken.
    fn drain(&self) -> bool {
        let mut st = self.state.lock();
        if st.broken {
            return false;
        }
        let mut values = Vec::new();
        if st.wire.read_ready(&self.stream, &mut values).is_err() {
            st.broken = true;
        }
        for v in values {
            match v {
                redis::Value::Push { kind, data } => self.on_push(&kind, data),
                reply => st.replies.push_back(reply),
            }
        }
        let ok = !st.broken;
        drop(st);
        if !ok && self.live.load(std::sync::atomic::Ordering::Acquire) {
            self.invalidator
                .set_coherent(false, "tracking connection lost");
            self.lost.notify_one();
        }
        ok
    }

    fn on_push(&self, kind: &redis::PushKind, data: Vec<redis::Value>) {
        if *kind != redis::PushKind::Invalidate {
            return;
        }
        match data.into_iter().next() {
            Some(redis::Value::Array(keys)) => {
                for k in keys {
                    match k {
                        redis::Value::BulkString(b) => {
                            if let Some(key) = storage_key_of(&b) {
                                self.invalidator.invalidate(&key);
                            }
                        }
                        _ => self.invalidator.flush(),
                    }
                }
            }
            // Null after FLUSHALL/FLUSHDB, or anything unexpected: everything may be gone.
            _ => self.invalidator.flush(),
        }
    }

    /// Sends `cmd` (from the connection's one task: see [`Wire`]).
    async fn send(&self, cmd: &redis::Cmd) -> Result<(), Failure> {
        let bytes = self.state.lock().wire.outgoing(cmd.get_packed_command())?;
        write_all(&self.stream, &bytes).await?;
        Ok(())
    }

    /// Sends `cmd` and waits for its reply (set-up only: nothing else is in flight).
    async fn request(&self, cmd: &redis::Cmd) -> Result<redis::Value, Failure> {
        self.send(cmd).await?;
        loop {
            if let Some(reply) = self.state.lock().replies.pop_front() {
                return match reply {
                    redis::Value::ServerError(e) => Err(Failure::Refused(e.to_string())),
                    other => Ok(other),
                };
            }
            self.stream.readable().await?;
            if !self.drain() {
                return Err(Failure::Broken);
            }
        }
    }
}

impl RedisInvalidation {
    /// Tracks the sessions that `store` reads, on the server at `url` (the store's URL). The
    /// cache must be put in front of this same store.
    pub fn new(url: &str, store: &RedisStore) -> Self {
        Self {
            url: url.to_owned(),
            store: store.tracking_handle(),
            timeout: Duration::from_millis(500),
            ping_interval: Duration::from_secs(1),
        }
    }

    /// Bound on connecting and setting up tracking: the TCP connection, the TLS handshake for
    /// `rediss://`, and six round trips. Default 500 ms; a server further than about 50 ms
    /// away needs more (until then the cache stays bypassed).
    #[must_use]
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// How often the tracking connection is checked (`INFO stats`, which also tells of
    /// evictions) and the store's data connection probed (`PING`); a check unanswered at the
    /// next one means the connection is dead. A silently dead connection (no
    /// reset, e.g. a partition) can thus go unnoticed, serving possibly stale loads, for
    /// up to twice this. Default 1 s.
    #[must_use]
    pub fn with_ping_interval(mut self, d: Duration) -> Self {
        self.ping_interval = d;
        self
    }

    /// Connects, checks that the store's data connection is on the same server, and returns
    /// the tracker, its `CLIENT ID` (where invalidations go) and the server's `evicted_keys`.
    async fn connect(
        &self,
        invalidator: &CacheInvalidator,
    ) -> Result<(Arc<Tracker>, i64, u64), Failure> {
        let info = self.url.as_str().into_connection_info()?;
        let Some(store) = &self.store else {
            return Err(Failure::Cluster);
        };
        // The store's own scheme: never in clear beside a `rediss://` store, never unverified.
        let (host, port, tls) = match (info.addr(), &store.tls) {
            (ConnectionAddr::Tcp(host, port), None) => (host, port, None),
            (
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    ..
                },
                Some(roots),
            ) => (
                host,
                port,
                Some(roots.client_config().map_err(Failure::Roots)?),
            ),
            (ConnectionAddr::TcpTls { insecure: true, .. }, _) => return Err(Failure::Insecure),
            (ConnectionAddr::Tcp(..) | ConnectionAddr::TcpTls { .. }, _) => {
                return Err(Failure::NotTheStores)
            }
            _ => return Err(Failure::Url),
        };
        let stream = TcpStream::connect((host.as_str(), *port)).await?;
        stream.set_nodelay(true)?;
        let wire = match tls {
            Some(config) => Wire::tls(&stream, config, host).await?,
            None => Wire::plain(),
        };
        let tracker = Arc::new(Tracker {
            stream,
            state: Mutex::new(ReadState {
                wire,
                replies: VecDeque::new(),
                broken: false,
            }),
            invalidator: invalidator.clone(),
            lost: Notify::new(),
            replaced: std::sync::atomic::AtomicBool::new(false),
            live: std::sync::atomic::AtomicBool::new(false),
        });
        let settings = info.redis_settings();
        let mut hello = redis::cmd("HELLO");
        hello.arg(3);
        if let Some(pw) = settings.password() {
            hello
                .arg("AUTH")
                .arg(settings.username().unwrap_or("default"))
                .arg(pw);
        }
        tracker.request(&hello).await?;
        let cluster = tracker.request(redis::cmd("INFO").arg("cluster")).await?;
        if info_field::<u8>(&cluster, "cluster_enabled") == Some(1) {
            return Err(Failure::Cluster);
        }
        let id = match tracker.request(redis::cmd("CLIENT").arg("ID")).await? {
            redis::Value::Int(id) => id,
            other => return Err(Failure::Refused(format!("CLIENT ID: {other:?}"))),
        };
        let server: String = info_field(
            &tracker.request(redis::cmd("INFO").arg("server")).await?,
            "run_id",
        )
        .ok_or_else(|| Failure::Refused("INFO server without a run_id".into()))?;
        let evicted = info_field(
            &tracker.request(redis::cmd("INFO").arg("stats")).await?,
            "evicted_keys",
        )
        .unwrap_or(0);
        // A client ID means something on one server only: the redirect must name this
        // connection on the server the store's data connection talks to (a proxy or a DNS
        // failover could send the two to different servers).
        match store.identify().await? {
            Some(r) if r == server => {}
            Some(_) => return Err(Failure::OtherServer),
            None => return Err(Failure::DataChanged),
        }
        store.check_tracking(id).await?;
        Ok((tracker, id, evicted))
    }

    async fn run(self, invalidator: CacheInvalidator) {
        let mut backoff = MIN_BACKOFF;
        let mut failures = 0u32;
        while !invalidator.is_closed() {
            let attempt = tokio::time::timeout(self.timeout, self.connect(&invalidator))
                .await
                .unwrap_or(Err(Failure::TimedOut));
            let (tracker, id, mut evicted) = match attempt {
                Ok(t) => t,
                Err(Failure::Cluster) => {
                    tracing::warn!(
                        "session cache: Redis Cluster is not tracked; the cache stays bypassed"
                    );
                    invalidator.set_coherent(false, "Redis Cluster is not supported");
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(failures, error = %e, "session cache: Redis tracking connection failed; retrying");
                    }
                    invalidator.set_coherent(false, &format!("cannot track invalidations: {e}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            failures = 0;
            backoff = MIN_BACKOFF;
            tracker
                .live
                .store(true, std::sync::atomic::Ordering::Release);
            let hook = Arc::downgrade(&tracker);
            invalidator.set_sync_hook(Some(Arc::new(move || {
                if let Some(t) = hook.upgrade() {
                    t.drain();
                }
            })));
            // The store's reads are tracked from its next batch on, before any load may cache.
            let store = self.store.as_ref();
            let on_lapse: OnLapse = {
                let invalidator = invalidator.clone();
                let tracker = Arc::downgrade(&tracker);
                Arc::new(move |lapse| match lapse {
                    Lapse::Flush(why) => {
                        tracing::debug!(why, "session cache: flushed, tracking may have lapsed");
                        invalidator.flush();
                    }
                    Lapse::Replaced => {
                        // Bypassed at once; the tracking task starts over and identifies the
                        // new connection before the cache serves again.
                        invalidator.set_coherent(false, REPLACED);
                        if let Some(t) = tracker.upgrade() {
                            t.replaced.store(true, std::sync::atomic::Ordering::Release);
                            t.lost.notify_one();
                        }
                    }
                })
            };
            if let Some(s) = store {
                s.attach(Some(id), Some(on_lapse));
            }
            invalidator.set_coherent(true, "Redis client tracking");
            let why = self.watch(&tracker, &invalidator, &mut evicted).await;
            // Bypass first, then drop the hook: no hit is served in between.
            invalidator.set_coherent(false, why);
            invalidator.set_sync_hook(None);
            if let Some(s) = store {
                s.attach(None, None);
            }
            tracker
                .live
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// Reads pushes and checks the connection every ping interval (`INFO stats`) until it
    /// fails, the store's data connection is replaced or the store is dropped. A rise of the
    /// server's `evicted_keys` flushes: with `NOLOOP`, a key evicted for memory while this
    /// process's own command runs is not reported to it.
    async fn watch(
        &self,
        tracker: &Tracker,
        invalidator: &CacheInvalidator,
        evicted: &mut u64,
    ) -> &'static str {
        let mut unanswered = false;
        let mut tick = tokio::time::interval(self.ping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = tracker.lost.notified() => {
                    if tracker.replaced.load(std::sync::atomic::Ordering::Acquire) {
                        return REPLACED;
                    }
                    return "tracking connection lost";
                }
                r = tracker.stream.readable() => {
                    if r.is_err() || !tracker.drain() {
                        return "tracking connection lost";
                    }
                }
                _ = tick.tick() => {
                    if invalidator.is_closed() {
                        return "store dropped";
                    }
                    let replies: Vec<redis::Value> = tracker.state.lock().replies.drain(..).collect();
                    if unanswered && replies.is_empty() {
                        return "tracking connection: no reply to its periodic check";
                    }
                    for n in replies.iter().filter_map(|r| info_field::<u64>(r, "evicted_keys")) {
                        if n > *evicted {
                            tracing::debug!("session cache: flushed, Redis evicted keys");
                            invalidator.flush();
                        }
                        *evicted = n;
                    }
                    if tracker.send(redis::cmd("INFO").arg("stats")).await.is_err() {
                        return "tracking connection lost";
                    }
                    unanswered = true;
                    // The data connection too: a lapse there flushes (see `tracking.rs`).
                    if let Some(store) = self.store.clone() {
                        tokio::spawn(async move {
                            let _ = store.probe().await;
                        });
                    }
                }
            }
        }
    }
}

impl InvalidationSource for RedisInvalidation {
    fn start(self: Box<Self>, invalidator: CacheInvalidator) {
        tokio::spawn(self.run(invalidator));
    }
}

/// The storage key a Redis key of the store belongs to: every key of a session (its head
/// and its record) ends with it. Index keys (`...:i`) map to nothing, and no load reads them.
fn storage_key_of(redis_key: &[u8]) -> Option<StorageKey> {
    let tail = redis_key.get(redis_key.len().checked_sub(64)?..)?;
    StorageKey::parse(std::str::from_utf8(tail).ok()?)
}

#[cfg(test)]
mod tests;
