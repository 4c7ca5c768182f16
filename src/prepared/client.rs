//! One client's statement names. Lives with the client session, across
//! leases: the only prepared-statement state a client carries between
//! transactions (a map, no I/O buffer).

use std::collections::HashMap;
use std::rc::Rc;

use super::{Statement, StatementId};

/// Client statement name → statement.
type Names = HashMap<Box<[u8]>, Rc<Statement>>;

/// The client's statement names, and whether the feature is on.
/// The map is boxed and made at the first name: most sessions never prepare
/// a named statement, and an empty inline map would cost each 48 bytes.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: Option<Box<Names>>,
    max: usize,
}

/// A client's statement names with their Parse bodies, and the cap: what crosses to another
/// shard with a moving session.
#[derive(Debug, Default)]
pub struct PortableStatements {
    max: usize,
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

impl ClientStatements {
    /// Support with a per-server cap of `max` statements (0 = off: every
    /// message passes through untouched).
    pub fn new(max: usize) -> Self {
        ClientStatements { map: None, max }
    }

    /// The per-server cap (0 = off).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Statements the client has prepared (SHOW CLIENTS prepared_statements).
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// True when the client has none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The statement a client name refers to.
    pub fn get(&self, name: &[u8]) -> Option<&Rc<Statement>> {
        self.map.as_ref()?.get(name)
    }

    /// Is the name in use?
    pub fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Maps a new name.
    pub fn insert(&mut self, name: &[u8], st: Rc<Statement>) {
        self.map.get_or_insert_default().insert(name.into(), st);
    }

    /// Forgets a name; true if it was mapped.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.map.as_mut().is_some_and(|m| m.remove(name).is_some())
    }

    /// Forgets a name only if it still means statement `id` (undoing a
    /// Parse that the server skipped or refused).
    pub fn unmap(&mut self, name: &[u8], id: StatementId) {
        if self.get(name).is_some_and(|st| st.id == id) {
            self.remove(name);
        }
    }

    /// The cap and every name with its statement's Parse body, for a session moving to
    /// another shard (statements are interned per shard).
    pub fn to_portable(&self) -> PortableStatements {
        let names = self.map.iter().flat_map(|m| m.iter());
        let names = names.map(|(name, st)| (name.clone(), st.rest.clone()));
        PortableStatements {
            max: self.max,
            names: names.collect(),
        }
    }

    /// The names of [`to_portable`](Self::to_portable), on this shard's statements.
    pub fn from_portable(p: PortableStatements) -> Self {
        let mut this = ClientStatements::new(p.max);
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
