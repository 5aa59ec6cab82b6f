//! Cookie signing and parsing for tests (feature `test-util`, as tokio has its own): forge a
//! validly signed cookie for a known ID, or read the session ID back out of a `Set-Cookie`.
//!
//! Not for production code: a handler never needs these, and the layer does all of it.

pub use crate::cookie::{find as find_cookie, CookieKeys, Presented, Rejection, Verified};
