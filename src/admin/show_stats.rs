//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES, TOTALS (PgBouncer 1.25's
//! src/stats.c, one row per database, merged over every shard) and SHOW
//! LATENCY, pgring's own: the full percentile table per pool, since start
//! and over the last `stats_period`.
//!
//! SHOW STATS keeps PgBouncer's 25 columns in order and appends p50, p90,
//! p99 and p99.9 of transaction, query and wait time in microseconds, since
//! start (like the `total_*` columns), so exporters that read columns by
//! name keep working.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::gather;
use super::report::merge_pools;
use super::rows::{self, v, ResultSet, Ty};
use crate::runtime::Shard;
use crate::stats::snapshot::quantile;
use crate::stats::{Counters, StatsSnapshot};

/// The twelve counters in PgBouncer's column order, with their names in
/// SHOW STATS (`total_`/`avg_` prefixed there), SHOW STATS_TOTALS and
/// SHOW STATS_AVERAGES.
const FIELDS: [(&str, &str, &str); 12] = [
    (
        "server_assignment_count",
        "server_assignment_count",
        "server_assignment_count",
    ),
    ("xact_count", "xact_count", "xact_count"),
    ("query_count", "query_count", "query_count"),
    ("received", "bytes_received", "bytes_received"),
    ("sent", "bytes_sent", "bytes_sent"),
    ("xact_time", "xact_time", "xact_time"),
    ("query_time", "query_time", "query_time"),
    ("wait_time", "wait_time", "wait_time"),
    (
        "client_parse_count",
        "client_parse_count",
        "avg_client_parse_count",
    ),
    (
        "server_parse_count",
        "server_parse_count",
        "avg_server_parse_count",
    ),
    ("bind_count", "bind_count", "avg_bind_count"),
    (
        "client_login_count",
        "client_login_count",
        "client_login_count",
    ),
];

/// PgBouncer's `avg_` names in SHOW STATS differ for bytes.
fn avg_name(total_name: &str) -> String {
    match total_name {
        "received" => "avg_recv".into(),
        "sent" => "avg_sent".into(),
        n => format!("avg_{n}"),
    }
}

fn values(c: &Counters) -> [u64; 12] {
    [
        c.server_assignments,
        c.xact_count,
        c.query_count,
        c.received,
        c.sent,
        c.xact_time,
        c.query_time,
        c.wait_time,
        c.client_parses,
        c.server_parses,
        c.binds,
        c.logins,
    ]
}

/// Quantiles appended to SHOW STATS, with their column suffixes.
const STATS_QUANTILES: [(f64, &str); 4] =
    [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99_9")];

/// SHOW STATS column names: PgBouncer's, then the percentiles.
pub fn stats_columns() -> Vec<String> {
    let mut cols = vec!["database".to_owned()];
    cols.extend(FIELDS.iter().map(|f| format!("total_{}", f.0)));
    cols.extend(FIELDS.iter().map(|f| avg_name(f.0)));
    for metric in ["xact", "query", "wait"] {
        for (_, q) in STATS_QUANTILES {
            cols.push(format!("{metric}_{q}_us"));
        }
    }
    cols
}

/// Snapshots merged per database, sorted by name.
async fn per_database(shard: &Rc<Shard>) -> Result<BTreeMap<String, StatsSnapshot>, String> {
    let reports = gather::reports(shard, false)
        .await
        .map_err(|e| e.to_string())?;
    let mut by_db: BTreeMap<String, StatsSnapshot> = BTreeMap::new();
    for p in merge_pools(&reports) {
        by_db.entry(p.db.clone()).or_default().merge(&p.stats);
    }
    Ok(by_db)
}

fn typed(names: &[String], first: Ty, rest: Ty) -> Vec<(&str, Ty)> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), if i == 0 { first } else { rest }))
        .collect()
}

/// SHOW STATS.
pub async fn stats(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let dbs = match per_database(shard).await {
        Ok(d) => d,
        Err(e) => return rows::error(out, e),
    };
    let names = stats_columns();
    let mut rs = ResultSet::new(out, &typed(&names, Ty::Text, Ty::Numeric));
    for (db, s) in &dbs {
        let mut row = vec![v(db)];
        row.extend(values(&s.total).iter().map(v));
        row.extend(values(&s.averages()).iter().map(v));
        for (_, h) in s.latency.named() {
            row.extend(STATS_QUANTILES.iter().map(|(q, _)| v(quantile(h, *q))));
        }
        rs.row(&row);
    }
    rs.finish();
}

/// SHOW STATS_TOTALS (`averages == false`) or SHOW STATS_AVERAGES.
pub async fn stats_split(shard: &Rc<Shard>, out: &mut Vec<u8>, averages: bool) {
    let dbs = match per_database(shard).await {
        Ok(d) => d,
        Err(e) => return rows::error(out, e),
    };
    let mut names = vec!["database".to_owned()];
    names.extend(
        FIELDS
            .iter()
            .map(|f| if averages { f.2 } else { f.1 }.to_owned()),
    );
    let mut rs = ResultSet::new(out, &typed(&names, Ty::Text, Ty::Numeric));
    for (db, s) in &dbs {
        let c = if averages { s.averages() } else { s.total };
        let mut row = vec![v(db)];
        row.extend(values(&c).iter().map(v));
        rs.row(&row);
    }
    rs.finish();
}

/// SHOW TOTALS: name/value pairs over all databases.
pub async fn totals(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let dbs = match per_database(shard).await {
        Ok(d) => d,
        Err(e) => return rows::error(out, e),
    };
    let mut all = StatsSnapshot::default();
    for s in dbs.values() {
        all.merge(s);
    }
    let mut rs = ResultSet::new(out, &[("name", Ty::Text), ("value", Ty::Numeric)]);
    // PgBouncer names these rows after its struct fields (`WTOTAL`).
    let pgb = |f: &str| match f {
        "received" => "client_bytes".to_owned(),
        "sent" => "server_bytes".to_owned(),
        "client_parse_count" | "server_parse_count" | "bind_count" => format!("ps_{f}"),
        other => other.to_owned(),
    };
    for (f, n) in FIELDS.iter().zip(values(&all.total)) {
        rs.row(&[v(format!("total_{}", pgb(f.0))), v(n)]);
    }
    for (f, n) in FIELDS.iter().zip(values(&all.averages())) {
        rs.row(&[v(format!("avg_{}", pgb(f.0))), v(n)]);
    }
    rs.finish();
}

/// Quantiles of SHOW LATENCY.
const LATENCY_QUANTILES: [(f64, &str); 7] = [
    (0.5, "p50"),
    (0.75, "p75"),
    (0.9, "p90"),
    (0.95, "p95"),
    (0.99, "p99"),
    (0.999, "p99_9"),
    (0.9999, "p99_99"),
];

/// SHOW LATENCY column names.
pub fn latency_columns() -> Vec<String> {
    let mut cols: Vec<String> = [
        "database", "user", "metric", "window", "count", "min_us", "mean_us",
    ]
    .map(str::to_owned)
    .to_vec();
    cols.extend(LATENCY_QUANTILES.iter().map(|(_, n)| format!("{n}_us")));
    cols.push("max_us".into());
    cols
}

/// SHOW LATENCY: per pool, per metric (xact, query, wait), per window
/// (`total` since start, `period` the last complete `stats_period`).
pub async fn latency(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let reports = match gather::reports(shard, false).await {
        Ok(r) => r,
        Err(e) => return rows::error(out, e.to_string()),
    };
    let names = latency_columns();
    let cols: Vec<(&str, Ty)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), if i < 4 { Ty::Text } else { Ty::Numeric }))
        .collect();
    let mut rs = ResultSet::new(out, &cols);
    for p in merge_pools(&reports)
        .iter()
        .filter(|p| p.db != super::ADMIN_DB)
    {
        let windows = [
            ("total", &p.stats.latency),
            ("period", &p.stats.period_latency),
        ];
        for (i, (metric, _)) in p.stats.latency.named().iter().enumerate() {
            for (window, lat) in windows {
                let h = lat.named()[i].1;
                let mut row = vec![v(&p.db), v(&p.user), v(metric), v(window), v(h.len())];
                row.push(v(if h.is_empty() { 0 } else { h.min() }));
                row.push(v(h.mean().round() as u64));
                row.extend(LATENCY_QUANTILES.iter().map(|(q, _)| v(quantile(h, *q))));
                row.push(v(h.max()));
                rs.row(&row);
            }
        }
    }
    rs.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_columns_start_with_pgbouncers() {
        let cols = stats_columns();
        let pgbouncer = "database, total_server_assignment_count, total_xact_count, total_query_count, total_received, total_sent, total_xact_time, total_query_time, total_wait_time, total_client_parse_count, total_server_parse_count, total_bind_count, total_client_login_count, avg_server_assignment_count, avg_xact_count, avg_query_count, avg_recv, avg_sent, avg_xact_time, avg_query_time, avg_wait_time, avg_client_parse_count, avg_server_parse_count, avg_bind_count, avg_client_login_count";
        let want: Vec<&str> = pgbouncer.split(", ").collect();
        assert_eq!(&cols[..want.len()], want.as_slice());
        assert_eq!(cols.len(), want.len() + 12);
        assert_eq!(cols.last().map(String::as_str), Some("wait_p99_9_us"));
    }
}
