//! Where shards meet: one SPSC glommio shared channel per ordered pair of
//! shards, carrying the one enum of cross-shard messages.
//!
//! Every cross-shard interaction is a [`MeshMsg`]: cancel forwarding, server
//! handoff and steal requests (see `pool`), and admin requests that carry
//! their own reply channel. Channels are bounded; a full channel falls back to
//! an async send in its own task so no shard ever blocks on another.

use std::cell::OnceCell;
use std::rc::Rc;

use super::Shard;

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use crate::admin::AdminRequest;
use crate::pool::PoolKey;
use crate::protocol::startup::CancelKey;
use crate::server::DetachedServer;

/// Capacity of each shard-to-shard channel.
const MESH_DEPTH: usize = 4096;

/// A message from one shard to another.
pub enum MeshMsg {
    /// A CancelRequest whose key belongs to the receiving shard.
    Cancel(CancelKey),
    /// An idle server moving to the receiving shard, which has waiters.
    Handoff {
        /// The pool it belongs to.
        pool: PoolKey,
        /// The connection, detached from the sender's reactor (boxed: it
        /// is large and handoffs are rare).
        server: Box<DetachedServer>,
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

/// One shard's unconnected channel ends, as built before the executors start.
pub struct MeshEnds {
    senders: Vec<Option<SharedSender<MeshMsg>>>,
    receivers: Vec<Option<SharedReceiver<MeshMsg>>>,
}

/// Builds the full mesh for `n` shards: element `i` holds shard `i`'s ends.
pub fn build(n: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..n)
        .map(|_| MeshEnds {
            senders: (0..n).map(|_| None).collect(),
            receivers: (0..n).map(|_| None).collect(),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(MESH_DEPTH);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
    }
    ends
}

/// A shard's connected senders.
pub struct Outbox {
    senders: Vec<Option<Rc<ConnectedSender<MeshMsg>>>>,
}

impl MeshEnds {
    /// Connects this shard's ends (must run on the shard's executor).
    /// Connecting is a rendezvous with the peer shard, so every receiver is
    /// connected in its own task (which then serves it with `handle`) before
    /// the senders are: no two shards can wait on each other.
    /// Messages that arrive before `shard` is set wait for it.
    pub async fn connect(self, shard: Rc<OnceCell<Rc<Shard>>>) -> Outbox {
        for r in self.receivers.into_iter().flatten() {
            let shard = shard.clone();
            super::spawn(async move {
                let rx: ConnectedReceiver<MeshMsg> = r.connect().await;
                while let Some(msg) = rx.recv().await {
                    let shard = loop {
                        match shard.get() {
                            Some(s) => break s.clone(),
                            None => super::sleep(std::time::Duration::from_millis(1)).await,
                        }
                    };
                    shard.handle_mesh(msg);
                }
            });
        }
        let mut senders = Vec::new();
        for s in self.senders {
            senders.push(match s {
                Some(s) => Some(Rc::new(s.connect().await)),
                None => None,
            });
        }
        Outbox { senders }
    }
}

impl Outbox {
    /// Sends `msg` to shard `to` without blocking this task.
    pub fn send(&self, to: usize, msg: MeshMsg) {
        let Some(Some(tx)) = self.senders.get(to) else {
            return;
        };
        if let Err(err) = tx.try_send(msg) {
            let glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg)) = err else {
                return; // the other shard is gone (shutdown)
            };
            let tx = tx.clone();
            super::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }

    /// Number of shards in the mesh.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// True for a one-shard mesh with nobody to talk to.
    pub fn is_empty(&self) -> bool {
        self.senders.len() <= 1
    }
}
