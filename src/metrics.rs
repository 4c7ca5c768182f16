//! Prometheus `/metrics` on `stats_listen`: a minimal HTTP/1.1 server on
//! shard 0 (one request per connection, `Connection: close`), answering
//! with the text exposition format.
//!
//! The gauges and counters carry the names pgbouncer_exporter publishes
//! (`pgbouncer_pools_*`, `pgbouncer_stats_*`, `pgbouncer_databases_*`), so
//! existing dashboards work against pgring without an exporter. On top come
//! real histograms from the HDR data: `pgring_xact_duration_seconds`,
//! `pgring_query_duration_seconds` and `pgring_wait_duration_seconds`, per
//! pool, with `_bucket{le=...}`, `_sum` and `_count`.
//!
//! A scrape costs one gather over the mesh, the same as SHOW STATS; nothing
//! is added to the transaction path.

use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tracing::{info, warn};

use crate::admin::gather;
use crate::admin::report::{merge_pools, PoolReport};
use crate::runtime::io::{read_into, timeout, write_all, Buf};
use crate::runtime::{self, tcp, Shard, Stream};

/// Histogram bucket bounds, seconds (Prometheus' defaults, finer below 5 ms).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Starts the listener if `stats_listen` is set (shard 0 calls this).
pub fn start(shard: &Rc<Shard>) {
    let Some(addr) = shard.config().general.stats_listen.clone() else {
        return;
    };
    match tcp::bind(&addr) {
        Ok(listener) => {
            info!(addr, "serving Prometheus metrics on /metrics");
            runtime::spawn(serve(shard.clone(), listener));
        }
        Err(e) => warn!(addr, error = %e, "cannot listen on stats_listen; no /metrics"),
    }
}

async fn serve(shard: Rc<Shard>, listener: crate::runtime::io::Listener) {
    while !shard.is_stopping() {
        match listener.accept().await {
            Ok(stream) => runtime::spawn(handle(shard.clone(), stream)),
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                runtime::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(shard: Rc<Shard>, mut stream: Stream) {
    let Some(Some(head)) = timeout(Duration::from_secs(5), read_head(&mut stream)).await else {
        return;
    };
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let response = match (method, path) {
        ("GET", "/metrics") => match render(&shard).await {
            Ok(body) => http("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body),
            Err(e) => http("503 Service Unavailable", "text/plain", &e),
        },
        ("GET", _) => http("404 Not Found", "text/plain", "try /metrics\n"),
        _ => http("405 Method Not Allowed", "text/plain", "GET only\n"),
    };
    let _ = write_all(&mut stream, response.as_bytes()).await;
}

/// Reads up to the blank line ending the request head.
async fn read_head(stream: &mut Stream) -> Option<String> {
    let mut buf = Buf {
        bytes: vec![0; 1024],
        filled: 0,
    };
    loop {
        if let Some(end) = buf.data().windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&buf.data()[..end]).into_owned());
        }
        if buf.filled >= MAX_HEAD || read_into(stream, &mut buf).await.ok()? == 0 {
            return None;
        }
    }
}

fn http(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The exposition text, gathered from every shard.
pub async fn render(shard: &Rc<Shard>) -> Result<String, String> {
    let reports = gather::reports(shard, false)
        .await
        .map_err(|e| e.to_string())?;
    let pools: Vec<PoolReport> = merge_pools(&reports)
        .into_iter()
        .filter(|p| p.db != crate::admin::ADMIN_DB)
        .collect();
    let mut out = String::new();
    let config = shard.config();
    gauge(
        &mut out,
        "pgbouncer_up",
        "The pooler answers.",
        &[("", 1.0)],
    );
    let version = format!("version=\"{}\"", escape(crate::admin::SERVER_VERSION));
    gauge(
        &mut out,
        "pgbouncer_version_info",
        "Version of pgring.",
        &[(&version, 1.0)],
    );
    let max = f64::from(config.general.max_client_conn);
    gauge(
        &mut out,
        "pgbouncer_config_max_client_connections",
        "Configured max_client_conn.",
        &[("", max)],
    );
    family(
        &mut out,
        "counter",
        "pgring_spin_seconds_total",
        "CPU time the shards spent polling before they slept (spin_before_park_us).",
        &[("", crate::runtime::spun_total().as_secs_f64())],
    );
    shard_cpu(&mut out, &shard.shared.threads.cpu());
    pool_gauges(&mut out, &pools);
    stats_counters(&mut out, &pools);
    histograms(&mut out, &pools);
    Ok(out)
}

/// Each shard thread's CPU time and time spent waiting for a CPU (`runtime::sched`).
fn shard_cpu(out: &mut String, cpu: &[Option<crate::runtime::sched::ShardCpu>]) {
    let labels: Vec<String> = (0..cpu.len()).map(|i| format!("shard=\"{i}\"")).collect();
    let samples = |f: fn(&crate::runtime::sched::ShardCpu) -> Option<f64>| {
        cpu.iter()
            .zip(&labels)
            .filter_map(|(c, l)| Some((l.as_str(), f(c.as_ref()?)?)))
            .collect::<Vec<_>>()
    };
    family(
        out,
        "counter",
        "pgring_shard_cpu_seconds_total",
        "CPU time each shard thread has used.",
        &samples(|c| Some(c.on_cpu.as_secs_f64())),
    );
    family(
        out,
        "counter",
        "pgring_shard_cpu_wait_seconds_total",
        "Time each shard thread was ready to run but waited for a CPU (its core was busy with \
         other work): a starved shard serves its clients late.",
        &samples(|c| Some(c.waiting.as_secs_f64())),
    );
    family(
        out,
        "counter",
        "pgring_shard_sleeps_total",
        "Times each shard thread slept for want of work (each is a wake-up later).",
        &samples(|c| c.sleeps.map(|n| n as f64)),
    );
    family(
        out,
        "counter",
        "pgring_shard_preemptions_total",
        "Times each shard thread lost its CPU to other work while it had work of its own.",
        &samples(|c| c.preempted.map(|n| n as f64)),
    );
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn pool_labels(p: &PoolReport) -> String {
    format!(
        "database=\"{}\",user=\"{}\"",
        escape(&p.db),
        escape(&p.user)
    )
}

/// One metric family: HELP, TYPE, then `name{labels} value` lines.
fn family(out: &mut String, kind: &str, name: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, f64)]) {
    family(out, "gauge", name, help, samples);
}

fn pool_gauges(out: &mut String, pools: &[PoolReport]) {
    let labels: Vec<String> = pools.iter().map(pool_labels).collect();
    type Get = fn(&PoolReport) -> f64;
    let families: [(&str, &str, Get); 8] = [
        (
            "client_active_connections",
            "Client connections linked to a server or idle.",
            |p| f64::from(p.cl_active),
        ),
        (
            "client_waiting_connections",
            "Client connections waiting for a server.",
            |p| f64::from(p.cl_waiting),
        ),
        (
            "server_active_connections",
            "Server connections linked to a client.",
            |p| f64::from(p.sv_active),
        ),
        (
            "server_idle_connections",
            "Server connections ready for use.",
            |p| f64::from(p.sv_idle),
        ),
        (
            "server_used_connections",
            "Server connections waiting for a check.",
            |_| 0.0,
        ),
        (
            "server_testing_connections",
            "Server connections running a reset or check.",
            |_| 0.0,
        ),
        (
            "server_login_connections",
            "Server connections logging in.",
            |p| f64::from(p.sv_login),
        ),
        (
            "client_maxwait_seconds",
            "Age of the oldest waiting client.",
            |p| p.maxwait.as_secs_f64(),
        ),
    ];
    for (suffix, help, get) in families {
        let samples: Vec<(&str, f64)> = labels
            .iter()
            .zip(pools)
            .map(|(l, p)| (l.as_str(), get(p)))
            .collect();
        gauge(out, &format!("pgbouncer_pools_{suffix}"), help, &samples);
    }
}

/// Per-database counters, as pgbouncer_exporter names SHOW STATS.
fn stats_counters(out: &mut String, pools: &[PoolReport]) {
    let mut by_db: std::collections::BTreeMap<&str, crate::stats::Counters> = Default::default();
    for p in pools {
        let e = by_db.entry(p.db.as_str()).or_default();
        *e = e.plus(&p.stats.total);
    }
    let labels: Vec<(String, crate::stats::Counters)> = by_db
        .into_iter()
        .map(|(db, c)| (format!("database=\"{}\"", escape(db)), c))
        .collect();
    type Get = fn(&crate::stats::Counters) -> f64;
    let families: [(&str, &str, Get); 8] = [
        (
            "sql_transactions_pooled_total",
            "Transactions pooled.",
            |c| c.xact_count as f64,
        ),
        ("queries_pooled_total", "Queries pooled.", |c| {
            c.query_count as f64
        }),
        (
            "server_assignments_total",
            "Times a server was assigned to a client.",
            |c| c.server_assignments as f64,
        ),
        (
            "received_bytes_total",
            "Bytes received from clients.",
            |c| c.received as f64,
        ),
        ("sent_bytes_total", "Bytes sent to clients.", |c| {
            c.sent as f64
        }),
        (
            "server_in_transaction_seconds_total",
            "Time servers spent in transactions.",
            |c| c.xact_time as f64 / 1e6,
        ),
        (
            "queries_duration_seconds_total",
            "Time servers spent running queries.",
            |c| c.query_time as f64 / 1e6,
        ),
        (
            "client_wait_seconds_total",
            "Time clients waited for a server.",
            |c| c.wait_time as f64 / 1e6,
        ),
    ];
    for (suffix, help, get) in families {
        let samples: Vec<(&str, f64)> = labels.iter().map(|(l, c)| (l.as_str(), get(c))).collect();
        family(
            out,
            "counter",
            &format!("pgbouncer_stats_{suffix}"),
            help,
            &samples,
        );
    }
}

fn histograms(out: &mut String, pools: &[PoolReport]) {
    let metrics = [
        ("xact", "Transaction time (server lease), seconds."),
        ("query", "Query time, seconds."),
        ("wait", "Client wait for a server, seconds."),
    ];
    for (i, (metric, help)) in metrics.iter().enumerate() {
        let name = format!("pgring_{metric}_duration_seconds");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for p in pools {
            let h = p.stats.latency.named()[i].1;
            let total_us = [
                p.stats.total.xact_time,
                p.stats.total.query_time,
                p.stats.total.wait_time,
            ][i];
            histogram(out, &name, &pool_labels(p), h, total_us);
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>, total_us: u64) {
    for le in BUCKETS {
        let n = h.count_between(0, (le * 1e6) as u64);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", total_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_lines_are_cumulative() {
        let mut h = crate::stats::histogram();
        for us in [50, 200, 2_000, 2_000_000] {
            let _ = h.record(us);
        }
        let mut out = String::new();
        histogram(&mut out, "x", "database=\"d\"", &h, 2_002_250);
        assert!(
            out.contains("x_bucket{database=\"d\",le=\"0.0001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{database=\"d\",le=\"0.0025\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{database=\"d\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_count{database=\"d\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{database=\"d\"} 2.00225\n"), "{out}");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
