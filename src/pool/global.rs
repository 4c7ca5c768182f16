//! What the shards share about a pool: lock-free counters with caps
//! (`pool_size`, `reserve_pool_size`, `max_db_connections`,
//! `max_user_connections`), each shard's idle/waiting counts, servers owned and demand
//! (written only by that shard, read by the others when they run out or at the janitor's
//! tick), and the last
//! failed login (fail-fast across shards), and what logins learned from a server (the
//! welcome, accepted startup parameters). Touched when a server opens or closes, or at
//! login, never per transaction.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::utils::CachePadded;

use crate::error::PgError;

/// Per-shard counters that other shards read.
#[derive(Debug, Default)]
pub struct ShardCounts {
    /// Idle servers on that shard.
    pub idle: AtomicU32,
    /// Clients waiting on that shard.
    pub waiting: AtomicU32,
    /// Servers that shard holds (leased, idle or opening), published at its janitor tick.
    pub owned: AtomicU32,
    /// That shard's smoothed demand (clients leasing or waiting, times
    /// `handoff::SCALE`), published at its janitor tick.
    pub demand: AtomicU32,
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
pub(super) struct LastFailure {
    born: Instant,
    /// Milliseconds since `born` + 1 of the failure; 0 = none.
    at: AtomicU64,
    error: Mutex<Option<PgError>>,
}

impl LastFailure {
    pub(super) fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    pub(super) fn record(&self, e: &PgError) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = Some(e.clone());
        }
        self.at.store(self.now_ms(), Ordering::Release);
    }

    pub(super) fn clear(&self) {
        if self.at.load(Ordering::Relaxed) != 0 {
            self.at.store(0, Ordering::Release);
        }
    }

    pub(super) fn recent(&self, within: Duration) -> Option<PgError> {
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
    pub(super) failure: LastFailure,
    db: Arc<Counter>,
    user: Arc<Counter>,
    pub(super) shards: Vec<CachePadded<ShardCounts>>,
    /// What logins on any shard learned from a server (only logins touch it).
    pub(super) learned: super::learned::SharedLearned,
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
            learned: Default::default(),
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

    /// A shard other than `me` whose queue is long for the servers it holds (see
    /// [`super::handoff::queue_is_long`]), by its live waiter count and the servers it held
    /// at its last janitor tick.
    pub(super) fn shard_waiting(&self, me: usize) -> Option<usize> {
        (0..self.shards.len()).find(|&i| {
            let c = &self.shards[i];
            i != me
                && super::handoff::queue_is_long(
                    c.waiting.load(Ordering::Relaxed),
                    c.owned.load(Ordering::Relaxed),
                )
        })
    }
}
