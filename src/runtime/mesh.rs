//! Where shards meet: one lock-free inbox per shard, carrying the one enum of cross-shard
//! messages.
//!
//! Every cross-shard interaction is a [`MeshMsg`]: cancel forwarding, server
//! handoff and steal requests (see `pool`), and admin requests that carry
//! their own reply channel. An inbox is an unbounded crossbeam queue (so no shard ever blocks
//! on another) plus the waker of the task that drains it; a send wakes that task, which costs
//! an eventfd write only when the receiving shard is parked.

use std::cell::OnceCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crossbeam::queue::SegQueue;

use super::Shard;

use crate::admin::AdminRequest;
use crate::pool::PoolKey;
use crate::protocol::startup::CancelKey;
use crate::server::DetachedServer;

/// A message from one shard to another.
pub enum MeshMsg {
    /// A CancelRequest whose key belongs to the receiving shard; the token is held until
    /// PostgreSQL has it (the canceller's connection stays open until then).
    Cancel(CancelKey, super::wait_group::Token),
    /// A CancelRequest whose client moved away from the key's shard: the receiver cancels
    /// only if the client is here now, and forwards it nowhere.
    CancelMoved(CancelKey, super::wait_group::Token),
    /// A client session moving to the receiving shard (see `client::balance`).
    Client(Box<crate::client::balance::Moving>),
    /// An idle server moving to the receiving shard, which has waiters.
    Handoff {
        /// The pool it belongs to.
        pool: PoolKey,
        /// The connection, detached from the sender's reactor (its meta is
        /// boxed already, so the message stays small).
        server: DetachedServer,
    },
    /// "I have waiters for this pool and no budget: send me an idle server
    /// if you have one."
    Steal {
        /// The pool.
        pool: PoolKey,
        /// The shard asking.
        from: usize,
    },
    /// "Close an idle server of a pool sharing this pool's database or user,
    /// if you have one": room under max_db/max_user_connections.
    Evict {
        /// The pool that needs room.
        pool: PoolKey,
        /// Which cap is full.
        by: crate::pool::Full,
    },
    /// An admin console request, answered through its own channel.
    Admin(AdminRequest),
}

struct Inbox {
    queue: SegQueue<MeshMsg>,
    waker: Mutex<Option<Waker>>,
}

impl Inbox {
    fn push(&self, msg: MeshMsg) {
        self.queue.push(msg);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = waker {
            w.wake();
        }
    }

    async fn pop(&self) -> MeshMsg {
        std::future::poll_fn(|cx| {
            if let Some(msg) = self.queue.pop() {
                return Poll::Ready(msg);
            }
            // Register, then look again: a push between the two is seen by one or the other.
            *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            match self.queue.pop() {
                Some(msg) => Poll::Ready(msg),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// One shard's mesh ends, as built before the shards start.
pub struct MeshEnds {
    id: usize,
    inboxes: Vec<Arc<Inbox>>,
}

/// Builds the mesh for `n` shards: element `i` holds shard `i`'s ends.
pub fn build(n: usize) -> Vec<MeshEnds> {
    let inboxes: Vec<Arc<Inbox>> = (0..n)
        .map(|_| {
            Arc::new(Inbox {
                queue: SegQueue::new(),
                waker: Mutex::new(None),
            })
        })
        .collect();
    (0..n)
        .map(|id| MeshEnds {
            id,
            inboxes: inboxes.clone(),
        })
        .collect()
}

/// A shard's way to every other shard's inbox.
pub struct Outbox {
    id: usize,
    inboxes: Vec<Arc<Inbox>>,
}

impl MeshEnds {
    /// Starts this shard's inbox task (must run on the shard). Messages that arrive before
    /// `shard` is set wait for it.
    pub async fn connect(self, shard: Rc<OnceCell<Rc<Shard>>>) -> Outbox {
        let inbox = self.inboxes[self.id].clone();
        super::spawn(async move {
            loop {
                let msg = inbox.pop().await;
                let shard = loop {
                    match shard.get() {
                        Some(s) => break s.clone(),
                        None => super::sleep(std::time::Duration::from_millis(1)).await,
                    }
                };
                shard.handle_mesh(msg);
            }
        });
        Outbox {
            id: self.id,
            inboxes: self.inboxes,
        }
    }
}

impl Outbox {
    /// Sends `msg` to shard `to` without blocking.
    pub fn send(&self, to: usize, msg: MeshMsg) {
        if to == self.id {
            return;
        }
        if let Some(inbox) = self.inboxes.get(to) {
            inbox.push(msg);
        }
    }

    /// Number of shards in the mesh.
    pub fn len(&self) -> usize {
        self.inboxes.len()
    }

    /// True for a one-shard mesh with nobody to talk to.
    pub fn is_empty(&self) -> bool {
        self.inboxes.len() <= 1
    }
}
