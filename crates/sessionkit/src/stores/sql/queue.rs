//! The batching queue both SQL stores use for their hot path (the SQLite writer's saves;
//! PostgreSQL's loads and saves).
//!
//! Guarantees: requests for one session are served one after another, in the order they came
//! (a batch holds at most one request per key, and a key with a batch in flight waits for it to
//! end); requests for other sessions do not wait behind them; waiting is cancel-safe (a request
//! received is kept). Each caller keeps its own deadline (see [`super::ask`]).

use crate::id::StorageKey;

/// A request waiting for a batching task; its key decides which requests may share a batch.
pub(crate) trait Queued {
    fn key(&self) -> &StorageKey;
}

/// The requests waiting for a batching task (the SQLite writer's saves; PostgreSQL's loads and
/// saves): what the channel holds, and what an earlier batch put back for a later one.
pub(crate) struct Queue<R> {
    incoming: tokio::sync::mpsc::UnboundedReceiver<R>,
    deferred: std::collections::VecDeque<R>,
}

impl<R: Queued> Queue<R> {
    pub(crate) fn new(incoming: tokio::sync::mpsc::UnboundedReceiver<R>) -> Self {
        Self {
            incoming,
            deferred: Default::default(),
        }
    }

    /// The next batch: the oldest waiting request (waiting for one when there is none), then
    /// every request already queued, up to `max`. With `distinct`, at most one request per key:
    /// a second one for a key goes to a later batch, so requests for one session run in the
    /// order they came. `None` once every sender is gone and nothing waits.
    #[cfg(feature = "sqlite")]
    pub(crate) async fn next(&mut self, max: usize, distinct: bool) -> Option<Vec<R>> {
        let first = match self.deferred.pop_front() {
            Some(r) => r,
            None => self.incoming.recv().await?,
        };
        let mut keys = std::collections::HashSet::new();
        if distinct {
            keys.insert(first.key().clone());
        }
        let mut batch = vec![first];
        self.fill(&mut batch, max, |r| {
            !distinct || keys.insert(r.key().clone())
        });
        Some(batch)
    }

    /// Moves the waiting requests that `admit` takes into `batch`, oldest first, until it holds
    /// `max`; the others keep waiting, in their order, ahead of anything newer.
    fn fill(&mut self, batch: &mut Vec<R>, max: usize, mut admit: impl FnMut(&R) -> bool) {
        let mut later = std::collections::VecDeque::new();
        while batch.len() < max {
            let Some(r) = self
                .deferred
                .pop_front()
                .or_else(|| self.incoming.try_recv().ok())
            else {
                break;
            };
            if admit(&r) {
                batch.push(r);
            } else {
                later.push_back(r);
            }
        }
        later.append(&mut self.deferred);
        self.deferred = later;
    }
}

#[cfg(feature = "postgres")]
impl<R: Queued> Queue<R> {
    /// The next batch, at most one request per key, and no request whose key is in `busy` (a
    /// batch still in flight holds it): such a request waits, in order, for a later batch. It
    /// waits for a new request while none is eligible (or, once every sender is gone, for ever:
    /// only the end of a batch in flight, which changes `busy`, can free what waits). Cancel-safe:
    /// a request received is kept before the next wait. `None` once every sender is gone and
    /// nothing waits.
    pub(crate) async fn next_excluding(
        &mut self,
        max: usize,
        busy: &std::collections::HashSet<StorageKey>,
    ) -> Option<Vec<R>> {
        loop {
            let mut keys = std::collections::HashSet::new();
            let mut batch = Vec::new();
            self.fill(&mut batch, max, |r| {
                !busy.contains(r.key()) && keys.insert(r.key().clone())
            });
            if !batch.is_empty() {
                return Some(batch);
            }
            match self.incoming.recv().await {
                Some(r) => self.deferred.push_back(r),
                None if self.deferred.is_empty() => return None,
                // Closed, but requests wait for busy keys: only a batch ending frees them.
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// Runs batches from `queue` with up to `parallel` of them in flight at once, no two holding
/// the same key, so requests for one session still run one after another, in the order they
/// came; requests for other sessions do not wait for a slow batch (a commit's flush, say).
#[cfg(feature = "postgres")]
pub(crate) async fn run_parallel<R, F>(
    mut queue: Queue<R>,
    max: usize,
    parallel: usize,
    mut run: impl FnMut(Vec<R>) -> F,
) where
    R: Queued,
    F: std::future::Future<Output = ()>,
{
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut busy = std::collections::HashSet::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            batch = queue.next_excluding(max, &busy), if in_flight.len() < parallel => {
                let Some(batch) = batch else { break };
                let keys: Vec<StorageKey> = batch.iter().map(|r| r.key().clone()).collect();
                busy.extend(keys.iter().cloned());
                let fut = run(batch);
                in_flight.push(async move {
                    fut.await;
                    keys
                });
            }
            Some(keys) = in_flight.next(), if !in_flight.is_empty() => {
                for k in keys {
                    busy.remove(&k);
                }
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

#[cfg(test)]
#[cfg(feature = "postgres")]
mod tests {
    use super::*;

    struct Req(StorageKey, u32);

    impl Queued for Req {
        fn key(&self) -> &StorageKey {
            &self.0
        }
    }

    fn k(c: char) -> StorageKey {
        StorageKey::parse(&c.to_string().repeat(64)).unwrap()
    }

    #[tokio::test]
    async fn a_busy_key_waits_in_order_and_others_go_ahead() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut q = Queue::new(rx);
        for (c, n) in [('a', 1), ('b', 2), ('a', 3), ('c', 4), ('a', 5)] {
            tx.send(Req(k(c), n)).unwrap();
        }
        let busy: std::collections::HashSet<_> = [k('a')].into();
        let ids = |b: Vec<Req>| b.into_iter().map(|r| r.1).collect::<Vec<_>>();
        // a is in flight: its requests wait, the others go.
        assert_eq!(ids(q.next_excluding(10, &busy).await.unwrap()), [2, 4]);
        // Nothing eligible: it waits for a new request, keeping the held ones.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            q.next_excluding(10, &busy),
        )
        .await;
        assert!(waiting.is_err(), "only busy keys wait, so no batch");
        tx.send(Req(k('d'), 6)).unwrap();
        assert_eq!(ids(q.next_excluding(10, &busy).await.unwrap()), [6]);
        // Once a is free, its requests go one per batch, in the order they came.
        let free = std::collections::HashSet::new();
        assert_eq!(ids(q.next_excluding(10, &free).await.unwrap()), [1]);
        assert_eq!(ids(q.next_excluding(10, &free).await.unwrap()), [3]);
        assert_eq!(ids(q.next_excluding(10, &free).await.unwrap()), [5]);
        drop(tx);
        assert!(q.next_excluding(10, &free).await.is_none());
    }

    #[tokio::test]
    async fn parallel_batches_never_share_a_key_and_keep_its_order() {
        use std::sync::{Arc, Mutex};
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let in_flight = Arc::new(Mutex::new(Vec::<StorageKey>::new()));
        let done = Arc::new(Mutex::new(Vec::<(char, u32)>::new()));
        let keys = ['a', 'b', 'c'];
        for n in 0..60u32 {
            tx.send(Req(k(keys[n as usize % 3]), n)).unwrap();
        }
        drop(tx);
        let (f, d) = (Arc::clone(&in_flight), Arc::clone(&done));
        run_parallel(Queue::new(rx), 2, 3, move |batch: Vec<Req>| {
            let (f, d) = (Arc::clone(&f), Arc::clone(&d));
            async move {
                for r in &batch {
                    let mut f = f.lock().unwrap();
                    assert!(!f.contains(&r.0), "two batches in flight hold one key");
                    f.push(r.0.clone());
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                for r in &batch {
                    f.lock().unwrap().retain(|x| x != &r.0);
                    let c = keys[r.1 as usize % 3];
                    d.lock().unwrap().push((c, r.1));
                }
            }
        })
        .await;
        let done = done.lock().unwrap();
        assert_eq!(done.len(), 60, "every request ran");
        for c in keys {
            let order: Vec<u32> = done.iter().filter(|x| x.0 == c).map(|x| x.1).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{c}: {order:?}");
        }
    }
}
