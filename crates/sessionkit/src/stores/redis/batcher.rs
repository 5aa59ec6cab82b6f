//! Automatic pipelining of the per-request commands on a standalone server.

use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, ErrorKind, RedisError};
use tokio::sync::{mpsc, oneshot};

use super::tracking::TrackingLink;

/// A command waiting for the next write, and where its reply goes.
pub(super) type Job = (Cmd, oneshot::Sender<redis::RedisResult<redis::Value>>);

/// Automatic pipelining for a standalone server: the commands that store calls issue while the
/// runtime is busy leave in one write (one `writev`, one Redis `read`, one reply write) instead
/// of one each.
///
/// Why: the multiplexed connection's writer task is woken by the first command and, being the
/// task woken last, runs right after it, so under load every command went out alone. Here a
/// flusher task takes the first command, yields once, so that every request task already
/// runnable gets to queue its command, then sends all of them as one pipeline. Batches do not
/// wait for each other's replies. An idle server adds one scheduler pass of latency.
///
/// While a cache is attached, each batch starts with the commands that keep the connection's
/// reads tracked (see `tracking.rs`).
#[derive(Clone)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
    pub(super) link: Arc<TrackingLink>,
}

impl Batcher {
    /// Starts the flusher task; it ends when the last `Batcher` clone is dropped.
    pub(super) fn start(conn: ConnectionManager) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(TrackingLink::default());
        tokio::spawn(Self::flush_loop(rx, conn, link.clone()));
        Self { tx, link }
    }

    pub(super) async fn query(&self, cmd: Cmd) -> redis::RedisResult<redis::Value> {
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

    async fn flush_loop(
        mut rx: mpsc::UnboundedReceiver<Job>,
        conn: ConnectionManager,
        link: Arc<TrackingLink>,
    ) {
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
            // Batches reach the connection in the order they are made (`FuturesUnordered`
            // polls new futures first-in first-out), so a batch made after the cache's
            // connection changed also runs after every batch that named the old one.
            in_flight.push(Self::send(conn.clone(), jobs, link.clone()));
        }
        while in_flight.next().await.is_some() {}
    }

    async fn send(mut conn: ConnectionManager, mut jobs: Vec<Job>, link: Arc<TrackingLink>) {
        let prefix = link.prefix();
        if jobs.len() == 1 && prefix.is_none() {
            if let Some((cmd, reply)) = jobs.pop() {
                let r = conn.req_packed_command(&cmd).await;
                let _ = reply.send(r.and_then(redis::Value::extract_error));
            }
            return;
        }
        let mut pipe = redis::pipe();
        let skip = prefix.as_ref().map_or(0, |p| p.len());
        for cmd in prefix.into_iter().flatten() {
            pipe.add_command(cmd);
        }
        let mut replies = Vec::with_capacity(jobs.len());
        for (cmd, reply) in jobs {
            pipe.add_command(cmd);
            replies.push(reply);
        }
        let result = conn
            .req_packed_commands(&pipe, 0, skip + replies.len())
            .await;
        if skip > 0 {
            // Before any reply is handed out: a load in this batch must not cache what it read
            // if its read may not be tracked.
            link.check(match &result {
                Ok(v) if v.len() == skip + replies.len() => Some((&v[0], &v[1])),
                _ => None,
            });
        }
        match result {
            Ok(values) if values.len() == skip + replies.len() => {
                for (v, reply) in values.into_iter().skip(skip).zip(replies) {
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
