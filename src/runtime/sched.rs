//! How much CPU each shard thread got, and how long it waited for one: the kernel's
//! `/proc/self/task/<tid>/schedstat` (time on a CPU, time runnable but waiting for a CPU, in
//! nanoseconds). A shard shares its core with whatever else the host runs; one that waits for
//! its core serves its clients late however idle its servers are, and nothing inside pgring
//! can see that. SHOW STATE and /metrics report both figures per shard, so an operator can tell
//! a starved shard (move PostgreSQL or the application off its core, or lower `workers`) from
//! a slow server. With them, from `/proc/self/task/<tid>/status`, how often the shard slept
//! (it had nothing to do: each sleep is a wake-up later, the main cost a thread-per-core pooler
//! pays over a single thread on a small host) and how often it was preempted (it had work, and
//! something else took its core).

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// Each shard thread's kernel thread id, once it started (0 before).
#[derive(Debug)]
pub struct ShardThreads(Box<[AtomicI32]>);

/// One shard thread's scheduling totals since it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardCpu {
    /// Time it ran on a CPU.
    pub on_cpu: Duration,
    /// Time it was ready to run but waited for a CPU.
    pub waiting: Duration,
    /// Times it gave up its CPU to sleep (voluntary context switches); `None` where the
    /// kernel does not say.
    pub sleeps: Option<u64>,
    /// Times it lost its CPU while it had work (involuntary context switches).
    pub preempted: Option<u64>,
}

impl ShardThreads {
    /// Slots for `workers` shards, none started.
    pub fn new(workers: usize) -> Self {
        ShardThreads((0..workers).map(|_| AtomicI32::new(0)).collect())
    }

    /// Called on shard `id`'s thread as it starts.
    pub fn register_current(&self, id: usize) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        if let Some(slot) = self.0.get(id) {
            slot.store(tid, Ordering::Relaxed);
        }
    }

    /// Each shard's totals, in shard order; `None` for a shard not started yet or where the
    /// kernel keeps no scheduler statistics.
    pub fn cpu(&self) -> Vec<Option<ShardCpu>> {
        self.0
            .iter()
            .map(|tid| match tid.load(Ordering::Relaxed) {
                0 => None,
                tid => {
                    let read =
                        |file| std::fs::read_to_string(format!("/proc/self/task/{tid}/{file}"));
                    let mut cpu = read("schedstat").ok().and_then(|s| parse(&s))?;
                    if let Ok(status) = read("status") {
                        (cpu.sleeps, cpu.preempted) = switches(&status);
                    }
                    Some(cpu)
                }
            })
            .collect()
    }
}

/// `schedstat`'s first two fields: nanoseconds on a CPU, nanoseconds waiting for one.
fn parse(text: &str) -> Option<ShardCpu> {
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    let on_cpu = fields.next()?.ok()?;
    let waiting = fields.next()?.ok()?;
    Some(ShardCpu {
        on_cpu: Duration::from_nanos(on_cpu),
        waiting: Duration::from_nanos(waiting),
        sleeps: None,
        preempted: None,
    })
}

/// `status`'s `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches`.
fn switches(status: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.trim().parse().ok()
        })
    };
    (
        field("voluntary_ctxt_switches"),
        field("nonvoluntary_ctxt_switches"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_time_on_a_cpu_and_time_waiting() {
        assert_eq!(
            parse("1500000000 250000000 4242\n"),
            Some(ShardCpu {
                on_cpu: Duration::from_millis(1500),
                waiting: Duration::from_millis(250),
                sleeps: None,
                preempted: None,
            })
        );
        let status =
            "Name:\tpgring\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n";
        assert_eq!(switches(status), (Some(1234), Some(56)));
        assert_eq!(switches("Name:\tx\n"), (None, None));
        assert_eq!(parse(""), None);
        assert_eq!(parse("12"), None);
        assert_eq!(parse("x y z"), None);
    }

    #[test]
    fn a_registered_thread_is_read_from_the_kernel() {
        let threads = ShardThreads::new(2);
        assert_eq!(threads.cpu(), vec![None, None], "nothing registered yet");
        threads.register_current(1);
        // Burn a little CPU so the total is above zero.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let cpu = threads.cpu();
        assert_eq!(cpu[0], None);
        let one = cpu[1].expect("this kernel keeps /proc/self/task/<tid>/schedstat");
        assert!(one.on_cpu > Duration::ZERO, "{one:?}");
        assert!(one.sleeps.is_some() && one.preempted.is_some(), "{one:?}");
    }
}
