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

/// Readiness of one direction of one fd.
pub(crate) struct DirState {
    /// Worth trying the syscall: set by a poll completion, cleared by EAGAIN or a short read.
    ready: Cell<bool>,
    /// The armed poll's op id + 1 (0: none).
    armed: Cell<u64>,
    waker: Cell<Option<Waker>>,
}

impl DirState {
    fn new() -> DirState {
        DirState {
            ready: Cell::new(true),
            armed: Cell::new(0),
            waker: Cell::new(None),
        }
    }

    /// Something happened (data, end of stream, error, room to write): worth a syscall.
    fn fire(&self) {
        self.ready.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// The reactor's view of one fd: both directions' readiness. Shared (`Rc`) between the owning
/// stream and the reactor's table while a poll is in flight.
pub(crate) struct IoState {
    fd: RawFd,
    read: DirState,
    write: DirState,
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
            read: DirState::new(),
            write: DirState::new(),
        })
    }

    fn dir(&self, dir: Dir) -> &DirState {
        match dir {
            Dir::Read => &self.read,
            Dir::Write => &self.write,
        }
    }

    /// A poll is armed in direction `dir` and has not fired: nothing happened on the socket since
    /// it was armed (no data, no end of stream, no error).
    pub(crate) fn is_quiet(&self, dir: Dir) -> bool {
        let d = self.dir(dir);
        d.armed.get() != 0 && !d.ready.get()
    }

    /// The last syscall found nothing (EAGAIN) or all there was: wait for a poll next time.
    pub(crate) fn clear_ready(&self, dir: Dir) {
        self.dir(dir).ready.set(false);
    }
}

enum Op {
    Poll(Rc<IoState>, Dir),
    Eventfd,
}

struct OpSlot {
    gen: u32,
    op: Option<Op>,
}

/// user_data of cancel requests, whose completions carry nothing we need.
const CANCEL_TAG: u64 = u64::MAX;

pub(crate) struct Reactor {
    ring: RefCell<IoUring>,
    ops: RefCell<Vec<OpSlot>>,
    free: RefCell<Vec<u32>>,
    /// Completions copied out of the ring, so wakers run with the ring unborrowed.
    reaped: RefCell<Vec<(u64, i32, u32)>>,
    eventfd: RawFd,
    /// Where the eventfd read lands (the kernel writes it; nobody reads it).
    eventfd_buf: Box<UnsafeCell<u64>>,
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    let cq = entries.saturating_mul(8);
    // Deferred task work (6.1+) first, then cooperative task running (5.19+), then plain.
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(cq)
        .setup_clamp()
        .build(entries)
        .or_else(|_| {
            IoUring::builder()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_cqsize(cq)
                .setup_clamp()
                .build(entries)
        })
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(cq)
                .setup_clamp()
                .build(entries)
        })
}

impl Reactor {
    pub(crate) fn new(entries: u32, home: &Home) -> io::Result<Reactor> {
        let r = Reactor {
            ring: RefCell::new(build_ring(entries.max(64))?),
            ops: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            reaped: RefCell::new(Vec::new()),
            eventfd: home.eventfd.as_raw_fd(),
            eventfd_buf: Box::new(UnsafeCell::new(0)),
        };
        r.arm_eventfd();
        Ok(r)
    }

    fn add_op(&self, op: Op) -> u64 {
        let index = self.free.borrow_mut().pop();
        let mut ops = self.ops.borrow_mut();
        let index = match index {
            Some(i) => i as usize,
            None => {
                ops.push(OpSlot { gen: 0, op: None });
                ops.len() - 1
            }
        };
        ops[index].op = Some(op);
        ((ops[index].gen as u64) << 32) | index as u64
    }

    /// The shared state of a live poll whose operation goes on (multishot).
    fn peek_poll(&self, id: u64) -> Option<(Rc<IoState>, Dir)> {
        let ops = self.ops.borrow();
        let slot = ops.get((id & 0xffff_ffff) as usize)?;
        match &slot.op {
            Some(Op::Poll(io, dir)) if slot.gen == (id >> 32) as u32 => Some((io.clone(), *dir)),
            _ => None,
        }
    }

    fn take_op(&self, id: u64) -> Option<Op> {
        let index = (id & 0xffff_ffff) as usize;
        let mut ops = self.ops.borrow_mut();
        let slot = ops.get_mut(index)?;
        if slot.gen != (id >> 32) as u32 {
            return None;
        }
        let op = slot.op.take()?;
        slot.gen = slot.gen.wrapping_add(1);
        self.free.borrow_mut().push(index as u32);
        Some(op)
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
        let id = self.add_op(Op::Eventfd);
        let sqe = opcode::Read::new(types::Fd(self.eventfd), self.eventfd_buf.get().cast(), 8)
            .build()
            .user_data(id);
        self.push(sqe);
    }

    /// Ready to try the syscall in direction `dir`, or registers the task and arms a poll.
    pub(crate) fn poll_ready(&self, io: &Rc<IoState>, dir: Dir, cx: &mut Context<'_>) -> Poll<()> {
        let d = io.dir(dir);
        if d.ready.get() {
            return Poll::Ready(());
        }
        let w = match d.waker.take() {
            Some(old) if old.will_wake(cx.waker()) => old,
            _ => cx.waker().clone(),
        };
        d.waker.set(Some(w));
        self.arm(io, dir);
        Poll::Pending
    }

    /// Arms a poll in direction `dir` unless one is armed or the direction is already ready;
    /// a completion with no task waiting only marks the direction ready.
    pub(crate) fn arm(&self, io: &Rc<IoState>, dir: Dir) {
        let d = io.dir(dir);
        if d.armed.get() == 0 && !d.ready.get() {
            let id = self.add_op(Op::Poll(io.clone(), dir));
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
            .user_data(id);
            self.push(sqe);
            d.armed.set(id + 1);
        }
    }

    /// The fd is going away: cancel its in-flight polls (their completions then just drop the
    /// shared state). The fd may be closed right after; the kernel holds the file until the
    /// cancel lands, and the cancel names the operation, not the fd number.
    pub(crate) fn forget(&self, io: &IoState) {
        for d in [&io.read, &io.write] {
            let armed = d.armed.replace(0);
            if armed != 0 {
                self.push(
                    opcode::AsyncCancel::new(armed - 1)
                        .build()
                        .user_data(CANCEL_TAG),
                );
            }
            d.waker.take();
        }
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
        for &(id, result, flags) in &batch {
            if id == CANCEL_TAG {
                continue;
            }
            if cqueue::more(flags) {
                // A multishot poll reporting an arrival; it stays armed.
                if let Some((io, dir)) = self.peek_poll(id) {
                    io.dir(dir).fire();
                }
                continue;
            }
            match self.take_op(id) {
                Some(Op::Poll(io, dir)) => {
                    let d = io.dir(dir);
                    if d.armed.get() != id + 1 {
                        continue; // cancelled: the stream is gone
                    }
                    d.armed.set(0);
                    if result != -libc::ECANCELED {
                        d.fire();
                    }
                }
                Some(Op::Eventfd) => self.arm_eventfd(),
                None => {}
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
