//! [`SessionLayer`]: the tower middleware that reads the session cookie, hands handlers a
//! [`Session`], and after the handler writes what changed and sets the cookie headers.
//! With `SESSION_HEADER` set, the same signed value travels in that header instead of the
//! cookie (and `Vary` names that header); see `cookie::Transport`.
//!
//! Per request it only parses and verifies the cookie (an HMAC, no store call). The store is
//! touched when the handler uses the session, and written when the handler changed something.
//! Responses that read the session get `Vary: Cookie`; responses that set or delete the cookie get
//! `Cache-Control: no-store` too. A store failure while saving replaces the response with a 503.
//! A cookie that an old key verified is sent again, signed with the current key, on a response
//! that used the live session.
//!
//! Nothing read from the request is sliced as text: the cookie is found and verified on its
//! bytes, and the user agent is kept as the raw header, so no input can panic the request.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, USER_AGENT, VARY};
use http::{HeaderValue, Request, StatusCode};
use tower::{Layer, Service};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::cookie::{self, CookieKeys, CookiePolicy, Presented, Transport};
use crate::events::{EventKind, EventSink, SessionEvent, TracingSink};
use crate::id::{IdGenerator, OsRngIds};
use crate::session::{client_ip, BindingKeys, Client, Outcome, Session, SessionError, Shared};
use crate::store::SessionStore;

/// The session middleware. Wrap a router with it and take [`Session`] in handlers.
///
/// ```
/// use std::sync::Arc;
/// use axum::{routing::get, Router};
/// use sessionkit::{Config, Session, SessionError, SessionLayer};
/// use sessionkit::stores::memory::MemoryStore;
///
/// async fn hello(session: Session) -> Result<String, SessionError> {
///     let visits: u32 = session.get("visits").await?.unwrap_or(0) + 1;
///     session.insert("visits", &visits).await?;
///     Ok(format!("visit number {visits}"))
/// }
///
/// let config = Config::new("a-long-random-secret-from-the-environment!!");
/// let layer = SessionLayer::new(Arc::new(MemoryStore::new()), config).unwrap();
/// let app: Router = Router::new().route("/", get(hello)).layer(layer);
/// ```
#[derive(Clone, Debug)]
pub struct SessionLayer {
    shared: Arc<Shared>,
    /// Imports Flask-Session sessions on first sight (`SESSION_IMPORT_FLASK`).
    #[cfg(feature = "flask")]
    flask: Option<Arc<crate::flask::Importer>>,
}

impl SessionLayer {
    /// A layer over `store` with `config` (validated here).
    ///
    /// # Errors
    /// Settings that [`Config::validate`] refuses.
    pub fn new(store: Arc<dyn SessionStore>, config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let secrets: Vec<&[u8]> = config
            .secret_keys
            .iter()
            .map(|s| s.expose().as_bytes())
            .collect();
        let keys = CookieKeys::new(&secrets);
        let binding = BindingKeys::new(&secrets);
        #[cfg(feature = "flask")]
        let flask_cookie = config.flask_share.as_ref().map(|f| match &f.secret {
            Some(s) => crate::flask::FlaskCookie::signed(s.expose().as_bytes()),
            None => crate::flask::FlaskCookie::unsigned(),
        });
        // Shared mode (`SESSION_SHARE_FLASK`): the cookie is Flask's, under Flask's name.
        #[cfg(feature = "flask")]
        let name = match &config.flask_share {
            Some(f) => f.cookie_name.clone(),
            None => config.cookie_name().to_owned(),
        };
        #[cfg(not(feature = "flask"))]
        let name = config.cookie_name().to_owned();
        let transport = match config.session_header() {
            Some(name) => Transport::Header(name),
            None => Transport::Cookie(CookiePolicy {
                name,
                secure: config.cookie_secure,
                same_site: config.same_site,
            }),
        };
        #[cfg(feature = "flask")]
        let flask = match &config.flask_import {
            Some(f) => Some(Arc::new(crate::flask::Importer::new(f)?)),
            None => None,
        };
        Ok(Self {
            #[cfg(feature = "flask")]
            flask,
            shared: Arc::new(Shared {
                store,
                config,
                keys,
                transport,
                binding,
                clock: Arc::new(SystemClock),
                #[cfg(feature = "flask")]
                ids: if flask_cookie.is_some() {
                    Arc::new(crate::flask::BookedIds)
                } else {
                    Arc::new(OsRngIds)
                },
                #[cfg(not(feature = "flask"))]
                ids: Arc::new(OsRngIds),
                events: Arc::new(TracingSink),
                #[cfg(feature = "flask")]
                flask_cookie,
            }),
        })
    }

    fn map(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        // Builders run before the layer is shared, so the Arc is still unique; otherwise rebuild.
        match Arc::get_mut(&mut self.shared) {
            Some(s) => f(s),
            None => {
                let s = &*self.shared;
                let mut copy = Shared {
                    store: s.store.clone(),
                    config: s.config.clone(),
                    keys: s.keys.clone(),
                    transport: s.transport.clone(),
                    binding: s.binding.clone(),
                    clock: s.clock.clone(),
                    ids: s.ids.clone(),
                    events: s.events.clone(),
                    #[cfg(feature = "flask")]
                    flask_cookie: s.flask_cookie.clone(),
                };
                f(&mut copy);
                self.shared = Arc::new(copy);
            }
        }
        self
    }

    /// Where security events go. Default: [`TracingSink`].
    #[must_use]
    pub fn with_events(self, sink: Arc<dyn EventSink>) -> Self {
        self.map(|s| s.events = sink)
    }

    /// The clock used for every expiry decision. Default: the system clock.
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.map(|s| s.clock = clock)
    }

    /// Where new session IDs come from. Default: the OS CSPRNG.
    ///
    /// # Warning
    /// For tests only: IDs must be 256 unpredictable bits.
    #[must_use]
    pub fn with_id_generator(self, ids: Arc<dyn IdGenerator>) -> Self {
        self.map(|s| s.ids = ids)
    }

    /// The store behind this layer.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.shared.store
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Where events go (for the admin handle, which reports to the same sink).
    pub(crate) fn events(&self) -> &Arc<dyn EventSink> {
        &self.shared.events
    }

    /// The clock (for the admin handle).
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            shared: self.shared.clone(),
            #[cfg(feature = "flask")]
            flask: self.flask.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around an inner service.
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
    #[cfg(feature = "flask")]
    flask: Option<Arc<crate::flask::Importer>>,
}

impl<S, B> Service<Request<B>> for SessionService<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let client = Client {
            ip: client_ip(peer, req.headers(), &shared.config.trusted_proxies),
            user_agent: req.headers().get(USER_AGENT).cloned(),
        };
        // Shared mode: the cookie is Flask-Session's; its ID is noted for the store.
        #[cfg(feature = "flask")]
        if let Some(f) = &shared.flask_cookie {
            let presented = match shared.transport.find(req.headers()) {
                Presented::One(raw) => f
                    .verify(raw)
                    .and_then(|sid| crate::id::SessionId::parse(sid.expose())),
                Presented::Absent | Presented::Ambiguous => None,
            };
            if let Some(id) = &presented {
                crate::flask::SidBook::global().note(id);
            }
            let session = Session::new(shared.clone(), presented, client);
            req.extensions_mut().insert(session.clone());
            return ResponseFuture(Box::pin(async move {
                let Ok(res) = inner.call(req).await;
                Ok(match session.finish(false).await {
                    Ok(outcome) => decorate(&shared, res, outcome),
                    Err(e) => save_failed(e),
                })
            }));
        }
        // The raw header bytes go straight to `verify`: no UTF-8 assumption, no text slicing.
        let verified = match shared.transport.find(req.headers()) {
            Presented::Absent => None,
            Presented::One(raw) => match shared.keys.verify(raw) {
                Ok(v) => Some(v),
                Err(why) => {
                    reject(&shared, &client, why.as_str());
                    None
                }
            },
            Presented::Ambiguous => {
                reject(&shared, &client, cookie::Rejection::Ambiguous.as_str());
                None
            }
        };
        let old_key = verified.as_ref().is_some_and(|v| !v.by_current_key());
        // A Flask-Session cookie is looked at only when there is no valid sessionkit cookie:
        // verifying it is an HMAC, the store is read only when it verifies.
        #[cfg(feature = "flask")]
        let flask = match (&verified, &self.flask) {
            (None, Some(f)) => f.presented(req.headers()).map(|sid| (f.clone(), sid)),
            _ => None,
        };
        let presented = verified.map(|v| v.id);

        ResponseFuture(Box::pin(async move {
            #[cfg(feature = "flask")]
            let (session, flask) = match flask {
                Some((importer, sid)) => flask_import(&shared, &importer, &sid, client).await,
                None => (Session::new(shared.clone(), presented, client), None),
            };
            #[cfg(not(feature = "flask"))]
            let session = Session::new(shared.clone(), presented, client);
            req.extensions_mut().insert(session.clone());
            let Ok(res) = inner.call(req).await;
            Ok(match session.finish(old_key).await {
                #[cfg(feature = "flask")]
                Ok(outcome) => {
                    let mut res = decorate(&shared, res, outcome);
                    if let Some(importer) = flask {
                        expire_flask_cookie(&shared, &importer, &mut res);
                    }
                    res
                }
                #[cfg(not(feature = "flask"))]
                Ok(outcome) => decorate(&shared, res, outcome),
                Err(e) => save_failed(e),
            })
        }))
    }
}

/// The request's session after trying to import its Flask-Session session `sid`; with the
/// importer when the import happened (the response then expires the Flask cookie).
#[cfg(feature = "flask")]
async fn flask_import(
    shared: &Arc<Shared>,
    importer: &Arc<crate::flask::Importer>,
    sid: &crate::flask::FlaskSid,
    client: Client,
) -> (Session, Option<Arc<crate::flask::Importer>>) {
    let target = crate::flask::Target {
        store: shared.store.as_ref(),
        ids: shared.ids.as_ref(),
        config: &shared.config,
        now: shared.clock.now(),
        user_agent: client.user_agent(),
        ip: client.ip(),
    };
    match importer.import(sid, target).await {
        Some(done) => (
            Session::imported(shared.clone(), done, client),
            Some(importer.clone()),
        ),
        None => (Session::new(shared.clone(), None, client), None),
    }
}

/// Deletes the Flask-Session cookie after its session moved to sessionkit.
#[cfg(feature = "flask")]
fn expire_flask_cookie(shared: &Shared, importer: &crate::flask::Importer, res: &mut Response) {
    let flask = CookiePolicy {
        name: importer.cookie_name().to_owned(),
        secure: shared.config.cookie_secure,
        same_site: shared.config.same_site,
    };
    res.headers_mut()
        .append(http::header::SET_COOKIE, flask.removal());
}

/// The future [`SessionService`] returns: the inner service's response, with the session
/// written and its cookie headers set.
pub struct ResponseFuture(Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>);

impl Future for ResponseFuture {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Adds what the written session asks of the response: `Vary: Cookie` (or the session header)
/// when the session was used, and the session's `Set-Cookie` (the only one of its name) or
/// session header with `Cache-Control: no-store`.
fn decorate(shared: &Shared, mut res: Response, outcome: Outcome) -> Response {
    let headers = res.headers_mut();
    if outcome.accessed || outcome.set_cookie.is_some() {
        add_vary(headers, shared.transport.vary());
    }
    if let Some(v) = outcome.set_cookie {
        shared.transport.apply(headers, v);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The response that replaces the handler's when the session could not be saved.
fn save_failed(e: SessionError) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(error = %e, cause = ?std::error::Error::source(&e), "saving the session failed");
    } else {
        // A refusal (the record would exceed the size cap): the client's doing, not ours.
        tracing::debug!(error = %e, "saving the session refused");
    }
    let mut r = e.into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn reject(shared: &Shared, client: &Client, reason: &'static str) {
    shared.emit(SessionEvent {
        kind: EventKind::Rejected,
        at: shared.clock.now(),
        key: None,
        user_id: None,
        reason,
        actor: None,
        ip: client.ip(),
        user_agent: client.user_agent(),
    });
}

fn add_vary(headers: &mut http::HeaderMap, by: &str) {
    let has = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case(by) || p.trim() == "*")
        })
    });
    if !has {
        if let Ok(v) = HeaderValue::from_str(by) {
            headers.append(VARY, v);
        }
    }
}
