//! Reads from a client connection in blocks, whatever size its reader asks for.
//!
//! hyper reads HTTP with buffers of 8 KiB and more, but an upgraded WebSocket is read by
//! tungstenite, whose buffer is kept at 1 KiB (it is allocated per socket, and idle
//! sockets are the common case) and often has only a few hundred bytes free: a busy
//! socket made one `recvfrom` per 500 bytes, a sixth of a call per message, each a trip
//! through the kernel. [`ReadAhead`] answers a small read from a block of up to
//! [`BLOCK`] bytes that it read from the socket at once, into a block each worker thread
//! keeps for all its sockets; only what the reader leaves of it is copied out and held
//! by the socket, until read. A connection that is waiting for its client holds nothing,
//! so idle sockets cost nothing more, and a read that finds nothing (every other read of
//! a socket that sends one message at a time) allocates nothing.

use bytes::{Buf, BytesMut};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read from the socket takes.
const BLOCK: usize = 16 << 10;
/// Reads asking for this much or more go straight to the socket (hyper's).
const SMALL: usize = 4 << 10;

pub(crate) struct ReadAhead<S> {
    io: S,
    /// Read from the socket, not yet handed to the reader.
    ahead: BytesMut,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(io: S) -> Self {
        Self {
            io,
            ahead: BytesMut::new(),
        }
    }
}

thread_local! {
    /// The block reads from sockets go into, one per thread (16 KiB each).
    static THREAD_BLOCK: RefCell<Box<[u8]>> = RefCell::new(vec![0; BLOCK].into_boxed_slice());
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    /// Reads into the thread's block, hands the reader what fits and keeps the rest;
    /// `None` when the block is in use (a socket read from inside another's read).
    fn read_into_thread_block(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Option<Poll<io::Result<()>>> {
        THREAD_BLOCK.with(|block| {
            let mut block = block.try_borrow_mut().ok()?;
            let mut read = ReadBuf::new(&mut block[..]);
            Some(match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let data = read.filled();
                    let n = data.len().min(buf.remaining());
                    buf.put_slice(&data[..n]);
                    if n < data.len() {
                        self.ahead = BytesMut::from(&data[n..]);
                    }
                    Poll::Ready(Ok(()))
                }
                other => other,
            })
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.is_empty() {
            if buf.remaining() >= SMALL {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            return match this.read_into_thread_block(cx, buf) {
                Some(read) => read,
                // The thread's block is in use (a socket read from inside another's
                // read, which no wrapper here does): read without reading ahead.
                None => Pin::new(&mut this.io).poll_read(cx, buf),
            };
        }
        let n = this.ahead.len().min(buf.remaining());
        buf.put_slice(&this.ahead[..n]);
        this.ahead.advance(n);
        if this.ahead.is_empty() {
            // Give the block back: a socket that waits for its client holds nothing.
            this.ahead = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads are answered from one block; the order and the end of the stream are
    /// kept, and nothing is held once everything was handed over.
    #[tokio::test]
    async fn small_reads_share_one_block() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let mut ahead = ReadAhead::new(near);
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        far.write_all(&sent).await.unwrap();
        drop(far);
        let mut received = Vec::new();
        let mut chunk = [0u8; 100];
        loop {
            let n = ahead.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
            if received.len() == 100 {
                assert!(ahead.ahead.len() > 1000, "the first small read read ahead");
            }
        }
        assert_eq!(received, sent);
        assert_eq!(ahead.ahead.capacity(), 0, "no block held at the end");
    }

    /// Large reads go straight to the socket; a small read's leftovers come first.
    #[tokio::test]
    async fn large_reads_go_direct_after_the_leftovers() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let mut ahead = ReadAhead::new(near);
        far.write_all(b"hello world").await.unwrap();
        let mut small = [0u8; 5];
        ahead.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hello");
        let mut large = vec![0u8; SMALL];
        let n = ahead.read(&mut large).await.unwrap();
        assert_eq!(&large[..n], b" world");
        assert_eq!(ahead.ahead.capacity(), 0);
        far.write_all(b"direct").await.unwrap();
        let n = ahead.read(&mut large).await.unwrap();
        assert_eq!(&large[..n], b"direct");
    }

    /// A read that must wait holds no block while it waits.
    #[tokio::test]
    async fn waiting_reads_hold_nothing() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let mut ahead = ReadAhead::new(near);
        let mut small = [0u8; 3];
        {
            let read = ahead.read(&mut small);
            tokio::pin!(read);
            assert!(futures_util::poll!(read.as_mut()).is_pending());
        }
        assert_eq!(ahead.ahead.capacity(), 0, "nothing held while waiting");
        far.write_all(b"abc").await.unwrap();
        assert_eq!(ahead.read(&mut small).await.unwrap(), 3);
        assert_eq!(&small, b"abc");
        assert_eq!(ahead.ahead.capacity(), 0);
    }
}
