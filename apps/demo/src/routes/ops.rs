//! For operators and machines: the health probe, the Prometheus metrics, and the 404 page.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::{views, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// The store's health as JSON: 200 when it answers, 503 when not.
async fn healthz(State(state): State<AppState>) -> Response {
    let health = state.admin().health().await;
    let status = if health.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

/// The registry given to [`AppState::with_metrics`], else a 404.
async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics() {
        Some(registry) => (
            [(
                header::CONTENT_TYPE,
                sessionkit::metrics::METRICS_CONTENT_TYPE,
            )],
            sessionkit::metrics::render_metrics(registry),
        )
            .into_response(),
        None => not_found().await,
    }
}

pub(crate) async fn not_found() -> Response {
    views::not_found("There is no page at this address.")
}
