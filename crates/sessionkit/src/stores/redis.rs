//! `RedisStore`: sessions in Redis, standalone or Cluster, shared by every process and host
//! that talks to the same server.
//!
//! # Connections
//! One multiplexed connection per server, shared by every request of every task: a
//! [`ConnectionManager`] for a standalone server (it reconnects in the background after a
//! failure), the Cluster client's one connection per master for a Cluster. Requests are
//! pipelined on it, so the number of sockets does not grow with load and a burst of requests
//! cannot exhaust the host's ephemeral ports. On a standalone server the per-session commands
//! are also batched: those issued while the runtime is busy leave in one write (see
//! `Batcher`), which divides the system calls of both the app and Redis under load. Every command has a response timeout, every store
//! call an overall bound ([`RedisOptions::with_operation_timeout`]); a call that runs out of
//! either, or meets a refused or broken connection, returns [`StoreError::Unavailable`], and the
//! next call reconnects.
//!
//! # Layout
//! With `<p>` the key prefix (`SESSION_KEY_PREFIX`, default `sk:`) and `<k>` the storage key:
//! - `<p>s:<k>`, the *head*, a hash. Every session has exactly one head, so `count`, `scan` and
//!   `cleanup_expired` walk heads. For an anonymous session it is the record itself. For a
//!   signed-in session:
//!   - standalone: the head is the record too, with one more field `u` = the user's tag, so
//!     that `load` is one plain `HGETALL` (no script; about a sixth of a script's server time);
//!   - Cluster: the head is a pointer, field `p` = the user's tag, and the record lives with
//!     its user (next item), in the user's slot.
//! - `<p>{u:<user>}:i`, the user's index (the user ID with `%`, `{` and `}` percent-escaped, so
//!   that no user ID can end the hash tag early or collide with another): a sorted set of
//!   storage keys scored by each record's nearest expiry (ms); and, on a Cluster,
//!   `<p>{u:<user>}:s:<k>`, the record of a session of `<user>`. The hash tag `{u:<user>}` puts
//!   a user's records and index in one Cluster slot, so the per-user limit and its evictions
//!   run in one script even on a Cluster. The pointer is what lets `load` find that record from
//!   the storage key alone. Standalone scripts reach records from the index by computed key
//!   names, which a standalone server allows.
//! - `<p>{u:<user>}:c` and `<p>{u:<user>}:l`, the same members as the index scored by creation
//!   and by last sight (ms), in the user's slot too: the orders in which `evict_oldest` and
//!   `evict_idlest` pick victims (see "User index" below).
//! - Standalone sessions written by earlier versions (a pointer at the head, the record next to
//!   the index) are still read, written, listed and destroyed: `load` follows a pointer it
//!   finds, and the scripts look for a member's record in both places.
//! - A record hash holds `v` (version), `c`, `s`, `i`, `a` (created, last seen, idle and
//!   absolute expiry, ms), `m` (user, user agent, IP, auth time; MessagePack), `z` (the data
//!   size as the size cap counts it, kept up to date by the save scripts, which refuse a delta
//!   that would take it over the cap) and one field `d:<name>` per session value (its JSON
//!   text), so a delta touches only the fields it changes.
//! - A load refuses (as corrupt) a record over `DECODE_CEILING` before decoding it. The reply
//!   itself is read first: checking `z` beforehand would cost a script or a second round trip
//!   on every load, and only a client with write access to Redis can plant such a record, since
//!   the scripts keep every record the library writes under the cap.
//! - Each record's TTL (`PEXPIREAT`) is its nearest expiry and moves with every touch, as does
//!   its index score; a pointer's TTL is the absolute expiry; an index's TTL is that of its
//!   longest-lived entry. TTLs only reclaim memory: expiry is always judged by the `now` the
//!   caller passes.
//!
//! # Guarantees
//! All writes are Lua scripts ([`redis::Script`]: `EVALSHA`, reloaded on `NOSCRIPT`), so each
//! step is atomic on the server.
//!
//! Standalone: `load` is one `HGETALL` (a single command, so it sees a record before or after
//! any script, never in between); `save_delta` is one lean script (the client reduces the
//! delta to the last change per key; the script checks liveness, then one `HDEL` and one
//! `HSET`; server time per call 12.7 µs against the general script's 15.6 µs under
//! `redis-benchmark`); every other operation is one script and therefore atomic as
//! a whole: create-if-absent, the user limit with its evictions, `save_delta` only on a live
//! record (destroy is final, whatever is in flight), destroy of record + index entry. The
//! scripts reach the records of evicted and pruned sessions by computed key names, which a
//! standalone server allows.
//!
//! Cluster: scripts only touch the keys of one slot, so an operation on a signed-in session
//! takes two steps, the first on the head's slot, the second on the user's slot:
//! - Still atomic: create-if-absent (the head is claimed with a check-and-set first), the
//!   per-user limit and its evictions (one script on the user's slot: 50 parallel logins with a
//!   limit of 3 leave exactly 3), per-key `save_delta` on a live record only (the record is
//!   only in the user's slot), destroy and eviction (the record goes in one step, so no write
//!   brings it back).
//! - Not atomic: removing the pointer of a destroyed, evicted or pruned session happens after
//!   the record is gone, so a crash or timeout in between leaves a *dangling pointer*. It is
//!   harmless — a load follows it to nothing, and its TTL or the next `cleanup_expired` removes
//!   it — but until then `count` includes it. A login denied by the limit likewise claims and
//!   then releases its head. A load or save of a signed-in session costs two round trips
//!   (head, then record). A create under a key whose head is a stale pointer reports
//!   [`CreateOutcome::Exists`] (storage keys are random, so this needs a reused session ID).
//! - `count`, `scan` and `cleanup_expired` visit every master (`SCAN` on each); a topology
//!   change during a scan can repeat or miss records, like `SCAN` itself.
//!
//! Crashes: a Redis restart without persistence loses every session (users sign in again);
//! with AOF/RDB the scripts' effects are replicated and persisted as units. Replication is
//! asynchronous: a failover to a replica can lose the last acknowledged writes, so a session
//! destroyed just before it can reappear. Deployments that cannot accept this need
//! `appendfsync always` and no failover, or a SQL store.
//!
//! `count` is `SCAN MATCH <p>s:*` on every master (never `KEYS`): no counter to drift when TTLs
//! fire, no hot key on a Cluster, at the price of O(keys) work, which suits the CLI and an
//! occasional metrics scrape but not a per-request call. `cleanup_expired(now)` walks the heads
//! the same way, in batches, and removes every session expired at `now` even if its TTL has not
//! fired, with its index entry and pointer.
//!
//! # User index
//! No per-request operation walks a user's index, whose size an attacker who can sign in
//! controls (sessions per user are unlimited by default): a login removes at most a bounded
//! batch of expired entries (`ZRANGEBYSCORE -inf now LIMIT`), counts the live ones with one
//! `ZCOUNT` over the scores, and evicts the first members of the `:c` or `:l` order, each step
//! O(log n). Expiry scores cannot serve as either order (the nearest expiry is neither the
//! creation nor the last sight), hence the two extra sorted sets: `create` adds to them,
//! every removal takes from all three, and a touch moves the member's `:l` score. When an
//! eviction is due while more expired entries remain than one batch, the script prunes a larger
//! batch and answers `again`, and the client calls it once more: every expired entry goes
//! once, so the cost is amortised O(log n) per login and Redis is never blocked for long.
//! Users indexed by an earlier version (no orders yet) get them rebuilt once, at their first
//! eviction. `list_user` and `destroy_user` (account pages and admin actions, not per request)
//! read the whole index.
//!
//! # Not included
//! TLS (`rediss://`) is not compiled in: it would pull a TLS stack into every build with this
//! feature. Sentinel is not supported.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Script, ServerErrorKind};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::id::StorageKey;
use crate::record::{DecodeError, Delta, Meta, Record, Timestamp, Value, DECODE_CEILING};
use crate::store::{
    CreateOutcome, Health, LimitPolicy, SaveOutcome, ScanPage, SessionLimit, SessionStore,
    StoreError,
};

/// Options of [`RedisStore::connect`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    key_prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    operation_timeout: Duration,
    cluster: Option<bool>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "sk:".into(),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            operation_timeout: Duration::from_secs(2),
            cluster: None,
        }
    }
}

impl RedisOptions {
    /// The defaults, see each setter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prefix of every key the store writes (`SESSION_KEY_PREFIX`). Default `sk:`. It must not
    /// contain `{` or `}`, which would change Cluster hash slots; `connect` refuses it.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long one attempt to open a connection may take. Default 500 ms.
    #[must_use]
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long one command may wait for its reply. Default 500 ms.
    #[must_use]
    pub fn with_response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// Upper bound on one store call (`load`, `save_delta`, ... — including waiting for a
    /// reconnection); past it the call returns [`StoreError::Unavailable`]. `scan`, `count` and
    /// `cleanup_expired` apply it to each of their round trips instead. Default 2 s.
    #[must_use]
    pub fn with_operation_timeout(mut self, d: Duration) -> Self {
        self.operation_timeout = d;
        self
    }

    /// Forces Cluster (`true`) or standalone (`false`) mode. By default the mode is detected:
    /// several comma-separated URLs or a `redis+cluster://` URL mean Cluster, otherwise the
    /// server is asked (`INFO cluster`).
    #[must_use]
    pub fn with_cluster(mut self, cluster: bool) -> Self {
        self.cluster = Some(cluster);
        self
    }
}

/// The one shared connection: a reconnecting multiplexed connection to a standalone server, or
/// the Cluster client (one multiplexed connection per node). Cloning shares it.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A command waiting for the next write, and where its reply goes.
type Job = (Cmd, oneshot::Sender<redis::RedisResult<redis::Value>>);

/// Automatic pipelining for a standalone server: the commands that store calls issue while the
/// runtime is busy leave in one write (one `writev`, one Redis `read`, one reply write) instead
/// of one each.
///
/// Why: the multiplexed connection's writer task is woken by the first command and, being the
/// task woken last, runs right after it, so under load every command went out alone. Here a
/// flusher task takes the first command, yields once, so that every request task already
/// runnable gets to queue its command, then sends all of them as one pipeline. Batches do not
/// wait for each other's replies. An idle server adds one scheduler pass of latency.
#[derive(Clone)]
struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the flusher task; it ends when the last `Batcher` clone is dropped.
    fn start(conn: ConnectionManager) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(Self::flush_loop(rx, conn));
        Self { tx }
    }

    async fn query(&self, cmd: Cmd) -> redis::RedisResult<redis::Value> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send((cmd, reply)).is_err() {
            return Err(RedisError::from((
                ErrorKind::Io,
                "the Redis pipeline task has ended",
            )));
        }
        rx.await.unwrap_or_else(|_| {
            Err(RedisError::from((
                ErrorKind::Io,
                "the Redis pipeline task dropped a command",
            )))
        })
    }

    async fn flush_loop(mut rx: mpsc::UnboundedReceiver<Job>, conn: ConnectionManager) {
        let mut in_flight = FuturesUnordered::new();
        loop {
            let first = tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            };
            // Let every task that is ready to run queue its command first.
            tokio::task::yield_now().await;
            let mut jobs = vec![first];
            while let Ok(job) = rx.try_recv() {
                jobs.push(job);
            }
            in_flight.push(Self::send(conn.clone(), jobs));
        }
        while in_flight.next().await.is_some() {}
    }

    async fn send(mut conn: ConnectionManager, mut jobs: Vec<Job>) {
        if jobs.len() == 1 {
            if let Some((cmd, reply)) = jobs.pop() {
                let r = conn.req_packed_command(&cmd).await;
                let _ = reply.send(r.and_then(redis::Value::extract_error));
            }
            return;
        }
        let mut pipe = redis::pipe();
        let mut replies = Vec::with_capacity(jobs.len());
        for (cmd, reply) in jobs {
            pipe.add_command(cmd);
            replies.push(reply);
        }
        match conn.req_packed_commands(&pipe, 0, replies.len()).await {
            Ok(values) if values.len() == replies.len() => {
                for (v, reply) in values.into_iter().zip(replies) {
                    let _ = reply.send(v.extract_error());
                }
            }
            Ok(_) => {
                let e =
                    RedisError::from((ErrorKind::Client, "pipeline reply count does not match"));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Where a `SCAN` runs: the standalone server, or one Cluster master.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Single,
    Master(String, u16),
}

struct Scripts {
    load: Script,
    save: Script,
    save_head: Script,
    create: Script,
    destroy: Script,
    list: Script,
    destroy_user: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            load: Script::new(&lua::source(lua::LOAD)),
            save: Script::new(&lua::source(&format!("{}{}", lua::SAVE, lua::APPLY))),
            save_head: Script::new(&format!("{}{}", lua::SAVE_HEAD, lua::APPLY)),
            create: Script::new(&lua::source(lua::CREATE)),
            destroy: Script::new(&lua::source(lua::DESTROY)),
            list: Script::new(&lua::source(lua::LIST)),
            destroy_user: Script::new(&lua::source(lua::DESTROY_USER)),
        }
    }
}

/// Sessions in Redis or Redis Cluster, shared by every process that uses the same server.
///
/// All requests share one multiplexed connection (one per master on a Cluster); every call is
/// bounded in time and reports an outage as [`StoreError::Unavailable`]. Each session is a
/// Redis hash patched key by key by server-side scripts, with its TTL at the nearest expiry;
/// a signed-in session lives next to its user's index (a sorted set), in one Cluster slot, so
/// the per-user limit is enforced atomically even on a Cluster. On a standalone server every
/// operation is a single atomic script; on a Cluster, operations on signed-in sessions take
/// two steps (the session's pointer, then the user's slot), and a crash between them can only
/// leave a harmless pointer to nothing, which cleanup removes.
///
/// ```no_run
/// # async fn demo() -> Result<(), sessionkit::store::StoreError> {
/// use sessionkit::store::SessionStore;
/// use sessionkit::stores::redis::{RedisOptions, RedisStore};
///
/// // One URL: standalone or Cluster, detected. Several comma-separated URLs: Cluster seeds.
/// let store = RedisStore::connect(
///     "redis://:password@127.0.0.1:6379",
///     RedisOptions::new().with_key_prefix("myapp:sk:"),
/// )
/// .await?;
/// assert!(store.health().await.ok);
/// # Ok(())
/// # }
/// ```
pub struct RedisStore {
    conn: Conn,
    /// Standalone only: the pipelining front of `conn` for per-request scripts.
    batch: Option<Batcher>,
    scripts: Scripts,
    prefix: String,
    cluster: bool,
    op_timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL (and its password) is deliberately not kept.
        f.debug_struct("RedisStore")
            .field(
                "mode",
                &if self.cluster {
                    "cluster"
                } else {
                    "standalone"
                },
            )
            .field("prefix", &self.prefix)
            .field("operation_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

/// Classifies a client error: connection trouble and a Cluster in transition are
/// `Unavailable` (the caller may fall back or answer 503); anything else is a `Backend` error.
fn map_err(context: &str, e: RedisError) -> StoreError {
    let unavailable = match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(k) => matches!(
            k,
            ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
        ),
        _ => e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal(),
    };
    if unavailable {
        StoreError::unavailable(context, e)
    } else if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
    {
        StoreError::backend(
            format!("{context}: Redis refused the credentials (check the user and password in the Redis URL)"),
            e,
        )
    } else {
        StoreError::backend(context, e)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no reply from Redis within {0:?}")]
struct TimedOut(Duration);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Invalid(String);

fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(Box::new(Invalid(what.into())))
}

/// Percent-escapes the characters that would break a hash tag (and `%` itself), so distinct
/// users always get distinct keys.
fn user_tag(user: &str) -> String {
    let mut s = String::with_capacity(user.len());
    for c in user.chars() {
        match c {
            '%' => s.push_str("%25"),
            '{' => s.push_str("%7B"),
            '}' => s.push_str("%7D"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes `SCAN MATCH` glob characters.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The parts of [`Meta`] no script reads, in the `m` field.
#[derive(Serialize, Deserialize)]
struct StaticMeta {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    auth_time: Option<Timestamp>,
}

fn capped(t: Timestamp) -> String {
    t.0.min(lua::CAP).to_string()
}

/// The hash fields of a record, as field/value pairs for `HSET`.
fn encode_fields(r: &Record) -> Vec<Vec<u8>> {
    let m = StaticMeta {
        user_id: r.meta.user_id.clone(),
        user_agent: r.meta.user_agent.clone(),
        ip: r.meta.ip.clone(),
        auth_time: r.meta.auth_time,
    };
    // Serializing plain strings and integers into a Vec cannot fail.
    let m = rmp_serde::to_vec_named(&m).unwrap_or_default();
    let mut out = Vec::with_capacity(12 + 2 * r.data.len());
    for (f, v) in [
        ("v", r.meta.version),
        ("c", r.meta.created_at.0),
        ("s", r.meta.last_seen_at.0),
        ("i", r.meta.idle_expires_at.0),
        ("a", r.meta.absolute_expires_at.0),
    ] {
        out.push(f.as_bytes().to_vec());
        out.push(v.to_string().into_bytes());
    }
    out.push(b"m".to_vec());
    out.push(m);
    // The data size the save scripts keep up to date and check against the cap.
    out.push(b"z".to_vec());
    out.push(r.data_size().to_string().into_bytes());
    for (k, v) in &r.data {
        out.push(format!("d:{k}").into_bytes());
        out.push(v.as_json().as_bytes().to_vec());
    }
    out
}

fn num(field: &str, v: Option<&[u8]>) -> Result<u64, DecodeError> {
    v.and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            malformed(format!(
                "redis hash field `{field}` is missing or not a number"
            ))
        })
}

fn static_meta(v: Option<&[u8]>) -> Result<StaticMeta, DecodeError> {
    rmp_serde::from_slice(v.ok_or_else(|| malformed("redis hash field `m` is missing"))?)
        .map_err(|e| DecodeError::Malformed(e.into()))
}

fn meta_from(
    v: Option<&[u8]>,
    c: Option<&[u8]>,
    s: Option<&[u8]>,
    i: Option<&[u8]>,
    a: Option<&[u8]>,
    m: Option<&[u8]>,
) -> Result<Meta, DecodeError> {
    let sm = static_meta(m)?;
    Ok(Meta {
        user_id: sm.user_id,
        created_at: Timestamp(num("c", c)?),
        last_seen_at: Timestamp(num("s", s)?),
        idle_expires_at: Timestamp(num("i", i)?),
        absolute_expires_at: Timestamp(num("a", a)?),
        user_agent: sm.user_agent,
        ip: sm.ip,
        auth_time: sm.auth_time,
        version: num("v", v)?,
    })
}

/// Decodes a record from its hash fields (`HGETALL` order: field, value, ...).
fn decode_fields(flat: &[redis::Value]) -> Result<Record, DecodeError> {
    // A record larger than any the scripts let through (planted, or grown before the cap was
    // enforced on merge) is refused before it is decoded into a second copy.
    let total: usize = flat.iter().filter_map(bytes).map(<[u8]>::len).sum();
    if total > DECODE_CEILING {
        return Err(DecodeError::TooLarge(total));
    }
    let mut data = crate::record::Data::new();
    let (mut v, mut c, mut s, mut i, mut a, mut m) = (None, None, None, None, None, None);
    for pair in flat.chunks(2) {
        let [f, val] = pair else {
            return Err(malformed("odd number of hash fields"));
        };
        let (Some(f), Some(val)) = (bytes(f), bytes(val)) else {
            return Err(malformed("hash field is not a string"));
        };
        match f {
            b"v" => v = Some(val),
            b"c" => c = Some(val),
            b"s" => s = Some(val),
            b"i" => i = Some(val),
            b"a" => a = Some(val),
            b"m" => m = Some(val),
            _ => {
                if let Some(name) = f.strip_prefix(b"d:") {
                    let name = std::str::from_utf8(name)
                        .map_err(|_| malformed("value name is not UTF-8"))?;
                    let text =
                        std::str::from_utf8(val).map_err(|_| malformed("value is not UTF-8"))?;
                    let value =
                        Value::from_json_text(text).map_err(|_| malformed("value is not JSON"))?;
                    data.insert(name.to_owned(), value);
                }
            }
        }
    }
    Ok(Record {
        data,
        meta: meta_from(v, c, s, i, a, m)?,
    })
}

fn bytes(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &redis::Value) -> Option<&str> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

fn int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(n) => Some(*n),
        other => text(other).and_then(|s| s.parse().ok()),
    }
}

fn array(v: &redis::Value) -> Option<&[redis::Value]> {
    match v {
        redis::Value::Array(a) | redis::Value::Set(a) => Some(a),
        redis::Value::Nil => Some(&[]),
        _ => None,
    }
}

fn strings(v: Option<&redis::Value>) -> Vec<String> {
    v.and_then(array)
        .map(|a| a.iter().filter_map(text).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn unexpected(context: &str, reply: &[redis::Value]) -> StoreError {
    let head = reply.first().and_then(text).unwrap_or("?");
    StoreError::backend(
        context,
        Invalid(format!("unexpected script reply `{head}`")),
    )
}

/// One script call: the script, its keys, the mode (see [`lua`]), the storage key (or `""`)
/// and the time.
struct Call<'a> {
    script: &'a Script,
    keys: &'a [&'a str],
    mode: &'a str,
    key: &'a str,
    now: Timestamp,
}

/// A script reply: its outcome tag and the rest.
struct Reply(Vec<redis::Value>);

impl Reply {
    fn tag(&self) -> &str {
        self.0.first().and_then(text).unwrap_or("")
    }
    fn get(&self, i: usize) -> Option<&redis::Value> {
        self.0.get(i)
    }
}

impl RedisStore {
    /// Connects to Redis and checks that it answers.
    ///
    /// `url` is a `redis://[[user]:password@]host[:port][/db]` URL, or several separated by
    /// commas (the seed nodes of a Cluster). Cluster mode is used when there are several URLs,
    /// when the scheme is `redis+cluster://`, when [`RedisOptions::with_cluster`] says so, or
    /// else when the server reports `cluster_enabled:1`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached in time;
    /// [`StoreError::Backend`] for a bad URL or prefix, refused credentials (a wrong password
    /// says so), or an unsupported scheme such as `rediss://` (TLS is not compiled in).
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        if options.key_prefix.contains(['{', '}']) {
            return Err(StoreError::backend(
                "invalid Redis key prefix",
                Invalid("the key prefix must not contain `{` or `}`".into()),
            ));
        }
        let mut cluster = options.cluster;
        let mut urls = Vec::new();
        for u in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if let Some(rest) = u.strip_prefix("redis+cluster://") {
                cluster.get_or_insert(true);
                urls.push(format!("redis://{rest}"));
            } else if u.starts_with("rediss://") || u.starts_with("rediss+cluster://") {
                return Err(StoreError::backend(
                    "unsupported Redis URL",
                    Invalid("TLS (rediss://) is not supported by this build of sessionkit".into()),
                ));
            } else {
                urls.push(u.to_owned());
            }
        }
        if urls.is_empty() {
            return Err(StoreError::backend(
                "invalid Redis URL",
                Invalid("no URL given".into()),
            ));
        }
        if urls.len() > 1 {
            cluster.get_or_insert(true);
        }
        let bound = options.operation_timeout.max(options.connect_timeout) * 2;
        let conn = async {
            if cluster == Some(true) {
                return Self::connect_cluster(&urls, &options).await;
            }
            let single = Self::connect_single(&urls[0], &options).await?;
            if cluster.is_none() {
                let mut c = single.clone();
                let info: String = redis::cmd("INFO")
                    .arg("cluster")
                    .query_async(&mut c)
                    .await
                    .map_err(|e| map_err("asking Redis whether it is a Cluster", e))?;
                if info.contains("cluster_enabled:1") {
                    drop(single);
                    return Self::connect_cluster(&urls, &options).await;
                }
            }
            Ok(single)
        };
        let conn = match tokio::time::timeout(bound, conn).await {
            Ok(c) => c?,
            Err(_) => {
                return Err(StoreError::unavailable(
                    "connecting to Redis",
                    TimedOut(bound),
                ))
            }
        };
        let cluster = matches!(conn, Conn::Cluster(_));
        let batch = match &conn {
            Conn::Single(cm) => Some(Batcher::start(cm.clone())),
            Conn::Cluster(_) => None,
        };
        let store = Self {
            conn,
            batch,
            scripts: Scripts::new(),
            prefix: options.key_prefix,
            cluster,
            op_timeout: options.operation_timeout,
        };
        let mut c = store.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| map_err("connecting to Redis", e))?;
        Ok(store)
    }

    /// A store on the standalone server at `url` that connects on first use instead of now:
    /// for an app that must start while Redis is down, behind a fallback store that serves
    /// meanwhile (what `build_store` does with `SESSION_FALLBACK`). The server is taken to be
    /// standalone (a Cluster needs [`RedisStore::connect`]); every operation fails as
    /// unavailable until the server answers, and the connection is then made by the next one.
    ///
    /// # Errors
    /// A bad URL or prefix, or a Cluster URL.
    pub fn connect_lazy(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let url = url.trim();
        if options.key_prefix.contains(['{', '}']) || options.cluster == Some(true) {
            return Err(StoreError::backend(
                "invalid lazy Redis store",
                Invalid("a lazy connection is for a standalone server and a key prefix without `{` or `}`".into()),
            ));
        }
        if !url.starts_with("redis://") || url.contains(',') {
            return Err(StoreError::backend(
                "invalid lazy Redis store",
                Invalid("a lazy connection takes one redis:// URL".into()),
            ));
        }
        let client =
            redis::Client::open(url).map_err(|e| StoreError::backend("invalid Redis URL", e))?;
        let cm = ConnectionManager::new_lazy_with_config(client, Self::manager_config(&options))
            .map_err(|e| map_err("connecting to Redis", e))?;
        Ok(Self {
            batch: Some(Batcher::start(cm.clone())),
            conn: Conn::Single(cm),
            scripts: Scripts::new(),
            prefix: options.key_prefix,
            cluster: false,
            op_timeout: options.operation_timeout,
        })
    }

    fn manager_config(o: &RedisOptions) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(o.connect_timeout))
            .set_response_timeout(Some(o.response_timeout))
            // Few, short retries: a request waits for a reconnection at most this long (and
            // never past the operation timeout); the next request starts a new attempt.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
    }

    async fn connect_single(url: &str, o: &RedisOptions) -> Result<Conn, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::backend("invalid Redis URL", e))?;
        let cm = ConnectionManager::new_with_config(client, Self::manager_config(o))
            .await
            .map_err(|e| map_err("connecting to Redis", e))?;
        Ok(Conn::Single(cm))
    }

    async fn connect_cluster(urls: &[String], o: &RedisOptions) -> Result<Conn, StoreError> {
        let client = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
            .connection_timeout(o.connect_timeout)
            .response_timeout(o.response_timeout)
            .overall_response_timeout(Some(o.operation_timeout))
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(400)
            .build()
            .map_err(|e| StoreError::backend("invalid Redis Cluster URL", e))?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| map_err("connecting to Redis Cluster", e))?;
        Ok(Conn::Cluster(conn))
    }

    /// Whether the store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    fn mode(&self) -> &'static str {
        if self.cluster {
            "h"
        } else {
            "f"
        }
    }

    fn head_key(&self, key: &str) -> String {
        format!("{}s:{key}", self.prefix)
    }

    fn user_record_key(&self, tag: &str, key: &str) -> String {
        format!("{}{{u:{tag}}}:s:{key}", self.prefix)
    }

    fn user_index_key(&self, tag: &str) -> String {
        format!("{}{{u:{tag}}}:i", self.prefix)
    }

    fn head_pattern(&self) -> String {
        format!("{}s:*", glob_escape(&self.prefix))
    }

    /// One Redis call under the operation deadline, its error mapped with `context`.
    async fn timed<T>(
        &self,
        context: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.bounded(context, async {
            call.await.map_err(|e| map_err(context, e))
        })
        .await
    }

    /// Bounds a whole store call.
    async fn bounded<T>(
        &self,
        context: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::unavailable(context, TimedOut(self.op_timeout))),
        }
    }

    /// Runs one script call with the common arguments, then `extra`.
    async fn run(
        &self,
        context: &'static str,
        call: Call<'_>,
        extra: &[&[u8]],
    ) -> Result<Reply, StoreError> {
        let script = call.script;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(call.keys.len());
        for k in call.keys {
            cmd.arg(*k);
        }
        cmd.arg(call.mode)
            .arg(&self.prefix)
            .arg(call.key)
            .arg(call.now.0.to_string());
        for a in extra {
            cmd.arg(*a);
        }
        // Through the pipelining batcher when there is one (standalone), else straight on the
        // connection (a Cluster connection routes by the first key).
        let send = |cmd: Cmd| async move {
            match &self.batch {
                Some(batch) => batch.query(cmd).await,
                None => {
                    cmd.query_async::<redis::Value>(&mut self.conn.clone())
                        .await
                }
            }
        };
        let eval = async {
            match send(cmd.clone()).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script.load_async(&mut self.conn.clone()).await?;
                    send(cmd).await
                }
                r => r,
            }
        };
        let v = self.timed(context, eval).await?;
        match v {
            redis::Value::Array(a) => Ok(Reply(a)),
            other => Err(StoreError::backend(
                context,
                Invalid(format!("unexpected script reply {other:?}")),
            )),
        }
    }

    /// Runs a per-session script on the head of `key`, following a Cluster redirect to the
    /// user's slot. Returns the reply and, after a redirect, the user tag.
    async fn run_on_session(
        &self,
        context: &'static str,
        script: &Script,
        key: &StorageKey,
        now: Timestamp,
        extra: &[&[u8]],
    ) -> Result<(Reply, Option<String>), StoreError> {
        let k = key.as_str();
        let head = self.head_key(k);
        let reply = self
            .run(
                context,
                Call {
                    script,
                    keys: &[&head],
                    mode: self.mode(),
                    key: k,
                    now,
                },
                extra,
            )
            .await?;
        if reply.tag() != "redirect" {
            return Ok((reply, None));
        }
        let tag = reply
            .get(1)
            .and_then(text)
            .ok_or_else(|| unexpected(context, &reply.0))?
            .to_owned();
        let rec = self.user_record_key(&tag, k);
        let idx = self.user_index_key(&tag);
        let reply = self
            .run(
                context,
                Call {
                    script,
                    keys: &[&rec, &idx],
                    mode: "r",
                    key: k,
                    now,
                },
                extra,
            )
            .await?;
        Ok((reply, Some(tag)))
    }

    /// Deletes heads left behind on a Cluster (best effort: a head that stays is a harmless
    /// dangling pointer that `cleanup_expired` or its TTL removes).
    async fn drop_heads(&self, keys: &[String]) {
        if !self.cluster || keys.is_empty() {
            return;
        }
        let dels = keys.iter().map(|k| {
            let mut conn = self.conn.clone();
            let head = self.head_key(k);
            async move {
                let mut cmd = redis::cmd("DEL");
                let del = cmd.arg(&head).query_async::<i64>(&mut conn);
                match tokio::time::timeout(self.op_timeout, del).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "redis: could not remove a session pointer");
                    }
                    Err(_) => tracing::debug!("redis: removing a session pointer timed out"),
                }
            }
        });
        futures_util::future::join_all(dels).await;
    }

    async fn masters(&self) -> Result<Vec<Node>, StoreError> {
        let Conn::Cluster(c) = &self.conn else {
            return Ok(vec![Node::Single]);
        };
        let mut c = c.clone();
        let call = c.route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        );
        let v = self.timed("listing Redis Cluster masters", call).await?;
        let mut nodes = Vec::new();
        for range in array(&v).unwrap_or_default() {
            let Some(master) = array(range).and_then(|r| r.get(2)).and_then(array) else {
                continue;
            };
            if let (Some(host), Some(port)) = (
                master.first().and_then(text),
                master
                    .get(1)
                    .and_then(int)
                    .and_then(|p| u16::try_from(p).ok()),
            ) {
                nodes.push(Node::Master(host.to_owned(), port));
            }
        }
        nodes.sort();
        nodes.dedup();
        if nodes.is_empty() {
            return Err(StoreError::unavailable(
                "listing Redis Cluster masters",
                Invalid("CLUSTER SLOTS returned no master".into()),
            ));
        }
        Ok(nodes)
    }

    /// One `SCAN` step over the heads on `node`: the next cursor (0 at the end) and the keys.
    async fn scan_node(
        &self,
        node: &Node,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(self.head_pattern())
            .arg("COUNT")
            .arg(count);
        let call = async {
            match (node, self.conn.clone()) {
                (Node::Master(host, port), Conn::Cluster(mut c)) => {
                    c.route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await
                }
                (_, mut conn) => cmd.query_async::<redis::Value>(&mut conn).await,
            }
        };
        let v = self.timed("scanning Redis keys", call).await?;
        let parts = array(&v).unwrap_or_default();
        let next = parts
            .first()
            .and_then(int)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                StoreError::backend("scanning Redis keys", Invalid("bad SCAN reply".into()))
            })?;
        Ok((next, strings(parts.get(1))))
    }

    /// The storage key of a head key found by `SCAN` (foreign keys are skipped).
    fn key_of_head(&self, head: &str) -> Option<StorageKey> {
        head.strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix("s:"))
            .and_then(StorageKey::parse)
    }

    fn encode_cursor(node: &Node, cursor: u64) -> String {
        match node {
            Node::Single => cursor.to_string(),
            Node::Master(h, p) => format!("{h}:{p}/{cursor}"),
        }
    }

    /// Position in `nodes` and `SCAN` cursor for a cursor string from [`Self::encode_cursor`].
    fn decode_cursor(nodes: &[Node], s: &str) -> Result<(usize, u64), StoreError> {
        let bad = || StoreError::backend("invalid scan cursor", Invalid(s.to_owned()));
        match s.rsplit_once('/') {
            None => Ok((0, s.parse().map_err(|_| bad())?)),
            Some((addr, c)) => {
                let c: u64 = c.parse().map_err(|_| bad())?;
                let (h, p) = addr.rsplit_once(':').ok_or_else(bad)?;
                let node = Node::Master(h.to_owned(), p.parse().map_err(|_| bad())?);
                // A master that has gone since: continue with the next one in order.
                match nodes.iter().position(|n| *n >= node) {
                    Some(i) if nodes[i] == node => Ok((i, c)),
                    Some(i) => Ok((i, 0)),
                    None => Ok((nodes.len(), 0)),
                }
            }
        }
    }

    async fn load_inner(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        const CTX: &str = "loading a session from Redis";
        if let Some(batch) = &self.batch {
            // Standalone: the record is the head, one plain `HGETALL` (no script).
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(self.head_key(key.as_str()));
            let v = self.timed(CTX, batch.query(cmd)).await?;
            let flat = match v {
                redis::Value::Array(a) => a,
                redis::Value::Map(m) => m.into_iter().flat_map(|(f, v)| [f, v]).collect(),
                redis::Value::Nil => Vec::new(),
                _ => {
                    return Err(StoreError::backend(
                        CTX,
                        Invalid("HGETALL reply is not an array".into()),
                    ))
                }
            };
            if flat.is_empty() {
                return Ok(None);
            }
            // A pointer left by the earlier layout (record next to the user's index): follow it.
            let pointer = flat
                .chunks(2)
                .any(|p| p.first().and_then(bytes) == Some(b"p"));
            if !pointer {
                return decode_fields(&flat).map(Some).map_err(StoreError::Corrupt);
            }
        }
        let (reply, _) = self
            .run_on_session(
                "loading a session from Redis",
                &self.scripts.load,
                key,
                Timestamp(0),
                &[],
            )
            .await?;
        match reply.tag() {
            "none" => Ok(None),
            "rec" => decode_fields(&reply.0[1..])
                .map(Some)
                .map_err(StoreError::Corrupt),
            _ => Err(unexpected("loading a session from Redis", &reply.0)),
        }
    }

    /// The head step of `create` (kind `anon`, or `ptr` on a Cluster). On a Cluster, a pointer
    /// in the way whose record is dead at `now` (expired or gone) is cleared and the claim tried
    /// once more, so that create replaces a dead session as on a standalone server.
    async fn create_head(
        &self,
        head: &str,
        k: &str,
        now: Timestamp,
        args: &[&[u8]],
    ) -> Result<Reply, StoreError> {
        const CTX: &str = "creating a session in Redis";
        let keys = [head];
        let call = || Call {
            script: &self.scripts.create,
            keys: &keys,
            mode: self.mode(),
            key: k,
            now,
        };
        let reply = self.run(CTX, call(), args).await?;
        let stale = match (reply.tag(), reply.get(1).and_then(text)) {
            ("exists", Some(tag)) if !tag.is_empty() => tag.to_owned(),
            _ => return Ok(reply),
        };
        let (rec, idx) = (self.user_record_key(&stale, k), self.user_index_key(&stale));
        let sweep = Call {
            script: &self.scripts.destroy,
            keys: &[&rec, &idx],
            mode: "r",
            key: k,
            now,
        };
        if self.run(CTX, sweep, &[b"sweep"]).await?.tag() != "done" {
            return Ok(reply);
        }
        self.drop_heads(&[k.to_owned()]).await;
        self.run(CTX, call(), args).await
    }

    /// Runs the `create` script of a signed-in session until it decides: it answers `again`
    /// when the user's limit must evict but more expired index entries remain than it prunes
    /// in one call (each call removes a bounded batch, so Redis is never blocked for long; the
    /// decision itself is one script, so the limit stays atomic).
    async fn run_pruning<'a>(
        &'a self,
        context: &'static str,
        call: impl Fn() -> Call<'a>,
        args: &[&[u8]],
    ) -> Result<Reply, StoreError> {
        loop {
            let reply = self.run(context, call(), args).await?;
            if reply.tag() != "again" {
                return Ok(reply);
            }
        }
    }

    /// Sweeps one head for `cleanup_expired`: 1 if an expired (or unreadable) record went.
    async fn sweep(&self, key: &StorageKey, now: Timestamp) -> Result<u64, StoreError> {
        let (reply, tag) = self
            .run_on_session(
                "removing expired sessions from Redis",
                &self.scripts.destroy,
                key,
                now,
                &[b"sweep"],
            )
            .await?;
        match reply.tag() {
            "live" => Ok(0),
            "done" => {
                if tag.is_some() {
                    self.drop_heads(&[key.as_str().to_owned()]).await;
                }
                Ok(u64::from(reply.get(1).and_then(int) == Some(1)))
            }
            _ => Err(unexpected("removing expired sessions from Redis", &reply.0)),
        }
    }
}

fn policy_arg(p: LimitPolicy) -> &'static str {
    match p {
        LimitPolicy::Deny => "deny",
        LimitPolicy::EvictOldest => "oldest",
        LimitPolicy::EvictIdlest => "idlest",
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        const CTX: &str = "creating a session in Redis";
        self.bounded(CTX, async {
            let k = key.as_str();
            let head = self.head_key(k);
            let exp = capped(record.meta.expires_at());
            let abs = capped(record.meta.absolute_expires_at);
            let max = limit.max.map(|m| m.to_string()).unwrap_or_default();
            let fields = encode_fields(record);
            let tag = record.meta.user_id.as_deref().map(user_tag);
            let args = |kind: &'static str| -> Vec<&[u8]> {
                let mut a: Vec<&[u8]> = vec![
                    kind.as_bytes(),
                    tag.as_deref().unwrap_or("").as_bytes(),
                    max.as_bytes(),
                    policy_arg(limit.policy).as_bytes(),
                    exp.as_bytes(),
                    abs.as_bytes(),
                ];
                a.extend(fields.iter().map(Vec::as_slice));
                a
            };
            let reply = match (&tag, self.cluster) {
                (None, _) => self.create_head(&head, k, now, &args("anon")).await?,
                (Some(t), false) => {
                    let (rec, idx) = (self.user_record_key(t, k), self.user_index_key(t));
                    let keys = [head.as_str(), &rec, &idx];
                    let call = || Call {
                        script: &self.scripts.create,
                        keys: &keys,
                        mode: "f",
                        key: k,
                        now,
                    };
                    self.run_pruning(CTX, call, &args("user")).await?
                }
                (Some(t), true) => {
                    // Step 1 on the head's slot: claim the key (create-if-absent).
                    let claim = self.create_head(&head, k, now, &args("ptr")).await?;
                    if claim.tag() != "created" {
                        return match claim.tag() {
                            "exists" => Ok(CreateOutcome::Exists),
                            _ => Err(unexpected(CTX, &claim.0)),
                        };
                    }
                    // Step 2 on the user's slot: limit, evictions and the record, atomically.
                    let (rec, idx) = (self.user_record_key(t, k), self.user_index_key(t));
                    let keys = [rec.as_str(), &idx];
                    let call = || Call {
                        script: &self.scripts.create,
                        keys: &keys,
                        mode: "r",
                        key: k,
                        now,
                    };
                    let reply = self.run_pruning(CTX, call, &args("user")).await?;
                    if reply.tag() == "limit" {
                        self.drop_heads(&[k.to_owned()]).await;
                    }
                    reply
                }
            };
            match reply.tag() {
                "exists" => Ok(CreateOutcome::Exists),
                "limit" => Ok(CreateOutcome::LimitReached),
                "created" => {
                    let victims = strings(reply.get(1));
                    self.drop_heads(&victims).await;
                    let mut evicted: Vec<StorageKey> = victims
                        .iter()
                        .filter_map(|v| StorageKey::parse(v))
                        .collect();
                    evicted.sort();
                    Ok(CreateOutcome::Created { evicted })
                }
                _ => Err(unexpected(CTX, &reply.0)),
            }
        })
        .await
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let rec = self
            .bounded("loading a session from Redis", self.load_inner(key))
            .await?;
        Ok(rec.filter(|r| !r.meta.is_expired(now)))
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        const CTX: &str = "saving a session to Redis";
        self.bounded(CTX, async {
            let (seen, idle) = match delta.touch {
                Some(t) => (
                    t.last_seen_at.0.to_string(),
                    t.idle_expires_at.0.to_string(),
                ),
                None => (String::new(), String::new()),
            };
            // The changes reduced to the last per name: the set fields with their values, then
            // the removed ones (see `lua::SAVE`).
            let (set, removed) = delta.net();
            let field = |name: &str| [b"d:", name.as_bytes()].concat();
            let set: Vec<(Vec<u8>, &Value)> = set.into_iter().map(|(k, v)| (field(k), v)).collect();
            let removed: Vec<Vec<u8>> = removed.into_iter().map(field).collect();
            let n = set.len().to_string();
            let cap = delta.max_size.map(|c| c.to_string()).unwrap_or_default();
            let mut args: Vec<&[u8]> = Vec::with_capacity(5 + 2 * set.len() + removed.len());
            args.extend([
                if delta.touch.is_some() { b"1" } else { b"0" },
                seen.as_bytes(),
                idle.as_bytes(),
                n.as_bytes(),
                cap.as_bytes(),
            ]);
            for (f, v) in &set {
                args.extend([f.as_slice(), v.as_json().as_bytes()]);
            }
            args.extend(removed.iter().map(Vec::as_slice));
            // Standalone: the lean script for a head that is the record; a pointer of an earlier
            // layout, and a Cluster, take the general one.
            let mut reply = None;
            if self.batch.is_some() {
                let head = self.head_key(key.as_str());
                let call = Call {
                    script: &self.scripts.save_head,
                    keys: &[&head],
                    mode: "f",
                    key: key.as_str(),
                    now,
                };
                reply = Some(self.run(CTX, call, &args).await?).filter(|r| r.tag() != "pointer");
            }
            let reply = match reply {
                Some(reply) => reply,
                None => {
                    self.run_on_session(CTX, &self.scripts.save, key, now, &args)
                        .await?
                        .0
                }
            };
            match reply.tag() {
                "missing" => Ok(SaveOutcome::Missing),
                "too_large" => Ok(SaveOutcome::TooLarge),
                "saved" => {
                    let version = reply
                        .get(1)
                        .and_then(int)
                        .and_then(|v| u64::try_from(v).ok())
                        .ok_or_else(|| unexpected(CTX, &reply.0))?;
                    Ok(SaveOutcome::Saved { version })
                }
                _ => Err(unexpected(CTX, &reply.0)),
            }
        })
        .await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        const CTX: &str = "destroying a session in Redis";
        self.bounded(CTX, async {
            let (reply, tag) = self
                .run_on_session(CTX, &self.scripts.destroy, key, Timestamp(0), &[b"destroy"])
                .await?;
            if reply.tag() != "done" {
                return Err(unexpected(CTX, &reply.0));
            }
            if tag.is_some() {
                // Cluster: the record is gone; now its pointer.
                self.drop_heads(&[key.as_str().to_owned()]).await;
            }
            Ok(reply.get(1).and_then(int) == Some(1))
        })
        .await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        const CTX: &str = "listing a user's sessions in Redis";
        self.bounded(CTX, async {
            let tag = user_tag(user_id);
            let idx = self.user_index_key(&tag);
            let reply = self
                .run(CTX, Call { script: &self.scripts.list, keys: &[&idx], mode: self.mode(), key: "", now }, &[tag.as_bytes()])
                .await?;
            if reply.tag() != "list" {
                return Err(unexpected(CTX, &reply.0));
            }
            let mut out = Vec::new();
            for e in reply.get(1).and_then(array).unwrap_or_default() {
                let Some(f) = array(e) else { continue };
                let get = |i: usize| f.get(i).and_then(bytes);
                let Some(key) = f.first().and_then(text).and_then(StorageKey::parse) else {
                    continue;
                };
                // Fields: member, i, a, v, c, s, m. An unreadable record is skipped.
                match meta_from(get(3), get(4), get(5), get(1), get(2), get(6)) {
                    Ok(meta) => out.push((key, meta)),
                    Err(e) => tracing::warn!(key = key.short(), error = %e, "redis: skipping an unreadable session record"),
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            self.drop_heads(&strings(reply.get(2))).await;
            Ok(out)
        })
        .await
    }

    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        const CTX: &str = "destroying a user's sessions in Redis";
        self.bounded(CTX, async {
            let tag = user_tag(user_id);
            let idx = self.user_index_key(&tag);
            let except = except.map(StorageKey::as_str).unwrap_or("");
            let reply = self
                .run(
                    CTX,
                    Call {
                        script: &self.scripts.destroy_user,
                        keys: &[&idx],
                        mode: self.mode(),
                        key: "",
                        now: Timestamp(0),
                    },
                    &[tag.as_bytes(), except.as_bytes()],
                )
                .await?;
            if reply.tag() != "done" {
                return Err(unexpected(CTX, &reply.0));
            }
            self.drop_heads(&strings(reply.get(2))).await;
            let mut gone: Vec<StorageKey> = strings(reply.get(1))
                .iter()
                .filter_map(|k| StorageKey::parse(k))
                .collect();
            gone.sort();
            Ok(gone)
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for node in self.masters().await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self.scan_node(&node, cursor, 1000).await?;
                n += keys.len() as u64;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(n)
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        for node in self.masters().await? {
            let mut cursor = 0;
            loop {
                let (next, heads) = self.scan_node(&node, cursor, 500).await?;
                let keys: Vec<StorageKey> =
                    heads.iter().filter_map(|h| self.key_of_head(h)).collect();
                // One script per head, all in flight at once on the multiplexed connection.
                let results =
                    futures_util::future::join_all(keys.iter().map(|k| self.sweep(k, now))).await;
                for r in results {
                    removed += r?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        let nodes = self.masters().await?;
        let (mut at, mut c) = match cursor.as_deref() {
            None | Some("") => (0, 0),
            Some(s) => Self::decode_cursor(&nodes, s)?,
        };
        let batch = batch.max(1);
        let mut heads = Vec::new();
        while at < nodes.len() && heads.len() < batch {
            let (next, found) = self
                .scan_node(&nodes[at], c, batch.clamp(100, 10_000))
                .await?;
            heads.extend(found);
            if next == 0 {
                at += 1;
                c = 0;
            } else {
                c = next;
            }
        }
        let mut seen = HashSet::new();
        let keys: Vec<StorageKey> = heads
            .iter()
            .filter_map(|h| self.key_of_head(h))
            .filter(|k| seen.insert(k.clone()))
            .collect();
        let loads = futures_util::future::join_all(keys.iter().map(|k| self.load_inner(k))).await;
        let mut records = Vec::with_capacity(keys.len());
        for (k, r) in keys.into_iter().zip(loads) {
            match r {
                Ok(Some(rec)) => records.push((k, rec)),
                Ok(None) => {}
                Err(StoreError::Corrupt(e)) => {
                    tracing::warn!(key = k.short(), error = %e, "redis: skipping an unreadable session record");
                }
                Err(e) => return Err(e),
            }
        }
        let next = (at < nodes.len()).then(|| Self::encode_cursor(&nodes[at], c));
        Ok(ScanPage { records, next })
    }

    async fn health(&self) -> Health {
        let mut conn = self.conn.clone();
        let mode = if self.cluster {
            "cluster"
        } else {
            "standalone"
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<redis::Value>(&mut conn);
        match tokio::time::timeout(self.op_timeout, ping).await {
            Ok(Ok(_)) => Health {
                ok: true,
                detail: format!("redis ({mode})"),
            },
            Ok(Err(e)) => Health {
                ok: false,
                detail: format!("redis ({mode}): {e}"),
            },
            Err(_) => Health {
                ok: false,
                detail: format!("redis ({mode}): no answer within {:?}", self.op_timeout),
            },
        }
    }
}

/// The server-side scripts, one per operation, each a shared prelude and a body.
///
/// Calling convention, common to all scripts:
/// - `ARGV[1]` is the mode: `f` (standalone: `KEYS[1]` is a head and pointers are followed inside
///   the script), `h` (Cluster: `KEYS[1]` is a head; a pointer is answered with
///   `{'redirect', tag}` and the client calls again in mode `r`), `r` (Cluster, second step:
///   `KEYS[1]` is a user record, `KEYS[2]` that user's index).
/// - `ARGV[2]` is the key prefix, `ARGV[3]` the storage key (or `''`), `ARGV[4]` now in ms.
/// - Replies are arrays whose first element names the outcome.
///
/// Numbers: timestamps are compared as Lua numbers (exact below 2^53 ms, far beyond any real
/// date) and written back only as the strings the client sent, except expiries handed to
/// `PEXPIREAT`/`ZADD`, which are formatted as integers and capped at [`CAP`](lua::CAP) (year 128 000).
mod lua {
    /// Largest expiry given to `PEXPIREAT` and used as an index score, in ms.
    pub(super) const CAP: u64 = 4_000_000_000_000_000;

    const PRELUDE: &str = r#"
local mode, prefix, skey, nowarg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(nowarg)

local function at(x)
  if x > 4000000000000000 then x = 4000000000000000 end
  return string.format('%d', x)
end

-- Key of user tag u's records (append the storage key) and of its index.
local function ukeys(u)
  local base = prefix .. '{u:' .. u .. '}:'
  return base .. 's:', base .. 'i'
end

-- A record is live while now < min(idle, absolute); an unreadable one is not live.
local function live(rec)
  local f = redis.call('HMGET', rec, 'i', 'a')
  local i, a = tonumber(f[1]), tonumber(f[2])
  return i ~= nil and a ~= nil and now < math.min(i, a)
end

-- The two orders kept next to index idx (`<p>{u:<user>}:i`): by creation (`:c`) and by last
-- sight (`:l`), same members, for the evictions of `evict_oldest` and `evict_idlest`.
local function orders(idx)
  local base = string.sub(idx, 1, -2)
  return base .. 'c', base .. 'l'
end

-- The index (and its orders) live as long as its longest-lived entry.
local function fix_index_ttl(idx)
  local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
  if top[2] then
    local t = at(tonumber(top[2]))
    local c, l = orders(idx)
    redis.call('PEXPIREAT', idx, t)
    redis.call('PEXPIREAT', c, t)
    redis.call('PEXPIREAT', l, t)
  end
end

-- Removes member m from index idx and its orders.
local function unindex(idx, m)
  local c, l = orders(idx)
  redis.call('ZREM', idx, m)
  redis.call('ZREM', c, m)
  redis.call('ZREM', l, m)
end

-- Deletes the head of storage key m if it still belongs to user tag u: a pointer to u, or
-- (standalone) a record of u. Standalone only: in Cluster the head lives in another slot and
-- the client deletes it afterwards.
local function drop_head(m, u)
  if mode ~= 'f' then return end
  local h = prefix .. 's:' .. m
  local f = redis.call('HMGET', h, 'p', 'u')
  if f[1] == u or f[2] == u then redis.call('DEL', h) end
end

-- The key of the record of member m of user tag u: on a standalone server the head when it is
-- a record of u, else (Cluster, or a standalone pointer from before the record moved to the
-- head) the record next to the index.
local function rec_of(u, m)
  local rp = ukeys(u)
  if mode ~= 'f' then return rp .. m end
  local h = prefix .. 's:' .. m
  if redis.call('HGET', h, 'u') == u then return h end
  return rp .. m
end

-- Removes member m of user tag u: record, index entry and (standalone) head.
local function drop_member(idx, u, m)
  local rp = ukeys(u)
  redis.call('DEL', rp .. m)
  unindex(idx, m)
  drop_head(m, u)
end

-- Drops at most k of the index's expired entries (lowest scores first) with their records.
-- Returns whether expired entries remain. Bounded work per call: O(k log n).
local function prune_some(idx, u, k)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', nowarg, 'LIMIT', 0, k)) do
    drop_member(idx, u, m)
  end
  return redis.call('ZCOUNT', idx, '-inf', nowarg) > 0
end

-- Prunes the whole index of user tag u at now (list_user only: O(n)): entries whose score (the record's nearest expiry) has
-- passed, and entries whose record is gone, expired or unreadable, go with their records.
-- Returns the live members as {member, HMGET(record, 'i', 'a', ...)} and the dropped members.
local function prune(idx, u, ...)
  local dropped = {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', nowarg)) do
    drop_member(idx, u, m)
    dropped[#dropped + 1] = m
  end
  local alive = {}
  for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
    local f = redis.call('HMGET', rec_of(u, m), 'i', 'a', ...)
    local i, a = tonumber(f[1]), tonumber(f[2])
    if i and a and now < math.min(i, a) then
      alive[#alive + 1] = {m, f}
    else
      drop_member(idx, u, m)
      dropped[#dropped + 1] = m
    end
  end
  return alive, dropped
end

-- Where the record of KEYS[1] lives: record key, index key (false for anonymous records), head
-- key (false in mode r), and the user tag to redirect to when the head is a pointer that this
-- mode may not follow.
local function resolve()
  if mode == 'r' then return KEYS[1], KEYS[2], false, nil end
  local head = KEYS[1]
  local h = redis.call('HMGET', head, 'p', 'u')
  local u = h[1]
  if not u then
    if h[2] and mode == 'f' then
      local _, idx = ukeys(h[2])
      return head, idx, head, nil
    end
    return head, false, head, nil
  end
  if mode ~= 'f' then return nil, nil, nil, u end
  local rp, idx = ukeys(u)
  return rp .. skey, idx, head, nil
end
"#;

    /// `load`: the record's fields, `{'rec', field, value, ...}`, or `{'none'}`.
    pub(super) const LOAD: &str = r#"
local rec, idx, head, redirect = resolve()
if redirect then return {'redirect', redirect} end
local all = redis.call('HGETALL', rec)
if #all == 0 then return {'none'} end
table.insert(all, 1, 'rec')
return all
"#;

    /// `save_delta` / `touch`, in any mode: the record found from the head (following a pointer,
    /// or redirecting on a Cluster), then [`APPLY`]. `ARGV[5]` = `1` to touch, `ARGV[6]` last
    /// seen, `ARGV[7]` idle expiry, `ARGV[8]` = n, `ARGV[9]` the size cap (`''` for none), then
    /// n (`d:<name>`, value) pairs, then the `d:<name>` fields to remove: the changes already
    /// reduced by the client to the last per name. Only a live record is written; touch never
    /// shortens; the version is bumped; TTL and index score follow the nearest expiry.
    pub(super) const SAVE: &str = r#"
local rec, idx, _, redirect = resolve()
if redirect then return {'redirect', redirect} end
local f = redis.call('HMGET', rec, 'i', 'a', 's', 'v', 'z')
local i, a = tonumber(f[1]), tonumber(f[2])
if not i or not a or now >= math.min(i, a) then return {'missing'} end
local seen, ver, size = f[3], f[4], f[5]
"#;

    /// [`SAVE`] on a standalone server when the head is the record, the common case, with one
    /// read and without the prelude (whose closures cost more server time than the writes). A
    /// head that is a pointer (a layout of earlier versions) is answered `{'pointer'}`, and the
    /// client runs [`SAVE`].
    pub(super) const SAVE_HEAD: &str = r#"
local rec = KEYS[1]
local h = redis.call('HMGET', rec, 'p', 'u', 'i', 'a', 's', 'v', 'z')
if h[1] then return {'pointer'} end
local idx = false
if h[2] then idx = ARGV[2] .. '{u:' .. h[2] .. '}:i' end
local i, a = tonumber(h[3]), tonumber(h[4])
if not i or not a or tonumber(ARGV[4]) >= math.min(i, a) then return {'missing'} end
local seen, ver, size = h[5], h[6], h[7]
"#;

    /// The end of both save scripts: with `rec` (a live record), `idx` (its user's index or
    /// `false`), `i`, `a` (its expiries), `seen`, `ver` and `size` (its last-seen, version and
    /// data-size fields), the size cap, one `HDEL`, one `HSET` (chunked for very large deltas),
    /// and, when the touch moved the idle expiry, the TTL, the index score and the index's TTL.
    /// Needs no prelude.
    ///
    /// The data size is kept in field `z` as `Record::data_size` counts it (per value: name,
    /// JSON text and 4 bytes, i.e. `#field + 2 + HSTRLEN` for field `d:<name>`). A delta that
    /// changes data costs one `HSTRLEN` per changed field to update it, never a walk of the
    /// record; a record without `z` (written before it existed) is measured once, here. A
    /// delta that would take `z` over the cap and above its current value is refused
    /// (`{'too_large', size}`) before anything is written. Cost, server time of a one-value
    /// save under `redis-benchmark` (8 alternating runs on a busy 2-core box): 14.0 µs before,
    /// 17.8 µs with the size kept (minimums; medians 17.4 and 21.8); a touch alone pays nothing.
    pub(super) const APPLY: &str = r#"
local last = 9 + 2 * tonumber(ARGV[8])
local newsize = nil
if #ARGV > 9 then
  local z = tonumber(size)
  if not z then
    z = 0
    for _, fld in ipairs(redis.call('HKEYS', rec)) do
      if string.sub(fld, 1, 2) == 'd:' then
        z = z + #fld + 2 + redis.call('HSTRLEN', rec, fld)
      end
    end
  end
  local n = z
  local k = 10
  while k <= #ARGV do
    local old = redis.call('HSTRLEN', rec, ARGV[k])
    if old > 0 then n = n - (#ARGV[k] + 2 + old) end
    if k <= last then
      n = n + #ARGV[k] + 2 + #ARGV[k + 1]
      k = k + 2
    else
      k = k + 1
    end
  end
  local cap = tonumber(ARGV[9])
  if cap and n > cap and n > z then return {'too_large', n} end
  newsize = string.format('%d', n)
end
for k = last + 1, #ARGV, 200 do
  redis.call('HDEL', rec, unpack(ARGV, k, math.min(k + 199, #ARGV)))
end
local v = (tonumber(ver) or 0) + 1
local set = {'v', string.format('%d', v)}
local moved = false
if ARGV[5] == '1' then
  if tonumber(ARGV[6]) > (tonumber(seen) or 0) then
    set[#set + 1] = 's'
    set[#set + 1] = ARGV[6]
    -- The user's order by last sight (`evict_idlest`), next to the index.
    if idx then redis.call('ZADD', string.sub(idx, 1, -2) .. 'l', 'XX', ARGV[6], ARGV[3]) end
  end
  local idle = tonumber(ARGV[7])
  if idle > i then
    set[#set + 1] = 'i'
    set[#set + 1] = ARGV[7]
    i = idle
    moved = true
  end
end
if newsize then
  set[#set + 1] = 'z'
  set[#set + 1] = newsize
end
local k = 10
while k <= last and #set < 200 do
  set[#set + 1] = ARGV[k]
  k = k + 1
end
redis.call('HSET', rec, unpack(set))
for j = k, last, 200 do
  redis.call('HSET', rec, unpack(ARGV, j, math.min(j + 199, last)))
end
if moved then
  local exp = math.min(i, a)
  if exp > 4000000000000000 then exp = 4000000000000000 end
  exp = string.format('%d', exp)
  redis.call('PEXPIREAT', rec, exp)
  if idx then
    redis.call('ZADD', idx, exp, ARGV[3])
    local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
    local t = tonumber(top[2])
    if t then
      if t > 4000000000000000 then t = 4000000000000000 end
      t = string.format('%d', t)
      redis.call('PEXPIREAT', idx, t)
      redis.call('PEXPIREAT', string.sub(idx, 1, -2) .. 'c', t)
      redis.call('PEXPIREAT', string.sub(idx, 1, -2) .. 'l', t)
    end
  end
end
return {'saved', v}
"#;

    /// `create`. `ARGV[5]` kind: `anon` (record at the head), `ptr` (Cluster step 1: claim the head
    /// as a pointer to user tag `ARGV[6]`), `user` (standalone: head + record + index in one step;
    /// Cluster step 2 in mode `r`: record + index). `ARGV[7]` max sessions (`''` = unlimited),
    /// `ARGV[8]` policy (`deny` | `oldest` | `idlest`), `ARGV[9]` nearest expiry, `ARGV[10]`
    /// absolute expiry, then field/value pairs. Replies `{'exists', tag}` (`tag`: in mode `h`,
    /// the user tag of a pointer in the way, else `''`), `{'limit'}` or
    /// `{'created', {evicted...}}`.
    pub(super) const CREATE: &str = r#"
local kind, u = ARGV[5], ARGV[6]

-- Whether the head may be written: absent, or holding an expired or unreadable session. A
-- pointer in Cluster mode counts as taken (its record is in another slot) and is returned so
-- that the client can check that record and clear the head if it is dead.
local function head_free(head)
  local h = redis.call('HMGET', head, 'p', 'i', 'a', 'u')
  if h[1] then
    if mode ~= 'f' then return false, h[1] end
    local rp, pidx = ukeys(h[1])
    if live(rp .. skey) then return false end
    redis.call('DEL', rp .. skey)
    unindex(pidx, skey)
    redis.call('DEL', head)
    return true
  end
  if redis.call('EXISTS', head) == 0 then return true end
  local i, a = tonumber(h[2]), tonumber(h[3])
  if i and a and now < math.min(i, a) then return false end
  redis.call('DEL', head)
  if h[4] then
    local _, oidx = ukeys(h[4])
    unindex(oidx, skey)
  end
  return true
end

local function write(key)
  redis.call('DEL', key)
  local batch = {}
  for n = 11, #ARGV do
    batch[#batch + 1] = ARGV[n]
    if #batch == 200 then
      redis.call('HSET', key, unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then redis.call('HSET', key, unpack(batch)) end
end

if kind ~= 'user' then
  local head = KEYS[1]
  local free, ptr = head_free(head)
  if not free then return {'exists', ptr or ''} end
  if kind == 'ptr' then
    redis.call('HSET', head, 'p', u)
    redis.call('PEXPIREAT', head, ARGV[10])
  else
    write(head)
    redis.call('PEXPIREAT', head, ARGV[9])
  end
  return {'created', {}}
end

local head, rec, idx
if mode == 'r' then
  rec, idx = KEYS[1], KEYS[2]
else
  head, rec, idx = KEYS[1], KEYS[2], KEYS[3]
end
if head and not head_free(head) then return {'exists'} end
if live(rec) then return {'exists'} end
-- Standalone: the record lives at its head, marked with its user tag.
if head then
  redis.call('DEL', rec)
  rec = head
end

-- Never the whole index (see "User index" in the module documentation): a bounded batch of
-- expired entries goes, live entries are counted by score, victims are the first members of
-- the order the policy names.
local cidx, lidx = orders(idx)
local more = prune_some(idx, u, 32)
local victims = {}
local max = tonumber(ARGV[7])
if max then
  local n = redis.call('ZCOUNT', idx, '(' .. nowarg, '+inf')
  if n >= max then
    if ARGV[8] == 'deny' then return {'limit'} end
    -- The orders hold expired members too: clear them first, a batch per call.
    if more and prune_some(idx, u, 512) then return {'again'} end
    -- Entries written before the orders existed: rebuild them once (O(n), once per user).
    local total = redis.call('ZCARD', idx)
    if redis.call('ZCARD', cidx) ~= total or redis.call('ZCARD', lidx) ~= total then
      redis.call('DEL', cidx, lidx)
      for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
        local f = redis.call('HMGET', rec_of(u, m), 'c', 's')
        if f[1] and f[2] then
          redis.call('ZADD', cidx, f[1], m)
          redis.call('ZADD', lidx, f[2], m)
        else
          drop_member(idx, u, m)
        end
      end
      n = redis.call('ZCOUNT', idx, '(' .. nowarg, '+inf')
    end
    -- 'oldest' by created_at, 'idlest' by last_seen_at; ties by key (sorted-set order).
    local order = cidx
    if ARGV[8] == 'idlest' then order = lidx end
    -- At most 64 per login: a limit lowered far below the count is reached over several.
    while n >= max and #victims < 64 do
      local first = redis.call('ZRANGE', order, 0, 0)[1]
      if not first then break end
      victims[#victims + 1] = first
      drop_member(idx, u, first)
      n = n - 1
    end
  end
end

write(rec)
if head then redis.call('HSET', rec, 'u', u) end
redis.call('PEXPIREAT', rec, ARGV[9])
redis.call('ZADD', idx, ARGV[9], skey)
-- The record's own fields: created (c) and last seen (s), among the first pairs.
for n = 11, 22, 2 do
  if ARGV[n] == 'c' then redis.call('ZADD', cidx, ARGV[n + 1], skey) end
  if ARGV[n] == 's' then redis.call('ZADD', lidx, ARGV[n + 1], skey) end
end
fix_index_ttl(idx)
return {'created', victims}
"#;

    /// `destroy`, and the per-record step of `cleanup_expired` when `ARGV[5]` is `sweep` (then a
    /// live record is left alone: `{'live'}`). Replies `{'done', existed}` (1 or 0).
    pub(super) const DESTROY: &str = r#"
local rec, idx, head, redirect = resolve()
if redirect then return {'redirect', redirect} end
if ARGV[5] == 'sweep' and live(rec) then return {'live'} end
local existed = redis.call('DEL', rec)
if idx then
  unindex(idx, skey)
  fix_index_ttl(idx)
end
if head and head ~= rec then redis.call('DEL', head) end
return {'done', existed}
"#;

    /// `list_user`: `KEYS[1]` is the index of user tag `ARGV[5]`. Prunes, then replies
    /// `{'list', {{member, i, a, v, c, s, m}...}, {dropped...}}`.
    pub(super) const LIST: &str = r#"
local idx, u = KEYS[1], ARGV[5]
local alive, dropped = prune(idx, u, 'v', 'c', 's', 'm')
local out = {}
for _, e in ipairs(alive) do
  local f = e[2]
  out[#out + 1] = {e[1], f[1], f[2], f[3], f[4], f[5], f[6]}
end
fix_index_ttl(idx)
return {'list', out, dropped}
"#;

    /// `destroy_user`: `KEYS[1]` is the index of user tag `ARGV[5]`; `ARGV[6]` the storage key to
    /// keep (or `''`). Replies `{'done', {destroyed...}, {every member removed from the index...}}`.
    pub(super) const DESTROY_USER: &str = r#"
local idx, u, except = KEYS[1], ARGV[5], ARGV[6]
local gone, seen = {}, {}
for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
  if m ~= except then
    if redis.call('DEL', rec_of(u, m)) == 1 then gone[#gone + 1] = m end
    unindex(idx, m)
    drop_head(m, u)
    seen[#seen + 1] = m
  end
end
fix_index_ttl(idx)
return {'done', gone, seen}
"#;

    /// The full source of a script: prelude + body.
    pub(super) fn source(body: &str) -> String {
        format!("{PRELUDE}{body}")
    }
}
