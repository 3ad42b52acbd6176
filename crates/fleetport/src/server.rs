//! The one listener: AWS APIs (awsJson and awsQuery) on `/`, the registry under `/v2/`,
//! Prometheus metrics on `/metrics`, and Fleetport's own `/_fleetport/*` endpoints. Bytes in, bytes out; all AWS semantics live in
//! the gateway and the service crates.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use fleetport_proto::{ApiRequest, AwsError, Gateway};
use fleetport_store::Store;
use http::StatusCode;

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub ecr: fleetport_ecr::Ecr,
    pub elb: fleetport_elb::Elb,
    pub store: Arc<dyn Store>,
    pub enable_reset: bool,
    pub max_body_bytes: usize,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/_fleetport/health", get(health))
        .route("/_fleetport/reset", post(reset))
        .route("/metrics", get(metrics))
        .route("/v2", any(registry))
        .route("/v2/", any(registry))
        .route("/v2/{*rest}", any(registry))
        .fallback(aws)
        .with_state(state)
}

fn too_large(headers: &http::HeaderMap, limit: usize) -> Response {
    let e = AwsError::with_status(
        "RequestEntityTooLargeException",
        format!("Request body is larger than the {limit}-byte limit."),
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    into_axum(fleetport_proto::gateway::reject(headers, &e))
}

fn into_axum(resp: http::Response<Bytes>) -> Response {
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::from(body))
}

async fn aws(State(state): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes) {
        return too_large(&parts.headers, state.max_body_bytes);
    }
    let Ok(body) = axum::body::to_bytes(body, state.max_body_bytes).await else {
        return too_large(&parts.headers, state.max_body_bytes);
    };
    let api = ApiRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body,
    };
    into_axum(state.gateway.handle(api).await)
}

async fn health() -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

/// Load balancer counters for Prometheus.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.elb.metrics_text(),
    )
}

async fn reset(State(state): State<AppState>) -> Response {
    if !state.enable_reset {
        let body = r#"{"__type":"ResetDisabled","message":"POST /_fleetport/reset is off; start fleetport up with --enable-reset."}"#;
        return (
            StatusCode::NOT_FOUND,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    match state.store.reset().await {
        Ok(()) => {
            state.elb.forget_all().await;
            tracing::info!("all state reset by POST /_fleetport/reset");
            (
                [(http::header::CONTENT_TYPE, "application/json")],
                r#"{"reset":true}"#,
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "reset failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(http::header::CONTENT_TYPE, "application/json")],
                r#"{"reset":false}"#,
            )
                .into_response()
        }
    }
}

/// The OCI registry (streams bodies; not subject to the AWS API body limit).
async fn registry(State(state): State<AppState>, req: Request) -> Response {
    state.ecr.registry(req).await
}
