//! A minimal awsJson1.1 client for the agent: SigV4-signed POSTs to the control plane with the
//! credentials from the agent's environment, exactly as any AWS SDK would send them. Connections
//! are kept alive (with TCP keepalive, so a vanished control plane is noticed), connecting has a
//! timeout, and so does every request.

use std::time::Duration;

use bytes::Bytes;
use fleetport_proto::sigv4::Signer;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const ECS: &str = "AmazonEC2ContainerServiceV20141113";
pub const ECR: &str = "AmazonEC2ContainerRegistry_V20150921";
pub const AGENT: &str = "FleetportAgentV20261124";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control plane answered with an AWS error.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the control plane: {0}")]
    Transport(String),
}

impl ClientError {
    /// Whether the same call may succeed later: the control plane was unreachable, failed
    /// (5xx) or throttled. A refusal of the request itself (4xx) will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { status, code, .. } => {
                *status >= 500 || code == "ThrottlingException" || code == "RequestTimeoutException"
            }
        }
    }
}

/// Connecting to the control plane gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No call takes longer than this (long polls wait 20 s on the server).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP keepalive on control-plane connections, and how long an idle one is kept.
const KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct ApiClient {
    http: Client<HttpConnector, Full<Bytes>>,
    /// The control plane's replicas; requests go to one until it stops answering.
    endpoints: std::sync::Arc<Vec<Endpoint>>,
    /// Shared by the clones, so one request's failover serves them all.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ecs: Signer,
    ecr: Signer,
}

#[derive(Debug)]
struct Endpoint {
    uri: http::Uri,
    /// `host:port`.
    host: String,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

fn parse_endpoint(text: &str) -> Result<Endpoint, ClientError> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| ClientError::Transport(format!("bad endpoint {text}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(ClientError::Transport(
            "the endpoint must be an http:// URL".into(),
        ));
    }
    let host = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| ClientError::Transport("the endpoint has no host".into()))?;
    Ok(Endpoint { uri, host })
}

impl ApiClient {
    /// `endpoints` is one `http://host:port` URL, or several separated by commas (the
    /// replicas of one control plane): a request that cannot reach one is retried by its caller
    /// on the next.
    pub fn new(
        endpoints: &str,
        region: &str,
        access_key: &str,
        secret: &str,
    ) -> Result<Self, ClientError> {
        let endpoints = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ClientError::Transport("no endpoint given".into()));
        }
        let signer = |service: &str| Signer {
            access_key: access_key.to_string(),
            secret: secret.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_keepalive(Some(KEEPALIVE));
        connector.set_nodelay(true);
        Ok(Self {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(KEEPALIVE)
                .build(connector),
            endpoints: std::sync::Arc::new(endpoints),
            current: std::sync::Arc::default(),
            ecs: signer("ecs"),
            ecr: signer("ecr"),
        })
    }

    fn endpoint(&self) -> (usize, &Endpoint) {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.endpoints.len();
        (i, &self.endpoints[i])
    }

    /// Moves on from endpoint `i` after it failed (unless another request already did).
    fn fail_over(&self, i: usize) {
        if self.endpoints.len() > 1 {
            let next = (i + 1) % self.endpoints.len();
            if self
                .current
                .compare_exchange(
                    i,
                    next,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
            {
                tracing::warn!(from = %self.endpoints[i].host, to = %self.endpoints[next].host, "control plane endpoint unreachable; using the next");
            }
        }
    }

    /// Moves on from the current endpoint although it answered (its answers are not wanted).
    pub fn move_on(&self) {
        self.fail_over(self.endpoint().0);
    }

    /// Whether `host` (an image reference's registry, `host:port`) is one of the control
    /// plane's replicas: each serves the registry, and a registry token from one is good at all.
    /// Loopback names count as one (`localhost:4566` is `127.0.0.1:4566`).
    pub fn is_replica(&self, host: &str) -> bool {
        self.endpoints.iter().any(|e| same_host(&e.host, host))
    }

    /// How many endpoints (replicas) this client knows.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The current endpoint's `host:port`.
    pub fn host(&self) -> &str {
        &self.endpoint().1.host
    }

    /// Calls one operation; `prefix` picks the API (ECS, ECR or the agent channel).
    pub async fn call(
        &self,
        prefix: &str,
        operation: &str,
        input: &Value,
    ) -> Result<Value, ClientError> {
        let body = serde_json::to_vec(input).map_err(|e| ClientError::Transport(e.to_string()))?;
        let mut headers = http::HeaderMap::new();
        let hv = |s: &str| {
            http::HeaderValue::from_str(s).map_err(|e| ClientError::Transport(e.to_string()))
        };
        let (index, endpoint) = self.endpoint();
        headers.insert(http::header::HOST, hv(&endpoint.host)?);
        headers.insert(
            http::header::CONTENT_TYPE,
            hv("application/x-amz-json-1.1")?,
        );
        headers.insert("x-amz-target", hv(&format!("{prefix}.{operation}"))?);
        let signer = if prefix == ECR { &self.ecr } else { &self.ecs };
        signer.sign(
            "POST",
            "/",
            "",
            &mut headers,
            &body,
            fleetport_proto::clock::unix_secs(),
        );
        let mut req = http::Request::builder()
            .method("POST")
            .uri(endpoint.uri.clone());
        if let Some(h) = req.headers_mut() {
            *h = headers;
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let answered = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Transport(format!("no answer in {REQUEST_TIMEOUT:?}")))
            .and_then(|r| r);
        let (status, bytes) = match answered {
            Ok(a) => a,
            Err(e) => {
                self.fail_over(index);
                return Err(e);
            }
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let code = v
            .get("__type")
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            .unwrap_or_else(|| status.to_string());
        let message = v
            .get("message")
            .or_else(|| v.get("Message"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Err(ClientError::Api {
            status: status.as_u16(),
            code,
            message,
        })
    }
}

/// Two `host:port` names of one listener: equal, or both loopback with the same port.
fn same_host(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let split = |h: &str| {
        let (name, port) = h.rsplit_once(':')?;
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let loopback = name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        Some((loopback, port.to_string()))
    };
    matches!((split(a), split(b)), (Some((true, p)), Some((true, q))) if p == q)
}

#[cfg(test)]
mod host_tests {
    use super::same_host;

    #[test]
    fn loopback_names_of_one_port_are_one_host() {
        assert!(same_host("127.0.0.1:4566", "localhost:4566"));
        assert!(same_host("[::1]:4566", "LOCALHOST:4566"));
        assert!(same_host("a.example:1", "A.example:1"));
        assert!(!same_host("127.0.0.1:4566", "localhost:4567"));
        assert!(!same_host("10.0.0.1:4566", "localhost:4566"));
        assert!(!same_host("localhost", "localhost:4566"));
    }
}
