//! Serving listeners: HTTP/1.1 for ALB listeners (rules, forward with pooled keep-alive
//! connections and streamed bodies, redirects, fixed responses, and the ALB's own 405/463/502/
//! 503/504 pages) and plain TCP relaying for NLB listeners.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use crate::plane::route::RequestView;
use crate::plane::{Action, GroupPlan, ListenerPlan, Routes};

pub type Body = BoxBody<Bytes, hyper::Error>;
pub type UpstreamClient = Client<HttpConnector, Incoming>;

/// ALB gives up connecting to a target after 10 seconds (504).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(50))
        .pool_max_idle_per_host(256)
        .build(connector)
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn page(status: StatusCode) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let title = match status.as_u16() {
        503 => "Service Temporarily Unavailable",
        463 => "Bad Request",
        _ => reason,
    };
    let code = status.as_u16();
    let html = format!(
        "<html>\r\n<head><title>{code} {title}</title></head>\r\n<body>\r\n<center><h1>{code} {title}</h1></center>\r\n</body>\r\n</html>\r\n"
    );
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("awselb/2.0"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

static RANDOM: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);

fn random() -> u64 {
    let mut x = RANDOM.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    RANDOM.store(x, Ordering::Relaxed);
    x
}

fn trace_id() -> String {
    let secs = fleetport_proto::clock::unix_secs();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("Root=1-{secs:08x}-{}", &rand[..24])
}

/// Accepts HTTP connections on one listener port until aborted.
pub async fn serve_http(
    listener: std::net::TcpListener,
    port: u16,
    routes: watch::Receiver<Arc<Routes>>,
    client: UpstreamClient,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!(port, "cannot register the listener with the runtime");
        return;
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let routes = routes.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let routes = routes.borrow().clone();
                let client = client.clone();
                async move { Ok::<_, Infallible>(handle(req, port, peer, &routes, &client).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
}

fn host_of(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(String::from)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

pub async fn handle(
    req: Request<Incoming>,
    port: u16,
    peer: SocketAddr,
    routes: &Routes,
    client: &UpstreamClient,
) -> Response<Body> {
    if req.method() == http::Method::TRACE {
        return page(StatusCode::METHOD_NOT_ALLOWED);
    }
    let host = host_of(&req);
    let Some(listener) = routes.listener(port, &host) else {
        return page(StatusCode::SERVICE_UNAVAILABLE);
    };
    let action = {
        let view = RequestView {
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query().unwrap_or(""),
            host: &host,
            headers: req.headers(),
            peer: peer.ip(),
        };
        listener
            .rules
            .iter()
            .find(|r| r.conditions.iter().all(|c| c.matches(&view)))
            .map(|r| &r.action)
    };
    match action {
        None => page(StatusCode::SERVICE_UNAVAILABLE),
        Some(Action::Fixed {
            status,
            content_type,
            body,
        }) => {
            let mut r = Response::new(full(body.clone()));
            *r.status_mut() =
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let h = r.headers_mut();
            h.insert(header::SERVER, HeaderValue::from_static("awselb/2.0"));
            if let Some(ct) = content_type
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
            {
                h.insert(header::CONTENT_TYPE, ct);
            }
            r
        }
        Some(Action::Redirect(cfg)) => redirect(&req, cfg, &host, port),
        Some(Action::Forward(groups)) => forward(req, listener, groups, peer, &host, client).await,
    }
}

fn redirect(
    req: &Request<Incoming>,
    cfg: &serde_json::Value,
    host: &str,
    port: u16,
) -> Response<Body> {
    let get = |k: &str, d: &str| {
        cfg.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or(d)
            .to_string()
    };
    let bare_host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let path = req.uri().path().trim_start_matches('/');
    let query = req.uri().query().unwrap_or("");
    let fill = |s: String| {
        s.replace("#{protocol}", "http")
            .replace("#{host}", bare_host)
            .replace("#{port}", &port.to_string())
            .replace("#{path}", path)
            .replace("#{query}", query)
    };
    let protocol = fill(get("Protocol", "#{protocol}")).to_ascii_lowercase();
    let to_host = fill(get("Host", "#{host}"));
    let to_port = fill(get("Port", "#{port}"));
    let to_path = fill(get("Path", "/#{path}"));
    let to_query = fill(get("Query", "#{query}"));
    let default_port =
        (protocol == "http" && to_port == "80") || (protocol == "https" && to_port == "443");
    let mut location = format!("{protocol}://{to_host}");
    if !default_port {
        location.push(':');
        location.push_str(&to_port);
    }
    location.push_str(&to_path);
    if !to_query.is_empty() {
        location.push('?');
        location.push_str(&to_query);
    }
    let status = if get("StatusCode", "HTTP_301") == "HTTP_302" {
        StatusCode::FOUND
    } else {
        StatusCode::MOVED_PERMANENTLY
    };
    let mut r = page(status);
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn pick_group(groups: &[(Arc<GroupPlan>, u64)]) -> Option<&Arc<GroupPlan>> {
    let total: u64 = groups.iter().map(|(_, w)| *w).sum();
    if groups.len() == 1 {
        return groups.first().map(|(g, _)| g);
    }
    if total == 0 {
        return None;
    }
    let mut r = random() % total;
    for (g, w) in groups {
        if r < *w {
            return Some(g);
        }
        r -= w;
    }
    None
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

async fn forward(
    req: Request<Incoming>,
    listener: &ListenerPlan,
    groups: &[(Arc<GroupPlan>, u64)],
    peer: SocketAddr,
    host: &str,
    client: &UpstreamClient,
) -> Response<Body> {
    let Some(group) = pick_group(groups) else {
        return page(StatusCode::SERVICE_UNAVAILABLE);
    };
    let Some(target) = group.pick() else {
        return page(StatusCode::SERVICE_UNAVAILABLE);
    };
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let Ok(uri) = format!("http://{}{path}", target.addr).parse::<http::Uri>() else {
        return page(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let h = &mut parts.headers;
    for name in HOP_BY_HOP {
        h.remove(*name);
    }
    let xff = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    if xff.split(',').filter(|s| !s.trim().is_empty()).count() >= 30 {
        return page(StatusCode::from_u16(463).unwrap_or(StatusCode::BAD_REQUEST));
    }
    match listener.xff_mode.as_str() {
        "remove" => {
            h.remove("x-forwarded-for");
        }
        "preserve" => {}
        _ => {
            let value = if xff.is_empty() {
                peer.ip().to_string()
            } else {
                format!("{xff}, {}", peer.ip())
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert("x-forwarded-for", v);
            }
        }
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    h.insert("x-forwarded-port", HeaderValue::from(listener.port));
    let trace = match h.get("x-amzn-trace-id").and_then(|v| v.to_str().ok()) {
        Some(t) if t.contains("Root=") => format!("Self={};{t}", &trace_id()[5..]),
        _ => trace_id(),
    };
    if let Ok(v) = HeaderValue::from_str(&trace) {
        h.insert("x-amzn-trace-id", v);
    }
    if !listener.preserve_host && !host.is_empty() {
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()));
        let fixed = match (listener.port, has_port) {
            (80, true) => host.strip_suffix(":80").map(String::from),
            (p, false) if p != 80 => Some(format!("{host}:{p}")),
            _ => None,
        };
        if let Some(v) = fixed.and_then(|f| HeaderValue::from_str(&f).ok()) {
            h.insert(header::HOST, v);
        }
    }
    let upstream = Request::from_parts(parts, body);
    target.in_flight.fetch_add(1, Ordering::Relaxed);
    let result = tokio::time::timeout(listener.idle_timeout, client.request(upstream)).await;
    target.in_flight.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            // The client's connection keeps its own version, whatever the target spoke.
            parts.version = http::Version::HTTP_11;
            for name in HOP_BY_HOP {
                parts.headers.remove(*name);
            }
            Response::from_parts(parts, body.boxed())
        }
        Ok(Err(e)) => {
            tracing::debug!(target = %target.addr, error = %e, "target failed");
            if e.is_connect() && format!("{e:?}").contains("timed out") {
                page(StatusCode::GATEWAY_TIMEOUT)
            } else {
                page(StatusCode::BAD_GATEWAY)
            }
        }
        Err(_) => page(StatusCode::GATEWAY_TIMEOUT),
    }
}

/// Relays TCP connections on one NLB listener port until aborted.
pub async fn serve_tcp(
    listener: std::net::TcpListener,
    port: u16,
    routes: watch::Receiver<Arc<Routes>>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!(port, "cannot register the listener with the runtime");
        return;
    };
    loop {
        let Ok((mut inbound, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = inbound.set_nodelay(true);
        let routes = routes.borrow().clone();
        tokio::spawn(async move {
            let Some(l) = routes.ports.get(&port).and_then(|ls| ls.first()) else {
                return;
            };
            let Some(Action::Forward(groups)) = l.rules.last().map(|r| &r.action) else {
                return;
            };
            let Some(target) = pick_group(groups).and_then(|g| g.pick()) else {
                return;
            };
            let connect = tokio::net::TcpStream::connect(target.addr);
            let Ok(Ok(mut outbound)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await else {
                return;
            };
            let _ = outbound.set_nodelay(true);
            target.in_flight.fetch_add(1, Ordering::Relaxed);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            target.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
