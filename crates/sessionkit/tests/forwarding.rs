//! Every wrapper store hands every `SessionStore` method to the store it wraps (issue 15: one
//! forwarding mechanism, and a check that catches a wrapper that drops a method, `touch`
//! included — the `Arc` impl once skipped `CachedStore::touch`).

use std::sync::Arc;

use sessionkit::store::{SessionStore, StoreWrapper};
use sessionkit_testkit::faulty::FaultyStore;
use sessionkit_testkit::forwarding::check;
use sessionkit_testkit::Holding;

/// A wrapper that overrides nothing.
#[derive(Debug)]
struct Plain(Arc<dyn SessionStore>);

impl StoreWrapper for Plain {
    type Inner = dyn SessionStore;
    fn inner(&self) -> &Self::Inner {
        &*self.0
    }
}

#[tokio::test]
async fn an_arc_forwards_every_method() {
    // `Arc<Arc<dyn SessionStore>>`: the outer `Arc` is the one under test.
    check(|s| Arc::new(s) as Arc<dyn SessionStore>, &[]).await;
}

#[tokio::test]
async fn a_wrapper_that_overrides_nothing_forwards_every_method() {
    check(|s| Arc::new(Plain(s)), &[]).await;
}

#[tokio::test]
async fn the_test_holder_forwards_every_method() {
    check(
        |s| {
            Arc::new(Holding {
                store: s,
                guard: (),
            })
        },
        &[],
    )
    .await;
}

#[tokio::test]
async fn the_fault_injector_forwards_every_method_while_up() {
    check(|s| Arc::new(FaultyStore::new(s)), &["name"]).await;
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_metered_store_forwards_every_method() {
    use sessionkit::metrics::prometheus_client::registry::Registry;
    use sessionkit::metrics::SessionMetrics;
    let mut registry = Registry::default();
    let metrics = SessionMetrics::register(&mut registry);
    check(|s| metrics.instrument(s), &[]).await;
}
