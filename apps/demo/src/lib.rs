//! The reference web app of sessionkit: sign in, see what the session knows about you, review
//! and revoke the devices you are signed in on, and (as `admin`) watch live session counts.
//!
//! Pages are rendered on the server with maud and need no JavaScript. Every form carries a CSRF
//! token (see `csrf.rs`); passwords are Argon2id hashes; the storage key (the SHA-256 of the
//! session ID) is the only session identifier a page ever shows.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | to the dashboard when signed in, else to the sign-in page |
//! | `GET /login`, `POST /login` | the sign-in form; a wrong password is a 401 with the form again |
//! | `POST /logout` | ends this session |
//! | `GET /dashboard` | this session's metadata; `POST /rotate` gives it a new ID |
//! | `GET /devices` | the user's sessions; `POST /devices/revoke`, `POST /devices/revoke-others` |
//! | `GET /admin` | administrators only: record count, store health, sessions per user |
//! | `GET /healthz` | the store's health as JSON: 200 when it answers, 503 when not |
//! | `GET /metrics` | Prometheus metrics (session events, store operations), when enabled |
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use sessionkit::{Config, MemoryStore, SessionLayer};
//! use sessionkit_demo::{app, AppState, Users};
//!
//! let layer = SessionLayer::new(Arc::new(MemoryStore::new()), Config::from_env()?)?;
//! let router = app(AppState::new(layer, Users::demo()?));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, router).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use sessionkit::admin::Sessions;
use sessionkit::prometheus_client::registry::Registry;
use sessionkit::{AppEnv, Config, SessionLayer, SessionStore};

mod csrf;
mod routes;
mod users;
mod views;

pub use users::{User, Users, DEMO_USERS};

/// What every handler shares: the session layer, the admin handle on its store (every
/// revocation and store query goes through it, so the audit trail and metrics see them) and the
/// users.
#[derive(Clone, Debug)]
pub struct AppState {
    sessions: SessionLayer,
    admin: Sessions,
    users: Users,
    metrics: Option<Arc<Registry>>,
}

impl AppState {
    /// The state for sessions handled by `sessions` and accounts in `users`.
    pub fn new(sessions: SessionLayer, users: Users) -> Self {
        Self {
            admin: Sessions::for_layer(&sessions),
            sessions,
            users,
            metrics: None,
        }
    }

    /// Serves `registry` on `GET /metrics` (without it, that route is a 404).
    #[must_use]
    pub fn with_metrics(mut self, registry: Arc<Registry>) -> Self {
        self.metrics = Some(registry);
        self
    }

    /// The session store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        self.admin.store()
    }

    /// The admin handle: revocations through it reach the layer's event sink.
    pub fn admin(&self) -> &Sessions {
        &self.admin
    }

    /// The accounts.
    pub fn users(&self) -> &Users {
        &self.users
    }

    fn login_cookie(&self) -> csrf::LoginCookie {
        csrf::LoginCookie::new(self.sessions.config().cookie_secure)
    }

    fn development(&self) -> bool {
        self.sessions.config().app_env != AppEnv::Production
    }
}

/// What to print at start-up outside production: the demo accounts and their passwords, and a
/// hint for browsers that refuse Secure cookies over plain HTTP. `None` in production.
pub fn development_notice(config: &Config) -> Option<String> {
    if config.app_env == AppEnv::Production {
        return None;
    }
    let mut s = String::from("demo accounts (shown outside production only):");
    for (name, password, admin) in DEMO_USERS {
        let role = if *admin { "  (administrator)" } else { "" };
        s.push_str(&format!("\n  {name:<8} {password}{role}"));
    }
    if config.cookie_secure {
        s.push_str(
            "\nthe session cookie is Secure; a browser that drops it over http needs \
             SESSION_COOKIE_SECURE=false",
        );
    }
    Some(s)
}

/// The demo's router, with the session layer applied.
pub fn app(state: AppState) -> Router {
    let sessions = state.sessions.clone();
    Router::new()
        .route("/", get(routes::index))
        .route("/login", get(routes::login_page).post(routes::login))
        .route("/logout", post(routes::logout))
        .route("/dashboard", get(routes::dashboard))
        .route("/rotate", post(routes::rotate))
        .route("/devices", get(routes::devices))
        .route("/devices/revoke", post(routes::revoke))
        .route("/devices/revoke-others", post(routes::revoke_others))
        .route("/admin", get(routes::admin))
        .route("/admin/revoke-user", post(routes::admin_revoke_user))
        .route("/healthz", get(routes::healthz))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .layer(sessions)
        .with_state(state)
}

/// Headers every page gets: no framing, no scripts, no caching of personal pages.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}
