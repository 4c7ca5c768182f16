//! Moving client sessions between shards, so that every shard's clients wait alike.
//!
//! A client stays on the shard that accepted it, and a shard serves its clients only as fast
//! as its core lets it. Where pgring shares its cores (with PostgreSQL, with pgbench, with
//! anything), the scheduler gives the shards unequal time: at 1000 clients on this 2-core
//! lab host, one shard ran 28 ms per 100 ms while the other ran 17, the split swung every
//! half second or so, and for those spells one shard's clients waited twice as long as the
//! other's (p99 1.4x PgBouncer's, whose one queue cannot be unfair this way; pgring with one
//! shard had PgBouncer's p99). Moving servers cannot mend it: a starved shard is slow however
//! many servers it holds (that rule was tried, see `pool::handoff`). Moving the clients does.
//!
//! Each shard counts the requests it finishes and, at each janitor tick, publishes that rate
//! with the number of its clients waiting for a server now. Their ratio is the wait a request
//! arriving now can expect there (Little's law), known at once rather than a queue's turn
//! later, as a measured mean wait would be (a rule on measured waits swung clients back and
//! forth between the shards every second and a half). A shard where that wait is markedly
//! longer than on the best shard sends its next clients that finish a transaction there:
//! between transactions, holding no server, nothing buffered, the socket leaves this shard's
//! ring and the session (pool, parameters, prepared statements, cancel key, client slots) is
//! rebuilt on the other shard from a [`Moving`]. How many: with each shard's rate fixed by its
//! CPU, a quarter of the count that would equalise the two waits (against overshoot). Under
//! balanced or light load (waits under [`MIN_GAP_US`] apart) nothing moves, nor where servers
//! are held no longer than on the best shard (servers, not this core, are what is short).
//!
//! Off by default (`balance_clients`). With a CPU hog pinned to one core (lab, 1000 clients) it
//! turned a bimodal per-client latency (half the clients ~25% slower) into one mode and gained
//! 3-7% TPS; without the hog, 1000-client p99 moved within noise; at 10,000 saturating clients
//! (bench) it cost ~20% of the throughput and ~30% more CPU per transaction. Part of that is the
//! moves: each costs ~16 µs at 1000 clients but ~67 µs at 10,000 (every client moved after
//! every transaction); the rest is the rule, whose populations swing at that load. Until that
//! is understood, a client stays where it was accepted unless the operator asks.

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam::utils::CachePadded;

use crate::pool::PoolKey;
use crate::protocol::startup::CancelKey;
use crate::runtime::Shard;

/// Waits closer than this are equal enough: moving a client is not free, and at light load
/// (sub-millisecond requests) the difference is noise.
pub const MIN_GAP_US: u32 = 1000;

/// A shard's clients wait "markedly longer" than another's at this ratio (in quarters: 5/4).
const RATIO_QUARTERS: u64 = 5;

/// At most this many clients leave a shard per tick: a move costs ~16 µs of CPU at 1000
/// clients and ~67 µs at 10,000 (measured moving every client after every transaction), so
/// clients out of balance are evened out over seconds, not in one tick.
const MAX_PER_TICK: u64 = 128;

/// Requests a shard must have finished since its last tick for its rate to count.
const MIN_SAMPLES: u32 = 16;

/// What a shard publishes once per tick for the others to read (never per transaction).
#[derive(Debug, Default)]
pub struct ShardLoad {
    /// Requests finished per second over the last tick.
    rate: AtomicU32,
    /// Clients waiting for a server at the tick.
    waiting: AtomicU32,
    /// Smoothed mean time a server is held per request, µs.
    hold_us: AtomicU32,
}

/// The published loads of all shards, one cache line each.
pub fn loads(workers: usize) -> Box<[CachePadded<ShardLoad>]> {
    (0..workers).map(|_| CachePadded::default()).collect()
}

/// A shard's own side: plain cells, touched by its sessions.
#[derive(Debug, Default)]
pub struct Balance {
    /// Requests finished since the last tick.
    done: Cell<u32>,
    /// Their servers' time held (µs, summed).
    held_us: Cell<u64>,
    /// The smoothed mean time a server is held per request, last published.
    hold_us: Cell<u32>,
    /// When the last tick was.
    since: Cell<Option<std::time::Instant>>,
    /// The smoothed rate last published.
    rate: Cell<u32>,
    /// Clients still to send to `to`.
    shed: Cell<u32>,
    to: Cell<usize>,
    /// Clients ever sent away: a cancel for a key this shard does not know is looked for on
    /// the other shards only if some client left (see `cancel::cancel_local`).
    moved_out: Cell<u64>,
}

impl Balance {
    /// A request ended after holding its server for `held`.
    pub fn request_done(&self, held: std::time::Duration) {
        self.done.set(self.done.get().saturating_add(1));
        let us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.held_us.set(self.held_us.get().saturating_add(us));
    }

    /// Is this shard sending clients away now?
    pub fn shedding(&self) -> bool {
        self.shed.get() > 0
    }

    /// Where the session that just finished a transaction should go, if anywhere.
    pub fn take_move(&self) -> Option<usize> {
        let left = self.shed.get();
        if left == 0 {
            return None;
        }
        self.shed.set(left - 1);
        Some(self.to.get())
    }

    /// A client left this shard for another.
    pub fn moved_one_out(&self) {
        self.moved_out.set(self.moved_out.get() + 1);
    }

    /// How many clients have left this shard.
    pub fn moved_out(&self) -> u64 {
        self.moved_out.get()
    }
}

/// One shard as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// Requests finished per second (0: too few to tell).
    pub rate: u32,
    /// Clients waiting for a server.
    pub waiting: u32,
    /// Mean time a server is held per request, µs (0: no measure).
    pub hold_us: u32,
}

impl View {
    /// The wait a request arriving now can expect, µs; `None` without a rate to tell.
    fn wait_us(self) -> Option<u64> {
        (self.rate > 0).then(|| u64::from(self.waiting) * 1_000_000 / u64::from(self.rate))
    }
}

/// How many of shard `me`'s clients to send, and where: to the shard where a request waits
/// least, if here it waits at least 5/4 as long and [`MIN_GAP_US`] longer, and servers are
/// held at least 5/4 as long per request (this core is the slow part).
pub fn decide(me: usize, views: &[View]) -> Option<(usize, u32)> {
    let mine = views[me];
    let w = mine.wait_us()?;
    let (to, b) = views
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != me)
        .filter_map(|(i, v)| Some((i, v.wait_us()?)))
        .min_by_key(|&(_, b)| b)?;
    if w * 4 < b * RATIO_QUARTERS || w - b < u64::from(MIN_GAP_US) {
        return None;
    }
    // Only a shard that turns its servers around markedly more slowly (its core is starved)
    // sheds clients. Where servers are what is short, servers follow demand between shards
    // (`pool::handoff`) and a longer wait here is that catching up: moving clients then only
    // made the two rules chase each other (10,000 clients: -20% TPS, +30% CPU).
    let (hm, hb) = (u64::from(mine.hold_us), u64::from(views[to].hold_us));
    if hm == 0 || hb == 0 || hm * 4 < hb * RATIO_QUARTERS {
        return None;
    }
    // With n clients moved and each shard's rate fixed, (q_me - n) / r_me = (q_to + n) / r_to
    // solves to n = (q_me r_to - q_to r_me) / (r_me + r_to). A quarter of it per tick
    // (the rates are noisy, and at 10,000 clients half of it sent clients back and forth
    // every tick), and at most MAX_PER_TICK.
    let best = views[to];
    let (qm, rm) = (u64::from(mine.waiting), u64::from(mine.rate));
    let (qt, rt) = (u64::from(best.waiting), u64::from(best.rate));
    let n = (qm * rt).saturating_sub(qt * rm) / (rm + rt) / 4;
    let n = n.min(MAX_PER_TICK) as u32;
    (n > 0).then_some((to, n))
}

/// A published measure smoothed over about two ticks (a shard's CPU comes in bursts): half
/// way from the last one to `now`. 0 (too few requests to tell) is no measure, and restarts
/// the average.
fn halfway(last: u32, now: u32) -> u32 {
    match (last, now) {
        (_, 0) => 0,
        (0, n) => n,
        (l, n) => ((u64::from(l) + u64::from(n)) / 2) as u32,
    }
}

/// Publishes this shard's load, then decides, from every shard's published load, what to
/// shed until the next tick.
pub fn tick(shard: &Shard) {
    let b = &shard.balance;
    let loads = &shard.shared.loads;
    // Per second of the time since the last tick, not per nominal tick: a starved shard's
    // ticks come late, and its rate would look higher than it is.
    let now = crate::runtime::io::now();
    let done = b.done.replace(0);
    let held = b.held_us.replace(0);
    let now_hold = if done >= MIN_SAMPLES {
        u32::try_from(held / u64::from(done))
            .unwrap_or(u32::MAX)
            .max(1)
    } else {
        0
    };
    let hold = halfway(b.hold_us.get(), now_hold);
    b.hold_us.set(hold);
    let elapsed = b
        .since
        .replace(Some(now))
        .map(|t| now.saturating_duration_since(t));
    let now_rate = match elapsed {
        Some(e) if done >= MIN_SAMPLES && !e.is_zero() => {
            u32::try_from(u128::from(done) * 1_000_000 / e.as_micros().max(1)).unwrap_or(u32::MAX)
        }
        _ => 0,
    };
    let rate = halfway(b.rate.get(), now_rate);
    b.rate.set(rate);
    let waiting: usize = shard
        .pools
        .borrow()
        .values()
        .map(|p| p.waiting_count())
        .sum();
    let waiting = u32::try_from(waiting).unwrap_or(u32::MAX);
    tracing::trace!(shard = shard.id, rate, waiting, hold, "balance tick");
    let me = &loads[shard.id];
    me.rate.store(rate, Ordering::Relaxed);
    me.waiting.store(waiting, Ordering::Relaxed);
    me.hold_us.store(hold, Ordering::Relaxed);
    if loads.len() < 2 || !shard.config().general.balance_clients || shard.is_stopping() {
        b.shed.set(0);
        return;
    }
    let views: Vec<View> = loads
        .iter()
        .map(|l| View {
            rate: l.rate.load(Ordering::Relaxed),
            waiting: l.waiting.load(Ordering::Relaxed),
            hold_us: l.hold_us.load(Ordering::Relaxed),
        })
        .collect();
    match decide(shard.id, &views) {
        Some((to, n)) => {
            tracing::debug!(
                shard = shard.id,
                to,
                clients = n,
                rate,
                waiting,
                "moving clients to a shard where requests wait less"
            );
            b.to.set(to);
            b.shed.set(n);
        }
        None => b.shed.set(0),
    }
}

/// A session on its way to another shard: everything it needs there, none of it tied to the
/// shard it leaves.
pub struct Moving {
    /// Destination shard.
    pub(super) to: usize,
    /// The client's socket, once it has left the old shard's ring.
    pub(super) fd: Option<OwnedFd>,
    /// A unix-socket client.
    pub(super) unix: bool,
    /// SHOW CLIENTS id.
    pub(super) id: u64,
    /// The cancel key the client was given (it names the old shard: see `cancel`).
    pub(super) key: CancelKey,
    /// When the client connected.
    pub(super) connect_time: SystemTime,
    /// Database asked for.
    pub(super) db: Arc<str>,
    /// User.
    pub(super) user: Arc<str>,
    /// application_name.
    pub(super) app_name: Box<str>,
    /// The pool it is a client of.
    pub(super) pool: PoolKey,
    /// Every parameter value it wants (lower-cased names).
    pub(super) params: Vec<(Box<str>, Box<str>)>,
    /// Its statement names and their Parse bodies, and the cap.
    pub(super) prepared: crate::prepared::PortableStatements,
    /// Its pool's `auth_query` secret and SCRAM pass-through keys as the old shard knew them
    /// (see `auth_query::adopt`).
    pub(super) server_secret: Option<crate::auth::userlist::Secret>,
    /// SCRAM pass-through keys.
    pub(super) keys: Option<crate::auth::scram::PassThroughKeys>,
    /// Its places under max_db/max_user_client_connections.
    pub(super) slots: super::login::ClientSlots,
    /// max_packet_size, as at login.
    pub(super) max_packet: u32,
    /// The user's timeouts, as at login.
    pub(super) timeouts: super::session::Timeouts,
}

impl std::fmt::Debug for Moving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moving")
            .field("to", &self.to)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard whose servers are held 1 ms per request.
    fn v(rate: u32, waiting: u32) -> View {
        View {
            rate,
            waiting,
            hold_us: 1_000,
        }
    }

    /// The same, its servers held `hold_us`.
    fn h(rate: u32, waiting: u32, hold_us: u32) -> View {
        View {
            rate,
            waiting,
            hold_us,
        }
    }

    #[test]
    fn balanced_or_light_load_moves_nothing() {
        assert_eq!(decide(0, &[v(6000, 450), v(6200, 440)]), None);
        assert_eq!(
            decide(0, &[v(6000, 5), v(6000, 0)]),
            None,
            "under 1 ms apart"
        );
        assert_eq!(decide(0, &[v(6000, 450), v(0, 0)]), None, "no rate there");
        assert_eq!(decide(0, &[v(0, 450), v(6000, 0)]), None, "no rate here");
        assert_eq!(decide(0, &[v(6000, 450)]), None, "one shard");
    }

    #[test]
    fn a_slow_shard_sends_a_quarter_of_the_equalising_count_to_the_fastest() {
        // Half the rate, as many waiting, servers held twice as long: 150 would equalise
        // (100 ms each); a quarter goes.
        assert_eq!(
            decide(1, &[v(6000, 450), h(3000, 450, 2_000)]),
            Some((0, 37))
        );
        // Three shards: to the one where a request waits least.
        assert_eq!(
            decide(0, &[h(3000, 300, 2_000), v(5000, 300), v(6000, 300)]),
            Some((2, 25))
        );
        // The fast shard never sends.
        assert_eq!(decide(0, &[v(6000, 450), h(3000, 450, 2_000)]), None);
    }

    #[test]
    fn a_longer_wait_with_servers_turned_around_as_fast_moves_nothing() {
        // Fewer servers here (they follow demand, with a lag), not a starved core.
        assert_eq!(decide(1, &[v(6000, 450), v(3000, 450)]), None);
        assert_eq!(decide(1, &[v(6000, 450), h(3000, 450, 1_200)]), None);
    }

    #[test]
    fn at_most_max_per_tick_move() {
        assert_eq!(
            decide(0, &[h(200, 100, 5_000), v(20_000, 0)]),
            Some((1, 24))
        );
        assert_eq!(
            decide(0, &[h(2_000, 5_000, 5_000), v(20_000, 0)]),
            Some((1, 128))
        );
    }
}
