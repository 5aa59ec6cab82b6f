//! `stats` and `check` on the store's server: its figures, and whether it may evict sessions.

use sessionkit::admin::{ServerStats, NO_EVICTION};

/// The server's figures, one per line, named as Redis names them.
pub(crate) fn print_server_stats(s: &ServerStats) {
    let name = s.server;
    println!("{name} nodes: {}", s.nodes);
    println!("{name} used_memory: {} bytes", s.used_memory);
    if s.maxmemory == 0 {
        println!("{name} maxmemory: 0 (no limit)");
    } else {
        println!("{name} maxmemory: {} bytes", s.maxmemory);
    }
    println!("{name} connected_clients: {}", s.connected_clients);
    println!("{name} keyspace_hits: {}", s.keyspace_hits);
    println!("{name} keyspace_misses: {}", s.keyspace_misses);
    println!("{name} evicted_keys: {}", s.evicted_keys);
    println!(
        "{name} maxmemory-policy: {}",
        s.eviction_policy.as_deref().unwrap_or("unknown")
    );
}

/// `check` on a server that may evict sessions: an error, or a warning with `--allow-eviction`.
/// An unknown policy is treated the same way: `check` passes only what it could verify.
pub(crate) fn check_eviction(s: &ServerStats, allow: bool) -> anyhow::Result<()> {
    let problem = match (s.may_evict_sessions(), s.eviction_policy.as_deref()) {
        (Some(false), _) => {
            println!("eviction: {NO_EVICTION} (sessions are never evicted)");
            return Ok(());
        }
        (Some(true), Some(policy)) => format!(
            "{} maxmemory-policy is {policy}: under memory pressure it evicts keys, and every \
             session key carries a TTL, so live sessions can vanish and their users be signed \
             out without a trace; set `maxmemory-policy {NO_EVICTION}` (a full server then \
             refuses writes, which the app reports as errors)",
            s.server
        ),
        _ => format!(
            "could not read the {} maxmemory-policy (the server refused CONFIG GET and INFO did \
             not say): cannot verify that it never evicts live sessions; check the setting with \
             your provider (it must be {NO_EVICTION})",
            s.server
        ),
    };
    if allow {
        eprintln!("warning: {problem} (accepted with --allow-eviction)");
        Ok(())
    } else {
        anyhow::bail!("{problem}, or pass --allow-eviction to accept the risk")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_eviction_policy_is_not_passed_as_safe() {
        let mut s = ServerStats::default();
        s.server = "redis";
        s.nodes = 1;
        let e = check_eviction(&s, false).unwrap_err().to_string();
        assert!(
            e.contains("could not read the redis maxmemory-policy")
                && e.contains("--allow-eviction"),
            "{e}"
        );
        assert!(check_eviction(&s, true).is_ok());
        s.eviction_policy = Some(NO_EVICTION.into());
        assert!(check_eviction(&s, false).is_ok());
        s.eviction_policy = Some("volatile-lfu".into());
        assert!(check_eviction(&s, false).is_err());
    }
}
