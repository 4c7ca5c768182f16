//! Handoff between shards (the mechanism is described at the top of
//! `pool`): steal requests, moving an idle server to another shard, adopting
//! one, and rebalancing servers towards shards that are short of them.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use tracing::warn;

use super::Pool;
use crate::runtime::mesh::MeshMsg;
use crate::runtime::Shard;
use crate::server::{DetachedServer, ServerConn};

impl Pool {
    /// Asks shards that hold idle servers to hand one over.
    pub(super) fn ask_other_shards(&self, shard: &Shard) {
        for i in 0..self.global.shards.len() {
            if i != shard.id && self.global.shard(i).idle.load(Ordering::Relaxed) > 0 {
                shard.mesh.send(
                    i,
                    MeshMsg::Steal {
                        pool: self.key.clone(),
                        from: shard.id,
                    },
                );
            }
        }
    }

    /// Under load every shard has waiters and none would ever give a server
    /// away, so the shards that first took the budget would keep it: clients
    /// on a shard that came late would starve. On release, a server moves to
    /// another shard when that shard holds clearly fewer servers than its
    /// share of demand (waiters + servers); the half-server margin keeps it
    /// from bouncing back. Only other shards' counters are read, and only
    /// when one of them has waiters.
    pub(super) fn rebalance_target(&self, me: usize) -> Option<usize> {
        let shards = self.global.shards.len();
        if shards < 2 {
            return None;
        }
        let o_s = (self.active.get() as usize + self.idle.borrow().len() + 1) as f64;
        let d_s = self.waiters.borrow().len() as f64 + o_s;
        let mut best: Option<(usize, f64)> = None;
        for t in (0..shards).filter(|&t| t != me) {
            let c = self.global.shard(t);
            let w_t = f64::from(c.waiting.load(Ordering::Relaxed));
            if w_t == 0.0 {
                continue;
            }
            let o_t = f64::from(c.owned.load(Ordering::Relaxed));
            let share = (o_s + o_t) * (w_t + o_t) / (d_s + w_t + o_t);
            let shortfall = share - o_t;
            if shortfall >= 1.5 && best.is_none_or(|(_, b)| shortfall > b) {
                best = Some((t, shortfall));
            }
        }
        best.map(|(t, _)| t)
    }

    /// Publishes how many servers this shard holds (on open, close and
    /// handoff only: lease and release do not change it).
    pub(super) fn publish_owned(&self) {
        let n = self.active.get() + self.idle.borrow().len() as u32;
        self.global
            .shard(self.shard_id)
            .owned
            .store(n, Ordering::Relaxed);
    }

    pub(super) fn send_to(&self, shard: &Shard, to: usize, server: ServerConn) {
        self.publish_owned();
        match server.detach() {
            Ok(detached) => shard.mesh.send(
                to,
                MeshMsg::Handoff {
                    pool: self.key.clone(),
                    server: Box::new(detached),
                },
            ),
            Err(e) => {
                warn!(error = %e, "server handoff failed; closing it");
                self.global.closed();
            }
        }
    }

    /// A `Steal` request from shard `to`: send an idle server if we have one
    /// and nobody here is waiting.
    pub fn give_to_shard(self: &Rc<Self>, shard: &Rc<Shard>, to: usize) {
        if !self.waiters.borrow().is_empty() {
            return;
        }
        if let Some(server) = self.pop_idle() {
            self.send_to(shard, to, server);
        }
    }

    /// A server handed over by another shard.
    pub fn adopt(self: &Rc<Self>, shard: &Rc<Shard>, detached: Box<DetachedServer>) {
        match ServerConn::attach(*detached) {
            Ok(server) => {
                self.learn_welcome(&server);
                self.place_here(shard, server);
                self.publish_owned();
            }
            Err(e) => {
                warn!(error = %e, "could not adopt a handed-over server");
                self.global.closed();
            }
        }
    }
}
