//! Per-shard counters and HDR latency histograms.
//!
//! Each pool slice records into its own [`PoolStats`] with plain `Cell`s and
//! a `RefCell<Histogram>`: nothing shared is written per transaction. The
//! console asks every shard for a [`PoolSnapshot`] and merges them (counters
//! add, histograms merge), which is how one process-wide answer is built
//! from many lock-free writers.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency tracked: one hour, in microseconds.
const MAX_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // 3 significant digits; bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("valid sigfig"))
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(MAX_US)) as u64
}

/// One pool slice's counters.
#[derive(Debug)]
pub struct PoolStats {
    /// Transactions (server leases) completed.
    pub xact_count: Cell<u64>,
    /// Queries (ReadyForQuery round trips) completed.
    pub query_count: Cell<u64>,
    /// Bytes received from clients.
    pub received: Cell<u64>,
    /// Bytes sent to clients.
    pub sent: Cell<u64>,
    /// Total transaction time, µs.
    pub xact_time: Cell<u64>,
    /// Total query time, µs.
    pub query_time: Cell<u64>,
    /// Total client wait time, µs.
    pub wait_time: Cell<u64>,
    /// Times a server was assigned to a client.
    pub server_assignments: Cell<u64>,
    /// Client logins.
    pub logins: Cell<u64>,
    /// Transaction latency.
    pub xact_hist: RefCell<Histogram<u64>>,
    /// Query latency.
    pub query_hist: RefCell<Histogram<u64>>,
    /// Wait latency.
    pub wait_hist: RefCell<Histogram<u64>>,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            xact_count: Cell::new(0),
            query_count: Cell::new(0),
            received: Cell::new(0),
            sent: Cell::new(0),
            xact_time: Cell::new(0),
            query_time: Cell::new(0),
            wait_time: Cell::new(0),
            server_assignments: Cell::new(0),
            logins: Cell::new(0),
            xact_hist: RefCell::new(histogram()),
            query_hist: RefCell::new(histogram()),
            wait_hist: RefCell::new(histogram()),
        }
    }
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

impl PoolStats {
    /// A finished transaction (one server lease).
    pub fn record_xact(&self, d: Duration) {
        let us = micros(d);
        add(&self.xact_count, 1);
        add(&self.server_assignments, 1);
        add(&self.xact_time, us);
        let _ = self.xact_hist.borrow_mut().record(us.max(1));
    }

    /// A finished query.
    pub fn record_query(&self, d: Duration) {
        let us = micros(d);
        add(&self.query_count, 1);
        add(&self.query_time, us);
        let _ = self.query_hist.borrow_mut().record(us.max(1));
    }

    /// A finished wait for a server.
    pub fn record_wait(&self, d: Duration) {
        let us = micros(d);
        add(&self.wait_time, us);
        let _ = self.wait_hist.borrow_mut().record(us.max(1));
    }

    /// Bytes from the client.
    pub fn add_received(&self, n: usize) {
        add(&self.received, n as u64);
    }

    /// Bytes to the client.
    pub fn add_sent(&self, n: usize) {
        add(&self.sent, n as u64);
    }
}

/// Shard-wide counters that belong to no pool.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Logins refused (auth, limits, unknown database).
    pub login_failures: Cell<u64>,
}
