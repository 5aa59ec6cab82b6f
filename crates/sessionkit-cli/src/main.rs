//! `sessionkit`: the operator's command line. It reads the same environment configuration as the
//! app (`SESSION_TYPE`, `REDIS_URL`, `DATABASE_URL`, `SESSION_FILE_DIR`, ...), or a store URL given
//! with `--store`, and works on storage keys only: nothing it prints can be turned into a cookie.
//!
//! It works through the library's admin handle ([`sessionkit::admin::Sessions`]): every session
//! it revokes is a `Revoked` event (actor `cli:<name>`), written to the audit table when
//! `SESSION_AUDIT_URL` is set. It never creates a store, except the destination of `migrate`: a
//! mistyped folder, database file or PostgreSQL database is an error (exit 3), not a new empty
//! store. It never signs
//! or verifies a cookie, so it needs no `SECRET_KEY` and never generates one.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error, 3 store unavailable or missing, 4 not found.
//! `check` fails (1) on a Redis whose `maxmemory-policy` is not `noeviction`, or cannot be read,
//! unless `--allow-eviction` makes it a warning.

mod migrate;
mod server;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sessionkit::admin::{self, Revocation, Sessions};
use sessionkit::audit::AuditSink;
use sessionkit::events::{EventSink, FanoutSink, TracingSink};
use sessionkit::flask::FlaskBulkSource;
use sessionkit::id::SessionId;
use sessionkit::store::{Meta, SessionStore, StorageKey, StoreError, Timestamp};
use sessionkit::stores::open_url;
use sessionkit::Config;

#[derive(Parser, Debug)]
#[command(
    name = "sessionkit",
    version,
    about = "Watch, revoke, clean and migrate sessions"
)]
struct Cli {
    /// Store URL (memory:, file:///dir, sqlite://…, postgres://…, redis://…); default: the
    /// store the environment configures, as the app would pick it.
    #[arg(long, global = true, env = "SESSIONKIT_STORE")]
    store: Option<String>,
    /// Who is revoking, for the audit trail (recorded as `cli:<name>`); default: $USER.
    #[arg(long, global = true, env = "SESSIONKIT_ACTOR")]
    actor: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store name, health and session count; for Redis, the server's memory, clients, hits,
    /// misses, evictions and eviction policy.
    Stats,
    /// List sessions (all, or one user's).
    List {
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
        /// At most this many lines.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one session's metadata (and data keys; values with --values).
    Show {
        /// Storage key (64 hex digits).
        key: String,
        /// Print the values too (they may hold personal data).
        #[arg(long)]
        values: bool,
    },
    /// Destroy one session.
    Revoke {
        /// Storage key (64 hex digits).
        key: String,
    },
    /// Destroy all of a user's sessions, optionally but one.
    RevokeUser {
        /// The user.
        user: String,
        /// Keep this session (storage key).
        #[arg(long)]
        except: Option<String>,
    },
    /// Remove expired sessions now.
    Cleanup,
    /// Copy every live session from one store to another (existing keys are left alone). With
    /// `--from flask+redis://…` or `--from flask+file:///dir`, stage every live Flask-Session
    /// session for import on first sight (`SESSION_IMPORT_FLASK`).
    Migrate {
        /// Source store URL (`flask+redis://…`, `flask+file:///dir` for Flask-Session's stores).
        #[arg(long)]
        from: String,
        /// Destination store URL.
        #[arg(long)]
        to: String,
        /// Sessions per page.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Flask-Session's `SESSION_KEY_PREFIX` (Redis source).
        #[arg(long, env = "FLASK_SESSION_KEY_PREFIX", default_value = "session:")]
        flask_key_prefix: String,
        /// The Flask session key naming the signed-in user (Flask-Login's).
        #[arg(long, env = "FLASK_USER_KEY", default_value = "_user_id")]
        flask_user_key: String,
    },
    /// Validate the configuration and reach the store; exit 0 only if both are fine and, on
    /// Redis, the server never evicts sessions (`maxmemory-policy noeviction`).
    Check {
        /// Accept a Redis eviction policy other than `noeviction` (or one that cannot be read):
        /// a warning instead of a failure.
        #[arg(long)]
        allow_eviction: bool,
    },
}

#[derive(Debug)]
struct NotFound(String);
impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NotFound {}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(what) = missing_database(&e) {
                eprintln!(
                    "sessionkit: {e}: PostgreSQL {what} (this tool never creates one: check the \
                     database name in the URL)"
                );
                return ExitCode::from(3);
            }
            eprintln!("sessionkit: {e:#}");
            if e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<StoreError>(),
                    Some(StoreError::Unavailable { .. })
                )
            }) {
                ExitCode::from(3)
            } else if e.chain().any(|c| c.downcast_ref::<NotFound>().is_some()) {
                ExitCode::from(4)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// PostgreSQL's message when an error says the database does not exist (SQLSTATE 3D000): the
/// store is missing, as a mistyped folder or SQLite file is, not broken.
fn missing_database(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<sqlx::Error>()? {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => {
                Some(db.message().to_owned())
            }
            _ => None,
        })
}

/// The app's configuration from the environment, minus the signing key: this tool never signs or
/// verifies a cookie, so a missing `SECRET_KEY` is neither an error nor a reason to generate and
/// store a development key (with a warning) in the current folder. When it is set, it is
/// validated as the app would.
fn config() -> anyhow::Result<Config> {
    let throwaway = SessionId::generate().context("drawing a throwaway key")?;
    Config::from_lookup(|k| match std::env::var(k) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ if k == "SECRET_KEY" => Some(throwaway.expose().to_owned()),
        _ => None,
    })
    .context("configuration")
}

/// The store to administer: `--store`, else the configured one. Never created.
async fn open(cli: &Cli, config: &Config) -> anyhow::Result<Arc<dyn SessionStore>> {
    Ok(match &cli.store {
        Some(url) => admin::open_existing_url(url, config)
            .await
            .context("opening --store")?,
        None => admin::build_existing_store(config)
            .await
            .context("opening the configured store")?,
    })
}

/// The admin handle on the store; events go to `tracing`, and to the audit table when it is
/// configured (returned, to be flushed before exit).
async fn sessions(
    cli: &Cli,
    config: &Config,
) -> anyhow::Result<(Sessions, Option<Arc<AuditSink>>)> {
    let store = open(cli, config).await?;
    let Some(url) = config.audit_url.as_ref().map(|u| u.expose().trim()) else {
        return Ok((Sessions::new(store), None));
    };
    // A revocation the audit trail cannot record is not made: connect before revoking. The
    // queue holds every event of a large revoke-user; it only grows as far as it is used.
    let audit = AuditSink::builder(url)
        .with_capacity(1 << 24)
        .connect()
        .await
        .map(Arc::new)
        .context("opening the audit trail (SESSION_AUDIT_URL)")?;
    let sink: Arc<dyn EventSink> = Arc::new(FanoutSink(vec![
        Arc::new(TracingSink),
        audit.clone() as Arc<dyn EventSink>,
    ]));
    Ok((Sessions::new(store).with_events(sink), Some(audit)))
}

/// Waits until the audit trail holds every event emitted; an event it lost is an error.
async fn flush(audit: Option<Arc<AuditSink>>) -> anyhow::Result<()> {
    if let Some(audit) = audit {
        audit.flush().await;
        let lost = audit.dropped() + audit.failed();
        anyhow::ensure!(
            lost == 0,
            "{lost} revocation(s) done but not written to the audit trail"
        );
    }
    Ok(())
}

/// `cli:<name>`: `--actor`, else the login name, else just `cli`.
fn actor(cli: &Cli) -> String {
    let name = cli
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|n| !n.trim().is_empty());
    name.map_or_else(|| "cli".to_owned(), |n| format!("cli:{}", n.trim()))
}

fn key(s: &str) -> anyhow::Result<StorageKey> {
    StorageKey::parse(s.trim())
        .with_context(|| format!("{s:?} is not a storage key (64 lowercase hex digits)"))
}

/// A timestamp in UTC to the second, e.g. `2023-11-14 22:13:20Z`.
fn when(t: Timestamp) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    i64::try_from(t.as_secs())
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|at| at.format(&format).ok())
        // Past the year 9999: only a corrupt or hand-made record says so.
        .unwrap_or_else(|| format!("{} ms since 1970", t.as_millis()))
}

fn line(key: &StorageKey, m: &Meta) -> String {
    format!(
        "{}  user={:<12} created={} last_seen={} expires={} ip={}",
        key,
        m.user_id.as_deref().unwrap_or("-"),
        when(m.created_at),
        when(m.last_seen_at),
        when(m.expires_at()),
        m.ip.as_deref().unwrap_or("-"),
    )
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = config()?;
    match &cli.command {
        Command::Check { allow_eviction } => {
            let store = Sessions::new(open(&cli, &config).await?);
            let h = store.health().await;
            println!("configuration: ok");
            println!("store: {} ({})", store.store().name(), h.detail);
            anyhow::ensure!(h.ok, "store is not healthy: {}", h.detail);
            println!("health: ok");
            if let Some(stats) = store.server_stats().await? {
                server::check_eviction(&stats, *allow_eviction)?;
            }
        }
        Command::Stats => {
            let store = Sessions::new(open(&cli, &config).await?);
            let h = store.health().await;
            println!("store: {}", store.store().name());
            println!(
                "health: {} ({})",
                if h.ok { "ok" } else { "DOWN" },
                h.detail
            );
            println!("sessions: {}", store.count().await?);
            if let Some(stats) = store.server_stats().await? {
                server::print_server_stats(&stats);
            }
        }
        Command::List { user, limit } => {
            let store = Sessions::new(open(&cli, &config).await?);
            let now = store.now();
            let mut shown = 0;
            if let Some(u) = user {
                for (k, m) in store.list_user(u).await? {
                    println!("{}", line(&k, &m));
                    shown += 1;
                }
            } else {
                let mut cursor = None;
                'pages: loop {
                    let page = store.scan(cursor.take(), 500).await?;
                    for (k, r) in page.records.iter().filter(|(_, r)| !r.meta.is_expired(now)) {
                        if shown >= *limit {
                            break 'pages;
                        }
                        println!("{}", line(k, &r.meta));
                        shown += 1;
                    }
                    match page.next {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
            }
            eprintln!("{shown} session(s)");
        }
        Command::Show { key: k, values } => {
            let k = key(k)?;
            let store = Sessions::new(open(&cli, &config).await?);
            let r = store
                .get(&k)
                .await?
                .ok_or_else(|| NotFound(format!("no live session {k}")))?;
            println!("{}", line(&k, &r.meta));
            println!(
                "user_agent: {}",
                r.meta.user_agent.as_deref().unwrap_or("-")
            );
            println!("auth_time: {}", r.meta.auth_time.map_or("-".into(), when));
            println!("version: {}", r.meta.version);
            for (name, v) in &r.data {
                if *values {
                    println!("  {name} = {}", v.as_json());
                } else {
                    println!("  {name} ({} bytes)", v.as_json().len());
                }
            }
        }
        Command::Revoke { key: k } => {
            let k = key(k)?;
            let (store, audit) = sessions(&cli, &config).await?;
            let by = Revocation::new(actor(&cli), "operator_revoke");
            let ended = store.revoke(&k, &by).await?;
            flush(audit).await?;
            if !ended {
                return Err(NotFound(format!("no session {k}")).into());
            }
            println!("revoked {k}");
        }
        Command::RevokeUser { user, except } => {
            let except = except.as_deref().map(key).transpose()?;
            let (store, audit) = sessions(&cli, &config).await?;
            let by = Revocation::new(actor(&cli), "operator_revoke_user");
            let gone = store.revoke_user(user, except.as_ref(), &by).await?;
            flush(audit).await?;
            for k in &gone {
                println!("revoked {k}");
            }
            println!("{} session(s) of {user} revoked", gone.len());
        }
        Command::Cleanup => {
            let store = Sessions::new(open(&cli, &config).await?);
            let n = store.cleanup().await?;
            println!("removed {n} expired session(s)");
        }
        Command::Migrate {
            from,
            to,
            batch,
            flask_key_prefix,
            flask_user_key,
        } => {
            if let Some(src) = FlaskBulkSource::open(from, flask_key_prefix, flask_user_key) {
                let src = src.context("opening --from")?;
                let dst = open_url(to, &config).await.context("opening --to")?;
                return migrate::migrate_flask(&src, &*dst, &config).await;
            }
            // Only the destination may be created: a mistyped source must not read as empty.
            let src = admin::open_existing_url(from, &config)
                .await
                .context("opening --from")?;
            let dst = open_url(to, &config).await.context("opening --to")?;
            migrate::migrate(&Sessions::new(src), &*dst, *batch).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(when(Timestamp(0)), "1970-01-01 00:00:00Z");
        assert_eq!(when(Timestamp(1_700_000_000_000)), "2023-11-14 22:13:20Z");
        assert_eq!(when(Timestamp(951_782_400_000)), "2000-02-29 00:00:00Z");
        assert_eq!(when(Timestamp(253_402_300_799_999)), "9999-12-31 23:59:59Z");
        assert_eq!(
            when(Timestamp(u64::MAX)),
            "18446744073709551615 ms since 1970"
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert!(key("../../etc/passwd").is_err());
    }
}
