//! Where the signed session value travels: the cookie (browsers), or a request and response
//! header of the operator's choosing (`SESSION_HEADER`, API clients). The value is the same
//! `<id>.<tag>` either way; only finding it and writing it back differ, so the layer and the
//! session never ask which one is in use.
//!
//! In header mode no cookie is read or set. A new or re-signed value is sent in the header; the
//! end of the session is sent as the header with an empty value (the client drops its token),
//! and a request whose header is empty counts as carrying none. Several occurrences of the
//! header must all hold the same value, as for the cookie, or there is no session.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{find, trim_ows, CookiePolicy, Presented};

/// How the session value travels.
#[derive(Clone, Debug)]
pub(crate) enum Transport {
    /// The session cookie.
    Cookie(CookiePolicy),
    /// A request and response header.
    Header(HeaderName),
}

impl Transport {
    /// The value the request presents.
    pub(crate) fn find<'a>(&self, headers: &'a HeaderMap) -> Presented<'a> {
        match self {
            Self::Cookie(policy) => find(headers, &policy.name),
            Self::Header(name) => {
                let mut found: Option<&'a [u8]> = None;
                for v in headers.get_all(name) {
                    let v = trim_ows(v.as_bytes());
                    match found {
                        None => found = Some(v),
                        Some(f) if f == v => {}
                        Some(_) => return Presented::Ambiguous,
                    }
                }
                found
                    .filter(|v| !v.is_empty())
                    .map_or(Presented::Absent, Presented::One)
            }
        }
    }

    /// The response header that hands the client `value`; `max_age` for permanent cookies.
    pub(crate) fn set(&self, value: String, max_age: Option<Duration>) -> HeaderValue {
        match self {
            Self::Cookie(policy) => policy.set(value, max_age),
            // A signed value is base64url and a dot: always a valid header value.
            Self::Header(_) => {
                HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
            }
        }
    }

    /// The response header that tells the client its session is gone.
    pub(crate) fn removal(&self) -> HeaderValue {
        match self {
            Self::Cookie(policy) => policy.removal(),
            Self::Header(_) => HeaderValue::from_static(""),
        }
    }

    /// Puts `value` (from [`Self::set`] or [`Self::removal`]) on the response, replacing any
    /// the handler set under the same name.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, value: HeaderValue) {
        match self {
            Self::Cookie(policy) => super::replace_set_cookie(headers, &policy.name, value),
            Self::Header(name) => {
                headers.insert(name.clone(), value);
            }
        }
    }

    /// The request header a response that used the session varies by.
    pub(crate) fn vary(&self) -> &str {
        match self {
            Self::Cookie(_) => "Cookie",
            Self::Header(name) => name.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_mode_finds_one_value() {
        let t = Transport::Header(HeaderName::from_static("x-session-token"));
        let mut h = HeaderMap::new();
        assert_eq!(t.find(&h), Presented::Absent);
        h.append("cookie", HeaderValue::from_static("__Host-session=v"));
        assert_eq!(t.find(&h), Presented::Absent, "a cookie is not read");
        h.append("x-session-token", HeaderValue::from_static(" v "));
        assert_eq!(t.find(&h), Presented::One(b"v"));
        h.append("x-session-token", HeaderValue::from_static("v"));
        assert_eq!(t.find(&h), Presented::One(b"v"));
        h.append("x-session-token", HeaderValue::from_static("w"));
        assert_eq!(t.find(&h), Presented::Ambiguous);
        let mut h = HeaderMap::new();
        h.append("x-session-token", HeaderValue::from_static(""));
        assert_eq!(t.find(&h), Presented::Absent, "the removal echoed back");
        assert_eq!(t.removal(), "");
        assert_eq!(
            t.set("abc.def".into(), Some(Duration::from_secs(9))),
            "abc.def"
        );
        assert_eq!(t.vary(), "x-session-token");
    }
}
