//! A relayed NLB connection's target side, noting when bytes last moved either way, so the
//! connection can be closed after the listener's `tcp.idle_timeout.seconds`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps the stream towards the target: everything relayed crosses it, one way or the other.
pub struct Active<S> {
    stream: S,
    /// Bytes moved so far; a watcher that sees it unchanged knows the connection is idle.
    moved: Arc<AtomicU64>,
}

impl<S> Active<S> {
    pub fn new(stream: S) -> (Self, Arc<AtomicU64>) {
        let moved = Arc::new(AtomicU64::new(0));
        (
            Self {
                stream,
                moved: moved.clone(),
            },
            moved,
        )
    }

    fn note(&self, n: usize) {
        if n > 0 {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.note(buf.filled().len() - before);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.note(n);
        }
        r
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
        let (mut active, moved) = Active::new(a);
        let _ = active.write_all(b"hello").await;
        let mut got = [0u8; 5];
        let _ = b.read_exact(&mut got).await;
        let _ = b.write_all(b"abc").await;
        let mut back = [0u8; 3];
        let _ = active.read_exact(&mut back).await;
        assert_eq!(moved.load(Ordering::Relaxed), 8);
    }
}
