//! Protocol-level prepared statements in transaction and statement pooling
//! (PgBouncer 1.21's `max_prepared_statements`, plus what PgBouncer lacks:
//! SQL `DEALLOCATE name` and a 42P05 error instead of a disconnect when a
//! client reuses a live statement name).
//!
//! A client prepares a statement on whatever server it is linked to at the
//! time, and later binds it on another. So pgring owns the names servers see:
//! - **One name per distinct statement, derived, not allocated.** The server
//!   name is `PGRING_` + the first 128 bits (hex) of SHA-256 over the Parse
//!   body after the client's name (query text and parameter types). Every
//!   shard derives the same name with no coordination, so a server handed to
//!   another shard keeps a prepared set that means the same thing there.
//! - **Per client** ([`ClientStatements`], kept by the session): the client's
//!   statement name → [`Statement`] (server name + the Parse body needed to
//!   prepare it again). Bodies are interned per shard, so a thousand clients
//!   preparing the same query hold one copy.
//! - **Per server** ([`ServerStatements`], inside `ServerMeta`, so it travels
//!   between shards with its connection): an LRU of the statements that
//!   server has, at most `max_prepared_statements`; evictions send a Close
//!   whose reply is swallowed. It also holds the queue of outstanding
//!   requests and the two scratch buffers the rewriter writes into: there are
//!   only pool-size servers, while an idle client must hold no buffer.
//! - **The queue** ([`queue`]) has one entry per request the server (or
//!   pgring) owes a reply to, in stream order; reply by reply it says whether
//!   to forward, swallow (pgring's own Parse/Close) or synthesise
//!   (ParseComplete for a statement the server already had, CloseComplete
//!   for a client Close, the answer to a local DEALLOCATE). After an
//!   ErrorResponse the server skips to Sync and so does the queue, undoing
//!   what the skipped requests would have done.
//! - **The rewriter** ([`rewrite`]) is sans-IO: the relay hands it each
//!   message header with the bytes buffered so far, and it decides.
//!
//! Unnamed statements and portals, and everything in session mode, pass
//! through untouched, as does everything when `max_prepared_statements` is 0.

pub mod client;
pub mod queue;
pub mod rewrite;
pub mod server;
pub mod splice;
pub mod sql;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use sha2::{Digest, Sha256};

pub use client::{ClientStatements, PortableStatements};
pub use rewrite::{Action, Reply, Rewriter};
pub use server::ServerStatements;
pub use splice::Splice;

/// Identity of a distinct statement: 128 bits of SHA-256 of its Parse body.
pub type StatementId = u128;

/// Length of a server-side statement name: `PGRING_` + 32 hex digits.
pub const SERVER_NAME_LEN: usize = 7 + 32;

/// A server-side statement name.
pub type ServerName = [u8; SERVER_NAME_LEN];

/// The identity of a Parse body (query text, NUL, parameter types).
pub fn statement_id(rest: &[u8]) -> StatementId {
    let digest = Sha256::digest(rest);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// The name servers know statement `id` by.
pub fn server_name(id: StatementId) -> ServerName {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = [0u8; SERVER_NAME_LEN];
    name[..7].copy_from_slice(b"PGRING_");
    for (i, slot) in name[7..].iter_mut().enumerate() {
        *slot = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    name
}

/// One distinct statement, shared by every client of the shard that
/// prepared it.
#[derive(Debug, PartialEq, Eq)]
pub struct Statement {
    /// Its identity.
    pub id: StatementId,
    /// Its server-side name.
    pub name: ServerName,
    /// The Parse body after the client's name: what a server is sent to
    /// prepare it.
    pub rest: Box<[u8]>,
}

thread_local! {
    /// This shard's statements by identity. Weak: a statement lives as long
    /// as some client maps a name to it; dead entries are swept as the map
    /// grows (amortised, never per message).
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<StatementId, Weak<Statement>>,
    sweep_at: usize,
}

impl Registry {
    fn intern(&mut self, rest: &[u8]) -> Rc<Statement> {
        let id = statement_id(rest);
        if let Some(live) = self.by_id.get(&id).and_then(Weak::upgrade) {
            return live;
        }
        let st = Rc::new(Statement {
            id,
            name: server_name(id),
            rest: rest.into(),
        });
        if self.by_id.len() >= self.sweep_at {
            self.by_id.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.by_id.len() * 2).max(1024);
        }
        self.by_id.insert(id, Rc::downgrade(&st));
        st
    }
}

/// The shard's one copy of the statement with this Parse body.
pub fn intern(rest: &[u8]) -> Rc<Statement> {
    REGISTRY.with(|r| r.borrow_mut().intern(rest))
}

/// Statements interned on this shard and still alive (tests, diagnostics).
pub fn interned() -> usize {
    REGISTRY.with(|r| {
        r.borrow()
            .by_id
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    })
}
