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
//! - Under load every shard has waiters: at each tick a shard holding a whole
//!   server more than its share (shares by demand: clients leasing or waiting,
//!   smoothed) sends its next released servers to the shard furthest below its
//!   share (`handoff::surplus`).
//!
//! When load is balanced nothing moves.
//!
//! A lease is released explicitly, on ReadyForQuery `I` (transaction mode) or
//! at client exit (session mode, after the reset query). Drop of a
//! [`ServerConn`] is only a safety net: it closes the socket.

pub mod global;
mod handoff;
pub mod notify;
pub mod settings;
mod upkeep;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use global::{Caps, Counter, Full, GlobalPool, ShardCounts};
pub use notify::Notify;
pub use settings::PoolSettings;
pub use upkeep::evict_idle;

use crate::config::{Config, PoolMode};
use crate::error::{sqlstate, Error, PgError, Result};
use crate::runtime::Shard;
use crate::server::{self, BaseParams, ServerConn, ServerCredentials};

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
            // Ahead of the queue: a server handed over is idle until this client sends it
            // its query (see `wake_next`).
            crate::runtime::io::wake_next(w);
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
    /// Served waiters kept for reuse (at most `recycle::KEEP`).
    spare_waiters: RefCell<Vec<Rc<Waiter>>>,
    active: Cell<u32>,
    opening: Cell<u32>,
    /// The shard the next released servers go to, and how many (decided each janitor
    /// tick, see `handoff::surplus`), instead of a local waiter.
    give_to: Cell<Option<(usize, u32)>>,
    /// Clients leasing or waiting here, smoothed over janitor ticks
    /// (times `handoff::SCALE`).
    demand: Cell<u32>,
    /// A deferred look for other shards' idle servers is scheduled
    /// (`Pool::ask_other_shards_if_short`).
    ask_scheduled: Cell<bool>,
    welcome: RefCell<Option<Welcome>>,
    /// The welcome's tracked part, shared by this slice's clients.
    client_base: RefCell<Option<Rc<BaseParams>>>,
    shard_id: usize,
    /// Startup parameter values already tried on a server, by lower-cased name.
    validated: RefCell<std::collections::HashMap<Box<str>, std::collections::HashSet<Box<str>>>>,
    /// Startup parameter names and values, one shared copy each for the
    /// clients that send them. Grows like `validated`: by distinct strings
    /// seen in startup packets of this pool slice.
    startup_strings: RefCell<std::collections::HashSet<Rc<str>>>,
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
            spare_waiters: RefCell::new(Vec::new()),
            active: Cell::new(0),
            opening: Cell::new(0),
            give_to: Cell::new(None),
            ask_scheduled: Cell::new(false),
            demand: Cell::new(0),
            welcome: RefCell::new(None),
            client_base: RefCell::new(None),
            shard_id: shard.id,
            validated: RefCell::default(),
            startup_strings: RefCell::default(),
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

    /// `server_reset_query` when `server_reset_query_always` is set (and the query is not
    /// empty): what must run at every release. Read per transaction, so nothing is copied
    /// when it is off (the default).
    pub fn reset_always_query(&self) -> Option<String> {
        let s = self.settings.borrow();
        (s.reset_always && !s.reset_query.is_empty()).then(|| s.reset_query.clone())
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

    /// The defaults every client of this slice starts from: the tracked
    /// part of the welcome, built once and shared (rebuilt only if RELOAD
    /// changed the tracked names). Empty and unshared before a welcome.
    ///
    /// `tracked` is walked, not collected: a login that finds the set built pays no copy of
    /// the names.
    pub fn client_base<'a>(
        &self,
        tracked: impl Iterator<Item = &'a str> + Clone,
    ) -> Rc<BaseParams> {
        let Some(welcome) = self.welcome() else {
            return Rc::default();
        };
        let mut cached = self.client_base.borrow_mut();
        match cached.as_ref().filter(|b| b.tracks(tracked.clone())) {
            Some(base) => base.clone(),
            None => {
                let tracked: Vec<String> = tracked.map(str::to_owned).collect();
                let base = BaseParams::from_welcome(&welcome, &tracked);
                cached.insert(Rc::new(base)).clone()
            }
        }
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
        // Looked up before anything is copied: a pair seen before (every login but the first
        // with it) costs no allocation.
        let name = lowercase(name);
        let mut validated = self.validated.borrow_mut();
        if let Some(values) = validated.get_mut(&*name) {
            return !values.contains(value) && values.insert(value.into());
        }
        let values = std::collections::HashSet::from([value.into()]);
        validated.insert(name.into(), values);
        true
    }

    /// The pool's shared copy of a startup parameter name or value.
    pub fn intern(&self, s: &str) -> Rc<str> {
        let mut strings = self.startup_strings.borrow_mut();
        if let Some(shared) = strings.get(s) {
            return shared.clone();
        }
        let shared: Rc<str> = s.into();
        strings.insert(shared.clone());
        shared
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
                // Boxed: opening a server is rare and its future (connect + login, ~1.8 KB)
                // would otherwise size every lease, which is allocated per transaction.
                Ok(()) => return Box::pin(self.open(shard)).await,
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
                    return Box::pin(self.open(shard)).await;
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

    fn is_expired(&self, server: &ServerConn, now: Instant) -> bool {
        let lifetime = self.settings.borrow().lifetime;
        !lifetime.is_zero() && now.saturating_duration_since(server.meta.created) > lifetime
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
        let waiter = self.new_waiter();
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
    fn new_waiter(&self) -> Rc<Waiter> {
        let fresh = || Waiter {
            since: crate::runtime::io::now(),
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
    fn keep_waiter(&self, waiter: Rc<Waiter>) {
        let mut spare = self.spare_waiters.borrow_mut();
        if Rc::strong_count(&waiter) == 1 && spare.len() < crate::runtime::recycle::KEEP {
            spare.push(waiter);
        }
    }

    /// Returns a clean server (ReadyForQuery `I`) from a client.
    pub fn release(self: &Rc<Self>, shard: &Rc<Shard>, mut server: ServerConn) {
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

    /// Gives an unleased server to a shard the janitor found short of servers, a local
    /// waiter, another shard's waiter, or the idle list, in that order.
    fn place(self: &Rc<Self>, shard: &Rc<Shard>, server: ServerConn) {
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
        server.watch_idle();
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

    /// Closes a server for good (dirty, broken, expired) and passes its
    /// budget slot to the first local waiter.
    pub fn close(self: &Rc<Self>, _shard: &Rc<Shard>, server: ServerConn, reason: &str) {
        self.log_close(&server.meta, reason);
        drop(server);
        self.global.closed();
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

/// A server a client holds for a transaction. Dropped while still held (its session ended in a
/// way its code did not plan: a panic, see `runtime::isolate`), the server is closed, never
/// returned in an unknown state, and its budget slot goes back to the pool.
pub struct Held<'a> {
    pool: &'a Rc<Pool>,
    shard: &'a Rc<Shard>,
    server: Option<ServerConn>,
}

impl<'a> Held<'a> {
    /// Holds `server`, leased from `pool`.
    pub fn new(pool: &'a Rc<Pool>, shard: &'a Rc<Shard>, server: ServerConn) -> Self {
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

/// What pgring logs into PostgreSQL with for `key`: the database entry's
/// `password`, else the user's secret from the auth file or auth_query (plain
/// or md5). A SCRAM verifier cannot log in by itself: then the keys of a
/// client's SCRAM login to this pool are used (pass-through), if any yet.
fn server_password(shard: &Shard, config: &Config, key: &PoolKey) -> ServerCredentials {
    let files = shard.files();
    let tls = files.server_tls.clone();
    if let Some(p) = config.database(&key.db).and_then(|d| d.password.clone()) {
        return ServerCredentials {
            password: Some(p),
            scram_keys: None,
            tls,
        };
    }
    use crate::auth::userlist::Secret;
    let secret = files.users.get(&key.user).cloned();
    match secret.or_else(|| shard.auth_cache.server_secret(key)) {
        Some(Secret::Plain(p)) | Some(Secret::Md5(p)) => ServerCredentials {
            password: Some(p),
            scram_keys: None,
            tls,
        },
        _ => ServerCredentials {
            password: None,
            scram_keys: shard.auth_cache.keys(key),
            tls,
        },
    }
}

/// `name` in lower case, copied only when it has an upper-case letter (startup parameter
/// names rarely do).
fn lowercase(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
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
