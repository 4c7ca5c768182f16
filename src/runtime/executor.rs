//! One shard's executor: a single-threaded task queue, a timer map and the io_uring reactor,
//! turned by one loop.
//!
//! Why not glommio (which pgring used first): on this kind of host its park path cost ~6
//! `io_uring_enter` calls, a `membarrier` (an IPI to every core running the process) and a
//! timer re-arm per park, and a pooler parks about twice per transaction at low concurrency.
//! This loop parks with one `io_uring_enter` (submit + wait + timeout in one call), arms readiness
//! polls only when a socket has nothing to read, and wakes another shard with one eventfd write
//! only when that shard is asleep. The rest of pgring sees the same vocabulary as before
//! ([`spawn`], [`sleep`], the `io` module's streams).
//!
//! Tasks live in a slab indexed by a generation-tagged id. A [`Waker`] is that id plus the number
//! of the owning shard's [`Home`], packed into the waker's data word: no allocation per task, no
//! reference count per clone. Waking on the owning thread pushes onto the local run queue;
//! waking from another thread finds the home in a process-wide table, pushes onto its remote
//! queue and writes its eventfd if the shard is parked (a store/fence/load pair on each side, so
//! no wake-up is lost). A stale waker (its task finished, the slot reused) at worst polls the
//! slot's new task once more, which futures allow.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use super::reactor::Reactor;

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

/// The part of a shard other threads may touch: remote wake-ups.
pub(crate) struct Home {
    remote: Mutex<Vec<u64>>,
    /// Set while the shard is (about to be) parked in `io_uring_enter`.
    sleeping: AtomicBool,
    /// Written by other threads to end a park; read by the reactor.
    pub(crate) eventfd: OwnedFd,
}

impl Home {
    fn new() -> io::Result<Home> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Home {
            remote: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            // SAFETY: a fresh descriptor owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn remote_wake(&self, id: u64) {
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        // Pairs with the SeqCst store of `sleeping` before the shard checks `remote` and parks:
        // either it sees our push, or we see it sleeping and kick it.
        if self.sleeping.load(Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a local to our eventfd. It is blocking (io_uring
            // reads it), but a write blocks only at a counter of 2^64-2, which cannot happen.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }
}

/// Homes by number, for wakers used on other threads. Filled once per executor, never emptied.
static HOMES: [OnceLock<Arc<Home>>; MAX_HOMES] = [const { OnceLock::new() }; MAX_HOMES];
static NEXT_HOME: AtomicUsize = AtomicUsize::new(0);
const MAX_HOMES: usize = 1024;

/// A waker's data word: home number (16 bits), slot generation (16), slot index (32).
fn waker_word(home: usize, id: u64) -> usize {
    (home << 48) | (id as usize & 0xffff_ffff_ffff)
}

fn wake_word(word: usize) {
    let home = word >> 48;
    let id = (word & 0xffff_ffff_ffff) as u64;
    let local = CURRENT
        .try_with(|c| match c.get() {
            Some(ex) if ex.home_no == home => {
                ex.schedule(id);
                true
            }
            _ => false,
        })
        .unwrap_or(false);
    if !local {
        if let Some(h) = HOMES.get(home).and_then(OnceLock::get) {
            h.remote_wake(id);
        }
    }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(
    |data| RawWaker::new(data, &VTABLE),
    |data| wake_word(data as usize),
    |data| wake_word(data as usize),
    |_| {},
);

fn task_waker(home: usize, id: u64) -> Waker {
    // SAFETY: the data word is a plain number that the vtable's functions never dereference;
    // they are thread-safe (the remote path takes the home's mutex), as Waker requires.
    unsafe { Waker::from_raw(RawWaker::new(waker_word(home, id) as *const (), &VTABLE)) }
}

/// Whether a slot holds a task, and whether that task is in the run queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TaskState {
    Free,
    Idle,
    Queued,
}

/// One task of the slab: 24 bytes (an `Option<Task>` beside the generation took 32).
struct Slot {
    /// The task's future; `None` while it is being polled (or when free).
    fut: Option<BoxFuture>,
    gen: u16,
    state: TaskState,
}

/// A shard's executor. One per shard thread, reached through [`current`].
pub(crate) struct Executor {
    home: Arc<Home>,
    /// This executor's number in [`HOMES`].
    home_no: usize,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    queue: RefCell<VecDeque<u64>>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    timer_seq: Cell<u64>,
    /// The time at the start of this loop turn (see [`now`]).
    now: Cell<Instant>,
    pub(crate) reactor: Reactor,
    /// Spin this long (re-checking for completions) before parking.
    spin: Duration,
    /// [`Reactor::events`] when the shard last parked.
    events_at_park: Cell<u64>,
    /// When the shard ran out of work, while it has none (an idle spell; tracked only when
    /// `spin` is set).
    idle_since: Cell<Option<Instant>>,
    /// Whether spinning pays, from how idle spells end.
    odds: Cell<super::spare::SpinOdds>,
    /// Set while [`wake_next`] wakes a task: `schedule` puts it in `next`.
    urgent: Cell<bool>,
    /// A task to run as soon as the running one yields, ahead of the queue (see [`wake_next`]).
    next: Cell<Option<u64>>,
}

thread_local! {
    static CURRENT: Cell<Option<&'static Executor>> = const { Cell::new(None) };
}

/// This thread's executor. Panics off a shard thread: every caller runs inside a task.
pub(crate) fn current() -> &'static Executor {
    CURRENT
        .with(|c| c.get())
        .expect("pgring runtime call outside a shard")
}

/// This thread's executor, if it has one (none while a shard thread tears down).
pub(crate) fn try_current() -> Option<&'static Executor> {
    CURRENT.try_with(|c| c.get()).ok().flatten()
}

fn split(id: u64) -> (usize, u16) {
    ((id & 0xffff_ffff) as usize, (id >> 32) as u16)
}

impl Executor {
    fn schedule(&self, id: u64) {
        let (index, gen) = split(id);
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(index) else {
            return;
        };
        if slot.gen == gen && slot.state == TaskState::Idle {
            slot.state = TaskState::Queued;
            if self.urgent.get() {
                if let Some(bumped) = self.next.replace(Some(id)) {
                    self.queue.borrow_mut().push_front(bumped);
                }
            } else {
                self.queue.borrow_mut().push_back(id);
            }
        }
    }

    fn spawn_boxed(&self, fut: BoxFuture) -> u64 {
        let index = self.free.borrow_mut().pop();
        let mut slots = self.slots.borrow_mut();
        let index = match index {
            Some(i) => i as usize,
            None => {
                slots.push(Slot {
                    fut: None,
                    gen: 0,
                    state: TaskState::Free,
                });
                slots.len() - 1
            }
        };
        let slot = &mut slots[index];
        let id = ((slot.gen as u64) << 32) | index as u64;
        slot.fut = Some(fut);
        slot.state = TaskState::Queued;
        self.queue.borrow_mut().push_back(id);
        id
    }

    /// Polls one queued task. The slab is not borrowed while the future runs or drops, so the
    /// task may spawn, wake, or drop other tasks' handles freely.
    fn run(&self, id: u64) {
        let (index, gen) = split(id);
        let (mut fut, waker) = {
            let mut slots = self.slots.borrow_mut();
            let Some(slot) = slots.get_mut(index) else {
                return;
            };
            if slot.gen != gen || slot.state == TaskState::Free {
                return;
            }
            slot.state = TaskState::Idle;
            let Some(fut) = slot.fut.take() else {
                return;
            };
            (fut, task_waker(self.home_no, id))
        };
        let done = fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        if done {
            {
                let mut slots = self.slots.borrow_mut();
                let slot = &mut slots[index];
                slot.gen = slot.gen.wrapping_add(1);
                slot.state = TaskState::Free;
            }
            self.free.borrow_mut().push(index as u32);
            drop(fut);
        } else {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[index];
            if slot.state != TaskState::Free {
                slot.fut = Some(fut);
                return;
            }
            drop(slots);
            drop(fut);
        }
    }

    fn add_timer(&self, deadline: Instant, waker: Waker) -> u64 {
        let seq = self.timer_seq.get();
        self.timer_seq.set(seq + 1);
        self.timers.borrow_mut().insert((deadline, seq), waker);
        seq
    }

    fn fire_timers(&self) -> Option<Duration> {
        let now = Instant::now();
        self.now.set(now);
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.first_key_value() {
                    Some((&(at, _), _)) if at <= now => timers.pop_first().map(|(_, w)| w),
                    Some((&(at, _), _)) => return Some(at - now),
                    None => return None,
                }
            };
            if let Some(w) = due {
                w.wake();
            }
        }
    }

    fn drain_remote(&self) {
        let ids = std::mem::take(&mut *self.home.remote.lock().unwrap_or_else(|e| e.into_inner()));
        for id in ids {
            self.schedule(id);
        }
    }

    /// One turn of the loop after the run queue was worked: fire timers, take remote wake-ups,
    /// then submit and reap I/O, parking when nothing is runnable.
    fn turn(&self) {
        let next_timer = self.fire_timers();
        self.drain_remote();
        if !self.queue.borrow().is_empty() || self.next.get().is_some() {
            self.reactor.submit_and_reap(None);
            return;
        }
        // Spin only if something outside this shard happened since it last parked: a shard
        // woken by its own janitor tick alone goes straight back to sleep.
        if !self.spin.is_zero() && self.idle_since.get().is_none() {
            self.idle_since.set(Some(self.now.get()));
        }
        let woken_by_io = self.reactor.events() != self.events_at_park.get();
        if !self.spin.is_zero()
            && woken_by_io
            && super::spare::allowed()
            && self.odds.get().pays(self.spin)
            && self.spin_for_work(next_timer)
        {
            return;
        }
        self.home.sleeping.store(true, Ordering::SeqCst);
        let remote_pending = !self
            .home
            .remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if remote_pending {
            self.home.sleeping.store(false, Ordering::SeqCst);
            self.drain_remote();
            self.reactor.submit_and_reap(None);
            return;
        }
        self.events_at_park.set(self.reactor.events());
        self.reactor
            .submit_and_reap(Some(next_timer.unwrap_or(Duration::from_secs(3600))));
        self.home.sleeping.store(false, Ordering::SeqCst);
    }

    /// The shard has work (at `now`): an idle spell, if one was running, ends.
    fn busy(&self, now: Instant) {
        if let Some(since) = self.idle_since.take() {
            let mut odds = self.odds.get();
            odds.record(now.saturating_duration_since(since), self.spin);
            self.odds.set(odds);
        }
    }

    /// `spin_before_park_us`: poll for completions without sleeping for a while (only while
    /// the host has a core to spare, see `spare`); true if work turned up.
    fn spin_for_work(&self, next_timer: Option<Duration>) -> bool {
        let start = Instant::now();
        let until = start + self.spin.min(next_timer.unwrap_or(self.spin));
        let mut now = start;
        let found = loop {
            if now >= until {
                break false;
            }
            self.reactor.submit_and_reap(None);
            self.drain_remote();
            if !self.queue.borrow().is_empty() {
                break true;
            }
            std::hint::spin_loop();
            now = Instant::now();
        };
        super::spare::spun(now.saturating_duration_since(start));
        found
    }
}

/// Builds this thread's executor and runs `main` on it until it completes. Tasks still alive
/// then are dropped (closing their sockets) before the function returns.
pub fn block_on(
    main: impl Future<Output = ()> + 'static,
    ring_entries: u32,
    spin: Duration,
) -> io::Result<()> {
    let home = Arc::new(Home::new()?);
    let home_no = NEXT_HOME.fetch_add(1, Ordering::Relaxed);
    if home_no >= MAX_HOMES || HOMES[home_no].set(home.clone()).is_err() {
        return Err(io::Error::other("too many executors in one process"));
    }
    let reactor = Reactor::new(ring_entries, &home)?;
    // One executor per shard thread, alive until the process ends: leaking it gives the
    // `'static` borrow that `current()` hands out without reference counting on the hot path.
    let ex: &'static Executor = Box::leak(Box::new(Executor {
        home,
        home_no,
        slots: RefCell::new(Vec::new()),
        free: RefCell::new(Vec::new()),
        queue: RefCell::new(VecDeque::new()),
        urgent: Cell::new(false),
        next: Cell::new(None),
        timers: RefCell::new(BTreeMap::new()),
        timer_seq: Cell::new(0),
        now: Cell::new(Instant::now()),
        reactor,
        spin,
        events_at_park: Cell::new(0),
        idle_since: Cell::new(None),
        odds: Cell::new(super::spare::SpinOdds::new()),
    }));
    CURRENT.with(|c| c.set(Some(ex)));
    let done = Rc::new(Cell::new(false));
    let flag = done.clone();
    ex.spawn_boxed(Box::pin(async move {
        main.await;
        flag.set(true);
    }));
    while !done.get() {
        // One clock read per turn, as PgBouncer caches its time per event-loop iteration.
        ex.now.set(Instant::now());
        // Work what is queued now; tasks woken meanwhile run in the next round, after I/O.
        let n = ex.queue.borrow().len();
        if n > 0 {
            ex.busy(ex.now.get());
        }
        while let Some(next) = ex.next.take() {
            ex.run(next); // handed work outside a task's poll (rare)
        }
        for _ in 0..n {
            let Some(id) = ex.queue.borrow_mut().pop_front() else {
                break;
            };
            ex.run(id);
            // A task handed work by the one that just ran (`wake_next`) runs now.
            while let Some(next) = ex.next.take() {
                ex.run(next);
            }
        }
        if done.get() {
            break;
        }
        ex.turn();
    }
    // Drop what is left (each future outside the slab borrow: their drops may touch it).
    let left: Vec<BoxFuture> = ex
        .slots
        .borrow_mut()
        .iter_mut()
        .filter_map(|s| s.fut.take())
        .collect();
    drop(left);
    ex.timers.borrow_mut().clear();
    ex.reactor.submit_and_reap(None);
    CURRENT.with(|c| c.set(None));
    Ok(())
}

/// The time at the start of the shard's current loop turn: one clock read per turn instead of
/// several per transaction. Tasks of a turn run within microseconds of it (a turn is one batch
/// of completions), which is the precision of the latency histograms and timeouts it feeds.
/// Off a shard (unit tests of sans-IO code) it reads the clock.
pub fn now() -> Instant {
    try_current().map_or_else(Instant::now, |ex| ex.now.get())
}

/// Wakes `waker`'s task to run as soon as the current task yields, before the tasks already
/// queued (only on its own shard; a waker of another shard wakes as usual).
///
/// For a handover: a released server given to a waiting client is idle until that client's
/// task runs and sends its query. Queued behind every task the last batch of completions woke
/// (hundreds at 1000 clients), it would sit idle for that whole round; PgBouncer sends the
/// next client's query in the same event handler. At most one task waits in the slot: a
/// second `wake_next` in the same poll moves the first to the queue's front.
pub fn wake_next(waker: Waker) {
    match try_current() {
        Some(ex) => {
            ex.urgent.set(true);
            waker.wake();
            ex.urgent.set(false);
        }
        None => waker.wake(),
    }
}

/// Runs a task on this shard, detached.
pub fn spawn(fut: impl Future<Output = ()> + 'static) {
    current().spawn_boxed(Box::pin(fut));
}

/// A future that completes at a deadline, on the shard's timer map.
pub struct Sleep {
    deadline: Instant,
    key: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if now() >= self.deadline {
            self.cancel();
            return Poll::Ready(());
        }
        let ex = current();
        if let Some(seq) = self.key {
            let mut timers = ex.timers.borrow_mut();
            if let Some(w) = timers.get_mut(&(self.deadline, seq)) {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
                return Poll::Pending;
            }
        }
        // First poll, or the entry fired while the deadline was a hair away: (re)register.
        self.key = Some(ex.add_timer(self.deadline, cx.waker().clone()));
        Poll::Pending
    }
}

impl Sleep {
    fn cancel(&mut self) {
        if let Some(seq) = self.key.take() {
            if let Some(ex) = CURRENT.try_with(|c| c.get()).ok().flatten() {
                ex.timers.borrow_mut().remove(&(self.deadline, seq));
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Sleeps on this shard's timer map.
pub fn sleep(d: Duration) -> Sleep {
    Sleep {
        deadline: now() + d,
        key: None,
    }
}
