//! Cancel keys: each client gets its own 8-byte BackendKeyData from pgring.
//! The low byte of the pid half names the owning shard (PgBouncer encodes its
//! peer id the same way), so a CancelRequest that lands on any shard's
//! listener is forwarded through the mesh to the one shard that knows which
//! server backend the client is using, and that shard sends PostgreSQL a
//! CancelRequest with the backend's real key. No shared table, no lock. A
//! client keeps its key when it moves to another shard (`balance`): the key's
//! shard, not finding it, asks the other shards (only once some client has
//! left it, so a stray key costs no fan-out otherwise).

use std::rc::Rc;
use std::time::Duration;

use tracing::{debug, info};

use crate::protocol::startup::CancelKey;
use crate::runtime::mesh::MeshMsg;
use crate::runtime::{self, Shard};

/// How long a forwarded cancel may take to reach PostgreSQL.
const CANCEL_DEADLINE: Duration = Duration::from_secs(5);

/// A fresh key owned by `shard`.
pub fn new_key(shard: usize) -> CancelKey {
    let pid = (rand::random::<u32>() & 0x7fff_ff00) | (shard as u32 & 0xff);
    CancelKey {
        pid,
        secret: rand::random(),
    }
}

/// The shard a key belongs to.
pub fn owner(key: CancelKey) -> usize {
    (key.pid & 0xff) as usize
}

/// Routes a CancelRequest received on `shard` to the key's owner.
pub fn route(shard: &Rc<Shard>, key: CancelKey) {
    let owner = owner(key);
    if owner == shard.id {
        cancel_local(shard, key, true);
    } else if owner < shard.shared.workers {
        shard.mesh.send(owner, MeshMsg::Cancel(key));
    } else {
        debug!(pid = key.pid, "cancel request with an unknown key");
    }
}

/// Cancels the query of this shard's client holding `key`, if it is
/// linked to a server right now. The key's own shard (`owner`), not finding the client,
/// asks the other shards if some client has moved away from it (`client::balance`).
pub fn cancel_local(shard: &Rc<Shard>, key: CancelKey, owner: bool) {
    let Some(client) = shard.clients.borrow().get(&key).cloned() else {
        if owner && shard.balance.moved_out() > 0 {
            for to in (0..shard.shared.workers).filter(|&to| to != shard.id) {
                shard.mesh.send(to, MeshMsg::CancelMoved(key));
            }
            return;
        }
        debug!(pid = key.pid, "cancel request for no known client");
        return;
    };
    let Some(link) = client.linked.borrow().as_deref().cloned() else {
        debug!(client = client.id, "cancel request for an idle client");
        return;
    };
    info!(
        client = client.id,
        server_pid = link.backend_key.pid,
        "forwarding cancel request"
    );
    runtime::spawn(async move {
        if let Err(e) =
            crate::server::send_cancel(link.addr, link.backend_key, CANCEL_DEADLINE).await
        {
            info!(error = %e, "cancel request to server failed");
        }
    });
}
