//! A shard-local "something changed" signal: tasks wait, one call wakes all.
//! Used for PAUSE/RESUME and shutdown; never crosses shards.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

/// Wakes every waiting task when notified.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes all current waiters.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves at the next [`Notify::notify_all`].
    pub async fn notified(&self) {
        let start = self.generation.get();
        std::future::poll_fn(|cx| {
            if self.generation.get() != start {
                return Poll::Ready(());
            }
            self.wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
