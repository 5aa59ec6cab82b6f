//! The Flask-Session settings: `SESSION_IMPORT_FLASK` (import on first sight) and the `FLASK_*`
//! variables that describe the Flask app it imports from.

use super::{Config, ConfigError, Secret};

/// Where and how to import Flask-Session sessions on first sight (`SESSION_IMPORT_FLASK`):
/// a request with a valid Flask-Session cookie and no sessionkit cookie gets the Flask session's
/// data and user in a new sessionkit session, and the Flask record is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlaskImport {
    /// Flask-Session's store: `redis://…` (`rediss://…`); for import, `staged` reads only what
    /// `sessionkit migrate --from flask+…` staged.
    pub url: Secret,
    /// `FLASK_SECRET_KEY`: the Flask app's `SECRET_KEY` when it sets `SESSION_USE_SIGNER`; without
    /// it, the cookie is the bare session ID (Flask-Session's default).
    pub secret: Option<Secret>,
    /// `FLASK_SESSION_COOKIE_NAME`. Default `session`.
    pub cookie_name: String,
    /// `FLASK_SESSION_KEY_PREFIX`. Default `session:`.
    pub key_prefix: String,
    /// `FLASK_USER_KEY`: the session key that names the signed-in user. Default `_user_id`
    /// (Flask-Login).
    pub user_key: String,
}

impl FlaskImport {
    /// Imports from the Flask-Session store at `url`, with every other setting at its default:
    /// unsigned cookies named `session`, keys prefixed `session:`, the user under `_user_id`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            secret: None,
            cookie_name: "session".into(),
            key_prefix: "session:".into(),
            user_key: "_user_id".into(),
        }
    }

    /// The Flask app's `SECRET_KEY`, for apps that set `SESSION_USE_SIGNER`. Default none.
    #[must_use]
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(Secret::new(secret));
        self
    }

    /// Flask's `SESSION_COOKIE_NAME`. Default `session`.
    #[must_use]
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// Flask-Session's `SESSION_KEY_PREFIX`. Default `session:`.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The session key that holds the user's ID. Default `_user_id` (Flask-Login).
    #[must_use]
    pub fn with_user_key(mut self, key: impl Into<String>) -> Self {
        self.user_key = key.into();
        self
    }

    /// Refuses a Flask cookie name equal to sessionkit's own (`own`): each side would read the
    /// other's cookie.
    pub(super) fn validate(&self, own: &str) -> Result<(), ConfigError> {
        if !cfg!(feature = "flask") {
            return Err(ConfigError::Refused(
                "SESSION_IMPORT_FLASK needs sessionkit built with the `flask` feature".into(),
            ));
        }
        if self.cookie_name == own {
            return Err(ConfigError::Refused(format!(
                "FLASK_SESSION_COOKIE_NAME and sessionkit's cookie are both {own:?}: the Flask \
                 cookie could not be told from sessionkit's. Keep SESSION_COOKIE_SECURE=true \
                 (sessionkit's cookie is then __Host-session) or set SESSION_COOKIE_NAME to \
                 another name"
            )));
        }
        if self.cookie_name.is_empty() || self.user_key.is_empty() {
            return Err(ConfigError::Refused(
                "FLASK_SESSION_COOKIE_NAME and FLASK_USER_KEY must not be empty".into(),
            ));
        }
        let url = self.url.expose();
        // `staged` only for import (`own` is sessionkit's cookie name; empty in shared mode).
        let staged = url == "staged" && !own.is_empty();
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || staged) {
            return Err(ConfigError::Refused(
                "SESSION_IMPORT_FLASK takes the redis:// (or rediss://) URL of Flask-Session's \
                 store, or `staged` (only what `sessionkit migrate --from flask+…` staged); \
                 SESSION_SHARE_FLASK takes the Redis URL"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Imports Flask-Session sessions on first sight (`SESSION_IMPORT_FLASK`, feature `flask`).
    /// Default none.
    #[must_use]
    pub fn with_flask_import(mut self, import: FlaskImport) -> Self {
        self.flask_import = Some(import);
        self
    }

    /// Shares sessions with a running Flask app in its own Redis records (`SESSION_SHARE_FLASK`,
    /// feature `flask`): the cookie is Flask's, and `build_store` opens Flask's records. Default
    /// none.
    ///
    /// # Warning
    /// Flask names its records by the raw session ID: in this mode IDs are not hashed at rest.
    #[must_use]
    pub fn with_flask_share(mut self, share: FlaskImport) -> Self {
        self.flask_share = Some(share);
        self
    }
}

/// The Flask settings of `c` (sessionkit's cookie is named `own`).
pub(super) fn validate(c: &Config, own: &str) -> Result<(), ConfigError> {
    if let Some(f) = &c.flask_import {
        f.validate(own)?;
    }
    if let Some(f) = &c.flask_share {
        if c.flask_import.is_some() {
            return Err(ConfigError::Refused(
                "SESSION_SHARE_FLASK and SESSION_IMPORT_FLASK exclude each other: share \
                     Flask's sessions, or import them"
                    .into(),
            ));
        }
        if c.session_header.is_some() {
            return Err(ConfigError::Refused(
                "SESSION_SHARE_FLASK and SESSION_HEADER exclude each other: shared sessions \
                     travel in Flask's cookie"
                    .into(),
            ));
        }
        if c.encryption {
            return Err(ConfigError::Refused(
                "SESSION_SHARE_FLASK and SESSION_ENCRYPTION exclude each other: Flask must read \
                     the shared records in clear"
                    .into(),
            ));
        }
        f.validate("")?;
    }
    Ok(())
}

/// `SESSION_IMPORT_FLASK` and its companions, from the environment.
/// The settings of `SESSION_IMPORT_FLASK` and of `SESSION_SHARE_FLASK`, whichever is set.
type Modes = (Option<FlaskImport>, Option<FlaskImport>);

pub(super) fn from_env(var: &impl Fn(&str) -> Option<String>) -> Result<Modes, ConfigError> {
    let import = var("SESSION_IMPORT_FLASK");
    let share = var("SESSION_SHARE_FLASK");
    let Some(url) = import.clone().or(share.clone()) else {
        return Ok((None, None));
    };
    let mut f = FlaskImport::new(url.trim());
    if let Some(s) = var("FLASK_SECRET_KEY") {
        f = f.with_secret(s);
    }
    if let Some(v) = var("FLASK_SESSION_COOKIE_NAME") {
        f = f.with_cookie_name(v.trim());
    }
    if let Some(v) = var("FLASK_SESSION_KEY_PREFIX") {
        f = f.with_key_prefix(v);
    }
    if let Some(v) = var("FLASK_USER_KEY") {
        f = f.with_user_key(v.trim());
    }
    Ok(match (import, share) {
        (Some(_), Some(s)) => (
            Some(f.clone()),
            Some(FlaskImport {
                url: Secret::new(s.trim()),
                ..f
            }),
        ),
        (Some(_), None) => (Some(f), None),
        _ => (None, Some(f)),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{from, GOOD};
    use super::*;
    use crate::Config;

    #[test]
    fn environment_and_code_agree() {
        let env = from(&[
            ("SECRET_KEY", GOOD),
            ("SESSION_IMPORT_FLASK", "redis://127.0.0.1:6379/0"),
            ("FLASK_SECRET_KEY", "dev-secret"),
            ("FLASK_SESSION_COOKIE_NAME", "fsess"),
            ("FLASK_SESSION_KEY_PREFIX", "app:"),
            ("FLASK_USER_KEY", "uid"),
        ]);
        let code = FlaskImport::new("redis://127.0.0.1:6379/0")
            .with_secret("dev-secret")
            .with_cookie_name("fsess")
            .with_key_prefix("app:")
            .with_user_key("uid");
        if cfg!(feature = "flask") {
            assert_eq!(env.unwrap().flask_import, Some(code));
            let defaults = from(&[
                ("SECRET_KEY", GOOD),
                ("SESSION_IMPORT_FLASK", "redis://127.0.0.1:6379/0"),
            ])
            .unwrap();
            assert_eq!(
                defaults.flask_import,
                Some(FlaskImport::new("redis://127.0.0.1:6379/0"))
            );
        } else {
            assert!(env.unwrap_err().to_string().contains("`flask` feature"));
        }
        assert_eq!(from(&[("SECRET_KEY", GOOD)]).unwrap().flask_import, None);
        // Alone, the companions configure nothing (the CLI's bulk import reads them).
        assert_eq!(
            from(&[("SECRET_KEY", GOOD), ("FLASK_USER_KEY", "uid")])
                .unwrap()
                .flask_import,
            None
        );
    }

    #[test]
    fn share_mode_is_read_and_excludes_import() {
        let url = "redis://127.0.0.1:6379/0";
        let share = from(&[
            ("SECRET_KEY", GOOD),
            ("SESSION_SHARE_FLASK", url),
            ("FLASK_SECRET_KEY", "dev-secret"),
        ]);
        let both = from(&[
            ("SECRET_KEY", GOOD),
            ("SESSION_SHARE_FLASK", url),
            ("SESSION_IMPORT_FLASK", url),
        ]);
        if cfg!(feature = "flask") {
            let c = share.unwrap();
            assert_eq!(c.flask_import, None);
            assert_eq!(
                c.flask_share,
                Some(FlaskImport::new(url).with_secret("dev-secret"))
            );
            let in_code =
                Config::new(GOOD).with_flask_share(FlaskImport::new(url).with_secret("dev-secret"));
            assert_eq!(in_code.flask_share, c.flask_share);
            let e = both.unwrap_err().to_string();
            assert!(e.contains("exclude each other"), "{e}");
        } else {
            assert!(share.is_err() && both.is_err());
        }
    }

    #[test]
    fn a_shared_cookie_name_is_refused() {
        let plain_http = Config::new(GOOD)
            .with_cookie_secure(false)
            .with_flask_import(FlaskImport::new("redis://127.0.0.1/"));
        let e = plain_http.validate().unwrap_err().to_string();
        if cfg!(feature = "flask") {
            assert!(e.contains("both \"session\""), "{e}");
            let renamed = plain_http.with_cookie_name("sk");
            renamed.validate().unwrap();
            let not_redis = Config::new(GOOD).with_flask_import(FlaskImport::new("file:///x"));
            assert!(not_redis.validate().is_err());
            let staged = Config::new(GOOD).with_flask_import(FlaskImport::new("staged"));
            staged.validate().unwrap();
            let staged_share = Config::new(GOOD).with_flask_share(FlaskImport::new("staged"));
            assert!(staged_share.validate().is_err());
        }
    }
}
