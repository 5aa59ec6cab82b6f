//! `sessionkit-demo`: the reference app on http://127.0.0.1:3000 (`PORT` overrides), on the store
//! the environment chooses (see the sessionkit configuration).

use std::net::SocketAddr;

use anyhow::Context as _;
use std::sync::Arc;

use sessionkit::prometheus_client::registry::Registry;
use sessionkit::{build_event_sink, build_store, Config, FanoutSink, SessionLayer, SessionMetrics};
use sessionkit_demo::{app, development_notice, AppState, Users};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::from_env().context("session configuration")?;
    let notice = development_notice(&config);
    let mut registry = Registry::default();
    let metrics = SessionMetrics::register(&mut registry);
    let store = metrics.instrument(build_store(&config).await.context("session store")?);
    let events = build_event_sink(&config).await.context("audit trail")?;
    let events = Arc::new(FanoutSink(vec![events, metrics]));
    let layer = SessionLayer::new(store, config)?.with_events(events);
    let state = AppState::new(layer, Users::demo()?).with_metrics(Arc::new(registry));
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
