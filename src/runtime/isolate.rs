//! A client's task that panics ends alone: its connection closes, the shard and every other
//! client go on.
//!
//! A panic is a bug in pgring, and one reached from the wire (a message no test thought of)
//! would otherwise unwind through the executor and end the shard thread, taking thousands of
//! other clients with it. PgBouncer has no such boundary (a crash is a crash); a pooler with
//! shared-nothing shards can draw one around each session: [`Isolated`] catches the unwind at
//! the task's poll, logs it at error level, and drops the session's future in place, whose
//! guards do what the session's own end would have done (leave the shard's client table, free
//! the `max_client_conn` slot, close any server it held and give its pool budget back: a
//! server in an unknown state is never returned to the pool).
//!
//! Only sessions are isolated. The shard's own tasks (listeners, janitor, mesh) hold state
//! every client depends on; a panic there still ends the shard thread, and with it the process
//! (see `runtime::run`), which a supervisor restarts, rather than leave a half-working pooler.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A future whose panics end only itself (see the module documentation).
pub struct Isolated<F> {
    fut: ManuallyDrop<F>,
    /// `fut` has not been dropped yet. Cleared before it is, so that a drop that panics
    /// half-way is never run a second time.
    live: bool,
}

impl<F> Isolated<F> {
    /// Wraps `fut`.
    pub fn new(fut: F) -> Self {
        Isolated {
            fut: ManuallyDrop::new(fut),
            live: true,
        }
    }
}

impl<F> Drop for Isolated<F> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.live) {
            // SAFETY: `fut` is live (the flag) and is dropped exactly once, here.
            unsafe { ManuallyDrop::drop(&mut self.fut) };
        }
    }
}

impl<F: Future<Output = ()>> Future for Isolated<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `fut` is never moved: it is polled where it lies and dropped in place, which
        // pinning allows.
        let this = unsafe { self.get_unchecked_mut() };
        if !this.live {
            return Poll::Ready(());
        }
        // SAFETY: see above; `this` is pinned, so its field is too.
        let fut = unsafe { Pin::new_unchecked(&mut *this.fut) };
        let payload = match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(poll) => return poll,
            Err(payload) => payload,
        };
        tracing::error!(
            panic = panic_message(payload.as_ref()),
            "a client session panicked (a bug in pgring): its connection is closed; other \
             clients are not affected"
        );
        // The session's guards run here. One that panics in turn (the state it cleans up may
        // be what was inconsistent) is logged too, and what is left of the future is leaked.
        this.live = false;
        // SAFETY: `fut` was live and is dropped once (`live` is already false).
        let dropped = catch_unwind(AssertUnwindSafe(|| unsafe {
            ManuallyDrop::drop(&mut this.fut)
        }));
        if let Err(again) = dropped {
            tracing::error!(
                panic = panic_message(again.as_ref()),
                "cleaning up after a panicked client session panicked too"
            );
        }
        Poll::Ready(())
    }
}

/// The text a panic was raised with, when it is a string (it nearly always is).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}
