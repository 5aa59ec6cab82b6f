//! The walks over every session: `count`, `scan` and `cleanup_expired`.
//!
//! `count` is `SCAN MATCH <p>s:*` on every master (never `KEYS`): no counter to drift when TTLs
//! fire, no hot key on a Cluster, at the price of O(keys) work, which suits the CLI and an
//! occasional metrics scrape but not a per-request call. `cleanup_expired(now)` walks the heads
//! the same way, in batches, and removes every session expired at `now` even if its TTL has not
//! fired, with its index entry and pointer. A topology change during a scan can repeat or miss
//! records, like `SCAN` itself.

use std::collections::HashSet;

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::codec::{array, int, strings, text};
use super::connection::{Conn, Invalid};
use super::scripts::unexpected;
use super::RedisStore;
use crate::id::StorageKey;
use crate::record::Timestamp;
use crate::store::{ScanPage, StoreError};

/// Where a `SCAN` runs: the standalone server, or one Cluster master.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Node {
    Single,
    Master(String, u16),
}

impl RedisStore {
    pub(super) async fn masters(&self) -> Result<Vec<Node>, StoreError> {
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
    pub(super) async fn scan_node(
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

    pub(super) fn encode_cursor(node: &Node, cursor: u64) -> String {
        match node {
            Node::Single => cursor.to_string(),
            Node::Master(h, p) => format!("{h}:{p}/{cursor}"),
        }
    }

    /// Position in `nodes` and `SCAN` cursor for a cursor string from [`Self::encode_cursor`].
    pub(super) fn decode_cursor(nodes: &[Node], s: &str) -> Result<(usize, u64), StoreError> {
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

    /// Sweeps one head for `cleanup_expired`: 1 if an expired (or unreadable) record went.
    pub(super) async fn sweep(&self, key: &StorageKey, now: Timestamp) -> Result<u64, StoreError> {
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

    pub(super) async fn count_heads(&self) -> Result<u64, StoreError> {
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

    pub(super) async fn sweep_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
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

    pub(super) async fn scan_page(
        &self,
        cursor: Option<String>,
        batch: usize,
    ) -> Result<ScanPage, StoreError> {
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
}
