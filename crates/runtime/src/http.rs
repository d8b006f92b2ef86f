//! The HTTP server of every service: `/healthz`, `/readyz`, `/metrics`.
//!
//! Services add their own routes (the updater's approval page) with
//! [`crate::Context::serve_routes`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use steward_bus::Bus;
use steward_engine::Engine;
use tower::ServiceExt as _;

use crate::metrics::Metrics;

#[derive(Clone)]
pub(crate) struct Probe {
    pub bus: Bus,
    pub engine: Option<Engine>,
    pub metrics: Arc<Metrics>,
}

/// The standard routes; anything else goes to the service's own routes once it set them.
pub(crate) fn router(probe: Probe, own: Arc<OnceLock<Router>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probe)
        .fallback(move |request: Request| {
            let own = own.get().cloned();
            async move {
                match own {
                    Some(router) => match router.oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }
        })
}

/// Ready when NATS answers a round trip and, for services that need it, Docker answers a ping.
async fn readyz(State(p): State<Probe>) -> impl IntoResponse {
    let timeout = Duration::from_secs(2);
    let nats = match p.bus.ping(timeout).await {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    let docker = match &p.engine {
        None => None,
        Some(engine) => Some(match engine.ping(timeout).await {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        }),
    };
    let ready = nats == "ok" && docker.as_deref().is_none_or(|d| d == "ok");
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = serde_json::json!({ "ready": ready, "nats": nats });
    if let Some(docker) = docker {
        body["docker"] = docker.into();
    }
    (status, Json(body))
}

async fn metrics(State(p): State<Probe>) -> impl IntoResponse {
    p.metrics.nats_connected.set(i64::from(p.bus.is_connected()));
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        p.metrics.render(),
    )
}
