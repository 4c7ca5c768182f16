//! The `stats_period` clock: shard 0 wakes every `stats_period` seconds,
//! asks every shard to roll its window (one clock for the whole process, so
//! per-shard periods line up), and logs PgBouncer's stats line from the
//! merged result (src/stats.c, `refresh_stats`):
//!
//! `stats: 12 xacts/s, 30 queries/s, 0 client parses/s, 0 server parses/s,
//! 0 binds/s, in 2048 B/s, out 8192 B/s, xact 1200 us, query 400 us, wait 0 us`
//!
//! Shard 0 also starts the Prometheus listener when `stats_listen` is set.

use std::rc::Rc;
use std::time::Duration;

use tracing::info;

use super::{Counters, StatsSnapshot};
use crate::admin::gather::{gather, Answer, Op};
use crate::runtime::{self, Shard};

/// Starts the stats clock and the metrics listener (shard 0 only).
pub fn start(shard: &Rc<Shard>) {
    if shard.id != 0 {
        return;
    }
    crate::metrics::start(shard);
    let shard = shard.clone();
    runtime::spawn(async move {
        loop {
            let period = shard.config().general.stats_period.max(1);
            runtime::sleep(Duration::from_secs(u64::from(period))).await;
            if shard.is_stopping() {
                break;
            }
            roll_and_log(&shard).await;
        }
    });
}

async fn roll_and_log(shard: &Rc<Shard>) {
    let Ok(answers) = gather(shard, Op::RollStats).await else {
        return;
    };
    let mut all = StatsSnapshot::default();
    for report in answers.into_iter().filter_map(Answer::into_report) {
        for pool in &report.pools {
            all.merge(&pool.stats);
        }
    }
    if shard.config().general.log_stats {
        info!("{}", log_line(&all.averages()));
    }
}

/// PgBouncer's wording, figures over the last period.
pub fn log_line(a: &Counters) -> String {
    format!(
        "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, {} binds/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
        a.xact_count,
        a.query_count,
        a.client_parses,
        a.server_parses,
        a.binds,
        a.received,
        a.sent,
        a.xact_time,
        a.query_time,
        a.wait_time
    )
}
