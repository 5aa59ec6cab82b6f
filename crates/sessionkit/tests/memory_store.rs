//! The conformance suite against `MemoryStore`.
use std::sync::Arc;

use sessionkit::stores::memory::MemoryStore;
use sessionkit_testkit::store_conformance;

store_conformance!(|| async {
    Arc::new(MemoryStore::new()) as sessionkit_testkit::conformance::Store
});
