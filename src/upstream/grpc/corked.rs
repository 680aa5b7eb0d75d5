//! A backend connection's transport that writes once per turn of its task, not once per
//! HTTP/2 frame.
//!
//! h2 flushes after every DATA frame it writes (its encoder holds one DATA frame at a
//! time), so a connection carrying 60 concurrent calls made one HEADERS write for all of
//! them and then 60 `writev`s of 17 bytes, one per call's message; the backend then read
//! them one at a time too. Under h2, [`Corked`] keeps what h2 writes in a buffer and
//! answers its flushes at once. h2's connection task, the only code that writes frames,
//! runs under [`drive`] (connection.rs's executor): it lets the tasks queued on the
//! worker run first, so the calls that arrived together have handed over their requests,
//! polls, and then writes the buffer in one go. Nothing waits on a timer: a lone call's
//! frames, a ping or a window update leave within a turn of the worker.
//!
//! - Order is kept: everything goes through the one buffer, or straight to the socket
//!   when the buffer is empty (large payloads, which gain nothing from copying).
//! - Memory is bounded: past [`HIGH_WATER`] buffered bytes, h2's writes wait until the
//!   socket takes some (TCP backpressure reaches h2 as before).
//! - A write error is kept and returned to h2 on its next write or flush, and the
//!   connection's task is woken so h2 sees it promptly.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes beyond which h2's writes wait for the socket.
const HIGH_WATER: usize = 256 * 1024;
/// Writes this large go straight to the socket when nothing is buffered before them.
const DIRECT: usize = 16 * 1024;

/// The transport h2 gets.
pub(super) struct Corked<I> {
    shared: Arc<Mutex<Cork<I>>>,
}

/// The other handle, for the tasks that run h2 to write what it buffered.
pub(super) struct Uncork<I> {
    shared: Arc<Mutex<Cork<I>>>,
}

impl<I> Clone for Uncork<I> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Cork<I> {
    io: I,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written.
    written: usize,
    /// A write that failed: h2 gets it on its next write or flush.
    failed: Option<(io::ErrorKind, String)>,
    /// Written to the transport since its last flush.
    unflushed: bool,
}

pub(super) fn cork<I>(io: I) -> (Corked<I>, Uncork<I>) {
    let shared = Arc::new(Mutex::new(Cork {
        io,
        buffer: Vec::new(),
        written: 0,
        failed: None,
        unflushed: false,
    }));
    (
        Corked {
            shared: shared.clone(),
        },
        Uncork { shared },
    )
}

fn lock<I>(shared: &Mutex<Cork<I>>) -> MutexGuard<'_, Cork<I>> {
    // Only the connection's task touches it; a poisoned lock still holds a valid buffer.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl<I: AsyncWrite + Unpin> Cork<I> {
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => Ok(()),
        }
    }

    fn pending(&self) -> usize {
        self.buffer.len() - self.written
    }

    /// Writes the buffer to the socket (and flushes it: TLS streams hold data until
    /// then). `Pending` when the socket is full, with the task registered for it.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        if self.pending() == 0 && !self.unflushed {
            return Poll::Ready(Ok(()));
        }
        while self.written < self.buffer.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buffer[self.written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(self.fail(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(self.fail(error))),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buffer.clear();
        self.written = 0;
        match ready!(Pin::new(&mut self.io).poll_flush(cx)) {
            Ok(()) => {
                self.unflushed = false;
                Poll::Ready(Ok(()))
            }
            Err(error) => Poll::Ready(Err(self.fail(error))),
        }
    }

    fn fail(&mut self, error: io::Error) -> io::Error {
        self.failed = Some((error.kind(), error.to_string()));
        error
    }

    /// Room for `len` more bytes, draining first when the buffer is full.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        self.check()?;
        if self.pending() + len > HIGH_WATER && self.pending() > 0 {
            ready!(self.drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Corked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Corked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut cork = lock(&self.shared);
        let len = slices.iter().map(|s| s.len()).sum();
        ready!(cork.poll_room(cx, len))?;
        if cork.pending() == 0 && len >= DIRECT {
            return match ready!(Pin::new(&mut cork.io).poll_write_vectored(cx, slices)) {
                Ok(n) => {
                    cork.unflushed = true;
                    Poll::Ready(Ok(n))
                }
                Err(error) => Poll::Ready(Err(cork.fail(error))),
            };
        }
        for slice in slices {
            cork.buffer.extend_from_slice(slice);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Done at once: the connection's task writes the buffer when h2 returns.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(lock(&self.shared).check())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut cork = lock(&self.shared);
        ready!(cork.drain(cx))?;
        Pin::new(&mut cork.io).poll_shutdown(cx)
    }
}

/// Runs `connection` (h2's connection task over a [`Corked`] transport): each
/// time it is woken, it first lets the tasks already queued on the worker run (a task that
/// wakes itself goes to the back of the queue), so the calls that arrived together have
/// handed over their requests; then it polls the task and writes what h2 buffered.
///
/// When a poll left frames in the buffer, the write waits one more turn of the worker,
/// and the task is polled again first: h2 opens a stream only when its connection task
/// writes the stream's HEADERS, and only then gives the stream capacity to send DATA, so
/// a streamed body's chunk sent in this poll reaches h2 from its pipe task (link.rs) after
/// it. Without that turn each such chunk left in a write after its HEADERS.
pub(super) async fn drive<F: Future, I: AsyncWrite + Unpin>(
    connection: F,
    uncork: Uncork<I>,
) -> F::Output {
    let mut connection = std::pin::pin!(connection);
    let mut yielded = false;
    let mut deferred = false;
    std::future::poll_fn(|cx| {
        if !yielded {
            yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = connection.as_mut().poll(cx);
        if polled.is_pending() && !deferred && lock(&uncork.shared).pending() > 0 {
            // Polled again, without yielding first, once the tasks this poll woke ran.
            deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        yielded = false;
        deferred = false;
        if let Poll::Ready(Err(_)) = lock(&uncork.shared).drain(cx) {
            // h2 learns of it on its next write or flush: poll it again now.
            cx.waker().wake_by_ref();
        }
        polled
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncReadExt;

    async fn write(corked: &mut Corked<tokio::io::DuplexStream>, data: &[u8]) {
        let written = poll_fn(|cx| Pin::new(&mut *corked).poll_write(cx, data))
            .await
            .unwrap();
        assert_eq!(written, data.len());
        poll_fn(|cx| Pin::new(&mut *corked).poll_flush(cx))
            .await
            .unwrap();
    }

    /// Flushed writes wait in the buffer; the drain sends them together, in order.
    #[tokio::test]
    async fn writes_leave_together_when_drained() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (mut corked, uncork) = cork(near);
        write(&mut corked, b"one ").await;
        write(&mut corked, b"two ").await;
        let mut byte = [0u8; 1];
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(20), far.read(&mut byte)).await;
        assert!(
            nothing.is_err(),
            "nothing reaches the socket before the drain"
        );
        poll_fn(|cx| lock(&uncork.shared).drain(cx)).await.unwrap();
        write(&mut corked, b"three").await;
        poll_fn(|cx| lock(&uncork.shared).drain(cx)).await.unwrap();
        let mut received = vec![0u8; 13];
        far.read_exact(&mut received).await.unwrap();
        assert_eq!(received, b"one two three");
    }

    /// A large write with nothing buffered before it goes straight to the socket; with
    /// something buffered, it queues behind it.
    #[tokio::test]
    async fn large_writes_keep_their_place() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (mut corked, uncork) = cork(near);
        let large = vec![b'x'; DIRECT];
        write(&mut corked, &large).await;
        let mut received = vec![0u8; DIRECT];
        far.read_exact(&mut received).await.unwrap();
        write(&mut corked, b"small").await;
        write(&mut corked, &large).await;
        poll_fn(|cx| lock(&uncork.shared).drain(cx)).await.unwrap();
        let mut received = vec![0u8; 5 + DIRECT];
        far.read_exact(&mut received).await.unwrap();
        assert_eq!(&received[..5], b"small");
    }

    /// Past the high-water mark a write waits until the socket takes the buffer.
    #[tokio::test]
    async fn a_full_buffer_waits_for_the_socket() {
        let (near, mut far) = tokio::io::duplex(64);
        let (mut corked, _uncork) = cork(near);
        let chunk = vec![b'y'; 1000];
        let fits = HIGH_WATER / chunk.len();
        for _ in 0..fits {
            write(&mut corked, &chunk).await;
        }
        let next = write(&mut corked, &chunk);
        tokio::pin!(next);
        assert!(
            futures_util::poll!(next.as_mut()).is_pending(),
            "waits for the socket"
        );
        // Once the socket has taken enough for the chunk to fit, it is buffered.
        let needed = (fits + 1) * chunk.len() - HIGH_WATER;
        let reading = async {
            let mut buf = vec![0u8; needed];
            far.read_exact(&mut buf).await.unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(next, reading)
        })
        .await
        .expect("the write goes through once the peer reads");
    }

    /// A failed write is reported to h2's next write or flush, and stays failed.
    #[tokio::test]
    async fn a_failed_write_sticks() {
        let (near, far) = tokio::io::duplex(64);
        let (mut corked, uncork) = cork(near);
        drop(far);
        write(&mut corked, b"lost").await;
        let drained = poll_fn(|cx| lock(&uncork.shared).drain(cx)).await;
        assert!(drained.is_err());
        let flushed = poll_fn(|cx| Pin::new(&mut corked).poll_flush(cx)).await;
        assert!(flushed.is_err(), "the error sticks");
    }
}
