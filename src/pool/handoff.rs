//! Handoff between shards (the mechanism is described at the top of
//! `pool`): steal requests, moving an idle server to another shard, adopting
//! one, and rebalancing servers towards shards that are short of them.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, warn};

use super::Pool;
use crate::runtime::mesh::MeshMsg;
use crate::runtime::Shard;
use crate::server::{DetachedServer, ServerConn};

/// How long a client waits on a short queue before its shard looks for other shards' idle
/// servers ([`Pool::ask_other_shards_if_short`]).
const ASK_AFTER: Duration = Duration::from_millis(1);

/// Is a queue of `waiting` clients long for a shard holding `owned` servers: more than one
/// waiter per two servers? A shorter queue is served by the shard's own next releases within
/// a fraction of a transaction, so moving a server between shards for it (detach, mesh
/// message, a wake-up of the other shard, attach) costs more than it saves. At 50 clients on
/// 2 shards, moving a server whenever the other shard had any waiter moved one on ~20% of
/// transactions; with this rule, CPU per transaction fell ~10% and TPS rose, p99 unchanged
/// (lab, interleaved runs). A shard with no server and one waiter always counts as long.
pub(super) fn queue_is_long(waiting: u32, owned: u32) -> bool {
    waiting > owned / 2
}

impl Pool {
    /// A client just queued here: if the queue is long, asks the other shards for an idle
    /// server now; if it is short, looks again in [`ASK_AFTER`] (once per pool slice at a
    /// time), so a short queue whose own servers are all held by long transactions still gets
    /// another shard's idle server within a millisecond, not at the next janitor tick.
    pub(super) fn ask_other_shards_if_short(self: &Rc<Self>, shard: &Rc<Shard>) {
        if self.global.shards.len() < 2 {
            return;
        }
        if queue_is_long(self.waiters.borrow().len() as u32, self.owned()) {
            self.ask_other_shards(shard);
            return;
        }
        if self.ask_scheduled.replace(true) {
            return;
        }
        let (pool, shard) = (self.clone(), shard.clone());
        crate::runtime::spawn(async move {
            let mut delay = ASK_AFTER;
            loop {
                crate::runtime::sleep(delay).await;
                let now = crate::runtime::io::now();
                let oldest = pool.waiters.borrow().front().map(|w| w.since);
                let Some(since) = oldest else { break };
                let waited = now.saturating_duration_since(since);
                if waited >= ASK_AFTER {
                    pool.ask_other_shards(&shard);
                    break;
                }
                delay = ASK_AFTER - waited;
            }
            pool.ask_scheduled.set(false);
        });
    }

    /// Servers this slice holds: leased, opening or idle.
    fn owned(&self) -> u32 {
        self.active.get() + self.opening.get() + self.idle.borrow().len() as u32
    }

    /// Asks shards that hold idle servers to hand one over.
    pub(super) fn ask_other_shards(&self, shard: &Shard) {
        for i in 0..self.global.shards.len() {
            if i != shard.id && self.global.shard(i).idle.load(Ordering::Relaxed) > 0 {
                shard.mesh.send(
                    i,
                    MeshMsg::Steal {
                        pool: self.key.clone(),
                        from: shard.id,
                    },
                );
            }
        }
    }

    /// Under load every shard has waiters and none would ever give a server away, so the
    /// shards that first took the budget would keep it: clients on a shard that came late
    /// would starve, and per-shard FIFOs drift apart (what p99 sees). So at each janitor
    /// tick a shard publishes what it holds and its demand (clients leasing or waiting,
    /// smoothed). A shard's fair share of the pool's open servers is proportional to its
    /// demand; a shard holding a whole server more than its share sends its next released
    /// servers to the shard furthest below its own.
    ///
    /// Rules measured wrong before this one:
    /// - deciding at every release moved a server on a quarter of all transactions and cost
    ///   a third of the throughput (50 clients);
    /// - moving towards the shard whose oldest waiter had waited longest, once per tick, let
    ///   the split swing for hundreds of milliseconds (the age it reacts to lags the split
    ///   by a whole queue turn), so half of the clients waited three times as long as the
    ///   other half (1000 clients: p99.9 twice PgBouncer's);
    /// - weighting demand by each shard's pace (transactions per server) ran away: a shard
    ///   whose core is busy turns servers around slowly however many it holds, so its pace
    ///   fell as it was given more, until it held three quarters of the pool and served
    ///   fewer transactions than the other shard with a quarter.
    ///
    /// Demand changes slowly and does not depend on the split, so this converges instead of
    /// swinging, and moves nothing when load is balanced.
    pub(super) fn rebalance(&self, me: usize) {
        let shards = self.global.shards.len();
        if shards < 2 {
            return;
        }
        let waiting = self.waiters.borrow().len() as u32;
        let demand = smooth(self.demand.get(), self.active.get() + waiting);
        self.demand.set(demand);
        let owned = self.owned();
        let counts = self.global.shard(me);
        counts.demand.store(demand, Ordering::Relaxed);
        counts.owned.store(owned, Ordering::Relaxed);
        let view: Vec<ShardView> = (0..shards)
            .map(|i| {
                if i == me {
                    return ShardView {
                        owned,
                        demand,
                        waiting: waiting > 0,
                    };
                }
                let c = self.global.shard(i);
                ShardView {
                    owned: c.owned.load(Ordering::Relaxed),
                    demand: c.demand.load(Ordering::Relaxed),
                    waiting: c.waiting.load(Ordering::Relaxed) > 0,
                }
            })
            .collect();
        let give = surplus(me, self.global.open_count(), &view);
        tracing::trace!(shard = me, owned, demand, waiting, "rebalance tick");
        if let Some((to, n)) = give {
            debug!(db = %self.key.db, user = %self.key.user, shard = me, to, servers = n, owned, "rebalancing: servers over this shard's share go to another shard");
        }
        self.give_to.set(give);
    }

    pub(super) fn send_to(&self, shard: &Shard, to: usize, server: ServerConn) {
        match server.detach() {
            Ok(detached) => shard.mesh.send(
                to,
                MeshMsg::Handoff {
                    pool: self.key.clone(),
                    server: detached,
                },
            ),
            Err(e) => {
                warn!(error = %e, "server handoff failed; closing it");
                self.global.closed();
            }
        }
    }

    /// A `Steal` request from shard `to`: send an idle server if we have one
    /// and nobody here is waiting. The server is first checked as a lease here would check it
    /// (lifetime, closed by PostgreSQL while idle, `server_check_query` when due): the other
    /// shard hands it straight to a waiter. One that fails is closed and the next idle one
    /// tried.
    pub fn give_to_shard(self: &Rc<Self>, shard: &Rc<Shard>, to: usize) {
        if !self.waiters.borrow().is_empty() || self.idle_count() == 0 {
            return;
        }
        let (pool, shard) = (self.clone(), shard.clone());
        crate::runtime::spawn(async move {
            while pool.waiters.borrow().is_empty() {
                let Some(mut server) = pool.pop_idle() else {
                    return;
                };
                match pool.unusable(&mut server).await {
                    Some(reason) => pool.close(&shard, server, reason),
                    // A client of ours may have come while the check ran: it goes first.
                    None if pool.waiters.borrow().is_empty() => {
                        return pool.send_to(&shard, to, server)
                    }
                    None => return pool.place_here(&shard, server),
                }
            }
        });
    }

    /// A server handed over by another shard.
    pub fn adopt(self: &Rc<Self>, shard: &Rc<Shard>, detached: DetachedServer) {
        match ServerConn::attach(detached) {
            Ok(server) => {
                self.learn_welcome(&server);
                self.place_here(shard, server);
            }
            Err(e) => {
                warn!(error = %e, "could not adopt a handed-over server");
                self.global.closed();
            }
        }
    }
}

/// Fixed-point scale of a shard's smoothed demand.
pub(super) const SCALE: u32 = 16;

/// Moves a smoothed demand (times [`SCALE`]) a quarter of the way to `now` clients (a time
/// constant of about four janitor ticks: a burst does not move servers, a lasting change
/// does).
fn smooth(avg: u32, now: u32) -> u32 {
    let (avg, target) = (avg as i64, now.saturating_mul(SCALE) as i64);
    (avg + (target - avg) / 4).max(0) as u32
}

/// One shard as the rebalancing rule sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ShardView {
    /// Servers it holds (published at its last tick).
    pub owned: u32,
    /// Smoothed demand: clients leasing or waiting (times [`SCALE`]).
    pub demand: u32,
    /// Whether clients wait there now (only a shard with waiters is given servers).
    pub waiting: bool,
}

/// Where shard `me`'s surplus servers should go, and how many: `me` holds at least one
/// whole server more than its share of the `open` servers (shares by demand), and the
/// chosen shard, which has waiters, is the one furthest below its own share. Half the
/// surplus moves per tick, so the demand estimates catch up before the rest moves. Our own
/// count is fresh and `open` is the global counter, so a move in flight is not counted twice.
pub(super) fn surplus(me: usize, open: u32, shards: &[ShardView]) -> Option<(usize, u32)> {
    let total: u64 = shards.iter().map(|s| s.demand as u64).sum();
    if total == 0 {
        return None;
    }
    // In units of 1/total of a server: share_i = open * demand_i / total.
    let share = |s: &ShardView| open as u64 * s.demand as u64;
    let held = |s: &ShardView| s.owned as u64 * total;
    let mine = &shards[me];
    let excess = held(mine).saturating_sub(share(mine)) / total;
    if excess == 0 {
        return None;
    }
    let (to, short) = shards
        .iter()
        .enumerate()
        .filter(|(i, s)| *i != me && s.waiting)
        .map(|(i, s)| (i, share(s).saturating_sub(held(s))))
        .max_by_key(|&(_, short)| short)?;
    if short == 0 {
        return None;
    }
    // The receiver's shortfall rounds up: it may be a fraction below one while we hold a
    // whole server more than our share (three shards, five servers...).
    let n = excess.min(short.div_ceil(total));
    Some((to, n.div_ceil(2) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(owned: u32, clients: u32, waiting: bool) -> ShardView {
        ShardView {
            owned,
            demand: clients * SCALE,
            waiting,
        }
    }

    #[test]
    fn a_queue_is_long_past_one_waiter_per_two_servers() {
        assert!(queue_is_long(1, 0), "no server: any waiter");
        assert!(queue_is_long(1, 1));
        assert!(!queue_is_long(1, 2));
        assert!(!queue_is_long(5, 10));
        assert!(queue_is_long(6, 10));
        assert!(!queue_is_long(0, 0));
    }

    #[test]
    fn balanced_load_moves_nothing() {
        let shards = [view(10, 500, true), view(10, 500, true)];
        assert_eq!(surplus(0, 20, &shards), None);
        assert_eq!(surplus(1, 20, &shards), None);
    }

    #[test]
    fn a_split_within_one_server_of_the_shares_stays() {
        // Shares 10.4 / 9.6: holding 11 / 9 is as close as whole servers get.
        let shards = [view(11, 520, true), view(9, 480, true)];
        assert_eq!(surplus(0, 20, &shards), None);
        assert_eq!(surplus(1, 20, &shards), None);
    }

    #[test]
    fn a_shard_holding_too_many_gives_half_its_surplus_per_tick() {
        // A late shard: the first took the whole budget.
        let shards = [view(20, 500, true), view(0, 500, true)];
        assert_eq!(surplus(0, 20, &shards), Some((1, 5)));
        assert_eq!(surplus(1, 20, &shards), None);
        // Drift: 14 / 6 for equal demand.
        let shards = [view(14, 500, true), view(6, 500, true)];
        assert_eq!(surplus(0, 20, &shards), Some((1, 2)));
        let shards = [view(12, 500, true), view(8, 500, true)];
        assert_eq!(surplus(0, 20, &shards), Some((1, 1)));
    }

    #[test]
    fn only_a_shard_with_waiters_is_given_servers() {
        let shards = [view(15, 30, false), view(5, 10, false)];
        assert_eq!(surplus(1, 20, &shards), None);
        // Idle servers where nobody needs them, and no demand at all: nothing moves.
        let shards = [view(20, 0, false), view(0, 0, false)];
        assert_eq!(surplus(0, 20, &shards), None);
    }

    #[test]
    fn the_shard_furthest_below_its_share_is_chosen() {
        let shards = [
            view(12, 100, true),
            view(4, 100, true),
            view(2, 100, true),
            view(0, 0, false),
        ];
        // Shares 6 each: shard 0 has 6 too many, shard 2 is 4 short, shard 1 is 2 short.
        assert_eq!(surplus(0, 18, &shards), Some((2, 2)));
    }

    #[test]
    fn demand_follows_a_lasting_change_not_a_burst() {
        let mut avg = smooth(0, 100);
        assert_eq!(avg, 100 * SCALE / 4);
        for _ in 0..20 {
            avg = smooth(avg, 100);
        }
        assert!(avg.abs_diff(100 * SCALE) < SCALE);
        // One tick at 0 moves it a quarter of the way, not all of it.
        assert!(smooth(avg, 0) > 70 * SCALE);
    }
}
