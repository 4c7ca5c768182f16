//! Janitor work on a pool slice, every tick: waiter timeouts, the reserve
//! pool, budget hand-out, eviction under database/user caps, idle and
//! lifetime limits, `min_pool_size`.

use std::rc::Rc;

use tracing::info;

use super::{Caps, Full, Grant, Pool, PoolKey};
use crate::error::{sqlstate, PgError};
use crate::runtime::mesh::MeshMsg;
use crate::runtime::{self, Shard};
use crate::server::ServerConn;

impl Pool {
    /// Janitor work, every tick: timeouts, reserve pool, budget, steals,
    /// idle and lifetime limits.
    pub fn tick(self: &Rc<Self>, shard: &Rc<Shard>) {
        if let Some(err) = self.recent_failure() {
            self.fail_waiters(&err);
        }
        self.expire_waiters();
        self.grant_budget();
        if !self.waiters.borrow().is_empty() {
            // grant_budget found no room: if a database or user cap is what
            // is full, make room by evicting a sibling pool's idle server.
            let caps = self.settings.borrow().caps(false);
            match self.global.try_open_why(caps) {
                Ok(()) => match self.pop_waiter() {
                    Some(w) => w.give(Grant::Budget),
                    None => self.global.closed(),
                },
                Err(Full::Pool) => {}
                // While a server of this shard is closing, its slot may be the one that is
                // missing: evicting another now could close two for one waiter.
                Err(_) if shard.closing.get() > 0 => {}
                Err(by) => self.evict_elsewhere(shard, by),
            }
        }
        self.open_reserve();
        if !self.waiters.borrow().is_empty() {
            self.ask_other_shards(shard);
        }
        self.retire_idle(shard);
        self.rebalance(shard.id);
    }

    /// Makes room under max_db_connections / max_user_connections by closing an idle server
    /// of a sibling pool: on this shard if one is there, else by asking the other shards. The
    /// slot comes back when PostgreSQL has let go of the evicted backend: to this shard's
    /// waiters at once, to another shard's at its next janitor tick.
    pub(super) fn evict_elsewhere(&self, shard: &Rc<Shard>, by: Full) {
        if evict_idle(shard, &self.key, by) {
            return;
        }
        for to in (0..shard.shared.workers).filter(|&t| t != shard.id) {
            shard.mesh.send(
                to,
                MeshMsg::Evict {
                    pool: self.key.clone(),
                    by,
                },
            );
        }
    }

    pub(super) fn expire_waiters(&self) {
        let timeout = self.settings.borrow().query_wait_timeout;
        if timeout.is_zero() {
            return;
        }
        // (The front is cloned in its own statement: a borrow in the
        // `while let` scrutinee would live through the body's pop.)
        loop {
            let front = self.waiters.borrow().front().cloned();
            let Some(w) = front else { break };
            if w.since.elapsed() < timeout {
                break;
            }
            self.pop_waiter();
            w.give(Grant::Fail(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "query_wait_timeout",
            )));
        }
    }

    pub(super) fn open_reserve(&self) {
        let s = self.settings.borrow();
        let (caps, after, reserve) = (s.caps(true), s.reserve_timeout, s.reserve);
        drop(s);
        loop {
            let front = self.waiters.borrow().front().cloned();
            let Some(w) = front else { break };
            if reserve == 0 || w.since.elapsed() < after || !self.global.try_open(caps) {
                break;
            }
            info!(db = %self.key.db, user = %self.key.user, "taking connection from reserve_pool");
            self.pop_waiter();
            w.give(Grant::Budget);
        }
    }

    pub(super) fn retire_idle(self: &Rc<Self>, shard: &Rc<Shard>) {
        let s = self.settings.borrow();
        let (idle_timeout, lifetime, min) = (s.idle_timeout, s.lifetime, s.min);
        drop(s);
        // janitor.c's reasons for the two cases.
        let why = |srv: &ServerConn, open: u32| {
            if !lifetime.is_zero() && srv.meta.created.elapsed() > lifetime {
                Some("server lifetime over")
            } else if !idle_timeout.is_zero()
                && srv.meta.last_used.elapsed() > idle_timeout
                && open > min
            {
                Some("server idle timeout")
            } else {
                None
            }
        };
        // The open count still includes servers closing (their slots come back when
        // PostgreSQL lets go): counted down here, so one tick keeps `min_pool_size`.
        let mut open = self.global.open_count();
        if !self
            .idle
            .borrow()
            .iter()
            .any(|srv| why(srv, open).is_some())
        {
            return;
        }
        let idle = std::mem::take(&mut *self.idle.borrow_mut());
        let mut keep = Vec::with_capacity(idle.len());
        let mut retired = Vec::new();
        for srv in idle {
            match why(&srv, open) {
                Some(reason) => {
                    open = open.saturating_sub(1);
                    retired.push((srv, reason));
                }
                None => keep.push(srv),
            }
        }
        *self.idle.borrow_mut() = keep;
        self.set_idle_counter();
        for (srv, reason) in retired {
            self.close(shard, srv, reason);
        }
    }

    /// Opens servers up to `min_pool_size`, process-wide: every shard that
    /// has this pool may top it up, and the global counter (taken with
    /// `pool = min_pool_size`) keeps the total at the minimum.
    pub fn fill_min(self: &Rc<Self>, shard: &Rc<Shard>) {
        let s = self.settings.borrow();
        let (min, caps) = (
            s.min,
            Caps {
                pool: s.min,
                ..s.caps(false)
            },
        );
        drop(s);
        if min == 0 || self.opening.get() > 0 || !self.global.try_open(caps) {
            return;
        }
        let pool = self.clone();
        let shard = shard.clone();
        runtime::spawn(async move {
            if let Ok(server) = pool.open(&shard).await {
                pool.active.set(pool.active.get().saturating_sub(1));
                pool.place(&shard, server);
            }
        });
    }
}

/// Closes one idle server of a pool on `shard` that shares `key`'s
/// database (`Full::Db`) or user (`Full::User`), other than `key` itself.
pub fn evict_idle(shard: &Rc<Shard>, key: &PoolKey, by: Full) -> bool {
    let victim = shard
        .pools
        .borrow()
        .values()
        .find(|p| {
            p.key != *key
                && p.idle_count() > 0
                && match by {
                    Full::Db => p.key.db == key.db,
                    Full::User => p.key.user == key.user,
                    Full::Pool => false,
                }
        })
        .cloned();
    let Some(pool) = victim else {
        return false;
    };
    match pool.pop_idle() {
        Some(server) => {
            pool.close(
                shard,
                server,
                "evicted to make room under max_db/user_connections",
            );
            true
        }
        None => false,
    }
}

impl Pool {
    /// `autodb_idle_timeout`: a slice of a database that only the `*` fallback defines is
    /// dropped once nothing has used it for that long: no client holds it, no server is leased,
    /// opening or waited for. Its idle servers are closed and its figures forgotten, as
    /// PgBouncer frees such databases; the next client makes a fresh one. True when dropped.
    /// (`self` is held by the shard's table and by the janitor's list: two references mean
    /// nothing else has it.)
    pub fn expire_if_unused(self: &Rc<Self>, shard: &Rc<Shard>, now: std::time::Instant) -> bool {
        let config = shard.config();
        let timeout = config.general.autodb_idle_timeout.duration();
        let auto = !config.databases.contains_key(&*self.key.db);
        let unused = Rc::strong_count(self) <= 2
            && self.active.get() == 0
            && self.opening.get() == 0
            && self.waiters.borrow().is_empty();
        if !auto || timeout.is_zero() || !unused {
            self.unused_since.set(None);
            return false;
        }
        let since = *self.unused_since.get().get_or_insert(now);
        self.unused_since.set(Some(since));
        if now.saturating_duration_since(since) < timeout {
            return false;
        }
        info!(db = %self.key.db, user = %self.key.user, "dropping an unused pool of an automatic database (autodb_idle_timeout)");
        shard.pools.borrow_mut().remove(&self.key);
        self.close_idle(shard, "unused automatic database (autodb_idle_timeout)");
        true
    }
}
