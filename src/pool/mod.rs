//! Pools: one per (database, user), sliced across shards, with global limits.
//!
//! Each shard holds a [`Pool`] slice with its own idle list and FIFO of
//! waiting clients; no lock is taken to lease or release a server. What the
//! shards share is a [`GlobalPool`]: an atomic count of open server
//! connections (so `pool_size` and `reserve_pool_size` mean what they mean
//! in PgBouncer, for the whole process, not per shard) and, per shard, a
//! cache-padded pair of counters (idle servers, waiting clients) that only
//! that shard writes and others read when they run out, and what logins learned from a
//! server (the greeting, accepted startup parameters: `learned`), read at login only.
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
//! at client exit (session mode, after the reset query). A lease is a [`Held`] until then:
//! dropped still held (its holder panicked), the server is closed and its budget slot given
//! back. Drop of a bare [`ServerConn`] only closes the socket.

pub mod global;
mod handoff;
mod learned;
mod lease;
pub mod notify;
mod release;
pub mod settings;
mod upkeep;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use global::{Caps, Counter, Full, GlobalPool, ShardCounts};
use lease::{Grant, Waiter};
pub use lease::{Held, INTERNAL};
pub use notify::Notify;
pub use settings::PoolSettings;
pub use upkeep::evict_idle;

use crate::config::{Config, PoolMode};
use crate::runtime::Shard;
use crate::server::{ServerConn, ServerCredentials};

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

/// One shard's slice of a pool.
pub struct Pool {
    /// (database, user).
    pub key: PoolKey,
    /// The cross-shard budget and counters.
    pub global: Arc<GlobalPool>,
    settings: RefCell<PoolSettings>,
    idle: RefCell<Vec<ServerConn>>,
    /// Servers a client gave back while a cancel request for them was still on its way to
    /// PostgreSQL: still counted in `active`, reused once it has landed (`Pool::release`).
    being_canceled: RefCell<Vec<ServerConn>>,
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
    shard_id: usize,
    /// What this slice's logins learned: the welcome, accepted startup parameters, their
    /// strings.
    learned: learned::Learned,
    /// Longest current wait start, for SHOW POOLS maxwait.
    pub stats: crate::stats::PoolStats,
    /// Since when nothing has used this slice (`autodb_idle_timeout`), when it belongs to a
    /// database only the `*` fallback defines.
    unused_since: Cell<Option<Instant>>,
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
            being_canceled: RefCell::new(Vec::new()),
            waiters: RefCell::new(VecDeque::new()),
            spare_waiters: RefCell::new(Vec::new()),
            active: Cell::new(0),
            opening: Cell::new(0),
            give_to: Cell::new(None),
            ask_scheduled: Cell::new(false),
            demand: Cell::new(0),
            shard_id: shard.id,
            learned: learned::Learned::default(),
            stats: Default::default(),
            unused_since: Cell::new(None),
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

    /// Servers leased to clients on this shard (and those held back while a cancel request
    /// for them travels).
    pub fn active_count(&self) -> u32 {
        self.active.get()
    }

    /// Servers held back while a cancel request for them travels (SHOW POOLS
    /// `sv_being_canceled`).
    pub fn being_canceled_count(&self) -> u32 {
        self.being_canceled.borrow().len() as u32
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

    /// Visits the servers held back while a cancel request travels (console).
    pub fn for_each_being_canceled(&self, mut f: impl FnMut(&ServerConn)) {
        for s in self.being_canceled.borrow().iter() {
            f(s);
        }
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

/// The address list of a database entry (`host` may be a comma list).
pub fn resolve_addrs(host: &str, port: u16) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    host.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .flat_map(|h| (h, port).to_socket_addrs().into_iter().flatten())
        .collect()
}
