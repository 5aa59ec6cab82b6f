//! `sessionkit-demo`: the reference app on http://127.0.0.1:3000 (`PORT` overrides), on the store
//! the environment chooses (see the sessionkit configuration), with the accounts of
//! `DEMO_USERS_FILE` (required with `APP_ENV=production`) or else the built-in ones.
//!
//! `sessionkit-demo hash-password` reads a password on standard input and prints its Argon2id
//! PHC string, for a line `name:role:phc` of the users file.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use sessionkit::events::FanoutSink;
use sessionkit::metrics::prometheus_client::registry::Registry;
use sessionkit::metrics::SessionMetrics;
use sessionkit::stores::build_event_sink;
use sessionkit::{build_store, Config, SessionLayer};
use sessionkit_demo::{app, development_notice, AppState, Users};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(arg) = std::env::args().nth(1) {
        anyhow::ensure!(
            arg == "hash-password",
            "unknown argument {arg:?}; the only command is `hash-password`"
        );
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("reading the password on standard input")?;
        let password = password.strip_suffix('\n').unwrap_or(&password);
        let password = password.strip_suffix('\r').unwrap_or(password);
        anyhow::ensure!(!password.is_empty(), "the password is empty");
        println!("{}", sessionkit_demo::hash_password(password)?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::from_env().context("session configuration")?;
    let users_file = std::env::var_os("DEMO_USERS_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let users = Users::for_deployment(config.app_env, users_file.as_deref())?;
    // The notice lists the built-in accounts: not printed over a users file.
    let notice = development_notice(&config).filter(|_| users.is_builtin());
    let mut registry = Registry::default();
    let metrics = SessionMetrics::register(&mut registry);
    let store = metrics.instrument(build_store(&config).await.context("session store")?);
    let events = build_event_sink(&config).await.context("audit trail")?;
    let events = Arc::new(FanoutSink(vec![events, metrics]));
    let layer = SessionLayer::new(store, config)?.with_events(events);
    let state = AppState::new(layer, users).with_metrics(Arc::new(registry));
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.trim().parse().with_context(|| format!("PORT={p:?}"))?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    println!("sessionkit demo on http://127.0.0.1:{port}");
    if let Some(n) = notice {
        println!("{n}");
    }
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
