//! The bench app: exactly the routes of `shared/bench/README.md`, over any store.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sessionkit::store::Value;
use sessionkit::{Session, SessionError, SessionLayer};

/// The router, below `layer`.
pub fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/none", get(none))
        .route("/read", get(read))
        .route("/counter", get(counter))
        .route("/logout", post(logout))
        .route("/kv", get(kv_all))
        .route("/kv/{key}", get(kv_get).put(kv_put).delete(kv_delete))
        .layer(layer)
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.login("42").await?;
    session.insert("counter", 0u64).await?;
    Ok("ok")
}

async fn none() -> &'static str {
    "ok"
}

async fn read(session: Session) -> Result<Response, SessionError> {
    Ok(match session.user_id().await? {
        Some(user) => user.into_response(),
        None => (StatusCode::UNAUTHORIZED, "no session\n").into_response(),
    })
}

async fn counter(session: Session) -> Result<Response, SessionError> {
    let n = match session.get::<u64>("counter").await {
        Ok(n) => n.unwrap_or(0) + 1,
        Err(SessionError::Value(_)) => {
            return Ok((StatusCode::CONFLICT, "counter is not a number\n").into_response())
        }
        Err(e) => return Err(e),
    };
    session.insert("counter", n).await?;
    Ok(n.to_string().into_response())
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.logout().await?;
    Ok("bye")
}

async fn kv_all(session: Session) -> Result<Response, SessionError> {
    let mut out = String::from("{");
    for (i, (k, v)) in session.values().await?.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        out.push_str(v.as_json());
    }
    out.push('}');
    Ok(([("content-type", "application/json")], out).into_response())
}

async fn kv_get(session: Session, Path(key): Path<String>) -> Result<Response, SessionError> {
    Ok(match session.get_value(&key).await? {
        Some(v) => (
            [("content-type", "application/json")],
            v.as_json().to_owned(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "absent\n").into_response(),
    })
}

async fn kv_put(
    session: Session,
    Path(key): Path<String>,
    Json(value): Json<serde_json::Value>,
) -> Result<&'static str, SessionError> {
    let v = Value::to_json(&value).map_err(SessionError::Value)?;
    session.insert_value(&key, v).await?;
    Ok("ok")
}

async fn kv_delete(session: Session, Path(key): Path<String>) -> Result<Response, SessionError> {
    Ok(if session.remove(&key).await? {
        "ok".into_response()
    } else {
        (StatusCode::NOT_FOUND, "absent\n").into_response()
    })
}
