//! A socket's byte budgets (`limits.max_ws_buffered`), one per direction: what a socket
//! holds is bounded in bytes, not in messages, so its queues can be deep enough for a
//! busy socket to move messages in large batches without a slow peer making it hold
//! hundreds of large ones.
//!
//! - Toward the backend, a client frame takes its size before it is queued and gives it
//!   back when the frame is dropped: after the backend call has taken the message made
//!   of it (gRPC) or has its reply (AMQP). While the budget is spent the
//!   socket is not read, and TCP slows the client down.
//! - Toward the client, a backend message takes its size before it is queued for the
//!   writer and gives it back once written: a slow client holds back the backend's
//!   stream, which then waits in HTTP/2 flow control.
//!
//! A counter and a `Notify`, not a semaphore: every message takes and gives back, and
//! tokio's semaphore locks its waiter list on every give-back. Each budget has one taker
//! (the socket's reader, or the backend's relay), so there is at most one waiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Notify;

pub(crate) struct Budget {
    shared: Arc<Shared>,
    total: usize,
}

struct Shared {
    available: AtomicUsize,
    /// Signalled when bytes come back while the taker waits.
    returned: Notify,
    /// The taker waits: only then is a give-back signalled (most are not waited for).
    waiting: AtomicBool,
}

/// Bytes taken from a budget, given back when dropped.
pub(crate) struct Share {
    shared: Arc<Shared>,
    size: usize,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share").field("size", &self.size).finish()
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        // SeqCst here and in `take`: either the taker's second look sees these bytes, or
        // this sees the taker waiting.
        self.shared.available.fetch_add(self.size, Ordering::SeqCst);
        if self.shared.waiting.load(Ordering::SeqCst) {
            self.shared.returned.notify_one();
        }
    }
}

impl Shared {
    fn try_take(&self, size: usize) -> bool {
        self.available
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |available| {
                available.checked_sub(size)
            })
            .is_ok()
    }
}

/// Marks the taker as waiting while it lives.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.waiting.store(true, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.store(false, Ordering::SeqCst);
    }
}

impl Budget {
    pub(crate) fn new(total: u64) -> Self {
        let total = usize::try_from(total).unwrap_or(usize::MAX).max(1);
        Self {
            shared: Arc::new(Shared {
                available: AtomicUsize::new(total),
                returned: Notify::new(),
                waiting: AtomicBool::new(false),
            }),
            total,
        }
    }

    /// `size` bytes, once they fit in what is left. A message larger than the whole
    /// budget takes all of it (it waits until nothing else is held).
    pub(crate) async fn take(&self, size: usize) -> Share {
        let size = size.clamp(1, self.total);
        if !self.shared.try_take(size) {
            // Cleared however this ends (taken, or the socket's task dropped it).
            let _waiting = Waiting::start(&self.shared);
            loop {
                // Registered before the second look, so a give-back in between wakes us.
                let returned = self.shared.returned.notified();
                tokio::pin!(returned);
                returned.as_mut().enable();
                if self.shared.try_take(size) {
                    break;
                }
                returned.await;
            }
        }
        Share {
            shared: self.shared.clone(),
            size,
        }
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.shared.available.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_wait_while_the_budget_is_spent() {
        let budget = Budget::new(100);
        let first = budget.take(60).await;
        let second = budget.take(40).await;
        assert_eq!(budget.available(), 0);
        // The third waits until a share is given back (backend done with its frame).
        let third = budget.take(50);
        tokio::pin!(third);
        assert!(futures_util::poll!(third.as_mut()).is_pending());
        drop(first);
        let third = third.await;
        assert_eq!(budget.available(), 10);
        drop((second, third));
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_waits_for_all_of_it() {
        let budget = Budget::new(100);
        let small = budget.take(10).await;
        let large = budget.take(1_000);
        tokio::pin!(large);
        assert!(futures_util::poll!(large.as_mut()).is_pending());
        drop(small);
        let large = large.await;
        assert_eq!(budget.available(), 0);
        drop(large);
        assert_eq!(budget.available(), 100);
    }
}
