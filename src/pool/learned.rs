//! What a pool's logins learn from its servers, so that later logins need no server: the
//! welcome (the ParameterStatus set clients are greeted with) and the startup parameter values
//! a server accepted. Each shard keeps its own copy, read without a lock; the first shard to
//! learn something publishes it in the [`GlobalPool`](super::GlobalPool), where a shard that
//! does not know it yet looks before it asks a server. Only logins touch any of this, never a
//! transaction.
//!
//! Also the slice's shared copies of startup parameter strings (one `Rc<str>` per distinct
//! name or value, held by every client that sent it), with the copies no client holds any
//! more dropped as the table grows: a new `application_name` per connection (as
//! `application_name_add_host` makes them) must not keep every one ever seen.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Mutex, OnceLock};

use super::{Pool, Welcome};
use crate::server::{BaseParams, ServerConn};

/// Values remembered as accepted per parameter name, and names (PostgreSQL accepts any
/// two-part name, `x.y`, as a custom setting); past that, a new one is tried on a server at
/// each login that asks for it (a bound on what clients can make pgring keep).
const MAX_VALUES: usize = 1_000;
const MAX_NAMES: usize = 1_000;

/// Shared strings kept before the first sweep of those no client holds.
const MIN_STRINGS: usize = 256;

/// Startup parameter values a server accepted, by lower-cased name.
#[derive(Debug, Default)]
pub struct Accepted(HashMap<Box<str>, HashSet<Box<str>>>);

impl Accepted {
    fn has(&self, name: &str, value: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|values| values.contains(value))
    }

    fn add(&mut self, name: &str, value: &str) {
        // Looked up before anything is copied.
        if let Some(values) = self.0.get_mut(name) {
            if values.len() < MAX_VALUES && !values.contains(value) {
                values.insert(value.into());
            }
            return;
        }
        if self.0.len() < MAX_NAMES {
            self.0.insert(name.into(), HashSet::from([value.into()]));
        }
    }
}

/// The pool's learning all shards share (in its `GlobalPool`).
#[derive(Debug, Default)]
pub struct SharedLearned {
    welcome: OnceLock<Vec<(String, String)>>,
    accepted: Mutex<Accepted>,
}

/// One shard's slice of it, plus the slice's shared strings.
#[derive(Default)]
pub(super) struct Learned {
    welcome: RefCell<Option<Welcome>>,
    /// The welcome's tracked part, shared by this slice's clients.
    client_base: RefCell<Option<Rc<BaseParams>>>,
    accepted: RefCell<Accepted>,
    strings: Strings,
}

/// Shared copies of strings: one `Rc<str>` per distinct string, for as long as something
/// besides the table holds it.
#[derive(Default)]
struct Strings {
    set: RefCell<HashSet<Rc<str>>>,
    /// Table size at which the strings nothing else holds are swept out.
    sweep_at: Cell<usize>,
}

impl Strings {
    fn intern(&self, s: &str) -> Rc<str> {
        let mut set = self.set.borrow_mut();
        if let Some(shared) = set.get(s) {
            return shared.clone();
        }
        if set.len() >= self.sweep_at.get().max(MIN_STRINGS) {
            // Those only the table holds go; the next sweep comes when it has doubled, so
            // each string costs O(1) sweeping however many come and go.
            set.retain(|s| Rc::strong_count(s) > 1);
            self.sweep_at.set(set.len() * 2);
        }
        let shared: Rc<str> = s.into();
        set.insert(shared.clone());
        shared
    }
}

impl Pool {
    /// The ParameterStatus set a new client is greeted with, once a server of this pool has
    /// been seen, on this shard or another.
    pub fn welcome(&self) -> Option<Welcome> {
        let mine = self.learned.welcome.borrow().clone();
        mine.or_else(|| {
            let shared = self.global.learned.welcome.get()?;
            let welcome = Rc::new(shared.clone());
            *self.learned.welcome.borrow_mut() = Some(welcome.clone());
            Some(welcome)
        })
    }

    /// The defaults every client of this slice starts from: the tracked
    /// part of the welcome, built once and shared (rebuilt only if RELOAD
    /// changed the tracked names). Empty and unshared before a welcome.
    ///
    /// `tracked` is walked, not collected: a login that finds the set built pays no copy of
    /// the names.
    pub fn client_base<'a>(
        &self,
        tracked: impl Iterator<Item = &'a str> + Clone,
    ) -> Rc<BaseParams> {
        let Some(welcome) = self.welcome() else {
            return Rc::default();
        };
        let mut cached = self.learned.client_base.borrow_mut();
        match cached.as_ref().filter(|b| b.tracks(tracked.clone())) {
            Some(base) => base.clone(),
            None => {
                let tracked: Vec<String> = tracked.map(str::to_owned).collect();
                let base = BaseParams::from_welcome(&welcome, &tracked);
                cached.insert(Rc::new(base)).clone()
            }
        }
    }

    /// The first server this shard sees (opened here or handed over) tells what new clients
    /// are greeted with, here and, if no shard has said yet, on every shard.
    pub(super) fn learn_welcome(&self, server: &ServerConn) {
        if self.learned.welcome.borrow().is_some() {
            return;
        }
        let defaults = server.meta.params.login_defaults();
        let _ = self.global.learned.welcome.set(defaults.clone());
        *self.learned.welcome.borrow_mut() = Some(Rc::new(defaults));
    }

    /// Has a server of this pool accepted `name = value` as a startup parameter (so that a
    /// login asking for it need not try it)? Asked of this shard first, then of the others'
    /// shared record.
    pub fn is_accepted(&self, name: &str, value: &str) -> bool {
        let name = lowercase(name);
        if self.learned.accepted.borrow().has(&name, value) {
            return true;
        }
        let shared = match self.global.learned.accepted.lock() {
            Ok(shared) => shared.has(&name, value),
            Err(_) => false,
        };
        if shared {
            self.learned.accepted.borrow_mut().add(&name, value);
        }
        shared
    }

    /// Records that a server accepted these startup parameters, for every shard. Only values
    /// a server accepted: a refused one is tried (and refused) again at each login.
    pub fn accepted<'a>(&self, pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) {
        let record = |accepted: &mut Accepted| {
            for (name, value) in pairs.clone() {
                accepted.add(&lowercase(name), value);
            }
        };
        record(&mut self.learned.accepted.borrow_mut());
        if let Ok(mut shared) = self.global.learned.accepted.lock() {
            record(&mut shared);
        }
    }

    /// The pool's shared copy of a startup parameter name or value.
    pub fn intern(&self, s: &str) -> Rc<str> {
        self.learned.strings.intern(s)
    }
}

/// `name` in lower case, copied only when it has an upper-case letter (startup parameter
/// names rarely do).
fn lowercase(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_is_shared_while_held_and_swept_once_nobody_holds_it() {
        let strings = Strings::default();
        let kept = strings.intern("psql");
        assert!(Rc::ptr_eq(&kept, &strings.intern("psql")));
        // A new application_name per connection, each dropped as its client leaves.
        for port in 0..100_000 {
            drop(strings.intern(&format!("app - 10.0.0.7:{port}")));
        }
        let len = strings.set.borrow().len();
        assert!(len <= 2 * MIN_STRINGS, "{len} strings kept");
        assert!(
            Rc::ptr_eq(&kept, &strings.intern("psql")),
            "a held string survives the sweeps"
        );
        // Held ones are never swept, however many.
        let held: Vec<_> = (0..10_000)
            .map(|i| strings.intern(&i.to_string()))
            .collect();
        assert!(strings.set.borrow().len() >= held.len());
        assert!(Rc::ptr_eq(&held[0], &strings.intern("0")));
    }

    #[test]
    fn accepted_values_are_kept_by_lower_cased_name_up_to_a_bound() {
        let mut accepted = Accepted::default();
        accepted.add("timezone", "UTC");
        assert!(accepted.has("timezone", "UTC"));
        assert!(
            !accepted.has("timezone", "utc"),
            "values are compared as sent"
        );
        assert!(!accepted.has("datestyle", "UTC"));
        for i in 0..2 * MAX_VALUES {
            accepted.add("search_path", &format!("tenant_{i}"));
        }
        assert!(accepted.has("search_path", "tenant_0"));
        assert!(!accepted.has("search_path", &format!("tenant_{}", MAX_VALUES)));
        for i in 0..2 * MAX_NAMES {
            accepted.add(&format!("app.setting_{i}"), "on");
        }
        assert_eq!(accepted.0.len(), MAX_NAMES);
        assert!(accepted.has("timezone", "UTC"));
    }
}
