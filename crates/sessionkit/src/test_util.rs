//! Cookie signing and parsing for tests (feature `test-util`, as tokio has its own): forge a
//! validly signed cookie for a known ID, or read the session ID back out of a `Set-Cookie`.
//!
//! Not for production code: a handler never needs these, and the layer does all of it.

pub use crate::cookie::{find as find_cookie, CookieKeys, Presented, Rejection, Verified};

/// The data entry device binding stores at login for a client with `user_agent` at `ip`, made
/// under the first of `secrets` (`None` when `mode` is off): for tests that store a signed-in
/// session directly and want it bound as a login would have bound it.
pub fn binding_stamp<S: AsRef<[u8]>>(
    secrets: &[S],
    mode: crate::config::Binding,
    user_agent: Option<&[u8]>,
    ip: Option<std::net::IpAddr>,
) -> Option<(String, crate::record::Value)> {
    let client = crate::session::Client {
        ip,
        user_agent: user_agent.and_then(|u| http::HeaderValue::from_bytes(u).ok()),
    };
    crate::session::BindingKeys::new(secrets)
        .stamp(mode, &client)
        .map(|v| (crate::session::binding::RESERVED_KEY.to_owned(), v))
}
