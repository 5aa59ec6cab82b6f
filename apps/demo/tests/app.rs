//! The demo app driven through its router on a memory store, the way a browser would use it.
//!
//! The browser and the other shared helpers are here; the tests, by topic, are in the modules
//! under `app/`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use sessionkit::store::SessionStore;
use sessionkit::stores::memory::MemoryStore;
use sessionkit::{Config, SessionLayer};
use sessionkit_demo::{app, AppState, Users};
use tower::ServiceExt as _;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-the-demo";
const SESSION: &str = "__Host-session";
const LOGIN_CSRF: &str = "__Host-csrf";

/// Argon2 is slow in debug builds: hash the demo passwords once for the whole test binary.
fn users() -> Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| Users::demo().unwrap()).clone()
}

fn demo() -> (Router, Arc<dyn SessionStore>) {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let layer = SessionLayer::new(store.clone(), Config::new(SECRET)).unwrap();
    (app(AppState::new(layer, users())), store)
}

#[derive(Debug)]
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map_or("", |v| v.to_str().unwrap())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    fn sets_cookie(&self, name: &str) -> bool {
        self.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value of the first hidden input called `name`.
    fn field(&self, name: &str) -> String {
        self.fields(name)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no field {name} in {}", self.body))
    }

    fn fields(&self, name: &str) -> Vec<String> {
        let needle = format!("name=\"{name}\" value=\"");
        self.body
            .match_indices(&needle)
            .map(|(i, _)| {
                let rest = &self.body[i + needle.len()..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .collect()
    }
}

/// A browser: a cookie jar, a user agent and a client address.
struct Browser {
    app: Router,
    jar: BTreeMap<String, String>,
    user_agent: &'static str,
    ip: SocketAddr,
}

fn encode(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    fn new(app: &Router, user_agent: &'static str, ip: &str) -> Self {
        Self {
            app: app.clone(),
            jar: BTreeMap::new(),
            user_agent,
            ip: format!("{ip}:40000").parse().unwrap(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, content_type: &str, body: String) -> Page {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::USER_AGENT, self.user_agent);
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(header::COOKIE, cookies.join("; "));
        }
        if method == "POST" {
            req = req.header(header::CONTENT_TYPE, content_type);
        }
        let mut req = req.body(Body::from(body)).unwrap();
        req.extensions_mut().insert(ConnectInfo(self.ip));
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let page = Page {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        };
        for c in page.set_cookies() {
            let pair = c.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let removal = value.is_empty() || c.contains("Max-Age=0");
            if removal {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, "", String::new()).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.send(
            "POST",
            path,
            "application/x-www-form-urlencoded",
            encode(fields),
        )
        .await
    }

    /// Posts a form from `page`, with the CSRF token that page carries.
    async fn submit(&mut self, from: &str, path: &str, fields: &[(&str, &str)]) -> Page {
        let page = self.get(from).await;
        assert_eq!(page.status, StatusCode::OK, "{from}: {}", page.body);
        let token = page.field("csrf");
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }

    async fn login(&mut self, user: &str, password: &str) -> Page {
        self.submit(
            "/login",
            "/login",
            &[("username", user), ("password", password)],
        )
        .await
    }

    async fn signed_in_as(&mut self) -> Option<String> {
        let page = self.get("/dashboard").await;
        match page.status {
            StatusCode::OK => {
                let start = page.body.find("Hello, ").unwrap() + "Hello, ".len();
                let rest = &page.body[start..];
                Some(rest[..rest.find('<').unwrap()].to_owned())
            }
            StatusCode::SEE_OTHER => {
                assert_eq!(page.location(), "/login");
                None
            }
            other => panic!("dashboard answered {other}: {}", page.body),
        }
    }
}

#[path = "app/sign_in.rs"]
mod sign_in;

#[path = "app/bad_requests.rs"]
mod bad_requests;

#[path = "app/devices.rs"]
mod devices;

#[path = "app/admin.rs"]
mod admin;

#[path = "app/operations.rs"]
mod operations;
