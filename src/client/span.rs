//! The session's tracing span, as small as an idle client can afford.
//!
//! Every log line of a session names its shard and client through this span (house style: logs
//! name the connection). A `tracing::Span` is 40 bytes even when its level is filtered out, and
//! `Instrumented` would keep it inline in every idle client's task. [`InSpan`] keeps it boxed, and
//! keeps nothing at all when the span is disabled (`RUST_LOG=warn`, say): 8 bytes per client
//! instead of 40, for the price of one small allocation per client when the span is on.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::Span;

/// A span held only if it records anything.
#[derive(Clone, Debug)]
pub struct ClientSpan(Option<Box<Span>>);

impl ClientSpan {
    /// Keeps `span` unless it is disabled.
    pub fn new(span: Span) -> ClientSpan {
        ClientSpan((!span.is_disabled()).then(|| Box::new(span)))
    }

    /// Runs `fut` inside this span: entered on every poll and while the future drops, as
    /// `tracing::Instrument` does.
    pub fn wrap<F: Future>(self, fut: F) -> InSpan<F> {
        InSpan {
            span: self,
            fut: ManuallyDrop::new(fut),
        }
    }
}

/// A future polled inside a [`ClientSpan`].
#[derive(Debug)]
pub struct InSpan<F: Future> {
    span: ClientSpan,
    /// Dropped by hand, inside the span (see `Drop`).
    fut: ManuallyDrop<F>,
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `self`, and `Drop`
        // drops it in place; `span` is not pinned and only borrowed.
        let this = unsafe { self.get_unchecked_mut() };
        let _entered = this.span.0.as_deref().map(Span::enter);
        // SAFETY: see above; `this.fut` stays where the pinned `self` put it.
        unsafe { Pin::new_unchecked(&mut *this.fut) }.poll(cx)
    }
}

impl<F: Future> Drop for InSpan<F> {
    fn drop(&mut self) {
        // The future's own drop (a session giving back its server, say) may log: in the span.
        let _entered = self.span.0.as_deref().map(Span::enter);
        // SAFETY: dropped in place exactly once, here; `fut` is never touched again.
        unsafe { ManuallyDrop::drop(&mut self.fut) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Records the current span's id when polled and when dropped.
    struct Probe {
        polled: Rc<Cell<Option<u64>>>,
        dropped: Rc<Cell<Option<u64>>>,
    }

    fn current_id() -> Option<u64> {
        Span::current().id().map(|id| id.into_u64())
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polled.set(current_id());
            Poll::Ready(())
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.set(current_id());
        }
    }

    #[test]
    fn disabled_span_is_not_kept() {
        // No subscriber: every span is disabled.
        let span = ClientSpan::new(tracing::info_span!("client", client = 1));
        assert!(span.0.is_none());
        assert_eq!(std::mem::size_of::<ClientSpan>(), 8);
    }

    #[test]
    fn future_polls_and_drops_inside_the_span() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("client", client = 1);
            let id = span.id().map(|id| id.into_u64());
            assert!(id.is_some());
            let (polled, dropped) = (Rc::new(Cell::new(None)), Rc::new(Cell::new(None)));
            let probe = Probe {
                polled: polled.clone(),
                dropped: dropped.clone(),
            };
            futures_lite::future::block_on(ClientSpan::new(span).wrap(probe));
            assert_eq!(polled.get(), id);
            assert_eq!(dropped.get(), id);
            assert_eq!(current_id(), None);
        });
    }
}
