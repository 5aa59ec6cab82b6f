//! Criterion benchmark of what the layer costs per request with the memory store, in process (no
//! sockets): the bench app's routes of the load scenario (`shared/bench`), each request carrying
//! the next of 1000 signed-in users' cookies.
//!
//! `LAYER_BENCH_ROUTE=/read LAYER_BENCH_N=5000` skips criterion and sends N requests to one route
//! in `measure`, for counting instructions on a shared machine where times are noisy:
//! `valgrind --tool=callgrind --toggle-collect=*measure* target/release/deps/layer-…`.
#![allow(missing_docs, clippy::unwrap_used)]
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use criterion::{black_box, criterion_group, Criterion};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, StatusCode};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::{Config, SessionLayer};
use tower::ServiceExt;

fn request(path: &str, cookie: Option<&HeaderValue>) -> Request<axum::body::Body> {
    let mut req = Request::get(path).body(axum::body::Body::empty()).unwrap();
    if let Some(c) = cookie {
        req.headers_mut().insert(COOKIE, c.clone());
    }
    let addr: SocketAddr = ([127, 0, 0, 1], 40000).into();
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

fn setup() -> (tokio::runtime::Runtime, Router, Vec<HeaderValue>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let layer = SessionLayer::new(
        Arc::new(MemoryStore::new()),
        Config::new("bench-secret-0123456789abcdefghijklmnopqrstuv"),
    )
    .unwrap();
    let app: Router = sessionkit_bench::app(layer);
    let cookies: Vec<HeaderValue> = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..1000 {
            let mut req = request("/login", None);
            *req.method_mut() = http::Method::POST;
            let res = app.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let sc = res.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
            let pair = sc.split(';').next().unwrap();
            out.push(HeaderValue::from_str(pair).unwrap());
        }
        out
    });
    (rt, app, cookies)
}

fn one(rt: &tokio::runtime::Runtime, app: &Router, route: &str, cookie: &HeaderValue) -> Response {
    let req = request(route, Some(cookie));
    let res = rt.block_on(app.clone().oneshot(req)).unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res
}

#[inline(never)]
fn measure(
    rt: &tokio::runtime::Runtime,
    app: &Router,
    route: &str,
    cookies: &[HeaderValue],
    n: usize,
) {
    for i in 0..n {
        black_box(one(rt, app, route, &cookies[i % cookies.len()]));
    }
}

fn benches(c: &mut Criterion) {
    let (rt, app, cookies) = setup();
    for route in ["/none", "/read", "/counter"] {
        let mut i = 0;
        c.bench_function(&format!("layer_memory{}", route.replace('/', "_")), |b| {
            b.iter(|| {
                i = (i + 1) % cookies.len();
                black_box(one(&rt, &app, route, &cookies[i]))
            })
        });
    }
}

criterion_group!(layer, benches);

fn main() {
    if let Ok(route) = std::env::var("LAYER_BENCH_ROUTE") {
        let n = std::env::var("LAYER_BENCH_N").map_or(1000, |n| n.parse().unwrap());
        let (rt, app, cookies) = setup();
        measure(&rt, &app, &route, &cookies, n);
        return;
    }
    layer();
    Criterion::default().configure_from_args().final_summary();
}
