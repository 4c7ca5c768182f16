//! Giving a server back: to a shard the janitor found short, a local waiter, another shard's
//! waiter, or the idle list; or closing it (dirty, broken, expired) and passing its budget slot
//! on.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use tracing::info;

use super::{Grant, Pool, Waiter};
use crate::runtime::Shard;
use crate::server::{self, ServerConn};

impl Pool {
    /// Returns a clean server (ReadyForQuery `I`) from a client.
    pub fn release(self: &Rc<Self>, shard: &Rc<Shard>, mut server: ServerConn) {
        if shard.cancelling.targets(server.meta.id) {
            return self.hold_until_cancel_lands(shard, server);
        }
        self.active.set(self.active.get().saturating_sub(1));
        let now = crate::runtime::io::now();
        server.meta.last_used = now;
        // PgBouncer's reasons: RECONNECT marks a server "obsolete connection".
        let obsolete = shard.admin.take_close_needed(server.meta.id);
        if obsolete || self.is_expired(&server, now) {
            let reason = if obsolete {
                "obsolete connection"
            } else {
                "server lifetime over"
            };
            self.close(shard, server, reason);
            return;
        }
        self.place(shard, server);
    }

    /// A cancel request for `server` is still on its way to PostgreSQL: the query it was sent
    /// for has ended by itself, and handing the server on now would let the request cancel the
    /// next client's query. Held (still counted active) until the request has landed, then
    /// released as usual. Bounded: a request's journey is (`cancel_wait_timeout`).
    fn hold_until_cancel_lands(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn) {
        let id = server.meta.id;
        self.being_canceled.borrow_mut().push(server);
        let (pool, shard) = (self.clone(), shard.clone());
        crate::runtime::spawn(async move {
            shard.cancelling.landed(id).await;
            let server = {
                let mut held = pool.being_canceled.borrow_mut();
                let Some(at) = held.iter().position(|s| s.meta.id == id) else {
                    return;
                };
                held.swap_remove(at)
            };
            pool.release(&shard, server);
        });
    }

    /// Gives an unleased server to a shard the janitor found short of servers, a local
    /// waiter, another shard's waiter, or the idle list, in that order.
    pub(super) fn place(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn) {
        if let Some((to, n)) = self.give_to.take() {
            if self.global.shard(to).waiting.load(Ordering::Relaxed) > 0 {
                self.give_to.set((n > 1).then_some((to, n - 1)));
                self.send_to(shard, to, server);
                return;
            }
        }
        self.place_here(shard, server);
    }

    /// [`Pool::place`] without rebalancing (a server that just arrived).
    pub(super) fn place_here(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn) {
        if let Some(w) = self.pop_waiter() {
            self.active.set(self.active.get() + 1);
            w.give(Grant::Server(server));
            return;
        }
        if let Some(to) = self.global.shard_waiting(shard.id) {
            self.send_to(shard, to, server);
            return;
        }
        server.watch_idle();
        self.idle.borrow_mut().push(server);
        self.set_idle_counter();
    }

    pub(super) fn pop_waiter(&self) -> Option<Rc<Waiter>> {
        let w = self.waiters.borrow_mut().pop_front();
        if w.is_some() {
            self.set_waiting_counter();
        }
        w
    }

    /// Closes a server for good that is between transactions (idle, expired, obsolete).
    pub fn close(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn, reason: &str) {
        self.retire(shard, server, reason, true);
    }

    /// Closes a leased server (it was counted active), in whatever state its holder left it.
    pub fn close_leased(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn, reason: &str) {
        self.active.set(self.active.get().saturating_sub(1));
        self.retire(shard, server, reason, false);
    }

    /// Closes a server and gives its budget slot back once PostgreSQL has let go of the
    /// backend ([`ServerConn::disconnect`]), to this shard's waiters first. Until then the slot
    /// stays taken: a replacement opened under `max_db_connections`, `max_user_connections`
    /// or a pool size set at PostgreSQL's own limit must not meet the old backend still
    /// counted there ("too many connections for role"). PgBouncer gives the slot back at the
    /// close and has that window.
    fn retire(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn, reason: &str, clean: bool) {
        self.log_close(&server.meta, reason);
        shard.closing.set(shard.closing.get() + 1);
        let (pool, shard) = (self.clone(), shard.clone());
        crate::runtime::spawn(async move {
            server.disconnect(clean).await;
            shard.closing.set(shard.closing.get() - 1);
            pool.global.closed();
            // The slot may be the one a waiter of a sibling pool is waiting for (eviction).
            let waiting: Vec<_> = shard
                .pools
                .borrow()
                .values()
                .filter(|p| !p.waiters.borrow().is_empty())
                .cloned()
                .collect();
            for p in waiting {
                p.grant_budget();
            }
        });
    }

    /// Gives waiters budget that is free now (janitor, and after a close).
    pub(super) fn grant_budget(&self) {
        let caps = self.settings.borrow().caps(false);
        while !self.waiters.borrow().is_empty() && self.global.try_open(caps) {
            if let Some(w) = self.pop_waiter() {
                w.give(Grant::Budget);
            }
        }
    }

    /// PgBouncer's `log_disconnections` line (objects.c `disconnect_server`), which operators
    /// alert on, with our fields beside it.
    pub(super) fn log_close(&self, server: &server::ServerMeta, reason: &str) {
        if !crate::logs::disconnections() {
            return;
        }
        let age = server.created.elapsed().as_secs();
        info!(db = %self.key.db, user = %self.key.user, server = server.id, reason, age, "closing because: {reason} (age={age}s)");
    }

    /// Closes every idle server (shutdown, RECONNECT).
    pub fn close_idle(self: &Rc<Self>, shard: &Rc<Shard>, reason: &str) {
        let idle: Vec<_> = self.idle.borrow_mut().drain(..).collect();
        self.set_idle_counter();
        for s in idle {
            self.close(shard, s, reason);
        }
    }
}
