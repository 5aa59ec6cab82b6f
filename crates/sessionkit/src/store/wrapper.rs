//! [`StoreWrapper`]: the one way to write a store that wraps another (metrics, fault
//! injection, test probes, `Arc`).
//!
//! A wrapper names the store it wraps and overrides only the operations it changes; every other
//! [`SessionStore`] method forwards to the inner store, `touch` included. No wrapper writes a
//! forwarding body by hand, so none can drop a method when the trait grows: the conformance
//! suite's `forwarding` check drives every method through each wrapper and asserts that the inner
//! store saw it.
//!
//! A wrapper type has each operation under both traits, so name `StoreWrapper` by its path in
//! the `impl` (as below) rather than importing it where stores are also called: a scope that
//! imports both traits must call a concrete wrapper's methods as `SessionStore::load(&store, …)`.
//!
//! ```
//! use std::sync::Arc;
//! use sessionkit::store::{SessionStore, StorageKey, StoreError};
//!
//! /// Counts destroys; everything else passes through.
//! #[derive(Debug)]
//! struct CountingDestroys {
//!     inner: Arc<dyn SessionStore>,
//!     destroys: std::sync::atomic::AtomicU64,
//! }
//!
//! #[async_trait::async_trait]
//! impl sessionkit::store::StoreWrapper for CountingDestroys {
//!     type Inner = dyn SessionStore;
//!     fn inner(&self) -> &Self::Inner {
//!         &*self.inner
//!     }
//!     async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
//!         self.destroys.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!         self.inner.destroy(key).await
//!     }
//! }
//! ```

use std::fmt;

use async_trait::async_trait;

use super::{
    CreateOutcome, Health, SaveOutcome, ScanPage, ServerStats, SessionLimit, SessionStore,
    StoreError,
};
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp, Touch};

/// A store that wraps another: implement [`inner`](StoreWrapper::inner) and override what the
/// wrapper changes. Every type that implements it is a [`SessionStore`].
#[async_trait]
pub trait StoreWrapper: Send + Sync + fmt::Debug + 'static {
    /// The wrapped store's type (`dyn SessionStore` for a boxed one).
    type Inner: SessionStore + ?Sized;

    /// The wrapped store.
    fn inner(&self) -> &Self::Inner;

    /// Runs before every operation that is not overridden; an error is that operation's answer
    /// (and `health` reports the store down with it). Default: lets everything through. Fault
    /// injection overrides this alone.
    async fn admit(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// See [`SessionStore::name`].
    fn name(&self) -> &'static str {
        self.inner().name()
    }

    /// See [`SessionStore::create`].
    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.admit().await?;
        self.inner().create(key, record, limit, now).await
    }

    /// See [`SessionStore::load`].
    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.admit().await?;
        self.inner().load(key, now).await
    }

    /// See [`SessionStore::save_delta`].
    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.admit().await?;
        self.inner().save_delta(key, delta, now).await
    }

    /// See [`SessionStore::destroy`].
    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.admit().await?;
        self.inner().destroy(key).await
    }

    /// See [`SessionStore::list_user`].
    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        self.admit().await?;
        self.inner().list_user(user_id, now).await
    }

    /// See [`SessionStore::destroy_user`].
    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        self.admit().await?;
        self.inner().destroy_user(user_id, except).await
    }

    /// See [`SessionStore::count`].
    async fn count(&self) -> Result<u64, StoreError> {
        self.admit().await?;
        self.inner().count().await
    }

    /// See [`SessionStore::cleanup_expired`].
    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.admit().await?;
        self.inner().cleanup_expired(now).await
    }

    /// See [`SessionStore::scan`].
    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        self.admit().await?;
        self.inner().scan(cursor, batch).await
    }

    /// See [`SessionStore::health`].
    async fn health(&self) -> Health {
        match self.admit().await {
            Ok(()) => self.inner().health().await,
            Err(e) => Health {
                ok: false,
                detail: e.to_string(),
            },
        }
    }

    /// See [`SessionStore::server_stats`].
    async fn server_stats(&self) -> Result<Option<ServerStats>, StoreError> {
        self.admit().await?;
        self.inner().server_stats().await
    }

    /// See [`SessionStore::touch`]. Forwarded like the rest: a store with its own `touch` (the
    /// cache tier) keeps it behind any wrapper.
    async fn touch(
        &self,
        key: &StorageKey,
        touch: Touch,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.admit().await?;
        self.inner().touch(key, touch, now).await
    }
}

/// Implements every [`SessionStore`] method as a call of `$via::method($on, ...)`: the one
/// place where the store's methods are listed for forwarding.
macro_rules! forward_session_store {
    ([$($gen:tt)*] $ty:ty, $self:ident => $via:path, $on:expr) => {
        #[async_trait]
        impl<$($gen)*> SessionStore for $ty {
        fn name(&$self) -> &'static str {
            <_ as $via>::name($on)
        }
        async fn create(
            &$self,
            key: &StorageKey,
            record: &Record,
            limit: SessionLimit,
            now: Timestamp,
        ) -> Result<CreateOutcome, StoreError> {
            <_ as $via>::create($on, key, record, limit, now).await
        }
        async fn load(&$self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
            <_ as $via>::load($on, key, now).await
        }
        async fn save_delta(
            &$self,
            key: &StorageKey,
            delta: &Delta,
            now: Timestamp,
        ) -> Result<SaveOutcome, StoreError> {
            <_ as $via>::save_delta($on, key, delta, now).await
        }
        async fn destroy(&$self, key: &StorageKey) -> Result<bool, StoreError> {
            <_ as $via>::destroy($on, key).await
        }
        async fn list_user(
            &$self,
            user_id: &str,
            now: Timestamp,
        ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
            <_ as $via>::list_user($on, user_id, now).await
        }
        async fn destroy_user(
            &$self,
            user_id: &str,
            except: Option<&StorageKey>,
        ) -> Result<Vec<StorageKey>, StoreError> {
            <_ as $via>::destroy_user($on, user_id, except).await
        }
        async fn count(&$self) -> Result<u64, StoreError> {
            <_ as $via>::count($on).await
        }
        async fn cleanup_expired(&$self, now: Timestamp) -> Result<u64, StoreError> {
            <_ as $via>::cleanup_expired($on, now).await
        }
        async fn scan(&$self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
            <_ as $via>::scan($on, cursor, batch).await
        }
        async fn health(&$self) -> Health {
            <_ as $via>::health($on).await
        }
        async fn server_stats(&$self) -> Result<Option<ServerStats>, StoreError> {
            <_ as $via>::server_stats($on).await
        }
        async fn touch(
            &$self,
            key: &StorageKey,
            touch: Touch,
            now: Timestamp,
        ) -> Result<SaveOutcome, StoreError> {
            <_ as $via>::touch($on, key, touch, now).await
        }
        }
    };
}

forward_session_store!([W: StoreWrapper] W, self => StoreWrapper, self);

// An `Arc` of a store is the store, every method included.
forward_session_store!([S: SessionStore + ?Sized] std::sync::Arc<S>, self => SessionStore, &**self);
