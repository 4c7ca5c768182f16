//! One shard's io_uring: readiness polls for sockets, the eventfd that ends a park, and the
//! single `io_uring_enter` per loop turn that submits, reaps and (when idle) waits.
//!
//! Sockets are read and written with plain non-blocking `recv`/`send` from the task that owns
//! them; the ring only tells when a socket that had nothing to read (or no room to write) has
//! changed. That keeps the relay's data in the caller's buffer (an idle client holds none).
//! A socket's read poll is multishot: armed the first time a read finds nothing, it stays armed
//! and posts a completion per arrival (epoll's register-once model, no re-arm per message).
//! Write polls are one-shot and rare (only when a send finds the socket full).
//! The ring is set up single-issuer with deferred task work, so the kernel runs completions only
//! when this thread enters: no interrupts of a busy shard, and one batch per turn.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::executor::Home;

/// Which way a readiness poll looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

/// The reactor's view of one fd: both directions' readiness and waiting task. Shared (`Rc`)
/// between the owning stream and each in-flight poll, whose io_uring `user_data` is a strong
/// reference to it (see [`poll_tag`]). An idle client keeps one of these (64 bytes with `Rc`'s
/// counts) and a multishot read poll, and no other reactor state.
pub(crate) struct IoState {
    fd: RawFd,
    /// [`READY`] and [`ARMED`] bits, shifted by [`Dir::shift`].
    flags: Cell<u8>,
    read_waker: Cell<Option<Waker>>,
    write_waker: Cell<Option<Waker>>,
}

/// Worth trying the syscall: set by a poll completion, cleared by EAGAIN or a short read.
const READY: u8 = 1;
/// A poll is in flight for this direction and not cancelled.
const ARMED: u8 = 2;
/// The peer has closed its side (or the socket failed): reads stay worth trying from now on,
/// whatever a short read suggests. (One bit, above both directions' pairs.) Without it, data and
/// the end of stream arriving together, reported by one poll completion, would leave the end
/// unseen once a short read had taken the data: no later arrival would fire the poll again.
const ENDED: u8 = 1 << 4;
/// Poll results that mean the peer's side is closed or the socket failed.
const ENDED_EVENTS: i32 = (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as i32;

impl Dir {
    fn shift(self) -> u8 {
        match self {
            Dir::Read => 0,
            Dir::Write => 2,
        }
    }
}

impl std::fmt::Debug for IoState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoState").field("fd", &self.fd).finish()
    }
}

impl IoState {
    pub(crate) fn new(fd: RawFd) -> Rc<IoState> {
        Rc::new(IoState {
            fd,
            flags: Cell::new((READY << Dir::Read.shift()) | (READY << Dir::Write.shift())),
            read_waker: Cell::new(None),
            write_waker: Cell::new(None),
        })
    }

    fn has(&self, dir: Dir, bit: u8) -> bool {
        self.flags.get() & (bit << dir.shift()) != 0
    }

    /// Sets or clears `bit` in direction `dir`; returns whether it was set before.
    fn set(&self, dir: Dir, bit: u8, on: bool) -> bool {
        let mask = bit << dir.shift();
        let old = self.flags.get();
        self.flags.set(if on { old | mask } else { old & !mask });
        old & mask != 0
    }

    fn waker(&self, dir: Dir) -> &Cell<Option<Waker>> {
        match dir {
            Dir::Read => &self.read_waker,
            Dir::Write => &self.write_waker,
        }
    }

    /// Something happened (data, end of stream, error, room to write): worth a syscall.
    fn fire(&self, dir: Dir) {
        self.set(dir, READY, true);
        if let Some(w) = self.waker(dir).take() {
            w.wake();
        }
    }

    /// A poll is armed in direction `dir` and has not fired: nothing happened on the socket since
    /// it was armed (no data, no end of stream, no error).
    pub(crate) fn is_quiet(&self, dir: Dir) -> bool {
        self.has(dir, ARMED) && !self.has(dir, READY)
    }

    /// The last syscall found nothing (EAGAIN) or all there was: wait for a poll next time
    /// (reads of a stream whose end has come stay ready: the end is still to be read).
    pub(crate) fn clear_ready(&self, dir: Dir) {
        if dir == Dir::Read && self.flags.get() & ENDED != 0 {
            return;
        }
        self.set(dir, READY, false);
    }

    /// A poll completion in direction `dir` with `result` (its event mask, or an error).
    fn completed(&self, dir: Dir, result: i32) {
        if dir == Dir::Read && result > 0 && result & ENDED_EVENTS != 0 {
            self.flags.set(self.flags.get() | ENDED);
        }
        self.fire(dir);
    }
}

/// The `user_data` of a poll on `io` in direction `dir`: the `IoState`'s address (8-aligned, so
/// its low bit is free) with the direction in bit 0. At most one poll per direction is in flight
/// ([`ARMED`]), and a stream is dropped right after [`Reactor::forget`], so a tag names one
/// operation.
fn poll_tag(io: *const IoState, dir: Dir) -> u64 {
    io as usize as u64 | (dir == Dir::Write) as u64
}

/// The state and direction a poll tag names.
fn untag(tag: u64) -> (*const IoState, Dir) {
    let dir = if tag & 1 == 1 { Dir::Write } else { Dir::Read };
    ((tag & !1) as usize as *const IoState, dir)
}

/// user_data of cancel requests, whose completions carry nothing we need.
const CANCEL_TAG: u64 = u64::MAX;
/// user_data of the eventfd read (no user-space address, so never a poll's tag).
const EVENTFD_TAG: u64 = u64::MAX - 2;

pub(crate) struct Reactor {
    ring: RefCell<IoUring>,
    /// Completions copied out of the ring, so wakers run with the ring unborrowed.
    reaped: RefCell<Vec<(u64, i32, u32)>>,
    eventfd: RawFd,
    /// Where the eventfd read lands (the kernel writes it; nobody reads it).
    eventfd_buf: Box<UnsafeCell<u64>>,
    /// Completions that meant something happened (a socket changed, another thread woke
    /// us), counted so the executor can tell a shard woken only by its own timers.
    events: Cell<u64>,
}

/// The smallest completion queue a ring gets. Besides room for completions, the CQ size sets
/// the kernel's poll-cancel hash (`ilog2(cq_entries) - 5` bits, at most 8: 256 buckets at
/// 8192 entries). Every connection keeps a multishot read poll armed, and a poll is found in
/// that table by walking its bucket when it is cancelled (a stream leaving the ring: a server
/// handed to another shard, a client moving). With ring_depth 128 the CQ was 1024: 32
/// buckets, ~150 polls each at 5,000 connections per shard, and at 10,000 clients
/// `io_poll_find` took 2-4% of pgring's CPU, 20% with clients moving after every transaction
/// (perf). 8192 CQEs cost 128 KiB per shard.
const MIN_CQ_ENTRIES: u32 = 8192;

fn build_ring(entries: u32) -> io::Result<IoUring> {
    #[derive(Clone, Copy)]
    enum TaskRun {
        Deferred,
        Cooperative,
        Default,
    }
    let build = |mode| {
        let mut b = IoUring::builder();
        match mode {
            TaskRun::Deferred => b
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag(),
            TaskRun::Cooperative => b.setup_coop_taskrun().setup_taskrun_flag(),
            TaskRun::Default => &mut b,
        };
        b.setup_cqsize(entries.saturating_mul(8).max(MIN_CQ_ENTRIES))
            .setup_clamp()
            .build(entries)
    };
    // Deferred task work (6.1+) first, then cooperative task running (5.19+), then plain.
    build(TaskRun::Deferred)
        .or_else(|_| build(TaskRun::Cooperative))
        .or_else(|_| build(TaskRun::Default))
}

impl Reactor {
    pub(crate) fn new(entries: u32, home: &Home) -> io::Result<Reactor> {
        let r = Reactor {
            ring: RefCell::new(build_ring(entries.max(64))?),
            reaped: RefCell::new(Vec::new()),
            eventfd: home.eventfd.as_raw_fd(),
            eventfd_buf: Box::new(UnsafeCell::new(0)),
            events: Cell::new(0),
        };
        r.arm_eventfd();
        Ok(r)
    }

    fn push(&self, sqe: squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: every SQE we build points at memory that outlives the operation: a poll
            // points at nothing, the eventfd read at `eventfd_buf` (owned by the reactor).
            if unsafe { ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            // Submission queue full: hand what is queued to the kernel and retry. If the
            // kernel refuses because completions are backed up (EBUSY), move them out of its
            // way; they are handled at the next turn like any other.
            if let Err(e) = ring.submit() {
                match e.raw_os_error() {
                    Some(libc::EBUSY) => {
                        let mut reaped = self.reaped.borrow_mut();
                        for cqe in ring.completion() {
                            reaped.push((cqe.user_data(), cqe.result(), cqe.flags()));
                        }
                    }
                    Some(libc::EINTR) | Some(libc::EAGAIN) => {}
                    _ => {
                        tracing::error!(error = %e, "io_uring submit failed");
                        // Nothing else can free a slot: drop this request rather than spin.
                        // Its task waits for a completion that will not come; the janitor's
                        // timeouts still end it.
                        return;
                    }
                }
            }
        }
    }

    fn arm_eventfd(&self) {
        let sqe = opcode::Read::new(types::Fd(self.eventfd), self.eventfd_buf.get().cast(), 8)
            .build()
            .user_data(EVENTFD_TAG);
        self.push(sqe);
    }

    /// Ready to try the syscall in direction `dir`, or registers the task and arms a poll.
    pub(crate) fn poll_ready(&self, io: &Rc<IoState>, dir: Dir, cx: &mut Context<'_>) -> Poll<()> {
        if io.has(dir, READY) {
            return Poll::Ready(());
        }
        let slot = io.waker(dir);
        let w = match slot.take() {
            Some(old) if old.will_wake(cx.waker()) => old,
            _ => cx.waker().clone(),
        };
        slot.set(Some(w));
        self.arm(io, dir);
        Poll::Pending
    }

    /// Arms a poll in direction `dir` unless one is armed or the direction is already ready;
    /// a completion with no task waiting only marks the direction ready.
    pub(crate) fn arm(&self, io: &Rc<IoState>, dir: Dir) {
        if io.has(dir, ARMED) || io.has(dir, READY) {
            return;
        }
        // The operation owns a strong reference until its last completion (or cancellation)
        // is reaped, so the tag's pointer stays valid while the kernel may still report it.
        let tag = poll_tag(Rc::into_raw(io.clone()), dir);
        // Reads arm a multishot poll: it stays armed for the socket's life and posts a
        // completion at each arrival, so a busy connection costs no re-arm per message
        // (epoll's registered-once model). Writes arm one-shot: POLLOUT would fire at every
        // ACK while there is room.
        let sqe = match dir {
            Dir::Read => {
                opcode::PollAdd::new(types::Fd(io.fd), (libc::POLLIN | libc::POLLRDHUP) as u32)
                    .multi(true)
            }
            Dir::Write => opcode::PollAdd::new(types::Fd(io.fd), libc::POLLOUT as u32),
        }
        .build()
        .user_data(tag);
        self.push(sqe);
        io.set(dir, ARMED, true);
    }

    /// The fd is going away: cancel its in-flight polls (their completions then just drop the
    /// shared state). The fd may be closed right after; the kernel holds the file until the
    /// cancel lands, and the cancel names the operation, not the fd number. The stream must not
    /// arm again (it is dropped or handed to another shard right after).
    pub(crate) fn forget(&self, io: &IoState) {
        for dir in [Dir::Read, Dir::Write] {
            if io.set(dir, ARMED, false) {
                self.push(
                    opcode::AsyncCancel::new(poll_tag(io, dir))
                        .build()
                        .user_data(CANCEL_TAG),
                );
            }
            io.waker(dir).take();
        }
    }

    /// How many completions have been reaped so far (see `events`).
    pub(crate) fn events(&self) -> u64 {
        self.events.get()
    }

    /// Submits what is queued and reaps completions; with `wait`, parks until at least one
    /// completion or the timeout. Wakes the tasks the completions concern.
    pub(crate) fn submit_and_reap(&self, wait: Option<Duration>) {
        {
            let mut ring = self.ring.borrow_mut();
            let result = match wait {
                Some(d) => {
                    let ts = types::Timespec::new()
                        .sec(d.as_secs())
                        .nsec(d.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    ring.submitter().submit_with_args(1, &args)
                }
                None => {
                    let sq = ring.submission();
                    let needed = !sq.is_empty() || sq.taskrun() || sq.cq_overflow();
                    drop(sq);
                    if needed {
                        ring.submit()
                    } else {
                        Ok(0)
                    }
                }
            };
            if let Err(e) = result {
                match e.raw_os_error() {
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                    _ => tracing::error!(error = %e, "io_uring_enter failed"),
                }
            }
            let mut reaped = self.reaped.borrow_mut();
            for cqe in ring.completion() {
                reaped.push((cqe.user_data(), cqe.result(), cqe.flags()));
            }
        }
        let batch = std::mem::take(&mut *self.reaped.borrow_mut());
        self.events.set(self.events.get() + batch.len() as u64);
        for &(tag, result, flags) in &batch {
            match tag {
                CANCEL_TAG => continue,
                EVENTFD_TAG => {
                    self.arm_eventfd();
                    continue;
                }
                _ => {}
            }
            let (ptr, dir) = untag(tag);
            if cqueue::more(flags) {
                // A multishot poll reporting an arrival; it stays armed.
                // SAFETY: `ptr` came from `Rc::into_raw` in `arm`, and that strong reference is
                // released only at the operation's last completion (one without MORE), below.
                let io = unsafe { &*ptr };
                if io.has(dir, ARMED) {
                    io.completed(dir, result);
                }
                continue;
            }
            // The operation's last completion: take back the reference `arm` leaked into it.
            // SAFETY: `ptr` came from `Rc::into_raw` in `arm`; the kernel posts exactly one
            // completion without MORE per operation, so this runs once per `into_raw`.
            let io = unsafe { Rc::from_raw(ptr) };
            if !io.set(dir, ARMED, false) {
                continue; // cancelled: the stream is gone
            }
            if result != -libc::ECANCELED {
                io.completed(dir, result);
            }
        }
        let mut batch = batch;
        batch.clear();
        let mut reaped = self.reaped.borrow_mut();
        if reaped.is_empty() {
            *reaped = batch; // keep the allocation
        }
    }
}
