//! What more than one bench needs.

use std::path::Path;

/// Deletes a file store's shard folders (`sessions/*`, `users/*` under `dir`) from 16 threads:
/// `rm -rf` of millions of files one by one takes minutes, freeing their blocks on some file
/// systems.
pub(crate) fn remove_parallel(dir: &Path) {
    let mut tops = Vec::new();
    for sub in ["sessions", "users"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            tops.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(p) = tops.get(i) else { break };
                let _ = std::fs::remove_dir_all(p);
            });
        }
    });
}
