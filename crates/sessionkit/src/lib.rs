//! sessionkit: server-side sessions for axum/tower.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "audit")]
mod audit;
mod clock;
mod events;
mod id;
mod record;
mod store;

#[cfg(feature = "audit")]
pub use audit::{AuditSink, AuditSinkBuilder};
pub use clock::{Clock, ManualClock, SystemClock};
pub use events::{EventKind, EventSink, FanoutSink, MemorySink, SessionEvent, TracingSink};
pub use id::{IdGenerator, OsRngIds, SessionId, StorageKey, ID_BYTES, ID_LEN};
pub use record::{Data, DecodeError, Delta, Meta, Record, Timestamp, Touch, Value, DECODE_CEILING};
pub use store::memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use store::postgres::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "sqlite")]
pub use store::sqlite::{SqliteStore, SqliteStoreBuilder};
pub use store::{
    CreateOutcome, Health, LimitPolicy, SaveOutcome, ScanPage, SessionLimit, SessionStore,
    StoreError,
};
