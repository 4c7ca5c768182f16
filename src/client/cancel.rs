//! Cancel keys: each client gets its own 8-byte BackendKeyData from pgring.
//!
//! Layout (the 8 bytes as the client sees them: pid, then secret, both big-endian):
//! - byte 0: random, top bit clear (a positive pid, as PostgreSQL's);
//! - bytes 1-2: with peering on (`peer_id`), this process's peer id, low byte first, as
//!   PgBouncer 1.19+ lays it out, so pgring and PgBouncer processes can share one peered
//!   group (a migration behind one load balancer or SO_REUSEPORT port); else random;
//! - byte 3: the owning shard;
//! - the secret: random; with peering on, its two low bits are the forwarding TTL, 3 in every
//!   key handed out, one less at each forward.
//!
//! A CancelRequest carrying another peer's id is forwarded to that `[peers]` entry (TTL
//! permitting, so a misconfigured group cannot bounce a request forever). One for this
//! process is routed by shard: forwarded through the mesh to the one shard that knows which
//! server backend the client is using, and that shard sends PostgreSQL a CancelRequest with
//! the backend's real key. No shared table, no lock. A client keeps its key when it moves to
//! another shard (`balance`): the key's shard, not finding it, asks the other shards (only
//! once some client has left it, so a stray key costs no fan-out otherwise).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use tracing::{debug, info};

use crate::pool::{Notify, PoolKey};
use crate::protocol::startup::CancelKey;
use crate::runtime::mesh::MeshMsg;
use crate::runtime::{self, wait_group, Shard};
use crate::server::addr::{server_targets, Target};
use crate::server::{dns, ServerAddr};

/// How long a cancel request may take to reach PostgreSQL or a peer: `cancel_wait_timeout`
/// (PgBouncer's default 10 s), or with 0 ("no limit") `server_connect_timeout`, which bounds the
/// connection it travels on anyway.
fn deadline(shard: &Shard) -> Duration {
    let config = shard.config();
    let g = &config.general;
    match g.cancel_wait_timeout.duration() {
        d if d.is_zero() => g.server_connect_timeout.duration(),
        d => d,
    }
}

/// The secret's bits that count the forwards a cancel request may still take (PgBouncer's
/// `CANCELLATION_TTL_MASK`).
const TTL_MASK: u32 = 0b11;

/// A fresh key owned by `shard`, carrying `peer_id` when peering is on (non-zero).
pub fn new_key(shard: usize, peer_id: u16) -> CancelKey {
    let mut pid = (rand::random::<u32>() & 0x7fff_ff00) | (shard as u32 & 0xff);
    let mut secret = rand::random::<u32>();
    if peer_id != 0 {
        let id = u32::from(peer_id);
        pid = (pid & 0x7f00_00ff) | ((id & 0xff) << 16) | ((id >> 8) << 8);
        secret |= TTL_MASK;
    }
    CancelKey { pid, secret }
}

/// The shard a key belongs to.
pub fn owner(key: CancelKey) -> usize {
    (key.pid & 0xff) as usize
}

/// The peer id a key carries (meaningful with peering on).
pub fn peer_of(key: CancelKey) -> u16 {
    (((key.pid >> 16) & 0xff) | (((key.pid >> 8) & 0xff) << 8)) as u16
}

/// Routes a CancelRequest received on `shard`: to the peer process its key names, or to the
/// key's owning shard here. The returned waiter resolves once the request has reached
/// PostgreSQL (or a peer), or was dropped; the canceller's connection stays open until then.
pub fn route(shard: &Rc<Shard>, mut key: CancelKey) -> wait_group::Waiter {
    let (done, waiter) = wait_group::new();
    let me = shard.config().general.peer_id;
    if me != 0 {
        let to = peer_of(key);
        if to != me {
            forward_to_peer(shard, key, to, done);
            return waiter;
        }
        // Our keys carry a full TTL; a request forwarded to us has spent some.
        key.secret |= TTL_MASK;
    }
    let owner = owner(key);
    if owner == shard.id {
        cancel_local(shard, key, true, done);
    } else if owner < shard.shared.workers {
        shard.mesh.send(owner, MeshMsg::Cancel(key, done));
    } else {
        debug!(pid = key.pid, "cancel request with an unknown key");
    }
    waiter
}

/// How long a canceller's connection is kept open at most: every step a request takes is
/// bounded by `deadline` (a name lookup, a connect, PostgreSQL's close), so this is only a
/// backstop.
pub fn answer_limit(shard: &Shard) -> Duration {
    deadline(shard) * 3
}

/// Sends a cancel request on to the peer process `to`, one TTL step spent.
fn forward_to_peer(shard: &Rc<Shard>, mut key: CancelKey, to: u16, done: wait_group::Token) {
    if key.secret & TTL_MASK == 0 {
        info!(
            peer = to,
            "cancel request not forwarded: its TTL is spent (peers misconfigured?)"
        );
        return;
    }
    key.secret -= 1;
    let config = shard.config();
    let Some(peer) = config.peers.get(&to.to_string()) else {
        info!(
            peer = to,
            "cancel request for a peer not in [peers]; dropped"
        );
        return;
    };
    let (targets, port) = (
        server_targets(
            peer.host.as_deref(),
            peer.port,
            &config.general.unix_socket_dir,
        ),
        peer.port,
    );
    let cap = peer.pool_size.unwrap_or(config.general.default_pool_size);
    debug!(peer = to, "forwarding cancel request to peer");
    let deadline = deadline(shard);
    let ttl = dns::Ttl::of_config(&config.general);
    let shared = shard.shared.clone();
    runtime::spawn(async move {
        let _done = done;
        // At most `pool_size` requests travel to one peer at once; one waits its turn for
        // `cancel_wait_timeout` at most.
        let slot = runtime::io::timeout(deadline, shared.peer_pools.slot(to, cap)).await;
        let Some(mut slot) = slot else {
            info!(
                peer = to,
                "cancel request not forwarded: no free connection to the peer in time"
            );
            return;
        };
        let mut last = None;
        for target in targets {
            let addrs = match target {
                Target::Fixed(a) => vec![a],
                Target::Name(name) => {
                    let found = dns::hosts().resolve(&name, port, ttl, deadline).await;
                    if found.is_empty() {
                        last = Some(std::io::Error::other(format!("{name} does not resolve")));
                    }
                    found.into_iter().map(ServerAddr::Tcp).collect()
                }
            };
            for addr in addrs {
                let sent =
                    crate::server::send_cancel_then(addr, key, deadline, || slot.delivered());
                match sent.await {
                    Ok(()) => return,
                    Err(e) => last = Some(e),
                }
            }
        }
        match last {
            Some(e) => info!(peer = to, error = %e, "forwarding cancel request to peer failed"),
            None => info!(
                peer = to,
                "forwarding cancel request: the peer's host resolves to nothing"
            ),
        }
    });
}

/// Cancels the query of this shard's client holding `key`, if it is
/// linked to a server right now. The key's own shard (`owner`), not finding the client,
/// asks the other shards if some client has moved away from it (`client::balance`).
///
/// While the request travels, its server is marked in [`InFlight`]: should the query end by
/// itself first, the server is held back from the pool until the request has landed
/// (`Pool::release`), so it cannot cancel the next client's query (PgBouncer 1.18+'s
/// `sv_being_canceled`).
pub fn cancel_local(shard: &Rc<Shard>, key: CancelKey, owner: bool, done: wait_group::Token) {
    let Some(client) = shard.clients.borrow().get(&key).cloned() else {
        if owner && shard.balance.moved_out() > 0 {
            for to in (0..shard.shared.workers).filter(|&to| to != shard.id) {
                shard.mesh.send(to, MeshMsg::CancelMoved(key, done.clone()));
            }
            return;
        }
        debug!(pid = key.pid, "cancel request for no known client");
        return;
    };
    let Some(link) = client.linked.borrow().as_deref().cloned() else {
        // A client waiting for a server: its request leaves the queue and fails with 57014,
        // as PostgreSQL answers a cancelled query (PgBouncer ignores it, and the client hangs
        // until a server is free).
        if client.state.get() == super::ClientState::Waiting {
            let key = crate::admin::report::client_pool_key(&shard.config(), &client);
            let pool = shard.pools.borrow().get(&key).cloned();
            if pool.is_some_and(|p| p.cancel_waiter(client.id)) {
                info!(
                    client = client.id,
                    "cancel request: request taken out of the queue"
                );
                return;
            }
        }
        debug!(client = client.id, "cancel request for an idle client");
        return;
    };
    info!(
        client = client.id,
        server_pid = link.backend_key.pid,
        "forwarding cancel request"
    );
    let pool = crate::admin::report::client_pool_key(&shard.config(), &client);
    let travelling = InFlight::start(shard, link.server_id, pool);
    let deadline = deadline(shard);
    runtime::spawn(async move {
        if let Err(e) = crate::server::send_cancel(link.addr, link.backend_key, deadline).await {
            info!(error = %e, "cancel request to server failed");
        }
        drop(travelling);
        drop(done);
    });
}

/// The cancel requests on their way to one shard's servers, by server id: how many, and the
/// pool of each (SHOW POOLS `cl_active_cancel_req`, `sv_active_cancel`). Empty but for the
/// moments a cancel travels, so the check at every release is one `is_empty`.
#[derive(Debug, Default)]
pub struct InFlight {
    servers: RefCell<HashMap<u64, (u32, PoolKey)>>,
    /// Wakes the servers held back (`Pool::release`) when a request lands.
    landed: Notify,
}

impl InFlight {
    /// Marks one request for `server` as travelling until the guard is dropped.
    fn start(shard: &Rc<Shard>, server: u64, pool: PoolKey) -> Travelling {
        shard
            .cancelling
            .servers
            .borrow_mut()
            .entry(server)
            .or_insert((0, pool))
            .0 += 1;
        Travelling {
            shard: shard.clone(),
            server,
        }
    }

    /// Is a cancel request for `server` still travelling?
    pub fn targets(&self, server: u64) -> bool {
        let servers = self.servers.borrow();
        !servers.is_empty() && servers.contains_key(&server)
    }

    /// Resolves once no request for `server` travels.
    pub async fn landed(&self, server: u64) {
        while self.targets(server) {
            self.landed.notified().await;
        }
    }

    /// Requests travelling, by pool.
    pub fn by_pool(&self, mut f: impl FnMut(&PoolKey, u32)) {
        for (n, pool) in self.servers.borrow().values() {
            f(pool, *n);
        }
    }
}

/// One travelling request (see [`InFlight::start`]).
struct Travelling {
    shard: Rc<Shard>,
    server: u64,
}

impl Drop for Travelling {
    fn drop(&mut self) {
        let in_flight = &self.shard.cancelling;
        let mut servers = in_flight.servers.borrow_mut();
        if let Some(entry) = servers.get_mut(&self.server) {
            entry.0 -= 1;
            if entry.0 == 0 {
                servers.remove(&self.server);
            }
        }
        drop(servers);
        in_flight.landed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 8 bytes a client sees: pid then secret, big-endian.
    fn wire(key: CancelKey) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&key.pid.to_be_bytes());
        b[4..].copy_from_slice(&key.secret.to_be_bytes());
        b
    }

    #[test]
    fn a_peered_key_is_laid_out_as_pgbouncer_reads_it() {
        for (shard, peer) in [(0, 1), (3, 2), (7, 0x1234), (255, 16383)] {
            let key = new_key(shard, peer);
            let b = wire(key);
            // PgBouncer: peer_id = key[1] + (key[2] << 8); TTL = key[7] & 3, full in a new key.
            assert_eq!(u16::from(b[1]) | (u16::from(b[2]) << 8), peer);
            assert_eq!(b[7] & 3, 3);
            assert_eq!(b[0] & 0x80, 0, "the pid stays positive");
            assert_eq!(owner(key), shard);
            assert_eq!(peer_of(key), peer);
        }
    }

    #[test]
    fn an_unpeered_key_keeps_its_random_bits() {
        let keys: Vec<_> = (0..64).map(|_| new_key(1, 0)).collect();
        assert!(keys
            .iter()
            .all(|k| owner(*k) == 1 && k.pid & 0x8000_0000 == 0));
        // Bytes 1-2 and the TTL bits are random without peering: not all alike.
        assert!(keys.iter().any(|k| peer_of(*k) != peer_of(keys[0])));
        assert!(keys.iter().any(|k| k.secret & TTL_MASK != 3));
    }
}
