//! A bounded queue with one receiver, for the hand-offs inside one WebSocket (client
//! frames to the backend, messages to the client, request chunks to HTTP/2).
//!
//! Why not tokio's mpsc: it allocates its first block of 32 slots and a channel state
//! padded to cache lines when a channel is made, ≈ 0.8 KiB whether or not anything is
//! ever sent, and an idle socket holds three such channels (DHAT, BENCHMARKS.md). This
//! queue is one small allocation; its buffer grows only while items wait. A mutex, not a
//! lock-free list: its two ends take it once per batch, for a few instructions.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;

/// A queue holding at most `capacity` items.
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_alive: true,
            receiver: None,
        }),
        capacity: capacity.max(1),
        room: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Signalled when a full queue gets room, or the receiver leaves.
    room: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
    /// The receiver, waiting for an item (or for the last sender to leave).
    receiver: Option<Waker>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why an item was not queued; it comes back.
#[derive(Debug)]
pub(crate) enum TrySendError<T> {
    Full(T),
    Closed(T),
}

/// The receiver is gone; the item comes back.
#[derive(Debug)]
pub(crate) struct Closed<T>(pub T);

pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Err(TrySendError::Closed(item));
        }
        if state.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        state.items.push_back(item);
        let receiver = state.receiver.take();
        drop(state);
        if let Some(receiver) = receiver {
            receiver.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting while the queue is full; fails once the receiver is gone.
    pub(crate) async fn send(&self, item: T) -> Result<(), Closed<T>> {
        let mut item = match self.try_send(item) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(item)) => return Err(Closed(item)),
            Err(TrySendError::Full(item)) => item,
        };
        loop {
            // Registered before looking again, so room made after the look wakes it.
            let room = self.shared.room.notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            item = match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(item)) => return Err(Closed(item)),
                Err(TrySendError::Full(item)) => item,
            };
            room.await;
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let receiver = if state.senders == 0 {
            state.receiver.take()
        } else {
            None
        };
        drop(state);
        if let Some(receiver) = receiver {
            receiver.wake();
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The items waiting (at most `limit`, at least one) appended to `batch`; `Ready(0)`
    /// once every sender is gone and nothing is left.
    pub(crate) fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<T>,
        limit: usize,
    ) -> Poll<usize> {
        let mut state = self.shared.lock();
        if state.items.is_empty() {
            return if state.senders == 0 {
                Poll::Ready(0)
            } else {
                wait_for_items(&mut state, cx)
            };
        }
        let was_full = state.items.len() >= self.shared.capacity;
        let taken = limit.max(1).min(state.items.len());
        batch.extend(state.items.drain(..taken));
        drop(state);
        self.made_room(was_full);
        Poll::Ready(taken)
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        match state.items.pop_front() {
            Some(item) => {
                let was_full = state.items.len() + 1 >= self.shared.capacity;
                drop(state);
                self.made_room(was_full);
                Poll::Ready(Some(item))
            }
            None if state.senders == 0 => Poll::Ready(None),
            None => wait_for_items(&mut state, cx),
        }
    }

    /// Wakes the senders waiting for room, if the queue was full before this receive.
    fn made_room(&self, was_full: bool) {
        if was_full {
            self.shared.room.notify_waiters();
        }
    }

    /// The next item; `None` once every sender is gone and nothing is left.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// See [`Receiver::poll_recv_many`].
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<T>, limit: usize) -> usize {
        std::future::poll_fn(|cx| self.poll_recv_many(cx, batch, limit)).await
    }

    pub(crate) fn capacity(&self) -> usize {
        self.shared.capacity
    }
}

/// Registers the receiver to be woken by the next item (or the last sender leaving).
fn wait_for_items<T, R>(state: &mut State<T>, cx: &mut Context<'_>) -> Poll<R> {
    match &mut state.receiver {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        slot => *slot = Some(cx.waker().clone()),
    }
    Poll::Pending
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_alive = false;
        // Dropped here, not when the last sender goes: items may hold resources (a
        // budget share) that the senders wait for.
        let items = std::mem::take(&mut state.items);
        drop(state);
        drop(items);
        self.shared.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn items_arrive_in_order_and_a_full_queue_makes_senders_wait() {
        let (sender, mut receiver) = bounded(2);
        sender.send(1).await.unwrap();
        sender.send(2).await.unwrap();
        assert!(matches!(sender.try_send(3), Err(TrySendError::Full(3))));
        let third = sender.send(3);
        let mut third = std::pin::pin!(third);
        assert!(futures_util::poll!(third.as_mut()).is_pending());
        // A second sender waiting at the same time is woken too.
        let other = sender.clone();
        let fourth = other.send(4);
        let mut fourth = std::pin::pin!(fourth);
        assert!(futures_util::poll!(fourth.as_mut()).is_pending());
        assert_eq!(receiver.recv().await, Some(1));
        third.await.unwrap();
        assert!(
            futures_util::poll!(fourth.as_mut()).is_pending(),
            "full again"
        );
        let mut batch = Vec::new();
        assert_eq!(receiver.recv_many(&mut batch, 10).await, 2);
        fourth.await.unwrap();
        assert_eq!(receiver.recv_many(&mut batch, 1).await, 1);
        assert_eq!(batch, [2, 3, 4]);
    }

    #[tokio::test]
    async fn the_receiver_waits_for_an_item_and_ends_with_the_last_sender() {
        let (sender, mut receiver) = bounded::<u32>(4);
        let other = sender.clone();
        let next = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(item) = receiver.recv().await {
                seen.push(item);
            }
            seen
        });
        tokio::task::yield_now().await;
        sender.send(7).await.unwrap();
        drop(sender);
        other.send(8).await.unwrap();
        drop(other);
        assert_eq!(next.await.unwrap(), [7, 8]);

        let (sender, mut receiver) = bounded::<u32>(4);
        drop(sender);
        let mut batch = Vec::new();
        assert_eq!(receiver.recv_many(&mut batch, 4).now_or_never(), Some(0));
    }

    /// Counts its live instances.
    struct Held(Arc<AtomicUsize>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_receiver_that_leaves_drops_what_waits_and_frees_a_waiting_sender() {
        let live = Arc::new(AtomicUsize::new(0));
        let held = || {
            live.fetch_add(1, Ordering::SeqCst);
            Held(live.clone())
        };
        let (sender, receiver) = bounded(1);
        sender.send(held()).await.map_err(|_| ()).unwrap();
        let blocked = sender.send(held());
        let mut blocked = std::pin::pin!(blocked);
        assert!(futures_util::poll!(blocked.as_mut()).is_pending());
        drop(receiver);
        assert_eq!(live.load(Ordering::SeqCst), 1, "the queued item is dropped");
        let Err(Closed(back)) = blocked.await else {
            panic!("a send to a queue without receiver fails");
        };
        drop(back);
        assert_eq!(live.load(Ordering::SeqCst), 0);
        assert!(matches!(
            sender.try_send(held()),
            Err(TrySendError::Closed(_))
        ));
    }
}
