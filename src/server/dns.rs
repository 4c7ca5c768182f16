//! Host names of database entries, looked up when a server connection opens and cached for
//! `dns_max_ttl` (a failed lookup for `dns_nxdomain_ttl`), as PgBouncer does: a failover that
//! moves a name to another address (a cloud database endpoint, a Kubernetes service) is
//! followed within the TTL, without a RELOAD.
//!
//! The lookup itself (`getaddrinfo`, which blocks and can take seconds when a resolver is slow)
//! runs on a short-lived thread of its own ([`lookup`]); the shard waits for it as for any
//! other I/O, so a slow DNS server never stalls the other sessions of the shard. A name whose
//! new lookup fails keeps being reached at its last known addresses, logged: better a stale
//! address that may still work than none.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tracing::warn;

/// What one name was last found to be.
#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    /// Empty: the name did not resolve.
    addrs: Vec<SocketAddr>,
}

/// The answer cache of one pool's connect settings (one per pool and shard: lookups are rare,
/// and nothing is shared between threads).
#[derive(Debug, Clone, Default)]
pub struct Cache {
    entries: RefCell<HashMap<String, Entry>>,
}

/// How long answers live.
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    /// `dns_max_ttl`: a name that resolved.
    pub found: Duration,
    /// `dns_nxdomain_ttl`: a name that did not.
    pub missing: Duration,
}

impl Cache {
    /// The cached addresses of `name` if they are still fresh at `now`.
    pub fn fresh(&self, name: &str, now: Instant, ttl: Ttl) -> Option<Vec<SocketAddr>> {
        let entries = self.entries.borrow();
        let e = entries.get(name)?;
        let life = if e.addrs.is_empty() {
            ttl.missing
        } else {
            ttl.found
        };
        (now.saturating_duration_since(e.at) < life).then(|| e.addrs.clone())
    }

    /// Records a lookup's outcome and returns the addresses to use: the new ones, or on a
    /// failure the last known ones (the failure is remembered only when there are none).
    pub fn record(
        &self,
        name: &str,
        now: Instant,
        found: io::Result<Vec<SocketAddr>>,
    ) -> Vec<SocketAddr> {
        let mut entries = self.entries.borrow_mut();
        match found {
            Ok(addrs) if !addrs.is_empty() => {
                entries.insert(
                    name.to_owned(),
                    Entry {
                        at: now,
                        addrs: addrs.clone(),
                    },
                );
                addrs
            }
            other => {
                let why = other
                    .err()
                    .map_or_else(|| "no address".to_owned(), |e| e.to_string());
                match entries.get_mut(name) {
                    Some(e) if !e.addrs.is_empty() => {
                        warn!(host = name, error = %why, "host name lookup failed; using its last known addresses");
                        // Tried again after another TTL, not at every connection.
                        e.at = now;
                        e.addrs.clone()
                    }
                    _ => {
                        warn!(host = name, error = %why, "host name lookup failed");
                        entries.insert(
                            name.to_owned(),
                            Entry {
                                at: now,
                                addrs: Vec::new(),
                            },
                        );
                        Vec::new()
                    }
                }
            }
        }
    }
}

/// Looks `name` up on a thread of its own and waits for the answer without blocking the shard,
/// at most `deadline`.
pub async fn lookup(name: &str, port: u16, deadline: Duration) -> io::Result<Vec<SocketAddr>> {
    #[derive(Default)]
    struct Slot {
        answer: Option<io::Result<Vec<SocketAddr>>>,
        waker: Option<Waker>,
    }
    let slot = Arc::new(Mutex::new(Slot::default()));
    let (theirs, host) = (slot.clone(), name.to_owned());
    std::thread::Builder::new()
        .name("pgring-dns".into())
        .spawn(move || {
            use std::net::ToSocketAddrs;
            let answer = (host.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect);
            let waker = match theirs.lock() {
                Ok(mut s) => {
                    s.answer = Some(answer);
                    s.waker.take()
                }
                Err(_) => None,
            };
            if let Some(w) = waker {
                w.wake();
            }
        })?;
    let wait = std::future::poll_fn(|cx| {
        let Ok(mut s) = slot.lock() else {
            return Poll::Ready(Err(io::Error::other("host name lookup failed")));
        };
        match s.answer.take() {
            Some(answer) => Poll::Ready(answer),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    });
    crate::runtime::io::timeout(deadline, wait)
        .await
        .unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "host name lookup timed out",
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("an address")
    }

    const TTL: Ttl = Ttl {
        found: Duration::from_secs(15),
        missing: Duration::from_secs(5),
    };

    #[test]
    fn answers_live_for_their_ttl_and_a_failure_keeps_the_last_known_addresses() {
        let cache = Cache::default();
        let t0 = Instant::now();
        assert!(cache.fresh("db", t0, TTL).is_none(), "nothing cached yet");
        let got = cache.record("db", t0, Ok(vec![addr("10.0.0.1:5432")]));
        assert_eq!(got, [addr("10.0.0.1:5432")]);
        assert_eq!(
            cache.fresh("db", t0 + Duration::from_secs(14), TTL),
            Some(got.clone())
        );
        assert!(
            cache
                .fresh("db", t0 + Duration::from_secs(15), TTL)
                .is_none(),
            "expired"
        );

        // The name moved (a failover): the new lookup wins.
        let t1 = t0 + Duration::from_secs(16);
        let moved = cache.record("db", t1, Ok(vec![addr("10.0.0.2:5432")]));
        assert_eq!(moved, [addr("10.0.0.2:5432")]);

        // The resolver fails: the last known address is used, and kept for another TTL.
        let t2 = t1 + Duration::from_secs(20);
        let failed = io::Error::new(io::ErrorKind::TimedOut, "timed out");
        assert_eq!(cache.record("db", t2, Err(failed)), [addr("10.0.0.2:5432")]);
        assert_eq!(
            cache.fresh("db", t2 + Duration::from_secs(1), TTL),
            Some(moved)
        );
    }

    #[test]
    fn a_name_that_never_resolved_is_asked_again_after_the_nxdomain_ttl() {
        let cache = Cache::default();
        let t0 = Instant::now();
        assert!(cache.record("nope", t0, Ok(Vec::new())).is_empty());
        assert_eq!(
            cache.fresh("nope", t0 + Duration::from_secs(4), TTL),
            Some(Vec::new())
        );
        assert!(cache
            .fresh("nope", t0 + Duration::from_secs(5), TTL)
            .is_none());
    }
}
