//! Cancel requests forwarded to `[peers]` (PgBouncer 1.19+'s peering): at most the peer's
//! `pool_size` at once per process, as PgBouncer opens at most that many connections to a peer;
//! the others wait their turn, for `cancel_wait_timeout` at most. Counted for SHOW PEER_POOLS.
//! Process-wide and behind a lock: touched only when a cancel request crosses to a peer.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// One peer's requests.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct PeerCounts {
    /// Waiting for a free connection slot (`cl_waiting_cancel_req`).
    pub waiting: u32,
    /// Connecting to the peer (`sv_login`).
    pub login: u32,
    /// Delivered, waiting for the peer to close (`sv_active_cancel`).
    pub active: u32,
}

#[derive(Default)]
struct Peer {
    counts: PeerCounts,
    wakers: Vec<Waker>,
}

/// Every peer's requests.
#[derive(Default)]
pub struct PeerPools {
    peers: Mutex<HashMap<u16, Peer>>,
}

impl PeerPools {
    fn lock(&self) -> MutexGuard<'_, HashMap<u16, Peer>> {
        // Plain counters, consistent between statements.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for one of `cap` connection slots to `peer`.
    pub async fn slot(&self, peer: u16, cap: u32) -> Slot<'_> {
        let mut queued = Queued {
            pools: self,
            peer,
            on: false,
        };
        std::future::poll_fn(|cx| {
            let mut peers = self.lock();
            let p = peers.entry(peer).or_default();
            if p.counts.login + p.counts.active < cap.max(1) {
                if queued.on {
                    p.counts.waiting -= 1;
                    queued.on = false;
                }
                p.counts.login += 1;
                return Poll::Ready(());
            }
            if !queued.on {
                p.counts.waiting += 1;
                queued.on = true;
            }
            p.wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        Slot {
            pools: self,
            peer,
            connected: false,
        }
    }

    /// The counts of `peer` now.
    pub fn counts(&self, peer: u16) -> PeerCounts {
        self.lock().get(&peer).map(|p| p.counts).unwrap_or_default()
    }
}

/// A request waiting for a slot; leaving the queue (given up) uncounts it.
struct Queued<'a> {
    pools: &'a PeerPools,
    peer: u16,
    on: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.on {
            if let Some(p) = self.pools.lock().get_mut(&self.peer) {
                p.counts.waiting -= 1;
            }
        }
    }
}

/// A connection slot to a peer, held for one forwarded request.
pub struct Slot<'a> {
    pools: &'a PeerPools,
    peer: u16,
    connected: bool,
}

impl Slot<'_> {
    /// The connection is up and the request sent: now waiting for the peer to close.
    pub fn delivered(&mut self) {
        if let Some(p) = self.pools.lock().get_mut(&self.peer) {
            if !self.connected {
                p.counts.login -= 1;
                p.counts.active += 1;
            }
        }
        self.connected = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let wakers = {
            let mut peers = self.pools.lock();
            let Some(p) = peers.get_mut(&self.peer) else {
                return;
            };
            if self.connected {
                p.counts.active -= 1;
            } else {
                p.counts.login -= 1;
            }
            std::mem::take(&mut p.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    #[test]
    fn a_full_peer_queues_requests_until_a_slot_frees() {
        let pools = PeerPools::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut first = pin!(pools.slot(7, 1));
        let Poll::Ready(mut first) = first.as_mut().poll(&mut cx) else {
            panic!("a free slot is taken at once");
        };
        assert_eq!(pools.counts(7).login, 1);
        first.delivered();
        let mut second = pin!(pools.slot(7, 1));
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            pools.counts(7),
            PeerCounts {
                waiting: 1,
                login: 0,
                active: 1
            }
        );
        drop(first);
        let Poll::Ready(second) = second.as_mut().poll(&mut cx) else {
            panic!("the freed slot goes to the waiting request");
        };
        assert_eq!(
            pools.counts(7),
            PeerCounts {
                waiting: 0,
                login: 1,
                active: 0
            }
        );
        drop(second);
        assert_eq!(pools.counts(7), PeerCounts::default());
    }

    #[test]
    fn a_request_that_gives_up_waiting_is_no_longer_counted() {
        let pools = PeerPools::default();
        let mut cx = Context::from_waker(Waker::noop());
        let held = pin!(pools.slot(1, 1)).as_mut().poll(&mut cx);
        assert!(held.is_ready());
        {
            let mut waiting = pin!(pools.slot(1, 1));
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            assert_eq!(pools.counts(1).waiting, 1);
        }
        assert_eq!(pools.counts(1).waiting, 0);
    }
}
