//! Pools: one per (database, user), sliced across shards, with global limits.
//!
//! Each shard holds a [`Pool`] slice with its own idle list and FIFO of
//! waiting clients; no lock is taken to lease or release a server. What the
//! shards share is a [`GlobalPool`]: an atomic count of open server
//! connections (so `pool_size` and `reserve_pool_size` mean what they mean
//! in PgBouncer, for the whole process, not per shard) and, per shard, a
//! cache-padded pair of counters (idle servers, waiting clients) that only
//! that shard writes and others read when they run out.
//!
//! Handoff (where a shard runs dry while another has idle servers):
//! - On release, a server goes to a local waiter first; if there is none but
//!   another shard has waiters, the idle server moves there (detached from
//!   this reactor, sent through the mesh, adopted by the other shard).
//! - A client that must wait with no budget left asks every shard that has
//!   idle servers for one (`Steal`); such a shard sends an idle server over.
//! - The janitor repeats the steal request and the budget check every tick,
//!   so a budget freed on another shard is used within ~100 ms.
//!
//! When load is balanced every shard has its own waiters and nothing moves.
//!
//! A lease is released explicitly, on ReadyForQuery `I` (transaction mode) or
//! at client exit (session mode, after the reset query). Drop of a
//! [`ServerConn`] is only a safety net: it closes the socket.

pub mod notify;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam::utils::CachePadded;
use tracing::{info, warn};

pub use notify::Notify;

use crate::config::{Config, PoolMode};
use crate::error::{sqlstate, Error, PgError, Result};
use crate::runtime::mesh::MeshMsg;
use crate::runtime::{self, Shard};
use crate::server::{self, ConnectSettings, DetachedServer, ServerConn, ServerCredentials};

/// The ParameterStatus set clients of a pool are greeted with.
pub type Welcome = Rc<Vec<(String, String)>>;

/// A pool's identity: database name (as clients ask for it) and the user
/// that logs into PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// Database entry name.
    pub db: Arc<str>,
    /// Server login user.
    pub user: Arc<str>,
}

/// Per-shard counters that other shards read.
#[derive(Debug, Default)]
pub struct ShardCounts {
    /// Idle servers on that shard.
    pub idle: AtomicU32,
    /// Clients waiting on that shard.
    pub waiting: AtomicU32,
    /// Servers that shard holds (leased + idle), for rebalancing.
    pub owned: AtomicU32,
}

/// A process-wide counter with a cap, taken and returned without locks.
#[derive(Debug, Default)]
pub struct Counter(AtomicU32);

impl Counter {
    /// Takes one unit if fewer than `limit` are taken (`limit` 0 = no cap).
    pub fn try_take(&self, limit: u32) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Returns one unit.
    pub fn give(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Units taken now.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// The caps a server connection counts against: its pool's size (plus
/// reserve once that opened), `max_db_connections`, `max_user_connections`.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Pool size (or pool + reserve).
    pub pool: u32,
    /// max_db_connections (0 = none).
    pub db: u32,
    /// max_user_connections (0 = none).
    pub user: u32,
}

/// Which cap refused a new server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The pool's own size.
    Pool,
    /// max_db_connections: an idle server of another user of this
    /// database may be closed to make room (PgBouncer's evict_connection).
    Db,
    /// max_user_connections: likewise for another database of this user.
    User,
}

/// The last failed server login of a pool, shared by its shards so that
/// fail-fast (`server_login_retry`) holds on every shard. Read with one
/// atomic load; the mutex is touched only when a login fails or a client
/// is about to be refused.
#[derive(Debug)]
struct LastFailure {
    born: Instant,
    /// Milliseconds since `born` + 1 of the failure; 0 = none.
    at: AtomicU64,
    error: Mutex<Option<PgError>>,
}

impl LastFailure {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    fn record(&self, e: &PgError) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = Some(e.clone());
        }
        self.at.store(self.now_ms(), Ordering::Release);
    }

    fn clear(&self) {
        if self.at.load(Ordering::Relaxed) != 0 {
            self.at.store(0, Ordering::Release);
        }
    }

    fn recent(&self, within: Duration) -> Option<PgError> {
        let at = self.at.load(Ordering::Acquire);
        if at == 0 || self.now_ms().saturating_sub(at) >= within.as_millis() as u64 {
            return None;
        }
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// What all shards share about one pool.
#[derive(Debug)]
pub struct GlobalPool {
    open: Counter,
    failure: LastFailure,
    db: Arc<Counter>,
    user: Arc<Counter>,
    shards: Vec<CachePadded<ShardCounts>>,
}

impl GlobalPool {
    /// A pool for `workers` shards, counting also against its database's
    /// and user's process-wide server counters.
    pub fn new(workers: usize, db: Arc<Counter>, user: Arc<Counter>) -> Self {
        GlobalPool {
            open: Counter::default(),
            failure: LastFailure {
                born: Instant::now(),
                at: AtomicU64::new(0),
                error: Mutex::new(None),
            },
            db,
            user,
            shards: (0..workers)
                .map(|_| CachePadded::new(ShardCounts::default()))
                .collect(),
        }
    }

    /// Takes one server slot if every cap allows it (all or nothing). A pool
    /// cap of 0 means no server may open (PgBouncer's pool_size = 0).
    pub fn try_open(&self, caps: Caps) -> bool {
        self.try_open_why(caps).is_ok()
    }

    /// [`GlobalPool::try_open`], saying which cap refused.
    pub fn try_open_why(&self, caps: Caps) -> Result<(), Full> {
        if caps.pool == 0 || !self.open.try_take(caps.pool) {
            return Err(Full::Pool);
        }
        if !self.db.try_take(caps.db) {
            self.open.give();
            return Err(Full::Db);
        }
        if !self.user.try_take(caps.user) {
            self.db.give();
            self.open.give();
            return Err(Full::User);
        }
        Ok(())
    }

    /// Returns a server slot.
    pub fn closed(&self) {
        self.open.give();
        self.db.give();
        self.user.give();
    }

    /// Server connections open (or opening) across all shards.
    pub fn open_count(&self) -> u32 {
        self.open.get()
    }

    /// Counters of shard `i`.
    pub fn shard(&self, i: usize) -> &ShardCounts {
        &self.shards[i]
    }

    /// Shards other than `me` with waiters.
    fn shard_waiting(&self, me: usize) -> Option<usize> {
        (0..self.shards.len())
            .find(|&i| i != me && self.shards[i].waiting.load(Ordering::Relaxed) > 0)
    }
}

/// Effective settings of a pool, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// session / transaction / statement.
    pub mode: PoolMode,
    /// pool_size.
    pub size: u32,
    /// reserve_pool_size.
    pub reserve: u32,
    /// max_db_connections (0 = none).
    pub max_db: u32,
    /// max_user_connections (0 = none).
    pub max_user: u32,
    /// server_check_delay: an idle server older than this is checked.
    pub check_delay: Duration,
    /// server_check_query (`None`: no check; `Some("")`: empty query).
    pub check_query: Option<String>,
    /// min_pool_size.
    pub min: u32,
    /// reserve_pool_timeout.
    pub reserve_timeout: Duration,
    /// query_wait_timeout (zero: wait forever).
    pub query_wait_timeout: Duration,
    /// server_idle_timeout (zero: never).
    pub idle_timeout: Duration,
    /// server_lifetime (zero: forever).
    pub lifetime: Duration,
    /// server_login_retry.
    pub login_retry: Duration,
    /// server_reset_query.
    pub reset_query: String,
    /// server_reset_query_always.
    pub reset_always: bool,
    /// How to reach and log into PostgreSQL.
    pub connect: Rc<ConnectSettings>,
}

impl PoolSettings {
    /// Caps for a normal open (`reserve`: also the reserve pool).
    pub fn caps(&self, reserve: bool) -> Caps {
        Caps {
            pool: if reserve {
                self.size + self.reserve
            } else {
                self.size
            },
            db: self.max_db,
            user: self.max_user,
        }
    }

    /// Resolves the settings of `key` from `config`.
    pub fn resolve(config: &Config, key: &PoolKey, creds: ServerCredentials) -> PoolSettings {
        let g = &config.general;
        let db = config.database(&key.db);
        let connect = ConnectSettings::resolve(config, key, creds);
        PoolSettings {
            mode: config.pool_mode(&key.db, &key.user),
            size: config.pool_size(&key.db, &key.user),
            reserve: config.reserve_pool_size(&key.db, &key.user),
            max_db: config.max_db_connections(&key.db),
            max_user: config.max_user_connections(&key.user),
            check_delay: g.server_check_delay.duration(),
            check_query: g.health_check_query().map(str::to_owned),
            min: config.min_pool_size(&key.db, &key.user),
            reserve_timeout: g.reserve_pool_timeout.duration(),
            query_wait_timeout: g.query_wait_timeout.duration(),
            idle_timeout: g.server_idle_timeout.duration(),
            lifetime: db
                .and_then(|d| d.server_lifetime)
                .unwrap_or(g.server_lifetime)
                .duration(),
            login_retry: g.server_login_retry.duration(),
            reset_query: g.server_reset_query.clone(),
            reset_always: g.server_reset_query_always,
            connect: Rc::new(connect),
        }
    }
}

/// What a waiting client is handed. (Not boxed: a grant sits in a
/// waiter's slot only until that task runs, and boxing would cost an
/// allocation per handover under contention.)
#[allow(clippy::large_enum_variant)]
enum Grant {
    /// A server, already counted as active.
    Server(ServerConn),
    /// Permission to open a new server (a slot is already taken).
    Budget,
    /// Give up with this error.
    Fail(PgError),
}

/// A client in a pool's FIFO.
struct Waiter {
    since: Instant,
    grant: RefCell<Option<Grant>>,
    waker: RefCell<Option<Waker>>,
}

impl Waiter {
    fn give(&self, grant: Grant) {
        *self.grant.borrow_mut() = Some(grant);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// One shard's slice of a pool.
pub struct Pool {
    /// (database, user).
    pub key: PoolKey,
    /// The cross-shard budget and counters.
    pub global: Arc<GlobalPool>,
    settings: RefCell<PoolSettings>,
    idle: RefCell<Vec<ServerConn>>,
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    active: Cell<u32>,
    opening: Cell<u32>,
    welcome: RefCell<Option<Welcome>>,
    shard_id: usize,
    validated: RefCell<std::collections::HashSet<(String, String)>>,
    /// Longest current wait start, for SHOW POOLS maxwait.
    pub stats: crate::stats::PoolStats,
}

impl Pool {
    /// A new slice for `shard`.
    pub fn new(shard: &Shard, key: PoolKey, global: Arc<GlobalPool>) -> Pool {
        let config = shard.config();
        let password = server_password(shard, &config, &key);
        let settings = PoolSettings::resolve(&config, &key, password);
        Pool {
            key,
            global,
            settings: RefCell::new(settings),
            idle: RefCell::new(Vec::new()),
            waiters: RefCell::new(VecDeque::new()),
            active: Cell::new(0),
            opening: Cell::new(0),
            welcome: RefCell::new(None),
            shard_id: shard.id,
            validated: RefCell::default(),
            stats: Default::default(),
        }
    }

    /// Re-resolves settings after RELOAD.
    pub fn reconfigure(&self, shard: &Shard) {
        let config = shard.config();
        let password = server_password(shard, &config, &self.key);
        *self.settings.borrow_mut() = PoolSettings::resolve(&config, &self.key, password);
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> PoolSettings {
        self.settings.borrow().clone()
    }

    /// The pool mode.
    pub fn mode(&self) -> PoolMode {
        self.settings.borrow().mode
    }

    /// Servers leased to clients on this shard.
    pub fn active_count(&self) -> u32 {
        self.active.get()
    }

    /// Idle servers on this shard.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Servers being opened on this shard.
    pub fn opening_count(&self) -> u32 {
        self.opening.get()
    }

    /// Clients waiting on this shard.
    pub fn waiting_count(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// How long the oldest waiter has waited.
    pub fn max_wait(&self) -> Duration {
        self.waiters
            .borrow()
            .front()
            .map(|w| w.since.elapsed())
            .unwrap_or_default()
    }

    /// Visits idle servers (console).
    pub fn for_each_idle(&self, mut f: impl FnMut(&ServerConn)) {
        for s in self.idle.borrow().iter() {
            f(s);
        }
    }

    /// The ParameterStatus set a new client is greeted with, once a server
    /// of this pool has been seen.
    pub fn welcome(&self) -> Option<Welcome> {
        self.welcome.borrow().clone()
    }

    /// The first server this shard sees (opened here or handed over)
    /// tells what new clients are greeted with.
    fn learn_welcome(&self, server: &ServerConn) {
        if self.welcome.borrow().is_none() {
            *self.welcome.borrow_mut() = Some(Rc::new(server.meta.params.login_defaults()));
        }
    }

    /// Remembers a startup parameter value; true the first time it is
    /// seen on this shard (it must then be tried on a server at login).
    pub fn note_param(&self, name: &str, value: &str) -> bool {
        self.validated
            .borrow_mut()
            .insert((name.to_ascii_lowercase(), value.to_owned()))
    }

    fn set_idle_counter(&self) {
        let n = self.idle.borrow().len() as u32;
        self.global
            .shard(self.shard_id)
            .idle
            .store(n, Ordering::Relaxed);
    }

    fn set_waiting_counter(&self) {
        let n = self.waiters.borrow().len() as u32;
        self.global
            .shard(self.shard_id)
            .waiting
            .store(n, Ordering::Relaxed);
    }

    /// Leases a server: an idle one, else a new one within the global
    /// budget, else wait (FIFO) for a release, a handoff, the reserve pool
    /// or `query_wait_timeout`.
    pub async fn acquire(self: &Rc<Self>, shard: &Rc<Shard>) -> Result<ServerConn> {
        loop {
            if let Some(mut server) = self.pop_idle() {
                if let Some(reason) = self.unusable(&mut server).await {
                    self.close(shard, server, reason);
                    continue;
                }
                self.active.set(self.active.get() + 1);
                return Ok(server);
            }
            self.fail_fast()?;
            let caps = self.settings.borrow().caps(false);
            match self.global.try_open_why(caps) {
                Ok(()) => return self.open(shard).await,
                Err(Full::Pool) => {}
                Err(by) => {
                    if self.evict_elsewhere(shard, by) {
                        continue;
                    }
                }
            }
            match self.wait(shard).await {
                Grant::Server(server) => return Ok(server),
                Grant::Budget => {
                    // The slot may come from another shard's failed login.
                    if let Err(e) = self.fail_fast() {
                        self.global.closed();
                        return Err(e);
                    }
                    return self.open(shard).await;
                }
                Grant::Fail(e) => return Err(Error::Refused(e)),
            }
        }
    }

    fn pop_idle(&self) -> Option<ServerConn> {
        let s = self.idle.borrow_mut().pop();
        if s.is_some() {
            self.set_idle_counter();
        }
        s
    }

    /// Why an idle server must not be handed out: past its lifetime, closed
    /// by PostgreSQL while idle (a restart, pg_terminate_backend: checked
    /// with a non-blocking peek, one cheap syscall), or failing
    /// `server_check_query` after `server_check_delay` of idleness.
    async fn unusable(&self, server: &mut ServerConn) -> Option<&'static str> {
        if self.is_expired(server) {
            return Some("server lifetime over");
        }
        // Only servers taken from the idle list are peeked; under load a
        // released server goes straight to a waiter and skips this.
        if !server.is_alive() {
            return Some("server closed the connection while idle");
        }
        let (delay, query) = {
            let s = self.settings.borrow();
            (s.check_delay, s.check_query.clone())
        };
        if let Some(q) = query {
            if server.meta.last_used.elapsed() >= delay && server.simple_query(&q).await.is_err() {
                return Some("server check query failed");
            }
        }
        None
    }

    fn is_expired(&self, server: &ServerConn) -> bool {
        let lifetime = self.settings.borrow().lifetime;
        !lifetime.is_zero() && server.meta.created.elapsed() > lifetime
    }

    /// While PostgreSQL is unreachable (a recent connect failed and nothing
    /// is open), fail at once instead of making clients wait it out.
    fn fail_fast(&self) -> Result<()> {
        match self.recent_failure() {
            Some(err) => Err(Error::Refused(err)),
            None => Ok(()),
        }
    }

    /// The last login failure of this pool on any shard, if it is recent
    /// (within `server_login_retry`) and no server is open.
    fn recent_failure(&self) -> Option<PgError> {
        let retry = self.settings.borrow().login_retry;
        if self.global.open_count() > 0 {
            return None;
        }
        self.global.failure.recent(retry)
    }

    /// Opens a server with an already-taken budget slot.
    async fn open(self: &Rc<Self>, shard: &Rc<Shard>) -> Result<ServerConn> {
        self.opening.set(self.opening.get() + 1);
        let connect = self.settings.borrow().connect.clone();
        let result = server::connect(&connect, shard.next_id()).await;
        self.opening.set(self.opening.get() - 1);
        match result {
            Ok(server) => {
                self.global.failure.clear();
                self.learn_welcome(&server);
                self.active.set(self.active.get() + 1);
                self.publish_owned();
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
    fn fail_waiters(&self, err: &PgError) {
        if self.global.open_count() > 0 {
            return;
        }
        let waiters: Vec<_> = self.waiters.borrow_mut().drain(..).collect();
        self.set_waiting_counter();
        for w in waiters {
            w.give(Grant::Fail(err.clone()));
        }
    }

    async fn wait(self: &Rc<Self>, shard: &Rc<Shard>) -> Grant {
        let waiter = Rc::new(Waiter {
            since: Instant::now(),
            grant: RefCell::new(None),
            waker: RefCell::new(None),
        });
        self.waiters.borrow_mut().push_back(waiter.clone());
        self.set_waiting_counter();
        self.ask_other_shards(shard);
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
            self.stats.record_wait(waiter.since.elapsed());
        }
        grant
    }

    /// Asks shards that hold idle servers to hand one over.
    fn ask_other_shards(&self, shard: &Shard) {
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

    /// Returns a clean server (ReadyForQuery `I`) from a client.
    pub fn release(self: &Rc<Self>, shard: &Rc<Shard>, mut server: ServerConn) {
        self.active.set(self.active.get().saturating_sub(1));
        server.meta.last_used = Instant::now();
        // PgBouncer's reasons: RECONNECT marks a server "obsolete connection".
        let obsolete = shard.admin.take_close_needed(server.meta.id);
        if obsolete || self.is_expired(&server) {
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

    /// Gives an unleased server to an under-served shard, a local waiter,
    /// another shard's waiter, or the idle list, in that order.
    fn place(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn) {
        if let Some(to) = self.rebalance_target(shard.id) {
            self.send_to(shard, to, server);
            return;
        }
        self.place_here(shard, server);
    }

    /// [`Pool::place`] without rebalancing (a server that just arrived).
    fn place_here(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn) {
        if let Some(w) = self.pop_waiter() {
            self.active.set(self.active.get() + 1);
            w.give(Grant::Server(server));
            return;
        }
        if let Some(to) = self.global.shard_waiting(shard.id) {
            self.send_to(shard, to, server);
            return;
        }
        self.idle.borrow_mut().push(server);
        self.set_idle_counter();
    }

    fn pop_waiter(&self) -> Option<Rc<Waiter>> {
        let w = self.waiters.borrow_mut().pop_front();
        if w.is_some() {
            self.set_waiting_counter();
        }
        w
    }

    /// Under load every shard has waiters and none would ever give a server
    /// away, so the shards that first took the budget would keep it: clients
    /// on a shard that came late would starve. On release, a server moves to
    /// another shard when that shard holds clearly fewer servers than its
    /// share of demand (waiters + servers); the half-server margin keeps it
    /// from bouncing back. Only other shards' counters are read, and only
    /// when one of them has waiters.
    fn rebalance_target(&self, me: usize) -> Option<usize> {
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
    fn publish_owned(&self) {
        let n = self.active.get() + self.idle.borrow().len() as u32;
        self.global
            .shard(self.shard_id)
            .owned
            .store(n, Ordering::Relaxed);
    }

    fn send_to(&self, shard: &Shard, to: usize, server: ServerConn) {
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

    /// Closes a server for good (dirty, broken, expired) and passes its
    /// budget slot to the first local waiter.
    pub fn close(self: &Rc<Self>, _shard: &Rc<Shard>, server: ServerConn, reason: &str) {
        self.log_close(&server.meta, reason);
        drop(server);
        self.global.closed();
        self.publish_owned();
        self.grant_budget();
    }

    /// Closes a leased server (it was counted active).
    pub fn close_leased(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn, reason: &str) {
        self.active.set(self.active.get().saturating_sub(1));
        self.close(shard, server, reason);
    }

    /// Gives waiters budget that is free now (janitor, and after a close).
    fn grant_budget(&self) {
        let caps = self.settings.borrow().caps(false);
        while !self.waiters.borrow().is_empty() && self.global.try_open(caps) {
            if let Some(w) = self.pop_waiter() {
                w.give(Grant::Budget);
            }
        }
    }

    /// PgBouncer's `log_disconnections` line (objects.c `disconnect_server`), which operators
    /// alert on, with our fields beside it.
    fn log_close(&self, server: &server::ServerMeta, reason: &str) {
        let age = server.created.elapsed().as_secs();
        info!(db = %self.key.db, user = %self.key.user, server = server.id, reason, age, "closing because: {reason} (age={age}s)");
    }

    /// Closes every idle server (shutdown, RECONNECT).
    pub fn close_idle(&self) {
        let idle: Vec<_> = self.idle.borrow_mut().drain(..).collect();
        self.set_idle_counter();
        for s in idle {
            drop(s);
            self.global.closed();
        }
        self.publish_owned();
    }

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
                Err(by) => {
                    self.evict_elsewhere(shard, by);
                    self.grant_budget();
                }
            }
        }
        self.open_reserve();
        if !self.waiters.borrow().is_empty() {
            self.ask_other_shards(shard);
        }
        self.retire_idle();
    }

    /// Makes room under max_db_connections / max_user_connections by
    /// closing an idle server of a sibling pool: on this shard if one is
    /// there (true: retry now), else by asking the other shards (the freed
    /// budget reaches waiters at the next janitor tick).
    fn evict_elsewhere(&self, shard: &Rc<Shard>, by: Full) -> bool {
        if evict_idle(shard, &self.key, by) {
            return true;
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
        false
    }

    fn expire_waiters(&self) {
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

    fn open_reserve(&self) {
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

    fn retire_idle(&self) {
        let s = self.settings.borrow();
        let (idle_timeout, lifetime, min) = (s.idle_timeout, s.lifetime, s.min);
        drop(s);
        let mut idle = self.idle.borrow_mut();
        let before = idle.len();
        idle.retain(|srv| {
            let open = self.global.open_count();
            let stale = !idle_timeout.is_zero()
                && srv.meta.last_used.elapsed() > idle_timeout
                && open > min;
            let old = !lifetime.is_zero() && srv.meta.created.elapsed() > lifetime;
            if stale || old {
                // janitor.c's reasons for the same two cases.
                let reason = if old {
                    "server lifetime over"
                } else {
                    "server idle timeout"
                };
                self.log_close(&srv.meta, reason);
                self.global.closed();
            }
            !(stale || old)
        });
        let closed = before - idle.len();
        drop(idle);
        if closed > 0 {
            self.set_idle_counter();
            self.publish_owned();
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

    /// Removes a waiter whose client went away, returning what it was given.
    fn abandon(self: &Rc<Self>, shard: &Rc<Shard>, waiter: &Rc<Waiter>) {
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

/// What pgring logs into PostgreSQL with for `key`: the database entry's
/// `password`, else the user's secret from the auth file or auth_query (plain
/// or md5). A SCRAM verifier cannot log in by itself: then the keys of a
/// client's SCRAM login to this pool are used (pass-through), if any yet.
fn server_password(shard: &Shard, config: &Config, key: &PoolKey) -> ServerCredentials {
    if let Some(p) = config.database(&key.db).and_then(|d| d.password.clone()) {
        return ServerCredentials {
            password: Some(p),
            scram_keys: None,
        };
    }
    use crate::auth::userlist::Secret;
    let secret = shard.userlist().get(&key.user).cloned();
    match secret.or_else(|| shard.auth_cache.server_secret(key)) {
        Some(Secret::Plain(p)) | Some(Secret::Md5(p)) => ServerCredentials {
            password: Some(p),
            scram_keys: None,
        },
        _ => ServerCredentials {
            password: None,
            scram_keys: shard.auth_cache.keys(key),
        },
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

/// The address list of a database entry (`host` may be a comma list).
pub fn resolve_addrs(host: &str, port: u16) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    host.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .flat_map(|h| (h, port).to_socket_addrs().into_iter().flatten())
        .collect()
}
