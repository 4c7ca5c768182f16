//! Leasing a server: an idle one (checked first), a new one within the global budget, or a
//! place in the FIFO until a release, a handoff, the reserve pool or a timeout hands one over;
//! and [`Held`], the lease a session keeps until it gives the server back.

use std::cell::RefCell;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use tracing::warn;

use super::{Full, Pool};
use crate::error::{sqlstate, Error, PgError, Result};
use crate::runtime::Shard;
use crate::server::{self, ServerConn};

/// What a waiting client is handed. (Not boxed: a grant sits in a
/// waiter's slot only until that task runs, and boxing would cost an
/// allocation per handover under contention.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Grant {
    /// A server, already counted as active.
    Server(ServerConn),
    /// Permission to open a new server (a slot is already taken).
    Budget,
    /// Give up with this error.
    Fail(PgError),
    /// A cancel request came for the client ([`Pool::cancel_waiter`]).
    Canceled,
}

/// A client in a pool's FIFO.
pub(super) struct Waiter {
    pub(super) since: Instant,
    /// The client's id, to find it when a cancel request for it arrives.
    pub(super) client: u64,
    pub(super) grant: RefCell<Option<Grant>>,
    pub(super) waker: RefCell<Option<Waker>>,
}

impl Waiter {
    pub(super) fn give(&self, grant: Grant) {
        *self.grant.borrow_mut() = Some(grant);
        if let Some(w) = self.waker.borrow_mut().take() {
            // Ahead of the queue: a server handed over is idle until this client sends it
            // its query (see `wake_next`).
            crate::runtime::io::wake_next(w);
        }
    }
}

/// The `client` of a lease no cancel request can name (pgring's own: a login's parameter
/// check, an auth_query).
pub const INTERNAL: u64 = u64::MAX;

impl Pool {
    /// Leases a server: an idle one, else a new one within the global
    /// budget, else wait (FIFO) for a release, a handoff, the reserve pool
    /// or `query_wait_timeout`, or [`Pool::cancel_waiter`] for `client`. The lease is
    /// [`Held`] from here until its holder gives the server back, so a holder that ends any
    /// other way cannot leak it.
    pub async fn acquire<'a>(
        self: &'a Rc<Self>,
        shard: &'a Rc<Shard>,
        client: u64,
    ) -> Result<Held<'a>> {
        let held = |server| Held::new(self, shard, server);
        loop {
            if let Some(mut server) = self.pop_idle() {
                if let Some(reason) = self.unusable(&mut server).await {
                    self.close(shard, server, reason);
                    continue;
                }
                self.active.set(self.active.get() + 1);
                return Ok(held(server));
            }
            self.fail_fast()?;
            let caps = self.settings.borrow().caps(false);
            match self.global.try_open_why(caps) {
                // Boxed: opening a server is rare and its future (connect + login, ~1.8 KB)
                // would otherwise size every lease, which is allocated per transaction.
                Ok(()) => return Box::pin(self.open(shard)).await.map(held),
                Err(Full::Pool) => {}
                // The evicted server's slot reaches this wait once its backend has gone.
                Err(by) => self.evict_elsewhere(shard, by),
            }
            match self.wait(shard, client).await {
                Grant::Server(server) => return Ok(held(server)),
                Grant::Budget => {
                    // The slot may come from another shard's failed login.
                    if let Err(e) = self.fail_fast() {
                        self.global.closed();
                        return Err(e);
                    }
                    return Box::pin(self.open(shard)).await.map(held);
                }
                Grant::Fail(e) => return Err(Error::Refused(e)),
                Grant::Canceled => return Err(Error::WaitCanceled),
            }
        }
    }

    /// The most recently used idle server (its socket and backend are warm, and the others
    /// can age out under `server_idle_timeout`), or with `server_round_robin` the one idle
    /// longest, so that load spreads evenly over the servers, as PgBouncer does.
    pub(super) fn pop_idle(&self) -> Option<ServerConn> {
        let mut idle = self.idle.borrow_mut();
        let s = if self.settings.borrow().round_robin && !idle.is_empty() {
            Some(idle.remove(0))
        } else {
            idle.pop()
        };
        drop(idle);
        if s.is_some() {
            self.set_idle_counter();
        }
        s
    }

    /// Why an idle server must not be handed out: past its lifetime, closed
    /// by PostgreSQL while idle (a restart, pg_terminate_backend: checked
    /// with a non-blocking peek, one cheap syscall), or failing
    /// `server_check_query` after `server_check_delay` of idleness.
    pub(super) async fn unusable(&self, server: &mut ServerConn) -> Option<&'static str> {
        if self.is_expired(server, crate::runtime::io::now()) {
            return Some("server lifetime over");
        }
        // Only servers taken from the idle list are checked, and one watched since it went
        // idle with nothing arriving needs no syscall; under load a released server goes
        // straight to a waiter and skips this.
        if !server.is_alive() {
            return Some("server closed the connection while idle");
        }
        // The query is copied only when a check is due (not at every idle pop).
        let due = {
            let s = self.settings.borrow();
            let idle_for =
                crate::runtime::io::now().saturating_duration_since(server.meta.last_used);
            (idle_for >= s.check_delay)
                .then(|| s.check_query.clone())
                .flatten()
        };
        // Boxed: rare, and it would size every lease.
        match due {
            Some(q) if Box::pin(server.simple_query(&q)).await.is_err() => {
                Some("server check query failed")
            }
            _ => None,
        }
    }

    pub(super) fn is_expired(&self, server: &ServerConn, now: Instant) -> bool {
        let lifetime = self.settings.borrow().lifetime;
        !lifetime.is_zero() && now.saturating_duration_since(server.meta.created) > lifetime
    }

    /// While PostgreSQL is unreachable (a recent connect failed and nothing
    /// is open), fail at once instead of making clients wait it out.
    pub(super) fn fail_fast(&self) -> Result<()> {
        match self.recent_failure() {
            Some(err) => Err(Error::Refused(err)),
            None => Ok(()),
        }
    }

    /// The last login failure of this pool on any shard, if it is recent
    /// (within `server_login_retry`) and no server is open.
    pub(super) fn recent_failure(&self) -> Option<PgError> {
        let retry = self.settings.borrow().login_retry;
        if self.global.open_count() > 0 {
            return None;
        }
        self.global.failure.recent(retry)
    }

    /// Opens a server with an already-taken budget slot.
    pub(super) async fn open(self: &Rc<Self>, shard: &Rc<Shard>) -> Result<ServerConn> {
        self.opening.set(self.opening.get() + 1);
        let connect = self.settings.borrow().connect.clone();
        let result = server::connect(&connect, shard.next_id()).await;
        self.opening.set(self.opening.get() - 1);
        match result {
            Ok(server) => {
                self.global.failure.clear();
                self.learn_welcome(&server);
                self.active.set(self.active.get() + 1);
                Ok(server)
            }
            Err(e) => {
                self.global.closed();
                let pg = e.to_client().unwrap_or_else(|| {
                    PgError::fatal(sqlstate::CONNECTION_FAILURE, "server login failed")
                });
                // PgBouncer's reasons (server.c): an ErrorResponse at login is "login
                // failed", anything before it "connect failed".
                let reason = match &e {
                    Error::Server(_) => "login failed",
                    _ => "connect failed",
                };
                warn!(db = %self.key.db, user = %self.key.user, error = %e, reason, "closing because: {reason} (age=0s)");
                self.global.failure.record(&pg);
                self.fail_waiters(&pg);
                Err(Error::Refused(pg))
            }
        }
    }

    /// Every local waiter gets `err` (PostgreSQL is unreachable).
    pub(super) fn fail_waiters(&self, err: &PgError) {
        if self.global.open_count() > 0 {
            return;
        }
        let waiters: Vec<_> = self.waiters.borrow_mut().drain(..).collect();
        self.set_waiting_counter();
        for w in waiters {
            w.give(Grant::Fail(err.clone()));
        }
    }

    pub(super) async fn wait(self: &Rc<Self>, shard: &Rc<Shard>, client: u64) -> Grant {
        let waiter = self.new_waiter(client);
        self.waiters.borrow_mut().push_back(waiter.clone());
        self.set_waiting_counter();
        self.ask_other_shards_if_short(shard);
        let mut guard = WaitGuard {
            armed: Some((self.clone(), shard.clone(), waiter.clone())),
        };
        let grant = std::future::poll_fn(|cx| match waiter.grant.borrow_mut().take() {
            Some(g) => Poll::Ready(g),
            None => {
                *waiter.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        guard.armed = None;
        if let Grant::Server(_) = grant {
            self.stats
                .record_wait(crate::runtime::io::now().saturating_duration_since(waiter.since));
        }
        self.keep_waiter(waiter);
        grant
    }

    /// A waiter, in the block of one that has finished waiting if there is one: a client
    /// waits on most transactions under load, and this keeps that free of allocation.
    pub(super) fn new_waiter(&self, client: u64) -> Rc<Waiter> {
        let fresh = || Waiter {
            since: crate::runtime::io::now(),
            client,
            grant: RefCell::new(None),
            waker: RefCell::new(None),
        };
        let spare = self.spare_waiters.borrow_mut().pop();
        match spare {
            Some(mut w) => match Rc::get_mut(&mut w) {
                Some(reused) => {
                    *reused = fresh();
                    w
                }
                None => Rc::new(fresh()),
            },
            None => Rc::new(fresh()),
        }
    }

    /// Keeps a waiter that has been served for [`new_waiter`](Self::new_waiter), if nothing
    /// else holds it (the queue and the giver let go of it when they handed over).
    pub(super) fn keep_waiter(&self, waiter: Rc<Waiter>) {
        let mut spare = self.spare_waiters.borrow_mut();
        if Rc::strong_count(&waiter) == 1 && spare.len() < crate::runtime::recycle::KEEP {
            spare.push(waiter);
        }
    }

    /// A cancel request for `client`, waiting here for a server: it leaves the queue and its
    /// request fails as PostgreSQL fails a cancelled one (57014), nothing of it having reached
    /// PostgreSQL. False if it is not waiting here (granted meanwhile, or elsewhere).
    pub fn cancel_waiter(&self, client: u64) -> bool {
        let mut waiters = self.waiters.borrow_mut();
        let Some(at) = waiters.iter().position(|w| w.client == client) else {
            return false;
        };
        let waiter = waiters.remove(at);
        drop(waiters);
        self.set_waiting_counter();
        if let Some(w) = waiter {
            w.give(Grant::Canceled);
        }
        true
    }

    /// Removes a waiter whose client went away, returning what it was given.
    pub(super) fn abandon(self: &Rc<Self>, shard: &Rc<Shard>, waiter: &Rc<Waiter>) {
        self.waiters.borrow_mut().retain(|w| !Rc::ptr_eq(w, waiter));
        self.set_waiting_counter();
        let grant = waiter.grant.borrow_mut().take();
        match grant {
            Some(Grant::Server(s)) => {
                self.active.set(self.active.get().saturating_sub(1));
                self.place(shard, s);
            }
            Some(Grant::Budget) => {
                self.global.closed();
                self.grant_budget();
            }
            _ => {}
        }
    }
}

/// A leased server, from [`Pool::acquire`] until its holder takes it back out to release or
/// close it. Dropped while still held (its holder ended in a way its code did not plan: a
/// panic, see `runtime::isolate`), the server is closed, never returned in an unknown state,
/// and its budget slot goes back to the pool.
pub struct Held<'a> {
    pool: &'a Rc<Pool>,
    shard: &'a Rc<Shard>,
    server: Option<ServerConn>,
}

impl<'a> Held<'a> {
    /// Holds `server`, leased from `pool`.
    fn new(pool: &'a Rc<Pool>, shard: &'a Rc<Shard>, server: ServerConn) -> Self {
        Held {
            pool,
            shard,
            server: Some(server),
        }
    }

    /// Lets go of the server, to be released or closed by the caller.
    pub fn take(mut self) -> ServerConn {
        self.server
            .take()
            .expect("a Held holds its server until taken")
    }
}

impl std::ops::Deref for Held<'_> {
    type Target = ServerConn;

    fn deref(&self) -> &ServerConn {
        self.server
            .as_ref()
            .expect("a Held holds its server until taken")
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.server
            .as_mut()
            .expect("a Held holds its server until taken")
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.pool
                .close_leased(self.shard, server, "its client's session ended abnormally");
        }
    }
}

/// Safety net for a wait abandoned mid-way (client gone): gives back
/// whatever was granted so no server or budget leaks.
struct WaitGuard {
    armed: Option<(Rc<Pool>, Rc<Shard>, Rc<Waiter>)>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Some((pool, shard, waiter)) = self.armed.take() {
            pool.abandon(&shard, &waiter);
        }
    }
}
