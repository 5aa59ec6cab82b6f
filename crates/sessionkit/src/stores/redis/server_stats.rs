//! The server's figures for the operator: one `INFO memory clients stats` per server (each
//! master of a Cluster), summed, plus the eviction policy.
//!
//! The policy is read from `INFO`'s `maxmemory_policy` line; only a server that leaves it out
//! is asked with `CONFIG GET maxmemory-policy`, which managed services often refuse: the policy
//! is then unknown (`None`), never guessed.

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::InfoDict;

use super::connection::{map_err, Conn};
use super::scan::Node;
use super::RedisStore;
use crate::store::{ServerStats, StoreError};

/// A field of an `INFO` reply (whichever string type carries it, RESP2 or RESP3), read with
/// redis-rs's [`InfoDict`].
pub(crate) fn info_field<T: redis::FromRedisValue>(reply: &redis::Value, field: &str) -> Option<T> {
    redis::from_redis_value_ref::<InfoDict>(reply)
        .ok()?
        .get(field)
}

impl RedisStore {
    pub(super) async fn stats_of_servers(&self) -> Result<ServerStats, StoreError> {
        let mut total = ServerStats::default();
        for node in self.masters().await? {
            total.merge(self.stats_of(&node).await?);
        }
        Ok(total)
    }

    async fn stats_of(&self, node: &Node) -> Result<ServerStats, StoreError> {
        let info = self
            .query_node(
                node,
                redis::cmd("INFO").arg("memory").arg("clients").arg("stats"),
            )
            .await;
        let info = match info {
            Ok(v) => v,
            // Before Redis 7, INFO takes one section: ask for the default ones.
            Err(StoreError::Backend { .. }) => self.query_node(node, &redis::cmd("INFO")).await?,
            Err(e) => return Err(e),
        };
        let info: InfoDict = redis::from_redis_value(info)
            .map_err(|e| StoreError::backend("reading Redis INFO", e))?;
        let mut stats = from_info(&info);
        if stats.eviction_policy.is_none() {
            let reply = self
                .query_node(
                    node,
                    redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"),
                )
                .await;
            stats.eviction_policy = match reply {
                Ok(v) => policy_from_config(v),
                Err(e @ StoreError::Unavailable { .. }) => return Err(e),
                // Refused (managed Redis, an ACL without +config): unknown.
                Err(_) => None,
            };
        }
        Ok(stats)
    }

    async fn query_node(&self, node: &Node, cmd: &redis::Cmd) -> Result<redis::Value, StoreError> {
        let call = async {
            match (node, self.conn.clone()) {
                (Node::Master(host, port), Conn::Cluster(mut c)) => {
                    c.route_command(
                        cmd.clone(),
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
        self.bounded("reading Redis server figures", async {
            call.await
                .map_err(|e| map_err("reading Redis server figures", e))
        })
        .await
    }
}

/// The figures of one server from its `INFO`; a missing counter reads 0.
fn from_info(info: &InfoDict) -> ServerStats {
    let n = |k: &str| info.get::<u64>(k).unwrap_or(0);
    ServerStats {
        server: "redis",
        nodes: 1,
        used_memory: n("used_memory"),
        maxmemory: n("maxmemory"),
        connected_clients: n("connected_clients"),
        keyspace_hits: n("keyspace_hits"),
        keyspace_misses: n("keyspace_misses"),
        evicted_keys: n("evicted_keys"),
        eviction_policy: info
            .get::<String>("maxmemory_policy")
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty()),
    }
}

/// The value of a `CONFIG GET maxmemory-policy` reply: `[name, value]` (RESP2) or a map (RESP3).
fn policy_from_config(v: redis::Value) -> Option<String> {
    let pairs: std::collections::HashMap<String, String> = redis::from_redis_value(v).ok()?;
    pairs
        .get("maxmemory-policy")
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_become_figures() {
        let info = InfoDict::new(
            "# Memory\r\nused_memory:1048576\r\nmaxmemory:0\r\nmaxmemory_policy:allkeys-lru\r\n\
             # Clients\r\nconnected_clients:3\r\n# Stats\r\nkeyspace_hits:10\r\n\
             keyspace_misses:4\r\nevicted_keys:2\r\n",
        );
        let s = from_info(&info);
        assert_eq!(
            (s.used_memory, s.maxmemory, s.connected_clients),
            (1_048_576, 0, 3)
        );
        assert_eq!(
            (s.keyspace_hits, s.keyspace_misses, s.evicted_keys),
            (10, 4, 2)
        );
        assert_eq!(s.eviction_policy.as_deref(), Some("allkeys-lru"));
        assert_eq!(
            from_info(&InfoDict::new("used_memory:1\r\n")).eviction_policy,
            None
        );
        let reply = redis::Value::Array(vec![
            redis::Value::BulkString(b"maxmemory-policy".to_vec()),
            redis::Value::BulkString(b"noeviction".to_vec()),
        ]);
        assert_eq!(policy_from_config(reply).as_deref(), Some("noeviction"));
        assert_eq!(policy_from_config(redis::Value::Array(vec![])), None);
    }
}
