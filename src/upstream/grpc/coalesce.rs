//! Write coalescing for an upstream HTTP/2 connection.
//!
//! Every call hands its frames to the connection's task and waits; tokio runs a task that
//! was just woken next (its LIFO slot), so without this the connection task wrote each
//! call's HEADERS + DATA the moment that one call queued them: one `write` per call, and
//! one read (and wake-up) per call on the backend. [`Coalesce`] makes the first write of
//! each flush yield once to the scheduler instead: the other calls that are ready to run
//! (requests that arrived in the same batch of client reads, responses being finished)
//! queue their frames meanwhile, and the connection task then writes them all at once.
//! With one call in flight it costs one extra poll of the connection task.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An I/O stream whose first write of every flush yields once to the scheduler.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    /// The yield of the current flush happened: writes go through until it ends.
    yielded: bool,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            yielded: false,
        }
    }

    /// `Pending` (with the task rescheduled behind the tasks already ready) on the first
    /// write of a flush; `Ready` after that.
    fn yield_once(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        // A task that wakes itself is queued behind the ready ones (tokio treats it as
        // a yield), so this is no busy loop: the next poll writes.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.yield_once(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.yield_once(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx));
        // The flush is over: the next one yields again.
        self.yielded = false;
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.yielded = false;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_pass_through_unchanged() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut client = Coalesce::new(client);
        client.write_all(b"hello ").await.unwrap();
        client.write_all(b"world").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 11];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        server.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }

    #[tokio::test]
    async fn the_first_write_of_a_flush_yields_once() {
        let (client, _server) = tokio::io::duplex(1024);
        let mut client = Coalesce::new(client);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut pinned = Pin::new(&mut client);
        assert!(pinned.as_mut().poll_write(&mut cx, b"a").is_pending());
        assert!(matches!(
            pinned.as_mut().poll_write(&mut cx, b"a"),
            Poll::Ready(Ok(1))
        ));
        assert!(matches!(
            pinned.as_mut().poll_write(&mut cx, b"b"),
            Poll::Ready(Ok(1))
        ));
        assert!(matches!(
            pinned.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert!(pinned.as_mut().poll_write(&mut cx, b"c").is_pending());
    }
}
