//! A wait group that crosses threads: [`Token`]s go with a piece of work wherever it runs (a
//! task on another shard, a peer forward), and the [`Waiter`] resolves once the last token is
//! dropped, done or given up. Used where a connection must stay open until work it started
//! elsewhere has finished (a CancelRequest's connection, until PostgreSQL has the request).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    tokens: usize,
    waker: Option<Waker>,
}

/// One share of the work; dropping it says that share is over.
pub struct Token(Arc<Mutex<State>>);

/// Resolves when every [`Token`] is gone.
pub struct Waiter(Arc<Mutex<State>>);

/// A group with one token.
pub fn new() -> (Token, Waiter) {
    let state = Arc::new(Mutex::new(State {
        tokens: 1,
        waker: None,
    }));
    (Token(state.clone()), Waiter(state))
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // The lock guards two plain fields; a panic while holding it leaves them consistent.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Clone for Token {
    fn clone(&self) -> Token {
        lock(&self.0).tokens += 1;
        Token(self.0.clone())
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let waker = {
            let mut s = lock(&self.0);
            s.tokens -= 1;
            if s.tokens > 0 {
                return;
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Future for Waiter {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.0);
        if s.tokens == 0 {
            return Poll::Ready(());
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wait_group::Token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_waiter_resolves_when_the_last_token_is_dropped_on_any_thread() {
        let woken = Arc::new(Count(Default::default()));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let (token, mut waiter) = new();
        let copies: Vec<Token> = (0..3).map(|_| token.clone()).collect();
        drop(token);
        assert!(Pin::new(&mut waiter).poll(&mut cx).is_pending());
        std::thread::spawn(move || drop(copies))
            .join()
            .expect("the dropping thread");
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(Pin::new(&mut waiter).poll(&mut cx).is_ready());
    }
}
