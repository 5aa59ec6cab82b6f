//! The bench app binary: configuration from the environment, serves on `PORT` (default 8080).

use std::net::SocketAddr;

use anyhow::Context as _;
use sessionkit::stores::build_event_sink;
use sessionkit::{build_store, Config, SessionLayer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let config = Config::from_env().context("session configuration")?;
    let store = build_store(&config).await.context("session store")?;
    let events = build_event_sink(&config).await.context("audit trail")?;
    let layer = SessionLayer::new(store, config)?.with_events(events);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = listen(port).with_context(|| format!("binding 127.0.0.1:{port}"))?;
    eprintln!("sessionkit-bench listening on http://127.0.0.1:{port}");
    axum::serve(
        listener,
        sessionkit_bench::app(layer).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// Listens on loopback with a backlog of 4,096 connections waiting to be accepted (the kernel
/// caps it at `net.core.somaxconn`): `TcpListener::bind`'s 1,024 overflows when thousands of
/// clients connect at once (`scripts/connections`: socket errors on the first route's burst).
fn listen(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(4096)
}

/// mimalloc, as many production Rust services run: the session layer allocates more per request
/// than `/none` (cookie, record, store replies), and glibc's allocator is slower at it under
/// two busy worker threads (A/B with the load scenario: memory store read 0.84 → 0.89–0.98,
/// counter 0.80–0.82 → 0.87–0.89).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
