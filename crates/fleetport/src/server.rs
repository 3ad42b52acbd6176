//! The one listener: AWS APIs (awsJson and awsQuery) on `/`, the registry under `/v2/`,
//! Prometheus metrics on `/metrics`, and Fleetport's own `/_fleetport/*` endpoints. Bytes in, bytes out; all AWS semantics live in
//! the gateway and the service crates.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use fleetport_proto::{ApiRequest, AwsError, Gateway};
use fleetport_store::Store;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub tenants: Arc<crate::tenants::Tenants>,
    pub fleet: fleetport_elb::plane::fleet::Fleet,
    pub store: Arc<dyn Store>,
    pub enable_reset: bool,
    pub iam: fleetport_iam::Iam,
    /// The leader epoch while this process runs the loops that must run once.
    pub leader: tokio::sync::watch::Receiver<Option<i64>>,
    pub max_body_bytes: usize,
    pub bodies: BodyBudget,
}

/// The bytes of AWS API request bodies held in memory at once, over all requests, and how long
/// a body may pause (or wait for room) before its request is given up.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    pause: Duration,
}

impl BodyBudget {
    pub fn new(max_bytes: usize, pause: Duration) -> Self {
        // Permits are counted in u32; a budget beyond 4 GiB means the same as 4 GiB here.
        let max = max_bytes.min(u32::MAX as usize);
        Self {
            bytes: Arc::new(Semaphore::new(max)),
            pause,
        }
    }
}

/// Why a body was not read whole.
enum BodyError {
    TooLarge,
    /// No byte for the allowed pause.
    Slow,
    /// No room in the budget within the allowed pause.
    Room,
    Broken,
}

impl BodyError {
    /// The AWS-shaped answer, in the protocol `headers` announce.
    fn response(&self, headers: &http::HeaderMap, limit: usize) -> Response {
        let e = match self {
            Self::TooLarge => return too_large(headers, limit),
            Self::Slow => AwsError::with_status(
                "RequestTimeoutException",
                "The request body was not received in time.",
                StatusCode::REQUEST_TIMEOUT,
            ),
            Self::Room => AwsError::client(
                "ThrottlingException",
                "Too many request bodies in flight; retry.",
            ),
            Self::Broken => {
                AwsError::client("SerializationException", "The request body ended early.")
            }
        };
        into_axum(fleetport_proto::gateway::reject(headers, &e))
    }
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
    // Unsigned requests and unknown keys are answered before a byte of their body is read: a
    // stranger cannot make the server hold megabytes per connection.
    if let Some(refused) = state.gateway.precheck(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &parts.headers,
    ) {
        return into_axum(refused);
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes) {
        return too_large(&parts.headers, state.max_body_bytes);
    }
    // The permit is held until the answer is made: the body lives that long.
    let (body, _held) = match read_body(body, state.max_body_bytes, &state.bodies).await {
        Ok(b) => b,
        Err(e) => return e.response(&parts.headers, state.max_body_bytes),
    };
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let api = ApiRequest {
        peer,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body,
    };
    into_axum(state.gateway.handle(api).await)
}

/// Reads a body of at most `limit` bytes, taking room for each chunk from the shared budget as
/// it arrives; a body that pauses longer than the budget's `pause`, or waits that long for room,
/// is given up.
async fn read_body(
    mut body: Body,
    limit: usize,
    budget: &BodyBudget,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyError> {
    let mut buf = bytes::BytesMut::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout(budget.pause, body.frame()).await {
            Err(_) => return Err(BodyError::Slow),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyError::Broken),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            return Err(BodyError::TooLarge);
        }
        let n = u32::try_from(data.len()).map_err(|_| BodyError::TooLarge)?;
        if n > 0 {
            let room = budget.bytes.clone().acquire_many_owned(n);
            let permit = match tokio::time::timeout(budget.pause, room).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) | Err(_) => return Err(BodyError::Room),
            };
            match held.as_mut() {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

/// Liveness, and whether this replica leads (runs the scheduler and the other singletons) and
/// in which epoch.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let epoch = *state.leader.borrow();
    let body = match epoch {
        Some(epoch) => format!(r#"{{"status":"ok","leader":true,"epoch":{epoch}}}"#),
        None => r#"{"status":"ok","leader":false}"#.to_string(),
    };
    ([(http::header::CONTENT_TYPE, "application/json")], body)
}

/// Load balancer counters for Prometheus.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.fleet.metrics_text(),
    )
}

/// Deletes all state; only for a caller that signs with the API's credentials, and never for a
/// browser page of another origin (which could otherwise post here blind).
async fn reset(State(state): State<AppState>, req: Request) -> Response {
    let json_error = |status: StatusCode, body: String| {
        (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    if !state.enable_reset {
        let body = r#"{"__type":"ResetDisabled","message":"POST /_fleetport/reset is off; start fleetport up with --enable-reset."}"#;
        return json_error(StatusCode::NOT_FOUND, body.to_string());
    }
    let (parts, body) = req.into_parts();
    if cross_origin(&parts.headers) {
        let body = r#"{"__type":"AccessDeniedException","message":"Cross-origin requests may not reset Fleetport."}"#;
        return json_error(StatusCode::FORBIDDEN, body.to_string());
    }
    // As for the API: no body is read for an unsigned request, and a body takes its room from
    // the shared budget.
    let json = |e: AwsError| {
        json_error(
            e.status,
            String::from_utf8_lossy(&e.json_body()).into_owned(),
        )
    };
    if let Err(e) = state.gateway.precheck_own(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &parts.headers,
    ) {
        return json(e);
    }
    const RESET_BODY: usize = 64 * 1024;
    let (body, _held) = match read_body(body, RESET_BODY, &state.bodies).await {
        Ok(b) => b,
        Err(e) => return e.response(&parts.headers, RESET_BODY),
    };
    let key = match state.gateway.authenticate_own(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &parts.headers,
        &body,
    ) {
        Ok(k) => k,
        Err(e) => return json(e),
    };
    // Only the operator's own (root) keys may wipe everything, never an IAM user's.
    if let Some(p) = state.gateway.verifier().principal_of(&key) {
        let body = serde_json::json!({
            "__type": "AccessDeniedException",
            "message": format!("User: {} is not authorized to reset Fleetport; only the root credentials may.", p.arn),
        });
        return json_error(StatusCode::FORBIDDEN, body.to_string());
    }
    match state.store.reset().await {
        Ok(()) => {
            state.tenants.after_reset().await;
            if let Err(e) = state.iam.refresh() {
                tracing::error!(error = %e, "could not reload IAM after the reset");
            }
            crate::alloc::release_free_memory();
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

/// Whether a browser sent this request from a page of another origin: `Sec-Fetch-Site` says
/// so, or `Origin` names another host than the one addressed.
fn cross_origin(headers: &http::HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return true;
    }
    match text("origin") {
        None => false,
        Some(origin) => {
            let host = text("host").unwrap_or_default();
            origin
                .split_once("://")
                .is_none_or(|(_, authority)| !authority.eq_ignore_ascii_case(host))
        }
    }
}

/// The OCI registry (streams bodies; not subject to the AWS API body limit).
/// One endpoint serves the registry of every account and region: a request goes to the one its
/// password (or its layer download URL) was issued by, which then checks it; a request naming
/// none goes to the default account's, which challenges it.
async fn registry(State(state): State<AppState>, req: Request) -> Response {
    let tenants = &state.tenants;
    let claimed =
        fleetport_ecr::registry::registry_of(req.headers(), req.uri().query().unwrap_or(""));
    let tenant = claimed
        .and_then(|(account, region)| {
            let region = region.unwrap_or_else(|| tenants.default_tenant().region.clone());
            tenants.existing(&account, &region)
        })
        .unwrap_or_else(|| tenants.default_tenant().clone());
    tenant.ecr.registry(req).await
}
