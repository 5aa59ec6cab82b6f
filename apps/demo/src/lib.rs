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
//! Accounts: outside production, the built-in [`DEMO_USERS`] (printed at start-up); with
//! `APP_ENV=production` the demo refuses to start on them and reads `DEMO_USERS_FILE`, one
//! `name:role:phc` line per account (role `user` or `admin`, phc an Argon2id PHC string as printed
//! by `sessionkit-demo hash-password`; see [`Users::parse`]), which development may use too.
//!
//! Sign-in is throttled per submitted user name and per client address ([`LoginLimits`]: by
//! default 5 failures per 15 minutes and 20 per minute), answering 429 with `Retry-After`; the
//! client address comes from `ConnectInfo<SocketAddr>`, so serve the router with
//! `into_make_service_with_connect_info::<SocketAddr>()`. Password checks run behind a small
//! semaphore ([`HashLimits`]) and a sign-in that finds it full is a 503 with `Retry-After`.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use sessionkit::{Config, SessionLayer};
//! use sessionkit::stores::memory::MemoryStore;
//! use sessionkit_demo::{app, AppState, Users};
//!
//! let layer = SessionLayer::new(Arc::new(MemoryStore::new()), Config::from_env()?)?;
//! let router = app(AppState::new(layer, Users::demo()?));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
//! axum::serve(listener, service).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use sessionkit::admin::Sessions;
use sessionkit::config::AppEnv;
use sessionkit::metrics::prometheus_client::registry::Registry;
use sessionkit::store::SessionStore;
use sessionkit::{Config, SessionLayer};

mod csrf;
mod routes;
mod throttle;
mod users;
mod views;

pub use throttle::{Limit, LoginLimits, Throttle, Throttled};
pub use users::{
    hash_password, Busy, HashLimits, User, Users, DEMO_USERS, MAX_M_COST_KIB, MAX_P_COST,
    MAX_T_COST,
};

/// Largest sign-in form body read (a name and a password fit many times over).
const LOGIN_BODY_LIMIT: usize = 32 * 1024;

/// What every handler shares: the session layer, the admin handle on its store (every
/// revocation and store query goes through it, so the audit trail and metrics see them) and the
/// users.
#[derive(Clone, Debug)]
pub struct AppState {
    sessions: SessionLayer,
    admin: Sessions,
    users: Users,
    metrics: Option<Arc<Registry>>,
    throttle: Arc<Throttle>,
}

impl AppState {
    /// The state for sessions handled by `sessions` and accounts in `users`.
    pub fn new(sessions: SessionLayer, users: Users) -> Self {
        Self {
            admin: Sessions::for_layer(&sessions),
            sessions,
            users,
            metrics: None,
            throttle: Arc::new(Throttle::new(LoginLimits::default())),
        }
    }

    /// Throttles sign-ins with `limits` instead of [`LoginLimits::default`].
    #[must_use]
    pub fn with_login_limits(mut self, limits: LoginLimits) -> Self {
        self.throttle = Arc::new(Throttle::new(limits));
        self
    }

    /// The sign-in limiter.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
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

/// The demo's router, with the session layer applied inside the security headers, so that the
/// layer's own answers (a 503 when the store is down) carry them too.
pub fn app(state: AppState) -> Router {
    let sessions = state.sessions.clone();
    Router::new()
        .route("/", get(routes::index))
        .route(
            "/login",
            get(routes::login_page)
                .post(routes::login)
                .layer(DefaultBodyLimit::max(LOGIN_BODY_LIMIT)),
        )
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
        .layer(sessions)
        .layer(axum::middleware::map_response(security_headers))
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
