//! [`ServerStats`]: the figures of the server behind a store (Redis today), for the operator's
//! tools; stores without a server of their own report none.

/// The eviction policy that never removes a key to free memory: a full server refuses writes
/// instead, which a session store reports as an error rather than as users silently signed out.
pub const NO_EVICTION: &str = "noeviction";

/// Memory, clients, hit/miss and eviction figures of the server(s) behind a store, from
/// [`SessionStore::server_stats`](super::SessionStore::server_stats). On a Cluster the counters
/// are summed over the masters and the policy is the weakest one found (see
/// [`eviction_policy`](ServerStats::eviction_policy)).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ServerStats {
    /// The server software, e.g. `redis`.
    pub server: &'static str,
    /// How many servers were asked (1, or the Cluster's masters).
    pub nodes: u32,
    /// Bytes of memory in use (`used_memory`).
    pub used_memory: u64,
    /// The memory limit in bytes (`maxmemory`); 0 means no limit (on a Cluster: on some node).
    pub maxmemory: u64,
    /// Connected clients (`connected_clients`).
    pub connected_clients: u64,
    /// Successful key lookups since the server started (`keyspace_hits`).
    pub keyspace_hits: u64,
    /// Failed key lookups since the server started (`keyspace_misses`).
    pub keyspace_misses: u64,
    /// Keys removed to free memory since the server started (`evicted_keys`).
    pub evicted_keys: u64,
    /// The eviction policy (`maxmemory-policy`); `None` when the server would not say. On a
    /// Cluster: a policy other than [`NO_EVICTION`] if any master has one, else `None` if any
    /// master would not say.
    pub eviction_policy: Option<String>,
}

impl ServerStats {
    /// Whether the server may evict live sessions under memory pressure: `Some(false)` only for
    /// [`NO_EVICTION`], `None` when the policy is unknown. Every session key carries a TTL, so
    /// even the `volatile-*` policies can pick them.
    pub fn may_evict_sessions(&self) -> Option<bool> {
        self.eviction_policy.as_deref().map(|p| p != NO_EVICTION)
    }

    /// Adds another node's figures (a Cluster master) to these; merging into a
    /// `ServerStats::default()` starts the total.
    pub fn merge(&mut self, other: ServerStats) {
        let first = self.nodes == 0;
        self.server = other.server;
        self.nodes += other.nodes;
        self.used_memory += other.used_memory;
        self.maxmemory = match (self.maxmemory, other.maxmemory) {
            _ if first => other.maxmemory,
            (0, _) | (_, 0) => 0,
            (a, b) => a.saturating_add(b),
        };
        self.connected_clients += other.connected_clients;
        self.keyspace_hits += other.keyspace_hits;
        self.keyspace_misses += other.keyspace_misses;
        self.evicted_keys += other.evicted_keys;
        let mine = self.eviction_policy.take();
        self.eviction_policy = match (mine, other.eviction_policy) {
            (_, b) if first => b,
            (Some(a), _) if a != NO_EVICTION => Some(a),
            (_, Some(b)) if b != NO_EVICTION => Some(b),
            (Some(a), Some(_)) => Some(a),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(maxmemory: u64, policy: Option<&str>) -> ServerStats {
        ServerStats {
            server: "redis",
            nodes: 1,
            used_memory: 10,
            maxmemory,
            connected_clients: 2,
            eviction_policy: policy.map(str::to_owned),
            ..ServerStats::default()
        }
    }

    #[test]
    fn a_cluster_reports_sums_and_its_weakest_policy() {
        let mut all = ServerStats::default();
        all.merge(node(100, Some(NO_EVICTION)));
        all.merge(node(100, Some(NO_EVICTION)));
        assert_eq!((all.nodes, all.used_memory, all.maxmemory), (2, 20, 200));
        assert_eq!(all.connected_clients, 4);
        assert_eq!(all.may_evict_sessions(), Some(false));
        let mut unknown = all.clone();
        unknown.merge(node(0, None));
        assert_eq!(unknown.may_evict_sessions(), None);
        assert_eq!(
            unknown.maxmemory, 0,
            "one node without a limit: no overall limit"
        );
        unknown.merge(node(100, Some("allkeys-lru")));
        assert_eq!(unknown.eviction_policy.as_deref(), Some("allkeys-lru"));
        assert_eq!(unknown.may_evict_sessions(), Some(true));
        assert_eq!(unknown.maxmemory, 0);
    }
}
