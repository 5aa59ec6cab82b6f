//! Flask-Session interop (feature `flask`): move a Flask app's users to sessionkit without
//! signing anyone out.
//!
//! - [`FlaskCookie`] reads a Flask-Session 0.8 cookie: the bare session ID, or the ID signed by
//!   itsdangerous (`SESSION_USE_SIGNER`) with the Flask app's `SECRET_KEY`.
//! - [`decode_msgpack`] reads Flask-Session's record encoding (msgspec MessagePack).
//! - Import on first sight ([`FlaskImport`](crate::config::FlaskImport),
//!   `SESSION_IMPORT_FLASK`): the [`SessionLayer`](crate::SessionLayer) gives a request that
//!   carries a valid Flask-Session cookie and no sessionkit cookie a new sessionkit session (a
//!   fresh ID) holding the Flask session's data, signed in as the user Flask-Login recorded and
//!   indexed by that user; the Flask record is deleted, and the response sets the sessionkit
//!   cookie and expires the Flask one.
//! - Shared mode ([`FlaskSharedStore`], `SESSION_SHARE_FLASK`): the `Session` extractor works on
//!   Flask-Session's own Redis records and cookie, so a running Flask app and the Rust service
//!   see one session; [`FlaskRedisRecords`] gives the same records to code outside a request.
//!   Flask names records by the raw ID: in this mode IDs are not hashed at rest.
//!
//! - Bulk import ([`FlaskBulkSource`], `sessionkit migrate --from flask+…`) stages every live
//!   Flask session in sessionkit's store; import on first sight then claims it.
//!
//! Imported sessions keep every sessionkit guarantee from their first request on: the Flask ID is
//! never reused (the client gets a fresh sessionkit ID), and the store sees only its hash.
//!
//! ```
//! use sessionkit::flask::{FlaskCookie, FlaskSid};
//!
//! let cookie = FlaskCookie::signed(b"dev-secret");
//! let value = "Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXg.pFlG7koiSYPPGQDkqgCbLFfseoI";
//! let sid: FlaskSid = cookie.verify(value.as_bytes()).unwrap();
//! assert_eq!(sid.expose(), "Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXg");
//! ```

mod bulk;
mod codec;
mod import;
mod pickle;
mod redis_source;
mod shared;
mod shared_store;
mod signer;

pub use bulk::{BulkItem, FlaskBulkSource};
pub use codec::{decode_msgpack, FlaskDecodeError};
pub(crate) use import::{Imported, Importer, Target};
pub use pickle::decode_cachelib_file;
pub use shared::{FlaskRecordError, FlaskRedisRecords, FlaskSave};
pub use shared_store::FlaskSharedStore;
pub(crate) use shared_store::{BookedIds, SidBook};
pub use signer::{FlaskCookie, FlaskSid};
