//! One client's statement names. Lives with the client session, across
//! leases: the only prepared-statement state a client carries between
//! transactions (a map, no I/O buffer).
//!
//! The names are capped by memory (`max_client_prepared_memory`): a client
//! that prepares named statements and never closes them (a driver bug, a name
//! made from a counter) would otherwise grow pgring until the host kills it,
//! and every other client with it. Past the cap its new Parses are refused
//! with 53400; it keeps the statements it has.

use std::collections::HashMap;
use std::rc::Rc;

use super::{Statement, StatementId};

/// Client statement name → statement.
type Names = HashMap<Box<[u8]>, Rc<Statement>>;

/// What one mapped name is counted as, besides its name and Parse body: the
/// map entry, the name's box, the statement (shared when other clients map
/// the same one, counted in full here: that is what it costs when they do not).
const PER_NAME: usize = 128;

/// The names and what they are counted as.
#[derive(Debug, Default)]
struct Mapped {
    names: Names,
    bytes: usize,
}

/// The client's statement names, and whether the feature is on.
/// The map is boxed and made at the first name: most sessions never prepare
/// a named statement, and an empty inline map would cost each 48 bytes.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: Option<Box<Mapped>>,
    max: u32,
    /// `max_client_prepared_memory` (0 = none).
    memory: u32,
}

/// A client's statement names with their Parse bodies, and the caps: what crosses to another
/// shard with a moving session.
#[derive(Debug, Default)]
pub struct PortableStatements {
    max: u32,
    memory: u32,
    /// (client name, Parse body) pairs.
    names: Vec<NameAndBody>,
}

/// A client statement name and the Parse body it stands for.
type NameAndBody = (Box<[u8]>, Box<[u8]>);

impl PortableStatements {
    /// How many names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// What a name for a Parse body of `rest` bytes is counted as.
fn cost(name: &[u8], rest: usize) -> usize {
    PER_NAME + name.len() + rest
}

impl ClientStatements {
    /// Support with a per-server cap of `max` statements (0 = off: every
    /// message passes through untouched), and at most `memory` bytes of
    /// names for this client (0 = no cap).
    pub fn new(max: u32, memory: u32) -> Self {
        ClientStatements {
            map: None,
            max,
            memory,
        }
    }

    /// The per-server cap (0 = off).
    pub fn max(&self) -> usize {
        self.max as usize
    }

    /// The per-client memory cap in bytes (0 = none).
    pub fn memory_cap(&self) -> u32 {
        self.memory
    }

    /// Statements the client has prepared (SHOW CLIENTS prepared_statements).
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.names.len())
    }

    /// True when the client has none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the names are counted as (bytes).
    pub fn memory(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.bytes)
    }

    /// Would a new name for a Parse body of `rest` bytes go over the memory cap?
    pub fn would_exceed(&self, name: &[u8], rest: usize) -> bool {
        self.memory != 0 && self.memory() + cost(name, rest) > self.memory as usize
    }

    /// The statement a client name refers to.
    pub fn get(&self, name: &[u8]) -> Option<&Rc<Statement>> {
        self.map.as_ref()?.names.get(name)
    }

    /// Is the name in use?
    pub fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Maps a new name.
    pub fn insert(&mut self, name: &[u8], st: Rc<Statement>) {
        let m = self.map.get_or_insert_default();
        let added = cost(name, st.rest.len());
        if let Some(old) = m.names.insert(name.into(), st) {
            m.bytes -= cost(name, old.rest.len());
        }
        m.bytes += added;
    }

    /// Forgets a name; true if it was mapped.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.take(name).is_some()
    }

    /// Forgets a name; the statement it meant.
    pub fn take(&mut self, name: &[u8]) -> Option<Rc<Statement>> {
        let m = self.map.as_mut()?;
        let old = m.names.remove(name)?;
        m.bytes -= cost(name, old.rest.len());
        Some(old)
    }

    /// Forgets a name only if it still means statement `id` (undoing a
    /// Parse that the server skipped or refused).
    pub fn unmap(&mut self, name: &[u8], id: StatementId) {
        if self.get(name).is_some_and(|st| st.id == id) {
            self.remove(name);
        }
    }

    /// The caps and every name with its statement's Parse body, for a session moving to
    /// another shard (statements are interned per shard).
    pub fn to_portable(&self) -> PortableStatements {
        let names = self.map.iter().flat_map(|m| m.names.iter());
        let names = names.map(|(name, st)| (name.clone(), st.rest.clone()));
        PortableStatements {
            max: self.max,
            memory: self.memory,
            names: names.collect(),
        }
    }

    /// The names of [`to_portable`](Self::to_portable), on this shard's statements.
    pub fn from_portable(p: PortableStatements) -> Self {
        let mut this = ClientStatements::new(p.max, p.memory);
        for (name, rest) in p.names {
            this.insert(&name, super::intern(&rest));
        }
        this
    }

    /// DEALLOCATE ALL / DISCARD ALL.
    pub fn clear(&mut self) {
        self.map = None;
    }
}
