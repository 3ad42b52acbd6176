//! One worker's keep-alive connections to targets: HTTP/1.1 connections, plain or TLS (for
//! HTTPS target groups), kept per target address, taken for one request at a time and given back when the target's response has been
//! read to its end. A request that a reused connection could not take (the target had closed
//! it) goes out again on another one; a new connection is opened when none is idle.
//!
//! Each worker has its own pool and uses it only from its own thread, so the lock is never
//! contended; nothing here spawns a task per request (hyper-util's pooled client did, to learn
//! when a connection was free again).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use crate::plane::target_tls::{self, Carries};

/// ALB gives up connecting to a target after 10 seconds (504).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a worker calls [`Upstream::sweep`].
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Idle connections are closed by the fifth sweep after they were given back (40 to 50 s).
const IDLE_SWEEPS: u64 = 5;

/// At most this many idle connections are kept per target.
const MAX_IDLE_PER_TARGET: usize = 256;

/// How many idle connections one request tries before opening a new one.
const REUSE_ATTEMPTS: usize = 3;

/// Why a request got no response from its target.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the target timed out")]
    ConnectTimeout,
    #[error("connecting to the target failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS with the target failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("the target's connection failed: {0}")]
    Http(#[source] hyper::Error),
}

impl UpstreamError {
    /// Whether the request failed because the client's own body did (malformed chunked
    /// framing, or the client went away mid-body): the client's fault, not the target's.
    pub fn from_client_body(&self) -> bool {
        matches!(self, Self::Http(e) if e.is_user())
    }
}

struct Idle {
    sender: SendRequest<Incoming>,
    /// The sweep count when it was given back: cheaper than a clock read per request.
    since: u64,
}

/// Where a connection goes: the target's address, and whether it speaks TLS.
type Key = (SocketAddr, bool);

/// One worker's idle connections, by target.
#[derive(Default)]
pub struct Upstream {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
    sweeps: AtomicU64,
}

/// A response whose body gives its connection back to the pool once read to the end.
pub type PooledResponse = Response<PooledBody>;

impl Upstream {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Sends `req` (origin-form URI, Host set) to `addr`, over TLS when `tls`, on an idle
    /// connection or a new one.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: bool,
        mut req: Request<Incoming>,
    ) -> Result<PooledResponse, UpstreamError> {
        let key = (addr, tls);
        for _ in 0..REUSE_ATTEMPTS {
            let Some(mut sender) = self.take(key) else {
                break;
            };
            // A connection given back as its last response ended may not have noticed yet.
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, key, sender)),
                Err(mut e) => match e.take_message() {
                    // Not written: the target had closed this connection; try another.
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        let mut sender = connect(addr, tls).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.pooled(resp, key, sender)),
            Err(e) => Err(UpstreamError::Http(e.into_error())),
        }
    }

    fn take(&self, key: Key) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(&key)?;
        while let Some(i) = list.pop() {
            if !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    }

    fn give_back(&self, key: Key, sender: SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_TARGET {
            list.push(Idle {
                sender,
                since: self.sweeps.load(Ordering::Relaxed),
            });
        }
    }

    fn pooled(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        key: Key,
        sender: SendRequest<Incoming>,
    ) -> PooledResponse {
        // A switched protocol owns the connection from now on.
        let reusable = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let (parts, body) = resp.into_parts();
        let mut body = PooledBody {
            body,
            home: reusable.then(|| (self.clone(), key, sender)),
        };
        if body.body.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    /// Closes connections idle for [`IDLE_SWEEPS`] sweeps or closed by their targets, and
    /// forgets targets with none left.
    pub fn sweep(&self) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        self.idle.lock().retain(|_, list| {
            list.retain(|i| !i.sender.is_closed() && now - i.since < IDLE_SWEEPS);
            !list.is_empty()
        });
    }

    /// Idle connections held, for tests.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }
}

/// Opens a TCP connection to `addr` within the connect timeout.
pub async fn open(addr: SocketAddr) -> Result<tokio::net::TcpStream, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout)?
        .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Opens an HTTP/1.1 connection to `addr` (over TLS when `tls`) and runs it on the current
/// worker.
async fn connect(addr: SocketAddr, tls: bool) -> Result<SendRequest<Incoming>, UpstreamError> {
    let stream = open(addr).await?;
    if tls {
        let handshake = target_tls::connect(stream, addr, Carries::Http1);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Tls)?;
        run(stream).await
    } else {
        run(stream).await
    }
}

async fn run<I>(io: I) -> Result<SendRequest<Incoming>, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Flattened writes, as towards clients (see `proxy::serve_connection`).
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "target connection ended with an error");
        }
    });
    Ok(sender)
}

/// A target's response body; its connection goes back to the pool when the body ends, and is
/// closed if the body is dropped unread or fails.
pub struct PooledBody {
    body: Incoming,
    home: Option<(Arc<Upstream>, Key, SendRequest<Incoming>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, key, sender)) = self.home.take() {
            pool.give_back(key, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A target that answers every request on a connection with "ok" and closes each
    /// connection after `per_conn` responses; returns its address and a counter of accepted
    /// connections.
    async fn target(per_conn: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    let mut served = 0;
                    while served < per_conn {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        have.extend_from_slice(&buf[..n]);
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                            served += 1;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// A request whose body hyper sees as empty, built from a real server-side `Incoming`.
    async fn request_through(pool: Arc<Upstream>, target: SocketAddr, n: usize) -> Vec<String> {
        // `Incoming` cannot be built directly, so a tiny front server turns each client
        // request into an upstream one.
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = front.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let pool = pool.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    parts.uri = http::Uri::from_static("/");
                    let up = Request::from_parts(parts, body);
                    let resp = pool.send(target, false, up).await;
                    let body = match resp {
                        Ok(r) => r.into_body().collect().await.map(|b| b.to_bytes()),
                        Err(e) => Ok(Bytes::from(format!("error: {e}"))),
                    };
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        body.unwrap_or_default(),
                    )))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
        let s = tokio::net::TcpStream::connect(front_addr).await.unwrap();
        let (mut client, conn) =
            http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        for _ in 0..n {
            client.ready().await.unwrap();
            let req = Request::builder()
                .uri("/")
                .header("host", "front")
                .body(http_body_util::Empty::new())
                .unwrap();
            let resp = client.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            out.push(String::from_utf8_lossy(&body).into_owned());
            // Lets the target's close reach the pool's connection before the next request.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_are_reused_and_closed_ones_replaced() {
        let (addr, accepted) = target(usize::MAX).await;
        let pool = Upstream::new();
        let out = request_through(pool.clone(), addr, 5).await;
        assert_eq!(out, vec!["ok"; 5]);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);

        // A target that closes after every second response: nothing fails, new connections
        // replace the closed ones.
        let (addr, accepted) = target(2).await;
        let out = request_through(pool.clone(), addr, 6).await;
        assert_eq!(out, vec!["ok"; 6]);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
        pool.sweep();
        assert_eq!(pool.idle_count(), 1, "the first target's connection stays");
        for _ in 1..IDLE_SWEEPS {
            pool.sweep();
        }
        assert_eq!(pool.idle_count(), 0, "idle connections expire");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn refused_and_closed_targets_are_errors() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let pool = Upstream::new();
        let out = request_through(pool.clone(), addr, 1).await;
        assert!(
            out[0].starts_with("error: connecting to the target failed"),
            "{out:?}"
        );
        assert_eq!(pool.idle_count(), 0);
    }
}
