//! Rendering the session's `Set-Cookie`: the hardened attribute set, a deletion that browsers
//! honour, and exactly one `Set-Cookie` of the session's name per response. The `cookie` crate
//! renders every header.

use std::time::Duration;

use cookie::{Cookie, SameSite};
use http::header::{HeaderMap, HeaderValue, SET_COOKIE};

/// The attributes every session `Set-Cookie` carries.
#[derive(Clone, Debug)]
pub(crate) struct CookiePolicy {
    /// Cookie name.
    pub name: String,
    /// `Secure` attribute.
    pub secure: bool,
    /// `SameSite` attribute.
    pub same_site: SameSite,
}

impl CookiePolicy {
    fn base(&self, value: String) -> Cookie<'static> {
        Cookie::build((self.name.clone(), value))
            .http_only(true)
            .secure(self.secure)
            .same_site(self.same_site)
            .path("/")
            .build()
    }

    /// The header that stores `value`; `max_age` only for permanent sessions.
    pub(crate) fn set(&self, value: String, max_age: Option<Duration>) -> HeaderValue {
        let mut c = self.base(value);
        if let Some(age) = max_age {
            c.set_max_age(cookie::time::Duration::seconds(
                i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        header(&c)
    }

    /// The header that deletes the cookie: same name and attributes, empty value, `Max-Age=0`
    /// and an `Expires` in the past. A `__Host-` cookie keeps `Secure`, or browsers would ignore
    /// the deletion (the tower-sessions lesson).
    pub(crate) fn removal(&self) -> HeaderValue {
        let mut c = self.base(String::new());
        c.make_removal();
        header(&c)
    }
}

/// Sets `value` as the response's only `Set-Cookie` for the cookie `name`, dropping any the
/// handler set for that name itself.
pub(crate) fn replace_set_cookie(headers: &mut HeaderMap, name: &str, value: HeaderValue) {
    let prefix = format!("{name}=");
    let others: Vec<HeaderValue> = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter(|h| !h.as_bytes().starts_with(prefix.as_bytes()))
        .cloned()
        .collect();
    headers.remove(SET_COOKIE);
    for h in others {
        headers.append(SET_COOKIE, h);
    }
    headers.append(SET_COOKIE, value);
}

fn header(c: &Cookie<'_>) -> HeaderValue {
    // Names are checked at start-up and values are base64url, so this is always a valid header;
    // fall back to an inert header rather than panic.
    HeaderValue::from_str(&c.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_attributes() {
        let p = CookiePolicy {
            name: "__Host-session".into(),
            secure: true,
            same_site: SameSite::Lax,
        };
        let s = p.set("abc".into(), None);
        let s = s.to_str().unwrap();
        for attr in [
            "__Host-session=abc",
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
        ] {
            assert!(s.contains(attr), "{s}");
        }
        assert!(!s.contains("Domain") && !s.contains("Max-Age"), "{s}");
        let r = p.removal();
        let r = r.to_str().unwrap();
        for attr in [
            "__Host-session=;",
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=0",
        ] {
            assert!(r.contains(attr), "{r}");
        }
        let perm = p.set("abc".into(), Some(Duration::from_secs(60)));
        assert!(perm.to_str().unwrap().contains("Max-Age=60"));
    }
}
