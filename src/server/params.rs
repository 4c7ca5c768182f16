//! Session parameters: what each server has, what each client wants, and
//! the one query that makes a server match a client before its first byte.
//!
//! Parameters PostgreSQL reports (GUC_REPORT: client_encoding, DateStyle,
//! TimeZone, standard_conforming_strings, application_name, IntervalStyle
//! ...) are known from the server's ParameterStatus messages. Other startup
//! parameters (extra_float_digits, search_path, statement_timeout...) are not
//! reported, so pgring remembers which ones it set on each server and
//! RESETs them for a client that did not ask for them. PgBouncer refuses
//! such parameters unless told to ignore them; pgring carries them.
//!
//! Values go through `set_config()`, which parses them exactly as a startup
//! parameter would be parsed (lists such as `search_path=a,b` included).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// Lower-cased parameter name.
fn norm(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// A server connection's parameter state.
#[derive(Debug, Clone, Default)]
pub struct ServerParams {
    /// Canonical name → value, as reported at login or later.
    reported: Vec<(String, String)>,
    /// lower name → value of everything known (reported and set by us).
    values: HashMap<String, String>,
    /// Unreported parameters pgring set on this server.
    extras: HashSet<String>,
    /// What the server reported at login, before anyone changed anything:
    /// the defaults a client that asks for nothing must see.
    login: Vec<(String, String)>,
    /// The client parameter set these values were last checked or made to match, so that the
    /// next lease by a client with the same set skips the comparison (one per transaction).
    /// Any ParameterStatus forgets it.
    matched: Option<Matched>,
}

/// A client parameter set, by identity: its pool's shared defaults (by id) and its overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Matched {
    base: u64,
    own: Vec<(Box<str>, Box<str>)>,
}

impl ServerParams {
    /// Records a ParameterStatus from the server.
    pub fn on_status(&mut self, name: &str, value: &str) {
        self.matched = None;
        let key = norm(name);
        match self.reported.iter_mut().find(|(n, _)| norm(n) == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.reported.push((name.to_owned(), value.to_owned())),
        }
        self.extras.remove(&key);
        self.values.insert(key, value.to_owned());
    }

    /// Everything the server reported, canonical names.
    pub fn reported(&self) -> Vec<(String, String)> {
        self.reported.clone()
    }

    /// Marks the end of login: the values reported so far are the
    /// server's defaults.
    pub fn freeze_login(&mut self) {
        self.login = self.reported.clone();
    }

    /// The server's defaults, as reported at login (a client's welcome).
    pub fn login_defaults(&self) -> Vec<(String, String)> {
        self.login.clone()
    }

    /// Is `name` a reported parameter on this server?
    pub fn is_reported(&self, name: &str) -> bool {
        let key = norm(name);
        self.reported.iter().any(|(n, _)| norm(n) == key)
    }

    /// Builds the query that makes this server match `wants`, or `None`
    /// when it already does.
    pub fn sync_query(&mut self, wants: &ClientParams) -> Option<String> {
        if self.matched.as_ref().is_some_and(|m| wants.is(m)) {
            return None;
        }
        let mut resets = String::new();
        for extra in &self.extras {
            if wants.get(extra).is_none() {
                resets.push_str(&format!("RESET {};", quote_ident(extra)));
            }
        }
        let mut sets = Vec::new();
        for (k, v) in wants.iter() {
            if self.values.get(k).map(String::as_str) != Some(v) {
                sets.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    quote_lit(k),
                    quote_lit(v)
                ));
            }
        }
        if resets.is_empty() && sets.is_empty() {
            self.matched = wants.identity();
            return None;
        }
        if !sets.is_empty() {
            resets.push_str("SELECT ");
            resets.push_str(&sets.join(", "));
        }
        Some(resets)
    }

    /// After a successful sync: unreported values are now what the client
    /// wanted, and extras it did not want were reset.
    pub fn synced(&mut self, wants: &ClientParams) {
        let stale: Vec<String> = self
            .extras
            .iter()
            .filter(|e| wants.get(e).is_none())
            .cloned()
            .collect();
        for e in stale {
            self.extras.remove(&e);
            self.values.remove(&e);
        }
        for (k, v) in wants.iter() {
            if !self.is_reported(k) {
                self.extras.insert(k.to_owned());
                self.values.insert(k.to_owned(), v.to_owned());
            }
        }
        self.matched = wants.identity();
    }

    /// Number of parameters pgring set beyond the reported ones.
    pub fn extra_count(&self) -> usize {
        self.extras.len()
    }
}

/// What every client of a pool starts from: the tracked part of the pool's
/// welcome (lower-cased names). Built once per pool slice and shared behind
/// an `Rc`, so that an idle client holds only what it changed, not its own
/// copy of the defaults (issue 6: memory per idle client).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BaseParams {
    /// The same for sets of the same values, whichever pool slice built them, and unique
    /// otherwise (0: none), so a server can remember which set it matches (see [`base_id`]).
    id: u64,
    /// The tracked names this set was built for (a RELOAD may change them).
    tracked: Vec<String>,
    values: Vec<(Box<str>, Box<str>)>,
}

impl BaseParams {
    /// The tracked parameters of a pool's welcome set.
    pub fn from_welcome(welcome: &[(String, String)], tracked: &[String]) -> Self {
        let wanted: HashSet<String> = tracked.iter().map(|t| norm(t)).collect();
        let mut values: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (n, v) in welcome {
            let key = norm(n);
            if wanted.contains(&key) && !values.iter().any(|(k, _)| **k == *key) {
                values.push((key.into(), v.as_str().into()));
            }
        }
        BaseParams {
            id: base_id(&values),
            tracked: tracked.to_vec(),
            values,
        }
    }

    /// Was this set built for exactly these tracked names?
    pub fn tracks<'a>(&self, tracked: impl Iterator<Item = &'a str>) -> bool {
        self.tracked.iter().map(String::as_str).eq(tracked)
    }

    /// The value of `name`, in any case (see [`ClientParams::get`]).
    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| &**v)
    }
}

/// The id of a base set with these values: the same on every shard. Each shard's pool slice
/// builds its own set, and servers move between shards (handoff, steals); with an id per set
/// built, a server handed over never matched its new shard's clients by id, and every lease of
/// it compared every value and copied the client's set again (most of `sync_query`'s cost at
/// 50 clients on 2 shards). Taken only when a set is built (once per pool slice, and after a
/// RELOAD changes the tracked names), so the lock is off the hot path; the list holds one entry
/// per distinct set of defaults seen, which is a handful.
fn base_id(values: &[(Box<str>, Box<str>)]) -> u64 {
    type Seen = Vec<Vec<(Box<str>, Box<str>)>>;
    static SEEN: std::sync::Mutex<Seen> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let i = match seen.iter().position(|v| v == values) {
        Some(i) => i,
        None => {
            seen.push(values.to_vec());
            seen.len() - 1
        }
    };
    i as u64 + 1
}

/// What a client wants its server to look like: every reported parameter
/// (from its welcome, overridden by its startup packet and its own SETs)
/// plus the unreported ones it asked for at startup.
///
/// Stored as the pool's shared [`BaseParams`] plus the client's own values
/// where they differ; a value set back to the default drops its override.
#[derive(Debug, Clone, Default)]
pub struct ClientParams {
    base: Rc<BaseParams>,
    /// lower name → value, only where the client differs from `base`.
    own: Vec<(Rc<str>, Rc<str>)>,
}

impl ClientParams {
    /// Starts from a pool's shared defaults.
    pub fn new(base: Rc<BaseParams>) -> Self {
        ClientParams {
            base,
            own: Vec::new(),
        }
    }

    /// Sets a wanted value (startup parameter, or the server reported the
    /// client's own SET).
    pub fn set(&mut self, name: &str, value: &str) {
        self.set_with(name, value, |s| s.into());
    }

    /// As [`set`](Self::set), with the stored strings made by `intern` (a
    /// pool shares one copy of its clients' startup values).
    pub fn set_with(&mut self, name: &str, value: &str, intern: impl Fn(&str) -> Rc<str>) {
        let slot = self
            .own
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(name));
        match (slot, self.base.get(name) == Some(value)) {
            (Some(i), true) => {
                self.own.swap_remove(i);
            }
            (Some(i), false) => self.own[i].1 = intern(value),
            (None, true) => {}
            (None, false) => {
                // Overrides are few and rarely change: grow exactly, so an
                // idle client carries no spare capacity.
                self.own.reserve_exact(1);
                self.own.push((intern(&norm(name)), intern(value)));
            }
        }
    }

    /// Updates a value only if the client tracks it (ParameterStatus seen
    /// while linked).
    pub fn on_status(&mut self, name: &str, value: &str) {
        if self.get(name).is_some_and(|v| v != value) {
            self.set(name, value);
        }
    }

    /// The wanted value of `name`.
    ///
    /// Stored names are lower case, so a match without regard to ASCII case is a match with
    /// `norm(name)`, found without copying the name (this runs per welcome parameter of every
    /// login).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.overridden(name).or_else(|| self.base.get(name))
    }

    /// The client's own value of `name`, where it differs from the pool's defaults (any case,
    /// as in [`get`](Self::get)). A name not here has its welcome value, which is what the
    /// greeting needs to know: one short scan per welcome parameter, not two.
    pub fn overridden(&self, name: &str) -> Option<&str> {
        let (_, v) = self
            .own
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))?;
        Some(v)
    }

    /// Every wanted value, lower-cased names.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let own = self.own.iter().map(|(k, v)| (&**k, &**v));
        let base = self.base.values.iter().filter(|(k, _)| !self.overrides(k));
        own.chain(base.map(|(k, v)| (&**k, &**v)))
    }

    /// This set's identity, for [`ServerParams`] to remember (`None` for an unnamed base).
    fn identity(&self) -> Option<Matched> {
        (self.base.id != 0).then(|| Matched {
            base: self.base.id,
            own: self
                .own
                .iter()
                .map(|(k, v)| (Box::from(&**k), Box::from(&**v)))
                .collect(),
        })
    }

    /// Is this set the one `m` remembers?
    fn is(&self, m: &Matched) -> bool {
        m.base == self.base.id
            && m.own.len() == self.own.len()
            && m.own
                .iter()
                .zip(&self.own)
                .all(|((k1, v1), (k2, v2))| **k1 == **k2 && **v1 == **v2)
    }

    fn overrides(&self, key: &str) -> bool {
        self.own.iter().any(|(k, _)| **k == *key)
    }
}

/// Quotes a string literal (E'' form, valid whatever
/// standard_conforming_strings says).
pub fn quote_lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes an identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(welcome: &[(String, String)], tracked: &[&str]) -> ClientParams {
        let tracked: Vec<String> = tracked.iter().map(|t| t.to_string()).collect();
        ClientParams::new(Rc::new(BaseParams::from_welcome(welcome, &tracked)))
    }

    fn server() -> ServerParams {
        let mut s = ServerParams::default();
        s.on_status("TimeZone", "UTC");
        s.on_status("client_encoding", "UTF8");
        s
    }

    #[test]
    fn matching_server_needs_no_query() {
        let mut s = server();
        let c = client(&s.reported(), &["TimeZone", "client_encoding"]);
        assert_eq!(s.sync_query(&c), None);
    }

    #[test]
    fn a_remembered_match_is_forgotten_on_parameter_status_and_other_overrides() {
        let mut s = server();
        let mut c = client(&s.reported(), &["TimeZone", "client_encoding"]);
        assert_eq!(s.sync_query(&c), None);
        assert!(s.matched.is_some(), "a match is remembered");
        assert_eq!(s.sync_query(&c), None, "and reused");
        // Another client's SET reported while it held the server.
        s.on_status("TimeZone", "Asia/Tokyo");
        assert!(s.matched.is_none());
        let q = s.sync_query(&c).expect("TimeZone differs now");
        assert!(q.contains("'timezone', E'UTC'"), "{q}");
        s.on_status("TimeZone", "UTC");
        s.synced(&c);
        assert_eq!(s.sync_query(&c), None);
        // Same defaults, but this client overrides one: compared, not assumed.
        c.set("TimeZone", "Europe/Paris");
        assert!(s.sync_query(&c).is_some());
    }

    #[test]
    fn a_server_from_another_shard_matches_clients_with_the_same_defaults() {
        let welcome = server().reported();
        let tracked = ["TimeZone".to_string(), "client_encoding".to_string()];
        // Two pool slices (two shards) build their own sets from the same welcome.
        let here = Rc::new(BaseParams::from_welcome(&welcome, &tracked));
        let there = Rc::new(BaseParams::from_welcome(&welcome, &tracked));
        assert_eq!(here.id, there.id);
        let mut s = server();
        assert_eq!(s.sync_query(&ClientParams::new(here)), None);
        let remembered = s.matched.clone().expect("a match is remembered");
        assert!(
            ClientParams::new(there).is(&remembered),
            "no compare needed"
        );
        // Other defaults are another set.
        let paris = [("TimeZone".to_string(), "Europe/Paris".to_string())];
        let other = ClientParams::new(Rc::new(BaseParams::from_welcome(&paris, &tracked)));
        assert!(!other.is(&remembered));
        assert!(s
            .sync_query(&other)
            .expect("TimeZone differs")
            .contains("Europe/Paris"));
    }

    #[test]
    fn differing_and_extra_values_are_set_then_reset() {
        let mut s = server();
        let mut c = client(&s.reported(), &["TimeZone"]);
        c.set("timezone", "Europe/Paris");
        c.set("search_path", "a,b");
        let q = s.sync_query(&c).unwrap();
        assert!(q.starts_with("SELECT "));
        assert!(q.contains("set_config(E'timezone', E'Europe/Paris', false)"));
        assert!(q.contains("set_config(E'search_path', E'a,b', false)"));
        s.on_status("TimeZone", "Europe/Paris");
        s.synced(&c);
        assert_eq!(s.sync_query(&c), None);
        let plain = client(&[("TimeZone".into(), "Europe/Paris".into())], &["TimeZone"]);
        assert_eq!(s.sync_query(&plain).unwrap(), "RESET \"search_path\";");
    }

    #[test]
    fn client_keeps_only_what_differs_from_the_shared_base() {
        let c = client(&server().reported(), &["TimeZone", "client_encoding"]);
        let mut c2 = c.clone();
        c2.set("TimeZone", "Europe/Paris");
        c2.set("search_path", "a");
        assert_eq!(c2.own.len(), 2);
        assert_eq!(c2.get("timezone"), Some("Europe/Paris"));
        assert_eq!(c.get("TimeZone"), Some("UTC"));
        // Only the client's own values count as overrides, in any case.
        assert_eq!(c2.overridden("TIMEZONE"), Some("Europe/Paris"));
        assert_eq!(c.overridden("TimeZone"), None);
        // A ParameterStatus back to the default drops the override; an
        // untracked name is ignored.
        c2.on_status("TimeZone", "UTC");
        c2.on_status("DateStyle", "ISO");
        assert_eq!(c2.own.len(), 1);
        assert_eq!(c2.get("DateStyle"), None);
        let mut all: Vec<_> = c2.iter().collect();
        all.sort();
        assert_eq!(
            all,
            [
                ("client_encoding", "UTF8"),
                ("search_path", "a"),
                ("timezone", "UTC")
            ]
        );
        assert!(Rc::ptr_eq(&c.base, &c2.base));
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(quote_lit(r"it's \ ok"), r"E'it''s \\ ok'");
    }
}
