//! Asking every shard: one request per shard through the mesh, each with
//! the requester's reply channel, answered synchronously by the shard that
//! receives it (no task, no rendezvous), collected here.
//!
//! Replies travel on a crossbeam channel that the requesting console polls
//! every millisecond: console commands are rare, so a poll is cheaper than
//! wiring a waker across threads, and a shard that stopped (shutdown) costs
//! a timeout, not a hang.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{self, ShardCommand};
use super::report::{self, ShardReport};
use super::AdminRequest;
use crate::config::Config;
use crate::runtime::files::Files;
use crate::runtime::mesh::MeshMsg;
use crate::runtime::{self, Shard};

/// How long a console waits for the other shards.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a shard is asked to do.
#[derive(Clone, Debug)]
pub enum Op {
    /// Report pools and stats; with `conns`, a row per client and server.
    Report {
        /// Include SHOW CLIENTS / SHOW SERVERS rows.
        conns: bool,
    },
    /// Close the current `stats_period`, then report.
    RollStats,
    /// Apply a control command.
    Control(ShardCommand),
    /// RELOAD phase 1: check that this shard can take the configuration.
    Validate(Arc<Config>, Arc<Files>),
    /// RELOAD phase 2: switch to the configuration validated in phase 1.
    Apply,
    /// RELOAD phase 2 when some shard refused: forget it.
    Abort,
}

/// A shard's answer.
#[derive(Debug)]
pub enum Answer {
    /// To `Report` and `RollStats`.
    Report(Box<ShardReport>),
    /// To everything else: a count (clients killed, servers marked...) or
    /// why the shard refused.
    Done(Result<u32, String>),
}

impl Answer {
    /// The report inside, if this is one.
    pub fn into_report(self) -> Option<ShardReport> {
        match self {
            Answer::Report(r) => Some(*r),
            Answer::Done(_) => None,
        }
    }
}

/// Runs `op` on this shard.
pub fn handle(shard: &Rc<Shard>, op: Op) -> Answer {
    match op {
        Op::Report { conns } => Answer::Report(Box::new(report::build(shard, conns))),
        Op::RollStats => {
            for pool in shard.pools.borrow().values() {
                pool.stats.roll();
            }
            Answer::Report(Box::new(report::build(shard, false)))
        }
        Op::Control(cmd) => Answer::Done(Ok(control::apply(shard, &cmd))),
        Op::Validate(config, files) => {
            Answer::Done(super::reload::validate_on_shard(shard, config, files))
        }
        Op::Apply => Answer::Done(super::reload::apply_on_shard(shard)),
        Op::Abort => {
            shard.admin.pending.borrow_mut().take();
            Answer::Done(Ok(0))
        }
    }
}

/// Why not every shard answered.
#[derive(Debug, thiserror::Error)]
#[error("{missing} of {workers} shards did not answer")]
pub struct GatherError {
    /// Shards that did not answer in time.
    pub missing: usize,
    /// Shards in the process.
    pub workers: usize,
}

/// Runs `op` on every shard (this one directly) and returns the answers,
/// this shard's first.
pub async fn gather(shard: &Rc<Shard>, op: Op) -> Result<Vec<Answer>, GatherError> {
    let workers = shard.shared.workers;
    let (tx, rx) = crossbeam::channel::bounded(workers);
    for to in (0..workers).filter(|&i| i != shard.id) {
        let req = AdminRequest {
            op: op.clone(),
            reply: tx.clone(),
        };
        shard.mesh.send(to, MeshMsg::Admin(req));
    }
    drop(tx);
    let mut answers = vec![handle(shard, op)];
    let deadline = Instant::now() + GATHER_TIMEOUT;
    while answers.len() < workers {
        match rx.try_recv() {
            Ok(a) => answers.push(a),
            Err(crossbeam::channel::TryRecvError::Empty) if Instant::now() < deadline => {
                runtime::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => {
                return Err(GatherError {
                    missing: workers - answers.len(),
                    workers,
                })
            }
        }
    }
    Ok(answers)
}

/// [`gather`] of `Op::Report`, as reports.
pub async fn reports(shard: &Rc<Shard>, conns: bool) -> Result<Vec<ShardReport>, GatherError> {
    let answers = gather(shard, Op::Report { conns }).await?;
    Ok(answers
        .into_iter()
        .filter_map(Answer::into_report)
        .collect())
}

/// [`gather`] of a control command: the summed counts, or the first refusal.
pub async fn control_all(shard: &Rc<Shard>, cmd: ShardCommand) -> Result<u32, String> {
    let answers = gather(shard, Op::Control(cmd))
        .await
        .map_err(|e| e.to_string())?;
    let mut total = 0;
    for a in answers {
        if let Answer::Done(r) = a {
            total += r?;
        }
    }
    Ok(total)
}
