//! Sendable stats: what one shard reports about one pool, and how reports
//! from many shards merge into one answer.
//!
//! Everything here is plain data (`Histogram<u64>` is `Send`), so a snapshot
//! crosses the mesh by value. Averages are PgBouncer's (`src/stats.c`,
//! `calc_average`): counts and bytes per second over the last complete
//! `stats_period`, times per transaction, query or assignment.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::histogram;

/// PgBouncer's per-pool counters (`PgStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Times a server was assigned to a client.
    pub server_assignments: u64,
    /// Transactions.
    pub xact_count: u64,
    /// Queries.
    pub query_count: u64,
    /// Bytes from clients.
    pub received: u64,
    /// Bytes to clients.
    pub sent: u64,
    /// Transaction time, µs.
    pub xact_time: u64,
    /// Query time, µs.
    pub query_time: u64,
    /// Client wait time, µs.
    pub wait_time: u64,
    /// Named Parse messages from clients.
    pub client_parses: u64,
    /// Parse messages sent to servers.
    pub server_parses: u64,
    /// Binds of tracked statements.
    pub binds: u64,
    /// Client logins.
    pub logins: u64,
}

impl Counters {
    fn zip(&self, o: &Counters, f: impl Fn(u64, u64) -> u64) -> Counters {
        Counters {
            server_assignments: f(self.server_assignments, o.server_assignments),
            xact_count: f(self.xact_count, o.xact_count),
            query_count: f(self.query_count, o.query_count),
            received: f(self.received, o.received),
            sent: f(self.sent, o.sent),
            xact_time: f(self.xact_time, o.xact_time),
            query_time: f(self.query_time, o.query_time),
            wait_time: f(self.wait_time, o.wait_time),
            client_parses: f(self.client_parses, o.client_parses),
            server_parses: f(self.server_parses, o.server_parses),
            binds: f(self.binds, o.binds),
            logins: f(self.logins, o.logins),
        }
    }

    /// Field-wise sum.
    pub fn plus(&self, o: &Counters) -> Counters {
        self.zip(o, u64::wrapping_add)
    }

    /// Field-wise difference (never below zero).
    pub fn minus(&self, o: &Counters) -> Counters {
        self.zip(o, u64::saturating_sub)
    }

    /// PgBouncer's averages of a period of `len` that added `self`: rates
    /// per second for counts and bytes, mean µs for the three times.
    pub fn averages(&self, len: Duration) -> Counters {
        let us = len.as_micros() as u64;
        if us == 0 {
            return Counters::default();
        }
        let rate = |n: u64| (u128::from(n) * 1_000_000 / u128::from(us)) as u64;
        let mean = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
        Counters {
            server_assignments: rate(self.server_assignments),
            xact_count: rate(self.xact_count),
            query_count: rate(self.query_count),
            received: rate(self.received),
            sent: rate(self.sent),
            xact_time: mean(self.xact_time, self.xact_count),
            query_time: mean(self.query_time, self.query_count),
            wait_time: mean(self.wait_time, self.server_assignments),
            client_parses: rate(self.client_parses),
            server_parses: rate(self.server_parses),
            binds: rate(self.binds),
            logins: rate(self.logins),
        }
    }
}

/// Transaction, query and wait latency histograms (µs).
#[derive(Debug, Clone)]
pub struct Latency {
    /// Transaction time.
    pub xact: Histogram<u64>,
    /// Query time.
    pub query: Histogram<u64>,
    /// Client wait time.
    pub wait: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// Three empty histograms.
    pub fn new() -> Self {
        Latency {
            xact: histogram(),
            query: histogram(),
            wait: histogram(),
        }
    }

    /// Adds another shard's (or pool's) histograms. Same bounds everywhere,
    /// so this cannot fail.
    pub fn merge(&mut self, o: &Latency) {
        let _ = self.xact.add(&o.xact);
        let _ = self.query.add(&o.query);
        let _ = self.wait.add(&o.wait);
    }

    /// Removes an earlier copy of the same histograms.
    pub fn subtract(&mut self, o: &Latency) {
        let _ = self.xact.subtract(&o.xact);
        let _ = self.query.subtract(&o.query);
        let _ = self.wait.subtract(&o.wait);
    }

    /// The three histograms with their names, in console order.
    pub fn named(&self) -> [(&'static str, &Histogram<u64>); 3] {
        [
            ("xact", &self.xact),
            ("query", &self.query),
            ("wait", &self.wait),
        ]
    }
}

/// One pool's stats as a shard reports them.
#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    /// Totals since start.
    pub total: Counters,
    /// Latency since start.
    pub latency: Latency,
    /// What the last complete `stats_period` added.
    pub period: Counters,
    /// Latency over the last complete `stats_period`.
    pub period_latency: Latency,
    /// Length of that period (zero before the first one ends).
    pub period_len: Duration,
}

impl StatsSnapshot {
    /// Adds another shard's snapshot of the same pool (or another pool of
    /// the same database). Periods end together (one timer rolls every
    /// shard), so the longer length is kept.
    pub fn merge(&mut self, o: &StatsSnapshot) {
        self.total = self.total.plus(&o.total);
        self.period = self.period.plus(&o.period);
        self.latency.merge(&o.latency);
        self.period_latency.merge(&o.period_latency);
        self.period_len = self.period_len.max(o.period_len);
    }

    /// PgBouncer's `avg_*` figures.
    pub fn averages(&self) -> Counters {
        self.period.averages(self.period_len)
    }
}

/// The value at quantile `q` (0..=1), 0 for an empty histogram.
pub fn quantile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_follow_pgbouncer() {
        let c = Counters {
            xact_count: 120,
            xact_time: 1200,
            server_assignments: 120,
            wait_time: 240,
            received: 6000,
            ..Default::default()
        };
        let a = c.averages(Duration::from_secs(60));
        assert_eq!(a.xact_count, 2);
        assert_eq!(a.xact_time, 10);
        assert_eq!(a.wait_time, 2);
        assert_eq!(a.received, 100);
        assert_eq!(a.query_time, 0);
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = StatsSnapshot::default();
        let mut b = StatsSnapshot::default();
        a.total.xact_count = 2;
        b.total.xact_count = 3;
        let _ = a.latency.xact.record(100);
        let _ = b.latency.xact.record(200);
        let _ = b.latency.xact.record(300);
        a.merge(&b);
        assert_eq!(a.total.xact_count, 5);
        assert_eq!(a.latency.xact.len(), 3);
        assert!(quantile(&a.latency.xact, 1.0) >= 300);
    }
}
