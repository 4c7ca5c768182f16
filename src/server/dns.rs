//! Host names of database entries (and `[peers]`), looked up when a connection opens and cached
//! for `dns_max_ttl` (a failed lookup for `dns_nxdomain_ttl`), as PgBouncer does: a failover that
//! moves a name to another address (a cloud database endpoint, a Kubernetes service) is
//! followed within the TTL, without a RELOAD.
//!
//! One cache serves the whole process, as PgBouncer's does (SHOW DNS_HOSTS lists it): it is
//! touched only when a connection opens, never per transaction, so a lock costs nothing that
//! matters. The lookup itself (`getaddrinfo`, which blocks and can take seconds when a resolver
//! is slow) runs on a short-lived thread of its own; the shards wait for it as for any other
//! I/O, so a slow DNS server never stalls the other sessions of a shard. Connections that need
//! the same name while it is being looked up (a pool filling up, every shard at once) share
//! that one lookup. A name whose new lookup fails keeps being reached at its last known
//! addresses, logged: better a stale address that may still work than none.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tracing::warn;

/// What one name was last found to be.
#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    /// Empty: the name did not resolve.
    addrs: Vec<IpAddr>,
}

/// A lookup under way, shared by everyone who needs its answer.
#[derive(Default)]
struct Lookup {
    answer: Option<Vec<IpAddr>>,
    wakers: Vec<Waker>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    running: HashMap<String, Arc<Mutex<Lookup>>>,
}

/// The answer cache.
#[derive(Default)]
pub struct Cache {
    inner: Mutex<Inner>,
}

/// How long answers live.
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    /// `dns_max_ttl`: a name that resolved.
    pub found: Duration,
    /// `dns_nxdomain_ttl`: a name that did not.
    pub missing: Duration,
}

impl Ttl {
    /// `dns_max_ttl` and `dns_nxdomain_ttl` of `general`.
    pub fn of_config(general: &crate::config::General) -> Ttl {
        Ttl {
            found: general.dns_max_ttl.duration(),
            missing: general.dns_nxdomain_ttl.duration(),
        }
    }

    fn of(&self, e: &Entry) -> Duration {
        if e.addrs.is_empty() {
            self.missing
        } else {
            self.found
        }
    }
}

/// One row of SHOW DNS_HOSTS.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The name.
    pub name: String,
    /// Seconds until it is looked up again (0: at the next connection).
    pub ttl: u64,
    /// Its addresses, comma-separated (empty: it did not resolve).
    pub addrs: String,
}

/// The process's cache.
pub fn hosts() -> &'static Cache {
    static HOSTS: OnceLock<Cache> = OnceLock::new();
    HOSTS.get_or_init(Cache::default)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps, consistent between statements: a panic elsewhere does not poison them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    /// The addresses of `name` (with `port`): cached while fresh, else looked up (joining a
    /// lookup already running), waiting at most `deadline`. Empty when the name does not
    /// resolve and never did.
    pub async fn resolve(
        &'static self,
        name: &str,
        port: u16,
        ttl: Ttl,
        deadline: Duration,
    ) -> Vec<SocketAddr> {
        let with_port = |ips: Vec<IpAddr>| ips.into_iter().map(|ip| SocketAddr::new(ip, port));
        let (lookup, mine) = {
            let mut inner = lock(&self.inner);
            if let Some(ips) = fresh(&inner, name, Instant::now(), ttl) {
                return with_port(ips).collect();
            }
            match inner.running.get(name) {
                Some(l) => (l.clone(), false),
                None => {
                    let l = Arc::<Mutex<Lookup>>::default();
                    inner.running.insert(name.to_owned(), l.clone());
                    (l, true)
                }
            }
        };
        if mine {
            self.start(name.to_owned(), lookup.clone());
        }
        let answer = std::future::poll_fn(|cx| {
            let mut l = lock(&lookup);
            match &l.answer {
                Some(ips) => Poll::Ready(ips.clone()),
                None => {
                    l.wakers.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        match crate::runtime::io::timeout(deadline, answer).await {
            Some(ips) => with_port(ips).collect(),
            None => {
                warn!(host = name, "host name lookup timed out");
                // The lookup goes on and fills the cache when it ends; meanwhile the last
                // known addresses, if any.
                with_port(known(&lock(&self.inner), name)).collect()
            }
        }
    }

    /// Runs `getaddrinfo` for `name` on a thread of its own; its answer goes to the cache and
    /// to everyone waiting on `lookup`.
    fn start(&'static self, name: String, lookup: Arc<Mutex<Lookup>>) {
        let (theirs, their_lookup) = (name.clone(), lookup.clone());
        let run = move || {
            use std::net::ToSocketAddrs;
            let found = (theirs.as_str(), 0)
                .to_socket_addrs()
                .map(|a| a.map(|a| a.ip()).collect());
            let ips = {
                let mut inner = lock(&self.inner);
                inner.running.remove(&theirs);
                record(&mut inner, &theirs, Instant::now(), found)
            };
            answer(&their_lookup, ips);
        };
        let spawned = std::thread::Builder::new()
            .name("pgring-dns".into())
            .spawn(run);
        if let Err(e) = spawned {
            // No thread to be had: answer with what is known; the next connection tries again.
            warn!(host = name, error = %e, "cannot start a host name lookup");
            let last = {
                let mut inner = lock(&self.inner);
                inner.running.remove(&name);
                known(&inner, &name)
            };
            answer(&lookup, last);
        }
    }

    /// SHOW DNS_HOSTS: every cached name, by name.
    pub fn list(&self, ttl: Ttl) -> Vec<Host> {
        let inner = lock(&self.inner);
        let now = Instant::now();
        let mut hosts: Vec<Host> = inner
            .entries
            .iter()
            .map(|(name, e)| Host {
                name: name.clone(),
                ttl: ttl
                    .of(e)
                    .saturating_sub(now.saturating_duration_since(e.at))
                    .as_secs(),
                addrs: e
                    .addrs
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            })
            .collect();
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        hosts
    }

    /// SHOW LISTS: names cached, lookups running.
    pub fn counts(&self) -> (usize, usize) {
        let inner = lock(&self.inner);
        (inner.entries.len(), inner.running.len())
    }
}

/// Gives a lookup's waiters its answer.
fn answer(lookup: &Mutex<Lookup>, ips: Vec<IpAddr>) {
    let wakers = {
        let mut l = lock(lookup);
        l.answer = Some(ips);
        std::mem::take(&mut l.wakers)
    };
    for w in wakers {
        w.wake();
    }
}

/// The last known addresses of `name`, fresh or not (none if it never resolved).
fn known(inner: &Inner, name: &str) -> Vec<IpAddr> {
    inner
        .entries
        .get(name)
        .map(|e| e.addrs.clone())
        .unwrap_or_default()
}

/// The cached addresses of `name` if they are still fresh at `now`.
fn fresh(inner: &Inner, name: &str, now: Instant, ttl: Ttl) -> Option<Vec<IpAddr>> {
    let e = inner.entries.get(name)?;
    (now.saturating_duration_since(e.at) < ttl.of(e)).then(|| e.addrs.clone())
}

/// Records a lookup's outcome and returns the addresses to use: the new ones, or on a failure
/// the last known ones (the failure is remembered only when there are none).
fn record(
    inner: &mut Inner,
    name: &str,
    now: Instant,
    found: io::Result<Vec<IpAddr>>,
) -> Vec<IpAddr> {
    let entries = &mut inner.entries;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    const TTL: Ttl = Ttl {
        found: Duration::from_secs(15),
        missing: Duration::from_secs(5),
    };

    #[test]
    fn answers_live_for_their_ttl_and_a_failure_keeps_the_last_known_addresses() {
        let mut inner = Inner::default();
        let t0 = Instant::now();
        assert!(fresh(&inner, "db", t0, TTL).is_none(), "nothing cached yet");
        let got = record(&mut inner, "db", t0, Ok(vec![ip("10.0.0.1")]));
        assert_eq!(got, [ip("10.0.0.1")]);
        assert_eq!(
            fresh(&inner, "db", t0 + Duration::from_secs(14), TTL),
            Some(got.clone())
        );
        assert!(
            fresh(&inner, "db", t0 + Duration::from_secs(15), TTL).is_none(),
            "expired"
        );

        // The name moved (a failover): the new lookup wins.
        let t1 = t0 + Duration::from_secs(16);
        let moved = record(&mut inner, "db", t1, Ok(vec![ip("10.0.0.2")]));
        assert_eq!(moved, [ip("10.0.0.2")]);

        // The resolver fails: the last known address is used, and kept for another TTL.
        let t2 = t1 + Duration::from_secs(20);
        let failed = io::Error::new(io::ErrorKind::TimedOut, "timed out");
        assert_eq!(record(&mut inner, "db", t2, Err(failed)), [ip("10.0.0.2")]);
        assert_eq!(
            fresh(&inner, "db", t2 + Duration::from_secs(1), TTL),
            Some(moved)
        );
    }

    #[test]
    fn a_name_that_never_resolved_is_asked_again_after_the_nxdomain_ttl() {
        let mut inner = Inner::default();
        let t0 = Instant::now();
        assert!(record(&mut inner, "nope", t0, Ok(Vec::new())).is_empty());
        assert_eq!(
            fresh(&inner, "nope", t0 + Duration::from_secs(4), TTL),
            Some(Vec::new())
        );
        assert!(fresh(&inner, "nope", t0 + Duration::from_secs(5), TTL).is_none());
    }

    #[test]
    fn the_listing_shows_each_name_with_its_time_left_and_addresses() {
        let cache = Cache::default();
        let now = Instant::now();
        {
            let mut inner = lock(&cache.inner);
            record(
                &mut inner,
                "b.example",
                now,
                Ok(vec![ip("10.0.0.1"), ip("::1")]),
            );
            record(&mut inner, "a.example", now, Ok(Vec::new()));
        }
        let hosts = cache.list(TTL);
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].name, "a.example");
        assert_eq!(hosts[0].addrs, "");
        assert!(hosts[0].ttl <= 5);
        assert_eq!(hosts[1].addrs, "10.0.0.1,::1");
        assert!((14..=15).contains(&hosts[1].ttl), "{:?}", hosts[1]);
        assert_eq!(cache.counts(), (2, 0));
    }
}
