//! Whether the host has a core to spare, which is when a shard may spin before it parks
//! (`spin_before_park_us`).
//!
//! A shard with nothing to run sleeps in `io_uring_enter`, and the next message wakes it: on an
//! idle core (and in a VM, an exit to the hypervisor and back) that wake-up is tens of
//! microseconds, paid twice per transaction at light load, which is most of what a pooler adds
//! to a query's latency. Polling a while before sleeping saves it, the trade Seastar's idle poll
//! makes. But a spinning shard holds a core that something else could use: on a busy host
//! shared with PostgreSQL, that is CPU taken from the database. So spinning is allowed only
//! while the cores pgring may run on had a whole core idle over the last sample (100 ms of
//! `/proc/stat`, taken by the main thread; only the CPUs in the process's affinity mask count,
//! so a cpuset-limited pgring is not fooled by idle cores it cannot use), counting the time shards spent spinning as idle (it would have been, had
//! they parked). A host that gets busy turns it off within a sample; a light load keeps it.
//!
//! Under a cgroup CPU quota (a container's limit) spinning stays off: it would burn the quota,
//! and `/proc/stat` describes the host, not the container.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Set by the main thread's gauge; read by a shard each time it is about to park.
static ALLOWED: AtomicBool = AtomicBool::new(false);
/// Nanoseconds spent spinning by all shards, added once per spin (not per transaction).
static SPUN_NS: AtomicU64 = AtomicU64::new(0);

/// Spare cores at or above which spinning starts; below [`OFF_BELOW`] it stops (a gap, so a
/// host near the line does not flip every sample).
const ON_AT: f64 = 1.0;
const OFF_BELOW: f64 = 0.75;
/// How often the main thread samples.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// May a shard spin now?
pub(crate) fn allowed() -> bool {
    ALLOWED.load(Ordering::Relaxed)
}

/// A shard spun for `d` (found work or not).
pub(crate) fn spun(d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    SPUN_NS.fetch_add(ns, Ordering::Relaxed);
}

/// Whether spinning pays on one shard, judged by how its idle spells end.
///
/// A spell (from the moment the shard has nothing to run until it has work again) that ends
/// within the spin window would be caught by a spin: one park and one wake-up saved. Every
/// spell costs, had the shard spun, the spell or the whole window, whichever is shorter. Both
/// are tracked as moving averages over every spell, spun or parked, so the estimate does not
/// depend on the choice it informs. Spinning pays while at least 9 spells in 10 end within the
/// window and the expected spin per caught spell is at most half of it. A lone busy session
/// pays (here PostgreSQL answers in 100-150 µs and the client sends its next query within 50:
/// all spells caught, ~65 µs of spin each); 10,000 idle clients trickling 5,000 queries/s do not
/// (spells of the same mean length, but 20-29 % of them outlast the window). There a spin
/// bought no latency and cost 11-12 µs of CPU per query (bench `idle-10000`); with this rule
/// the shards spun 45 ms in 15 s of it instead of ~900 ms per 10 s.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpinOdds {
    /// Average of min(spell, window), microseconds.
    cost_us: f32,
    /// Average of 1 for a spell ending within the window, 0 otherwise.
    caught: f32,
}

/// The share of spells a spin must catch: each one it misses costs the whole window for nothing.
const MIN_CAUGHT: f32 = 0.9;

/// The weight of the newest spell in the averages.
const SPELL_WEIGHT: f32 = 1.0 / 32.0;

impl SpinOdds {
    /// Starts out assuming spinning pays (the first spells correct it within a few dozen).
    pub(crate) fn new() -> Self {
        SpinOdds {
            cost_us: 0.0,
            caught: 1.0,
        }
    }

    /// An idle spell of `spell` ended; `window` is the spin window.
    pub(crate) fn record(&mut self, spell: Duration, window: Duration) {
        let cost = spell.min(window).as_secs_f32() * 1e6;
        let caught = if spell <= window { 1.0 } else { 0.0 };
        self.cost_us += (cost - self.cost_us) * SPELL_WEIGHT;
        self.caught += (caught - self.caught) * SPELL_WEIGHT;
    }

    /// Is a spin of up to `window` worth it now?
    pub(crate) fn pays(&self, window: Duration) -> bool {
        self.caught >= MIN_CAUGHT && self.cost_us <= self.caught * window.as_secs_f32() * 1e6 * 0.5
    }
}

/// Lets shards spin (or not) regardless of the host, for tests of the spinning executor.
#[cfg(test)]
pub(crate) fn force_allowed(on: bool) {
    ALLOWED.store(on, Ordering::Relaxed);
}

/// Time spun so far by every shard of the process (SHOW STATE `spin_seconds`, and
/// `pgring_spin_seconds_total`).
pub fn spun_total() -> Duration {
    Duration::from_nanos(SPUN_NS.load(Ordering::Relaxed))
}

/// Idle (idle + iowait: a core parked in `io_uring_enter` counts as iowait on some kernels)
/// and total time of a set of cores, in clock ticks, from `/proc/stat`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuTimes {
    idle: u64,
    total: u64,
}

/// Sums the `cpuN user nice system idle iowait irq softirq steal guest guest_nice` lines of the
/// cores in `cpus` (all cores when `cpus` is empty), and says how many it found. Guest time is
/// already inside user and nice, so it is left out of the total.
fn parse_stat(text: &str, cpus: &[usize]) -> Option<(CpuTimes, usize)> {
    let mut sum = CpuTimes { idle: 0, total: 0 };
    let mut found = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(n) = cpu.parse::<usize>() else {
            continue; // the all-cores line
        };
        if !cpus.is_empty() && !cpus.contains(&n) {
            continue;
        }
        let v: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
        if v.len() < 5 {
            return None;
        }
        sum.idle += v[3] + v[4];
        sum.total += v.iter().sum::<u64>();
        found += 1;
    }
    (found > 0).then_some((sum, found))
}

/// Cores' worth of time that was idle or spun away over a sample: `idle` and `total` are tick
/// deltas summed over all cores, `cores` how many cores they cover.
fn spare_cores(idle: u64, total: u64, spun: Duration, elapsed: Duration, cores: f64) -> f64 {
    if total == 0 || elapsed.is_zero() {
        return 0.0;
    }
    let idle_cores = cores * idle as f64 / total as f64;
    idle_cores + spun.as_secs_f64() / elapsed.as_secs_f64()
}

/// The main thread's view of the host, sampled every [`SAMPLE_EVERY`].
pub(crate) struct Gauge {
    last: Option<(CpuTimes, u64, Instant)>,
    /// The CPUs pgring may run on (empty: all).
    cpus: Vec<usize>,
    cores: f64,
}

impl Gauge {
    /// A gauge over the CPUs in `cpus` (empty: all), or `None` when spinning must stay off (a
    /// CPU quota, or no `/proc/stat`).
    pub(crate) fn new(cpus: Vec<usize>) -> Option<Gauge> {
        if let Some(quota) = cpu_quota() {
            tracing::info!(%quota, "cgroup CPU quota: spin_before_park_us is off");
            return None;
        }
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let (_, found) = parse_stat(&text, &cpus)?;
        Some(Gauge {
            last: None,
            cpus,
            cores: found as f64,
        })
    }

    /// Takes a sample if the last is [`SAMPLE_EVERY`] old, and sets whether shards may spin.
    pub(crate) fn sample(&mut self, now: Instant) {
        if self
            .last
            .is_some_and(|(_, _, at)| now.saturating_duration_since(at) < SAMPLE_EVERY)
        {
            return;
        }
        let Some((times, _)) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_stat(&t, &self.cpus))
        else {
            ALLOWED.store(false, Ordering::Relaxed);
            return;
        };
        let spun = SPUN_NS.load(Ordering::Relaxed);
        if let Some((before, spun_before, at)) = self.last {
            let spare = spare_cores(
                times.idle.saturating_sub(before.idle),
                times.total.saturating_sub(before.total),
                Duration::from_nanos(spun.saturating_sub(spun_before)),
                now.saturating_duration_since(at),
                self.cores,
            );
            let was = ALLOWED.load(Ordering::Relaxed);
            let allow = if was {
                spare >= OFF_BELOW
            } else {
                spare >= ON_AT
            };
            if allow != was {
                tracing::debug!(spare, allow, "spinning before park");
                ALLOWED.store(allow, Ordering::Relaxed);
            }
        }
        self.last = Some((times, spun, now));
    }
}

/// This process's cgroup CPU limit, if it has one (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`).
fn cpu_quota() -> Option<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/cpu.max")
        } else if controllers.split(',').any(|c| c == "cpu") {
            format!("/sys/fs/cgroup/{controllers}{path}/cpu.cfs_quota_us")
        } else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let limit = text.split_whitespace().next().unwrap_or("max");
        if limit != "max" && limit != "-1" {
            return Some(text.trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_lines_of_the_cores_it_may_use() {
        let text = "cpu  200 10 100 1600 90 0 20 4 14 0\n\
                    cpu0 100 5 50 800 45 0 10 2 7 0\n\
                    cpu1 100 5 50 800 45 0 10 2 7 0\n\
                    intr 1 2 3\n";
        let core = CpuTimes {
            idle: 845,
            total: 1012,
        };
        let both = CpuTimes {
            idle: 1690,
            total: 2024,
        };
        assert_eq!(parse_stat(text, &[]), Some((both, 2)));
        assert_eq!(parse_stat(text, &[1]), Some((core, 1)));
        assert_eq!(parse_stat(text, &[0, 1, 7]), Some((both, 2)));
        assert_eq!(parse_stat(text, &[5]), None);
        assert_eq!(parse_stat("cpu0 1 2 3\n", &[]), None);
        assert_eq!(parse_stat("", &[]), None);
    }

    #[test]
    fn spinning_pays_for_short_spells_and_not_for_a_trickle() {
        let window = Duration::from_micros(200);
        let us = Duration::from_micros;
        // One busy session: the server answers in 70 µs, the client in 30.
        let mut odds = SpinOdds::new();
        for _ in 0..500 {
            odds.record(us(70), window);
            odds.record(us(30), window);
        }
        assert!(odds.pays(window), "{odds:?}");
        // Many idle clients trickling queries: as short on average, but one spell in five
        // outlasts the window.
        let mut odds = SpinOdds::new();
        for i in 0..500u64 {
            odds.record(us(if i % 5 == 0 { 400 } else { 20 }), window);
        }
        assert!(!odds.pays(window), "{odds:?}");
        // The server's answer in 60 µs, then 50 to 800 µs until the next query: most of
        // those outlast the window.
        let mut odds = SpinOdds::new();
        for i in 0..500u64 {
            odds.record(us(60), window);
            odds.record(us(50 + (i * 150) % 750), window);
        }
        assert!(!odds.pays(window), "{odds:?}");
        // Load comes back: spinning pays again.
        for _ in 0..200 {
            odds.record(us(40), window);
        }
        assert!(odds.pays(window), "{odds:?}");
        // An idle shard woken by its timers only.
        let mut odds = SpinOdds::new();
        for _ in 0..100 {
            odds.record(Duration::from_secs(1), window);
        }
        assert!(!odds.pays(window), "{odds:?}");
    }

    #[test]
    fn spare_counts_idle_cores_and_time_spent_spinning() {
        let s = Duration::from_millis(100);
        // Two cores, half idle: one core spare.
        assert_eq!(spare_cores(10, 20, Duration::ZERO, s, 2.0), 1.0);
        // Fully busy, but shards spun away 80 ms of it.
        let spare = spare_cores(0, 20, Duration::from_millis(80), s, 2.0);
        assert!((spare - 0.8).abs() < 1e-9);
        assert_eq!(spare_cores(0, 0, Duration::ZERO, s, 2.0), 0.0);
    }
}
