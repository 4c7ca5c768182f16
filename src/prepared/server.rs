//! One server connection's prepared set: an LRU of the statements it has,
//! the queue of requests it owes replies to, and the rewriter's scratch
//! buffers. Part of `ServerMeta`, so it is plain `Send` data that moves with
//! the connection when a server is handed to another shard.
//!
//! The LRU is a map from statement id to a use tick: lookup and touch are
//! O(1) on every Bind; eviction scans for the oldest tick, O(n) with n at
//! most `max_prepared_statements`, and only when a new statement is
//! prepared on a full server.

use std::collections::HashMap;

use super::queue::Queue;
use super::StatementId;

/// What one server has prepared, and its in-flight requests.
#[derive(Debug, Default)]
pub struct ServerStatements {
    /// The statements it has.
    pub lru: Lru,
    /// Requests the server (or pgring on its behalf) still owes replies to.
    pub queue: Queue,
    /// Bytes for the server, when a client batch had to be rewritten.
    pub to_server: Vec<u8>,
    /// Bytes for the client: replies pgring synthesised, or a server batch
    /// with some replies swallowed.
    pub to_client: Vec<u8>,
}

impl ServerStatements {
    /// Borrows this state apart for one relay step: the rewriter (only when
    /// rewriting) and the two scratch buffers (to the server, to the client).
    pub fn split<'a>(
        &'a mut self,
        client: &'a mut crate::prepared::ClientStatements,
        rewrite: bool,
        stats: &'a crate::stats::PoolStats,
    ) -> (
        Option<super::rewrite::Rewriter<'a>>,
        &'a mut Vec<u8>,
        &'a mut Vec<u8>,
    ) {
        let ServerStatements {
            lru,
            queue,
            to_server,
            to_client,
        } = self;
        let rw = rewrite.then_some(super::rewrite::Rewriter {
            client,
            lru,
            queue,
            stats,
        });
        (rw, to_server, to_client)
    }
}

/// Scratch kept between leases; a buffer grown past this (a huge rewritten
/// batch) is given back to the allocator.
const SCRATCH_KEEP: usize = 64 * 1024;

impl ServerStatements {
    /// Statements the server has (SHOW SERVERS prepared_statements).
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// True when it has none.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// The server deallocated everything (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.lru.clear();
    }

    /// A new lease starts: nothing is outstanding from the last one (a
    /// server is only released at rest) and the scratch is empty.
    pub fn begin_lease(&mut self) {
        self.queue.clear();
        for buf in [&mut self.to_server, &mut self.to_client] {
            buf.clear();
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
        }
    }
}

/// Statement ids with their last use.
#[derive(Debug, Default)]
pub struct Lru {
    map: HashMap<StatementId, u64>,
    tick: u64,
}

impl Lru {
    /// Number of statements.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Does the server have `id`? Marks it used if so.
    pub fn touch(&mut self, id: StatementId) -> bool {
        self.tick += 1;
        match self.map.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Does the server have `id` (no touch)?
    pub fn contains(&self, id: StatementId) -> bool {
        self.map.contains_key(&id)
    }

    /// Records `id` as prepared (most recently used).
    pub fn insert(&mut self, id: StatementId) {
        self.tick += 1;
        self.map.insert(id, self.tick);
    }

    /// Records `id` as prepared but least recently used (a Close the
    /// server skipped after an error: it still has the statement).
    pub fn insert_oldest(&mut self, id: StatementId) {
        self.map.insert(id, 0);
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: StatementId) {
        self.map.remove(&id);
    }

    /// The least recently used statement (the next to evict).
    pub fn oldest(&self) -> Option<StatementId> {
        self.map.iter().min_by_key(|(_, &t)| t).map(|(&id, _)| id)
    }

    /// Removes and returns the least recently used statement.
    pub fn pop_oldest(&mut self) -> Option<StatementId> {
        let id = self.oldest()?;
        self.map.remove(&id);
        Some(id)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recently_used() {
        let mut s = Lru::default();
        for id in 1..=3 {
            s.insert(id);
        }
        assert!(s.touch(1));
        assert!(!s.touch(9));
        assert_eq!(s.pop_oldest(), Some(2));
        assert_eq!(s.pop_oldest(), Some(3));
        s.insert_oldest(7);
        assert_eq!(s.pop_oldest(), Some(7));
        assert_eq!(s.pop_oldest(), Some(1));
        assert_eq!(s.pop_oldest(), None);
    }
}
