//! Serving listeners: HTTP/1.1 for ALB listeners (rules, forward with pooled keep-alive
//! connections and streamed bodies, redirects, fixed responses, and the ALB's own 405/463/502/
//! 503/504 pages) and plain TCP relaying for NLB listeners.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};

use crate::plane::counted::{Active, Counted, Reset};
use crate::plane::route::RequestView;
use crate::plane::sticky::{self, Sticky};
use crate::plane::target_tls::{self, Carries};
use crate::plane::upstream::{self, Upstream, UpstreamError};
use crate::plane::{Action, Forward, GroupPlan, ListenerPlan, Routes, TargetPlan};

pub type Body = BoxBody<Bytes, hyper::Error>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Marks a response the load balancer made itself, for its metrics.
#[derive(Clone, Copy)]
struct ElbMade;

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
    r.extensions_mut().insert(ElbMade);
    let h = r.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("awselb/2.0"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

thread_local! {
    // Per thread, so workers never contend for it; seeded apart so they differ.
    static RANDOM: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1);
}

/// xorshift64: spreads weighted picks and fills trace IDs; not for anything secret.
pub(crate) fn random() -> u64 {
    RANDOM.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x
    })
}

/// A trace ID's `1-<8 hex seconds>-<24 hex random>` part, built without allocating.
fn trace_part() -> [u8; 35] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 35];
    out[0] = b'1';
    let secs = fleetport_proto::clock::unix_secs() as u32;
    for i in 0..8 {
        out[2 + i] = HEX[((secs >> (28 - 4 * i)) & 0xf) as usize];
    }
    let (a, b) = (random(), random());
    for i in 0..24 {
        let word = if i < 16 {
            a >> (60 - 4 * i)
        } else {
            b >> (60 - 4 * (i - 16))
        };
        out[11 + i] = HEX[(word & 0xf) as usize];
    }
    out
}

/// X-Amzn-Trace-Id for the target: a new `Root=`, or `Self=` added before a Root the client
/// sent.
fn trace_header(incoming: Option<&HeaderValue>) -> Option<HeaderValue> {
    let part = trace_part();
    match incoming.and_then(|v| v.to_str().ok()) {
        Some(t) if t.contains("Root=") => {
            let mut v = Vec::with_capacity(t.len() + 41);
            v.extend_from_slice(b"Self=");
            v.extend_from_slice(&part);
            v.push(b';');
            v.extend_from_slice(t.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(v)).ok()
        }
        _ => {
            let mut v = [0u8; 40];
            v[..5].copy_from_slice(b"Root=");
            v[5..].copy_from_slice(&part);
            HeaderValue::from_bytes(&v).ok()
        }
    }
}

/// What every request on one client connection shares.
struct Conn {
    port: u16,
    peer: SocketAddr,
    /// The peer's address as X-Forwarded-For carries it.
    peer_value: HeaderValue,
    routes: watch::Receiver<Arc<Routes>>,
    upstream: Arc<Upstream>,
    /// How long the connection may wait for a request's head (idle or sending slowly).
    idle: Duration,
    /// How long it may live in all before it is closed after its current request.
    keep_alive: Duration,
}

/// Request line and headers of one request together, at most (ALB: 64 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The request line, or one header, at most (ALB: 16 KiB).
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Concurrent streams on one HTTP/2 connection (ALB: 128).
const MAX_H2_STREAMS: u32 = 128;

/// A worker as the accept loop sees it: where a connection runs, with that worker's own copy
/// of the routes and its own pool of target connections.
#[derive(Clone)]
pub struct Lane {
    pub handle: tokio::runtime::Handle,
    pub routes: watch::Receiver<Arc<Routes>>,
    pub upstream: Arc<Upstream>,
}

/// What a listener port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Https,
    Tcp,
    Tls,
}

impl Kind {
    pub fn of(protocol: &str) -> Self {
        match protocol {
            "HTTPS" => Self::Https,
            "TCP" => Self::Tcp,
            "TLS" => Self::Tls,
            // The TCP half; the UDP half is `plane::udp`.
            "TCP_UDP" => Self::Tcp,
            _ => Self::Http,
        }
    }
}

/// A client gets this long to finish its TLS handshake (AWS: 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS handshake of an HTTPS or TLS listener's client connection, with the port's current
/// configuration; `None` when it fails, times out, or the port has no certificate.
async fn handshake(
    stream: Counted,
    port: u16,
    routes: &watch::Receiver<Arc<Routes>>,
) -> Option<tokio_rustls::server::TlsStream<Counted>> {
    let config = routes.borrow().tls.get(&port).cloned()?;
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Accepts connections on one listener port until aborted, handing them to the workers in
/// turn: every worker gets the same number of connections. Hashing them over per-worker
/// `SO_REUSEPORT` sockets did not (one worker did 58 % of the work in a wrk run).
pub async fn accept(
    listener: std::net::TcpListener,
    port: u16,
    kind: Kind,
    lanes: Vec<Lane>,
    slots: Arc<Semaphore>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!(port, "cannot register the listener with the runtime");
        return;
    };
    let mut turn = 0usize;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(lane) = lanes.get(turn % lanes.len().max(1)) else {
            return;
        };
        turn = turn.wrapping_add(1);
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        match kind {
            Kind::Tcp | Kind::Tls => {
                let relay = relay_tcp(stream, peer, port, lane.routes.clone(), kind == Kind::Tls);
                lane.handle.spawn(async move {
                    relay.await;
                    drop(slot);
                });
            }
            Kind::Http | Kind::Https => {
                let served = serve_http(
                    stream,
                    peer,
                    port,
                    lane.routes.clone(),
                    lane.upstream.clone(),
                    kind == Kind::Https,
                );
                lane.handle.spawn(async move {
                    served.await;
                    drop(slot);
                });
            }
        }
    }
}

/// Serves one HTTP client connection on the worker it was handed to.
async fn serve_http(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    port: u16,
    routes: watch::Receiver<Arc<Routes>>,
    upstream: Arc<Upstream>,
    tls: bool,
) {
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let Ok(peer_value) = HeaderValue::from_str(&peer.ip().to_string()) else {
        return;
    };
    // Connection counts and bytes go to the load balancer serving the port (the first one
    // when several share it), and so do its timeouts.
    let (lb_counters, idle, keep_alive) = {
        let current = routes.borrow();
        let first = current.listener(port, "");
        (
            first.map(|l| l.counters.clone()),
            first.map_or(Duration::from_secs(60), |l| l.idle_timeout),
            first.map_or(Duration::from_secs(3600), |l| l.client_keep_alive),
        )
    };
    let stream = Counted::new(stream, lb_counters);
    let conn = Conn {
        port,
        peer,
        peer_value,
        routes,
        upstream,
        idle,
        keep_alive,
    };
    if tls {
        if let Some(stream) = handshake(stream, port, &conn.routes).await {
            serve_connection(stream, conn).await;
        }
    } else {
        serve_connection(stream, conn).await;
    }
}

/// Serves HTTP on one client connection, plain or TLS.
async fn serve_connection<I>(io: I, conn: Conn)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (idle, keep_alive) = (conn.idle, conn.keep_alive);
    let conn = Arc::new(conn);
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, &conn).await) }
    });
    // HTTP/1.1 (with upgrades, for WebSockets), or HTTP/2 when the client opens with the
    // HTTP/2 preface (h2c with prior knowledge; an HTTP/1.1 client never does).
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // One buffer and one write(2) per response head and small body: measured ~3 % less CPU
    // per proxied request than writev(2) of separate buffers. The head timeout also closes a
    // keep-alive connection idle for the load balancer's idle timeout, as AWS does.
    builder
        .http1()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(served);
    let ended = tokio::select! {
        r = served.as_mut() => Some(r),
        () = tokio::time::sleep(keep_alive) => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// Whether a request's head is one the ALB forwards: at most one Host header, a Host on
/// HTTP/1.1, and a host that is a valid authority. Anything else gets 400, so rules never see
/// a host the target would read differently.
fn well_formed(req: &Request<Incoming>, host: &str) -> bool {
    // ALB's limits: 16 KiB for the request line and for any single header (64 KiB in all is
    // enforced while the head is read).
    if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > MAX_LINE_BYTES
        || req
            .headers()
            .iter()
            .any(|(n, v)| n.as_str().len() + v.len() > MAX_LINE_BYTES)
    {
        return false;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return false;
    }
    if first.is_none() && req.version() == http::Version::HTTP_11 && req.uri().authority().is_none()
    {
        return false;
    }
    host.is_empty() || split_authority(host).is_some()
}

/// Splits an authority (`host`, `host:port`, `[v6]`, `[v6]:port`) into host and port; `None`
/// unless the host is a valid registered name or IP literal and the port is digits.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let literal = &rest[..end];
        literal.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (&authority[..end + 2], port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    // RFC 3986 reg-name: unreserved, sub-delims and percent-encoding; no `/`, `?`, `#`, `@`.
    let reg_name = |h: &str| {
        !h.is_empty()
            && h.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                            | b'%'
                    )
            })
    };
    (host.starts_with('[') || reg_name(host)).then_some((host, port))
}

/// The Host header (or the authority of an absolute-form request line), as a cheap copy.
fn host_of(req: &Request<Incoming>) -> HeaderValue {
    req.headers()
        .get(header::HOST)
        .cloned()
        .or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

async fn handle(req: Request<Incoming>, conn: &Conn) -> Response<Body> {
    let routes = conn.routes.borrow().clone();
    let host_value = host_of(&req);
    let host = host_value.to_str().unwrap_or("");
    let strict = well_formed(&req, host);
    let Some(listener) = routes.listener(conn.port, if strict { host } else { "" }) else {
        return page(StatusCode::SERVICE_UNAVAILABLE);
    };
    listener.counters.requests.fetch_add(1, Ordering::Relaxed);
    let resp = if strict {
        respond(req, conn, listener, host).await
    } else {
        page(StatusCode::BAD_REQUEST)
    };
    if resp.extensions().get::<ElbMade>().is_some() {
        listener.counters.elb_response(resp.status().as_u16());
    }
    resp
}

async fn respond(
    req: Request<Incoming>,
    conn: &Conn,
    listener: &ListenerPlan,
    host: &str,
) -> Response<Body> {
    if req.method() == http::Method::TRACE {
        return page(StatusCode::METHOD_NOT_ALLOWED);
    }
    let (port, peer) = (conn.port, conn.peer);
    let action = {
        let view = RequestView {
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query().unwrap_or(""),
            host,
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
            r.extensions_mut().insert(ElbMade);
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
        Some(Action::Redirect(cfg)) => redirect(&req, cfg, listener.scheme(), host, port),
        Some(Action::Forward(fwd)) => forward(req, listener, fwd, conn, host).await,
    }
}

fn redirect(
    req: &Request<Incoming>,
    cfg: &serde_json::Value,
    scheme: &'static str,
    host: &str,
    port: u16,
) -> Response<Body> {
    let get = |k: &str, d: &str| {
        cfg.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or(d)
            .to_string()
    };
    // The request's host was checked as an authority on the way in (`well_formed`).
    let bare_host = split_authority(host).map_or("", |(h, _)| h);
    let path = req.uri().path().trim_start_matches('/');
    let query = req.uri().query().unwrap_or("");
    let fill = |s: String| {
        s.replace("#{protocol}", scheme)
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

/// The group an `AWSALBTG` cookie names, while it still has weight; otherwise a weighted pick.
fn pick_group_sticky<'a>(
    fwd: &'a Forward,
    headers: &http::HeaderMap,
) -> Option<&'a Arc<GroupPlan>> {
    if fwd.group_stickiness.is_some()
        && let Some(token) = sticky::cookie(headers, &[sticky::TG_COOKIE, sticky::TG_COOKIE_CORS])
        && let Some((g, _)) = fwd.groups.iter().find(|(g, w)| *w > 0 && g.token == token)
    {
        return Some(g);
    }
    pick_group(&fwd.groups)
}

/// A sticky cookie to set on the response: name, cross-origin twin, lifetime in seconds.
type Keep = (&'static str, Option<&'static str>, u64);

/// The target for a request to `group`, honouring its stickiness, and the cookie to set on
/// the response (name, cross-origin twin, lifetime) when there is one.
fn pick_target<'a>(
    group: &'a GroupPlan,
    headers: &http::HeaderMap,
    peer: &SocketAddr,
) -> Option<(&'a TargetPlan, Option<Keep>)> {
    match &group.sticky {
        None => group.pick().map(|t| (t, None)),
        Some(Sticky::LbCookie { duration }) => {
            let token = sticky::cookie(headers, &[sticky::LB_COOKIE, sticky::LB_COOKIE_CORS]);
            let t = group.pick_sticky(token)?;
            Some((
                t,
                Some((sticky::LB_COOKIE, Some(sticky::LB_COOKIE_CORS), *duration)),
            ))
        }
        Some(Sticky::AppCookie { duration, .. }) => {
            let t = group.pick_sticky(sticky::cookie(headers, &[sticky::APP_COOKIE]))?;
            Some((t, Some((sticky::APP_COOKIE, None, *duration))))
        }
        Some(Sticky::SourceIp) => group.pick_by_key(source_key(peer)).map(|t| (t, None)),
    }
}

/// A stable hash of the client's address, for source-IP stickiness.
pub(crate) fn source_key(peer: &SocketAddr) -> u64 {
    let digits = match peer.ip() {
        std::net::IpAddr::V4(ip) => u64::from(u32::from(ip)),
        std::net::IpAddr::V6(ip) => {
            let n = u128::from(ip);
            (n as u64) ^ ((n >> 64) as u64)
        }
    };
    // splitmix64's finaliser: neighbouring addresses land far apart.
    let mut z = digits.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_AMZN_TRACE_ID: HeaderName = HeaderName::from_static("x-amzn-trace-id");

/// Drops the hop-by-hop headers: the fixed list and any the sender named in `Connection`
/// (RFC 9110 §7.6.1). One pass over the (few) headers finds those present, so a message
/// without them costs no hash lookups.
fn remove_hop_by_hop(h: &mut http::HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    if present[0] {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            h.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        h.remove(name);
    }
}

/// Sets X-Forwarded-For as the listener's mode says; Err when the client already sent 30 or
/// more addresses (the ALB answers 463).
fn forwarded_for(h: &mut http::HeaderMap, mode: &str, peer: &HeaderValue) -> Result<(), ()> {
    if !h.contains_key(&X_FORWARDED_FOR) {
        if mode != "remove" && mode != "preserve" {
            h.insert(X_FORWARDED_FOR.clone(), peer.clone());
        }
        return Ok(());
    }
    let xff = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    if xff.split(',').filter(|s| !s.trim().is_empty()).count() >= 30 {
        return Err(());
    }
    match mode {
        "remove" => {
            h.remove(&X_FORWARDED_FOR);
        }
        "preserve" => {}
        _ => {
            let peer = peer.to_str().unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(&format!("{xff}, {peer}")) {
                h.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
    Ok(())
}

/// Whether a request is a WebSocket handshake, the only protocol switch the ALB tunnels; any
/// other `Upgrade` is dropped with the hop-by-hop headers and the request forwarded as is.
fn is_upgrade(h: &http::HeaderMap) -> bool {
    h.get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Joins the client's and the target's upgraded connections until either side closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, target: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, target) {
            Ok((c, t)) => {
                let (mut c, mut t) = (TokioIo::new(c), TokioIo::new(t));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut t).await {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "protocol switch failed"),
        }
    });
}

async fn forward(
    mut req: Request<Incoming>,
    listener: &ListenerPlan,
    fwd: &Forward,
    conn: &Conn,
    host: &str,
) -> Response<Body> {
    let Some(group) = pick_group_sticky(fwd, req.headers()) else {
        return page(StatusCode::SERVICE_UNAVAILABLE);
    };
    let Some((target, keep)) = pick_target(group, req.headers(), &conn.peer) else {
        return page(StatusCode::SERVICE_UNAVAILABLE);
    };
    let sent_app_cookie = matches!(group.sticky, Some(Sticky::AppCookie { .. }))
        && sticky::cookie(req.headers(), &[sticky::APP_COOKIE]).is_some();
    let client_version = req.version();
    let upgrade = is_upgrade(req.headers())
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
        .map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    // Origin form (`/path?query`), whatever form the client used.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    parts.version = http::Version::HTTP_11;
    let h = &mut parts.headers;
    remove_hop_by_hop(h);
    if let Some((protocol, _)) = &upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, protocol.clone());
    }
    if forwarded_for(h, &listener.xff_mode, &conn.peer_value).is_err() {
        return page(StatusCode::from_u16(463).unwrap_or(StatusCode::BAD_REQUEST));
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(listener.scheme()),
    );
    h.insert(X_FORWARDED_PORT.clone(), listener.port_value.clone());
    if let Some(v) = trace_header(h.get(&X_AMZN_TRACE_ID)) {
        h.insert(X_AMZN_TRACE_ID.clone(), v);
    }
    if !listener.preserve_host && !host.is_empty() {
        let has_port = split_authority(host).is_some_and(|(_, port)| port.is_some());
        let fixed = match (listener.port, has_port) {
            (80, true) => host.strip_suffix(":80").map(String::from),
            (p, false) if p != 80 => Some(format!("{host}:{p}")),
            _ => None,
        };
        if let Some(v) = fixed.and_then(|f| HeaderValue::from_str(&f).ok()) {
            h.insert(header::HOST, v);
        }
    }
    // HTTP/2 requests carry the host in `:authority`; the target speaks HTTP/1.1, which needs
    // a Host (the target's own address when the client sent none).
    if !h.contains_key(header::HOST) {
        let v = match HeaderValue::from_str(host) {
            Ok(v) if !host.is_empty() => v,
            _ => target.host_value.clone(),
        };
        h.insert(header::HOST, v);
    }
    let upstream = Request::from_parts(parts, body);
    // Only least-outstanding-requests reads the count; others skip the shared cache line.
    let counted = group
        .least_outstanding
        .then(|| InFlight::count(&target.in_flight));
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        listener.idle_timeout,
        conn.upstream.send(target.addr, group.tls, upstream),
    )
    .await;
    drop(counted);
    let client_fault = matches!(&result, Ok(Err(e)) if e.from_client_body());
    if !matches!(result, Ok(Ok(_))) && !client_fault {
        group
            .counters
            .connection_errors
            .fetch_add(1, Ordering::Relaxed);
    }
    match result {
        Ok(Err(_)) if client_fault => page(StatusCode::BAD_REQUEST),
        // A switch the client did not ask for (or not for a WebSocket) cannot be relayed.
        Ok(Ok(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_none() => {
            page(StatusCode::BAD_GATEWAY)
        }
        Ok(Ok(mut resp)) => {
            group
                .counters
                .target_response(resp.status().as_u16(), started.elapsed());
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            let upgraded = match upgrade {
                Some((_, client)) if switched => {
                    tunnel(client, hyper::upgrade::on(&mut resp));
                    resp.headers().get(header::UPGRADE).cloned()
                }
                _ => None,
            };
            let (mut parts, body) = resp.into_parts();
            // The client's connection keeps its own version, whatever the target spoke.
            parts.version = client_version;
            remove_hop_by_hop(&mut parts.headers);
            if let Some(protocol) = upgraded {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(header::UPGRADE, protocol);
            }
            if let Some((name, cors, duration)) = keep {
                // Application stickiness starts only once the application sets its cookie.
                let app_started = match &group.sticky {
                    Some(Sticky::AppCookie { name: app, .. }) => {
                        sent_app_cookie || sticky::sets_cookie(&parts.headers, app)
                    }
                    _ => true,
                };
                if app_started {
                    sticky::set(&mut parts.headers, name, cors, &target.token, duration);
                }
            }
            if let Some(duration) = fwd.group_stickiness {
                sticky::set(
                    &mut parts.headers,
                    sticky::TG_COOKIE,
                    Some(sticky::TG_COOKIE_CORS),
                    &group.token,
                    duration,
                );
            }
            Response::from_parts(parts, body.boxed())
        }
        Ok(Err(e)) => {
            tracing::debug!(
                target = %target.addr,
                state = ?target.health.state(),
                healthy_in_group = group.targets.iter().filter(|t| t.health.state() == crate::plane::health::State::Healthy).count(),
                in_group = group.targets.len(),
                error = %e,
                "target failed"
            );
            match e {
                UpstreamError::ConnectTimeout => page(StatusCode::GATEWAY_TIMEOUT),
                _ => page(StatusCode::BAD_GATEWAY),
            }
        }
        Err(_) => page(StatusCode::GATEWAY_TIMEOUT),
    }
}

/// Relays one NLB client connection to a target on the worker it was handed to.
async fn relay_tcp(
    inbound: std::net::TcpStream,
    peer: SocketAddr,
    port: u16,
    routes: watch::Receiver<Arc<Routes>>,
    tls: bool,
) {
    let Ok(inbound) = tokio::net::TcpStream::from_std(inbound) else {
        return;
    };
    let current = routes.borrow().clone();
    let Some(l) = current.ports.get(&port).and_then(|ls| ls.first()) else {
        return;
    };
    let inbound = Counted::new(inbound, Some(l.counters.clone()));
    // A TLS listener terminates TLS and relays the plain stream.
    if tls {
        if let Some(inbound) = handshake(inbound, port, &routes).await {
            relay(inbound, peer, port, l, routes).await;
        }
    } else {
        relay(inbound, peer, port, l, routes).await;
    }
}

/// How often a relayed connection looks whether its target still may have it, and whether it
/// has been idle too long.
const CUT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What ends a relayed NLB connection besides its own close.
struct Watch<'a> {
    routes: watch::Receiver<Arc<Routes>>,
    port: u16,
    group: &'a str,
    target: SocketAddr,
    /// The listener's `tcp.idle_timeout.seconds`.
    idle: Duration,
}

/// Returns once the connection must end: no byte moved through `moved` for `idle`, or its
/// target may no longer have it ([`Routes::cut`]).
async fn until_cut(w: Watch<'_>, moved: &AtomicU64) {
    let mut every = tokio::time::interval(CUT_CHECK_EVERY);
    let mut seen = moved.load(Ordering::Relaxed);
    let mut quiet_since = every.tick().await;
    loop {
        let now = every.tick().await;
        let count = moved.load(Ordering::Relaxed);
        if count != seen {
            seen = count;
            quiet_since = now;
        } else if now.duration_since(quiet_since) >= w.idle {
            tracing::debug!(target = %w.target, "NLB connection closed after its idle timeout");
            return;
        }
        if w.routes.borrow().cut(w.port, w.group, w.target) {
            tracing::debug!(target = %w.target, "NLB connection ended: its target was deregistered or turned unhealthy");
            return;
        }
    }
}

async fn relay<I>(
    mut inbound: I,
    peer: SocketAddr,
    port: u16,
    l: &ListenerPlan,
    routes: watch::Receiver<Arc<Routes>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Reset,
{
    let Some(group) = l.forward().and_then(|fwd| pick_group(&fwd.groups)) else {
        return;
    };
    let target = match group.sticky {
        Some(Sticky::SourceIp) => group.pick_by_key(source_key(&peer)),
        _ => group.pick(),
    };
    let Some(target) = target else {
        return;
    };
    let Ok(outbound) = upstream::open(target.addr).await else {
        return;
    };
    let _counted = InFlight::count(&target.in_flight);
    let ends = Watch {
        routes,
        port,
        group: &group.arn,
        target: target.addr,
        idle: l.idle_timeout,
    };
    // Counted on the inbound side: every relayed byte crosses it once each way.
    if group.tls {
        let handshake = target_tls::connect(outbound, target.addr, Carries::Stream);
        if let Ok(Ok(outbound)) = tokio::time::timeout(upstream::CONNECT_TIMEOUT, handshake).await {
            pipe(&mut inbound, outbound, ends).await;
        }
    } else {
        pipe(&mut inbound, outbound, ends).await;
    }
}

/// One request (or relayed connection) counted against its target while it lasts: released
/// when dropped, so a request whose client went away (its future dropped mid-await) is not
/// left as phantom load that least-outstanding-requests would avoid forever.
#[must_use]
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn count(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Copies both ways until both sides are done, or until `ends` ends the connection; then, as
/// on AWS, both sides get a reset.
async fn pipe<A, B>(a: &mut A, b: B, ends: Watch<'_>)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Reset,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Reset,
{
    let (mut b, moved) = Active::watched(b);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(a, &mut b) => {}
        () = until_cut(ends, &moved) => {
            a.reset_on_close();
            b.reset_on_close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_trace_part(s: &str) -> bool {
        let parts: Vec<&str> = s.split('-').collect();
        parts.len() == 3
            && parts[0] == "1"
            && parts[1].len() == 8
            && parts[2].len() == 24
            && parts[1..].iter().all(|p| {
                p.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
    }

    #[test]
    fn trace_header_starts_a_root_or_adds_self() {
        let new = trace_header(None).map(|v| v.to_str().map(String::from));
        let Some(Ok(new)) = new else {
            panic!("no header")
        };
        let root = new.strip_prefix("Root=").unwrap_or_default();
        assert!(is_trace_part(root), "{new}");
        assert_ne!(trace_header(None), trace_header(None));
        let sent = HeaderValue::from_static("Root=1-5759e988-bd862e3fe1be46a994272793");
        let Some(Ok(out)) = trace_header(Some(&sent)).map(|v| v.to_str().map(String::from)) else {
            panic!("no header")
        };
        let (own, rest) = out.split_once(';').unwrap_or_default();
        assert!(
            is_trace_part(own.strip_prefix("Self=").unwrap_or_default()),
            "{out}"
        );
        assert_eq!(rest, "Root=1-5759e988-bd862e3fe1be46a994272793");
        let other = HeaderValue::from_static("Parent=abc");
        let Some(Ok(out)) = trace_header(Some(&other)).map(|v| v.to_str().map(String::from)) else {
            panic!("no header")
        };
        assert!(out.starts_with("Root=1-"), "{out}");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_dropped() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret , close"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("3"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        remove_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_nlb_connection_ends_after_its_idle_timeout_unless_bytes_move() {
        let routes = watch::Sender::new(Arc::new(Routes::default()));
        let ends = || Watch {
            routes: routes.subscribe(),
            port: 1,
            group: "tg",
            target: SocketAddr::from(([127, 0, 0, 1], 9)),
            idle: Duration::from_secs(60),
        };
        let started = tokio::time::Instant::now();
        until_cut(ends(), &AtomicU64::new(0)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(60) && took <= Duration::from_secs(62),
            "{took:?}"
        );
        let moved = Arc::new(AtomicU64::new(0));
        let bump = {
            let moved = moved.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    moved.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let outcome = tokio::select! {
            () = until_cut(ends(), &moved) => "cut",
            () = tokio::time::sleep(Duration::from_secs(300)) => "open",
        };
        bump.abort();
        assert_eq!(outcome, "open", "bytes every 10 s keep the connection");
    }
}
