//! Prometheus metrics (feature `metrics`): session events, and the count, outcome and latency of
//! every store operation, in the OpenMetrics text format that Prometheus scrapes.
//!
//! ```
//! use std::sync::Arc;
//! use sessionkit::{Config, SessionLayer};
//! use sessionkit::events::{FanoutSink, TracingSink};
//! use sessionkit::metrics::SessionMetrics;
//! use sessionkit::stores::memory::MemoryStore;
//!
//! let mut registry = sessionkit::metrics::prometheus_client::registry::Registry::default();
//! let metrics = SessionMetrics::register(&mut registry);
//! let store = metrics.instrument(Arc::new(MemoryStore::new()));
//! let layer = SessionLayer::new(store, Config::new("a-long-random-secret-from-the-environment!!"))
//!     .unwrap()
//!     .with_events(Arc::new(FanoutSink(vec![Arc::new(TracingSink), metrics.clone()])));
//! // Serve this on GET /metrics, with the content type `sessionkit::metrics::METRICS_CONTENT_TYPE`:
//! let text = sessionkit::metrics::render_metrics(&registry);
//! # let _ = (layer, text);
//! ```
//!
//! Series:
//! - `sessionkit_events_total{kind, reason}`: every [`SessionEvent`] (created, rotated,
//!   destroyed, expired, revoked, evicted, rejected) by its reason, e.g. `bad_signature`.
//! - `sessionkit_store_operations_total{store, op, outcome}`: `outcome` is `ok`, `unavailable`
//!   (the store did not answer: a 503), `corrupt`, `full` or `error`.
//! - `sessionkit_store_operation_duration_seconds{store, op}`: a histogram from 50 µs to 1.6 s.
//! - `sessionkit_store_up{store}`: 1 or 0, as the last health check found it.
//!
//! Labels never carry a session key, a user ID or an actor (who revoked a session): their
//! number stays bounded.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::events::{EventSink, SessionEvent};
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp, Touch};
use crate::store::{
    CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError,
    StoreWrapper,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    store: &'static str,
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    store: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

/// The Prometheus client that [`SessionMetrics`] registers in.
pub use prometheus_client;

/// The metric families of sessionkit, registered in a [`Registry`]. It is an [`EventSink`]
/// (counting events) and wraps stores with [`SessionMetrics::instrument`].
pub struct SessionMetrics {
    events: Family<EventLabels, Counter>,
    operations: Family<OpLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    up: Family<StoreLabels, Gauge>,
}

impl fmt::Debug for SessionMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionMetrics").finish_non_exhaustive()
    }
}

impl SessionMetrics {
    /// Registers sessionkit's metric families (prefix `sessionkit_`) in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            events: Family::default(),
            operations: Family::default(),
            latency: Family::new_with_constructor(|| {
                // 50 µs, 100 µs, … 1.6 s.
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
            up: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix("sessionkit");
        sub.register(
            "events",
            "Session events by kind and reason",
            metrics.events.clone(),
        );
        sub.register(
            "store_operations",
            "Store operations by store, operation and outcome",
            metrics.operations.clone(),
        );
        sub.register(
            "store_operation_duration_seconds",
            "Time a store operation took",
            metrics.latency.clone(),
        );
        sub.register(
            "store_up",
            "Whether the store answered its last health check",
            metrics.up.clone(),
        );
        Arc::new(metrics)
    }

    /// `store`, with every operation counted and timed.
    pub fn instrument(self: &Arc<Self>, store: Arc<dyn SessionStore>) -> Arc<dyn SessionStore> {
        Arc::new(MeteredStore {
            inner: store,
            metrics: Arc::clone(self),
        })
    }

    fn record<T>(
        &self,
        store: &'static str,
        op: &'static str,
        started: Instant,
        result: &Result<T, StoreError>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(StoreError::Unavailable { .. }) => "unavailable",
            Err(StoreError::Corrupt(_)) => "corrupt",
            Err(StoreError::Full(_)) => "full",
            Err(_) => "error",
        };
        self.operations
            .get_or_create(&OpLabels { store, op, outcome })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels { store, op })
            .observe(started.elapsed().as_secs_f64());
    }
}

impl EventSink for SessionMetrics {
    fn emit(&self, event: &SessionEvent) {
        self.events
            .get_or_create(&EventLabels {
                kind: event.kind.as_str(),
                reason: event.reason,
            })
            .inc();
    }
}

/// The registry in the text format Prometheus scrapes (serve it with the content type
/// [`METRICS_CONTENT_TYPE`]).
pub fn render_metrics(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The content type of [`render_metrics`]' output.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A store whose operations are counted and timed.
struct MeteredStore {
    inner: Arc<dyn SessionStore>,
    metrics: Arc<SessionMetrics>,
}

impl fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MeteredStore").field(&self.inner).finish()
    }
}

impl MeteredStore {
    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = f.await;
        self.metrics.record(self.inner.name(), op, started, &result);
        result
    }
}

// Every operation is timed, `touch` under `save` (it is a save with no changes); the name
// forwards.
#[async_trait]
impl StoreWrapper for MeteredStore {
    type Inner = dyn SessionStore;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.timed("create", self.inner.create(key, record, limit, now))
            .await
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.timed("load", self.inner.load(key, now)).await
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.timed("save", self.inner.save_delta(key, delta, now))
            .await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.timed("destroy", self.inner.destroy(key)).await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        self.timed("list_user", self.inner.list_user(user_id, now))
            .await
    }

    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        self.timed("destroy_user", self.inner.destroy_user(user_id, except))
            .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.timed("count", self.inner.count()).await
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.timed("cleanup", self.inner.cleanup_expired(now)).await
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        self.timed("scan", self.inner.scan(cursor, batch)).await
    }

    async fn health(&self) -> Health {
        let health = self.inner.health().await;
        self.metrics
            .up
            .get_or_create(&StoreLabels {
                store: self.inner.name(),
            })
            .set(i64::from(health.ok));
        health
    }

    async fn touch(
        &self,
        key: &StorageKey,
        touch: Touch,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.timed("save", self.inner.touch(key, touch, now)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::stores::memory::MemoryStore;

    #[tokio::test]
    async fn operations_and_events_show_in_the_text_format() {
        let mut registry = Registry::default();
        let metrics = SessionMetrics::register(&mut registry);
        let store = metrics.instrument(Arc::new(MemoryStore::new()));
        let key = crate::id::SessionId::generate().unwrap().storage_key();
        let now = Timestamp(1_000_000);
        assert!(store.load(&key, now).await.unwrap().is_none());
        assert!(store.load(&key, now).await.unwrap().is_none());
        assert!(!store.destroy(&key).await.unwrap());
        assert!(store.health().await.ok);
        metrics.emit(&SessionEvent {
            kind: EventKind::Rejected,
            at: now,
            key: None,
            user_id: Some("alice".into()),
            reason: "bad_signature",
            actor: None,
            ip: None,
            user_agent: None,
        });
        metrics.emit(&SessionEvent {
            kind: EventKind::Revoked,
            at: now,
            key: Some(key.clone()),
            user_id: Some("alice".into()),
            reason: "sign_out_everywhere",
            actor: Some("root-admin".into()),
            ip: None,
            user_agent: None,
        });
        metrics.emit(&SessionEvent {
            kind: EventKind::Suspicious,
            at: now,
            key: Some(key.clone()),
            user_id: Some("alice".into()),
            reason: "user_agent_changed",
            actor: None,
            ip: Some("192.0.2.77".into()),
            user_agent: Some("Agent-Zed".into()),
        });
        let text = render_metrics(&registry);
        for line in [
            r#"sessionkit_store_operations_total{store="memory",op="load",outcome="ok"} 2"#,
            r#"sessionkit_store_operations_total{store="memory",op="destroy",outcome="ok"} 1"#,
            r#"sessionkit_store_operation_duration_seconds_count{store="memory",op="load"} 2"#,
            r#"sessionkit_store_up{store="memory"} 1"#,
            r#"sessionkit_events_total{kind="rejected",reason="bad_signature"} 1"#,
            r#"sessionkit_events_total{kind="revoked",reason="sign_out_everywhere"} 1"#,
            r#"sessionkit_events_total{kind="suspicious",reason="user_agent_changed"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // No user ID, actor or key ever becomes a label.
        assert!(!text.contains("alice"));
        assert!(!text.contains("root-admin"));
        assert!(!text.contains(key.as_str()));
        assert!(!text.contains("192.0.2.77") && !text.contains("Agent-Zed"));
    }
}
