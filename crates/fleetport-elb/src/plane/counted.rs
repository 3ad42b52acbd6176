//! Streams that note the bytes they move: a client connection counts its bytes (ProcessedBytes)
//! and itself (NewConnectionCount, ActiveConnectionCount) into a load balancer's counters while
//! it lives ([`Counted`]); a relayed NLB connection's target side notes when bytes last moved,
//! so it can be closed after the listener's `tcp.idle_timeout.seconds` ([`Active`]). [`Reset`]
//! reaches the socket under these layers (and TLS) to end a connection with RST.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::plane::metrics::LbCounters;

/// A relayed connection that can be ended with a reset (RST), as an NLB ends connections it
/// terminates: the socket under any TLS and counting layers is closed without lingering.
pub trait Reset {
    fn tcp(&self) -> &TcpStream;

    fn reset_on_close(&self) {
        if let Err(e) = self.tcp().set_zero_linger() {
            tracing::debug!(error = %e, "cannot make a closing connection send a reset");
        }
    }
}

impl Reset for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl<S: Reset, T> Reset for Noted<S, T> {
    fn tcp(&self) -> &TcpStream {
        self.stream.tcp()
    }
}

impl<S: Reset> Reset for tokio_rustls::server::TlsStream<S> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

impl<S: Reset> Reset for tokio_rustls::client::TlsStream<S> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

/// Where a stream's byte counts go.
pub trait Tally {
    fn add(&self, n: usize);
}

/// `stream`, with every byte read or written noted in `tally`.
pub struct Noted<S, T> {
    stream: S,
    tally: T,
}

/// A client connection counted into its load balancer's counters.
pub type Counted = Noted<TcpStream, Connection>;

/// A relayed connection's target side; the `Arc` is the bytes moved so far, and a watcher that
/// sees it unchanged knows the connection is idle.
pub type Active<S> = Noted<S, Arc<AtomicU64>>;

/// One client connection in its load balancer's counters (none when the port's listener is
/// gone): counted as new and active when made, as no longer active when dropped.
pub struct Connection(Option<Arc<LbCounters>>);

impl Counted {
    pub fn new(stream: TcpStream, counters: Option<Arc<LbCounters>>) -> Self {
        if let Some(c) = &counters {
            c.new_connections.fetch_add(1, Ordering::Relaxed);
            c.active_connections.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            stream,
            tally: Connection(counters),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.active_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Tally for Connection {
    fn add(&self, n: usize) {
        if let Some(c) = &self.0 {
            c.processed_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl<S> Active<S> {
    pub fn watched(stream: S) -> (Self, Arc<AtomicU64>) {
        let moved = Arc::new(AtomicU64::new(0));
        let tally = moved.clone();
        (Self { stream, tally }, moved)
    }
}

impl Tally for Arc<AtomicU64> {
    fn add(&self, n: usize) {
        self.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin, T: Tally + Unpin> AsyncRead for Noted<S, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.tally.add(buf.filled().len() - before);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, T: Tally + Unpin> AsyncWrite for Noted<S, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.tally.add(n);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.tally.add(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_either_way_are_noted() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut active, moved) = Active::watched(a);
        let _ = active.write_all(b"hello").await;
        let mut got = [0u8; 5];
        let _ = b.read_exact(&mut got).await;
        let _ = b.write_all(b"abc").await;
        let mut back = [0u8; 3];
        let _ = active.read_exact(&mut back).await;
        assert_eq!(moved.load(Ordering::Relaxed), 8);
    }
}
