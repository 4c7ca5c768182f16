//! Waiting for something (a server, the end of a PAUSE) while watching the client, as PgBouncer
//! watches a waiting client's socket: a client that hangs up ends the wait at once, and dropping
//! the wait leaves the queue and gives back whatever was granted, so a client that gave up never
//! takes a server. The session watches by reading ahead (`session::wait`), a login by peeking
//! (`login::lease_at_login`); both wait here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, Result};

/// Waits for `wait`, asking `watch` about the client each time the wait is not done:
/// `Ready(Some(e))` ends the wait with `e`, `Ready(None)` says the watch can tell no more (it
/// is not asked again), `Pending` goes on watching.
pub(super) async fn until_or<T>(
    mut wait: Pin<&mut impl Future<Output = T>>,
    mut watch: impl FnMut(&mut Context<'_>) -> Poll<Option<Error>>,
) -> Result<T> {
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = wait.as_mut().poll(cx) {
            return Poll::Ready(Ok(done));
        }
        if watching {
            match watch(cx) {
                Poll::Ready(Some(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => watching = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}
