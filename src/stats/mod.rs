//! Per-shard counters and HDR latency histograms.
//!
//! Each pool slice records into its own [`PoolStats`] with plain `Cell`s and
//! a `RefCell<Histogram>`: nothing shared is written per transaction. The
//! console asks every shard for a [`StatsSnapshot`] and merges them (counters
//! add, histograms merge), which is how one process-wide answer is built
//! from many lock-free writers.
//!
//! Averages and "last period" percentiles follow PgBouncer's `stats_period`:
//! shard 0's timer ([`period`]) asks every shard to roll its window at the
//! same moment, so the period is one clock for the whole process. Rolling
//! clones the running totals and subtracts the previous copy; nothing extra
//! is done per transaction.
//!
//! Not here: the SHOW tables ([`crate::admin`]) and the Prometheus text
//! ([`crate::metrics`]).

pub mod period;
pub mod snapshot;

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub use snapshot::{Counters, Latency, StatsSnapshot};

/// Highest latency tracked: one hour, in microseconds.
pub const MAX_US: u64 = 3_600_000_000;

/// An empty latency histogram. Two significant digits (1% error) keep one
/// histogram near 20 KiB, against ~180 KiB at three: every pool slice holds
/// nine of them (running, previous roll, last period).
pub fn histogram() -> Histogram<u64> {
    // Bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 2)
        .unwrap_or_else(|_| Histogram::new(2).expect("valid sigfig"))
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(MAX_US)) as u64
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

/// One pool slice's counters, written by this shard only.
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
    /// Named Parse messages from clients (prepared statement tracking).
    pub client_parses: Cell<u64>,
    /// Parse messages pgring sent to servers (prepared statement tracking).
    pub server_parses: Cell<u64>,
    /// Bind messages of tracked prepared statements.
    pub binds: Cell<u64>,
    /// Transaction latency.
    pub xact_hist: RefCell<Histogram<u64>>,
    /// Query latency.
    pub query_hist: RefCell<Histogram<u64>>,
    /// Wait latency (an assignment without a wait counts as 0 µs).
    pub wait_hist: RefCell<Histogram<u64>>,
    /// Waits recorded whose transaction has not finished yet.
    pending_waits: Cell<u64>,
    window: RefCell<Window>,
}

/// The `stats_period` window: the totals at the last roll, and what the
/// last complete period added.
#[derive(Debug, Clone)]
struct Window {
    at_roll: StatsTotals,
    rolled: Instant,
    period: StatsTotals,
    period_len: Duration,
}

/// Counters plus histograms at one moment.
#[derive(Debug, Clone, Default)]
struct StatsTotals {
    counters: Counters,
    latency: Latency,
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
            client_parses: Cell::new(0),
            server_parses: Cell::new(0),
            binds: Cell::new(0),
            xact_hist: RefCell::new(histogram()),
            query_hist: RefCell::new(histogram()),
            wait_hist: RefCell::new(histogram()),
            pending_waits: Cell::new(0),
            window: RefCell::new(Window {
                at_roll: StatsTotals::default(),
                rolled: Instant::now(),
                period: StatsTotals::default(),
                period_len: Duration::ZERO,
            }),
        }
    }
}

impl PoolStats {
    /// A finished transaction (one server lease). An assignment that did
    /// not wait records a zero wait, so the wait histogram counts every
    /// assignment as PgBouncer's `avg_wait_time` does.
    pub fn record_xact(&self, d: Duration) {
        let us = micros(d);
        add(&self.xact_count, 1);
        add(&self.server_assignments, 1);
        add(&self.xact_time, us);
        let _ = self.xact_hist.borrow_mut().record(us.max(1));
        match self.pending_waits.get() {
            0 => {
                let _ = self.wait_hist.borrow_mut().record(0);
            }
            n => self.pending_waits.set(n - 1),
        }
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
        add(&self.pending_waits, 1);
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

    /// A client logged into this pool.
    pub fn record_login(&self) {
        add(&self.logins, 1);
    }

    /// A named Parse from a client (SHOW STATS `total_client_parse_count`).
    pub fn record_client_parse(&self) {
        add(&self.client_parses, 1);
    }

    /// A Parse pgring sent to a server (`total_server_parse_count`).
    pub fn record_server_parse(&self) {
        add(&self.server_parses, 1);
    }

    /// A Bind of a tracked prepared statement (`total_bind_count`).
    pub fn record_bind(&self) {
        add(&self.binds, 1);
    }

    fn counters(&self) -> Counters {
        Counters {
            server_assignments: self.server_assignments.get(),
            xact_count: self.xact_count.get(),
            query_count: self.query_count.get(),
            received: self.received.get(),
            sent: self.sent.get(),
            xact_time: self.xact_time.get(),
            query_time: self.query_time.get(),
            wait_time: self.wait_time.get(),
            client_parses: self.client_parses.get(),
            server_parses: self.server_parses.get(),
            binds: self.binds.get(),
            logins: self.logins.get(),
        }
    }

    fn totals(&self) -> StatsTotals {
        StatsTotals {
            counters: self.counters(),
            latency: Latency {
                xact: self.xact_hist.borrow().clone(),
                query: self.query_hist.borrow().clone(),
                wait: self.wait_hist.borrow().clone(),
            },
        }
    }

    /// Closes the current `stats_period`: what was added since the last
    /// roll becomes "the last period".
    pub fn roll(&self) {
        let now = self.totals();
        let mut w = self.window.borrow_mut();
        let mut period = now.clone();
        period.counters = now.counters.minus(&w.at_roll.counters);
        period.latency.subtract(&w.at_roll.latency);
        w.period = period;
        w.period_len = w.rolled.elapsed();
        w.at_roll = now;
        w.rolled = Instant::now();
    }

    /// A sendable copy for the console and /metrics.
    pub fn snapshot(&self) -> StatsSnapshot {
        let now = self.totals();
        let w = self.window.borrow();
        StatsSnapshot {
            total: now.counters,
            latency: now.latency,
            period: w.period.counters,
            period_latency: w.period.latency.clone(),
            period_len: w.period_len,
        }
    }
}

/// Shard-wide counters that belong to no pool.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Logins refused (auth, limits, unknown database).
    pub login_failures: Cell<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_stay_small() {
        let h = histogram();
        // Every pool slice keeps nine; keep each near 20 KiB of counts.
        assert!(h.distinct_values() < 4096, "{}", h.distinct_values());
    }

    #[test]
    fn every_assignment_has_one_wait_sample() {
        let s = PoolStats::default();
        s.record_wait(Duration::from_millis(3));
        s.record_xact(Duration::from_millis(5));
        s.record_xact(Duration::from_millis(5));
        let snap = s.snapshot();
        assert_eq!(snap.latency.wait.len(), 2);
        assert_eq!(snap.latency.xact.len(), 2);
        assert_eq!(snap.total.server_assignments, 2);
        assert_eq!(snap.total.wait_time, 3000);
    }

    #[test]
    fn roll_separates_the_last_period() {
        let s = PoolStats::default();
        s.record_xact(Duration::from_millis(1));
        s.roll();
        s.record_xact(Duration::from_millis(2));
        s.record_xact(Duration::from_millis(2));
        s.roll();
        let snap = s.snapshot();
        assert_eq!(snap.total.xact_count, 3);
        assert_eq!(snap.period.xact_count, 2);
        assert_eq!(snap.period_latency.xact.len(), 2);
        assert_eq!(snap.latency.xact.len(), 3);
    }
}
