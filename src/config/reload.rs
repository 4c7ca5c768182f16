//! What a RELOAD would change: a key-by-key diff of two configurations, with the keys that
//! only take effect after a restart marked as such.
//!
//! The diff goes through serde (both sides serialized to TOML values), so a field added to
//! `General`, `Database` or `User` is diffed without touching this file. Applying a reload
//! (two-phase across shards) belongs to the runtime; this only says what differs.

use super::Config;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use toml::{Table, Value};

/// `[general]` keys a running pgring cannot change: sockets, shards and the tracked-parameter
/// set are built at start. PgBouncer marks the same ones `CF_NO_RELOAD`, plus pgring's own.
pub const RESTART_KEYS: &[&str] = &[
    "listen_addr",
    "listen_port",
    "listen_backlog",
    "unix_socket_dir",
    "unix_socket_mode",
    "unix_socket_group",
    "so_reuseport",
    "peer_id",
    "pkt_buf",
    "pidfile",
    "user",
    "track_extra_parameters",
    "workers",
    "ring_depth",
    "pin_shards",
    "spin_before_park_us",
    "stats_listen",
    "syslog",
    "syslog_ident",
    "syslog_facility",
];

/// Keys whose values never appear in a diff.
const SECRET_KEYS: &[&str] = &["password"];

/// One changed key.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Dotted path: `general.pool_mode`, `databases.agora.port`, `users.app` (whole entry).
    pub key: String,
    /// Old value as TOML text; `None` = not set before (or the entry was added).
    pub old: Option<String>,
    /// New value as TOML text; `None` = unset now (or the entry was removed).
    pub new: Option<String>,
    /// The new value takes effect only after a restart.
    pub needs_restart: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
        write!(
            f,
            "{}: {} -> {}",
            self.key,
            show(&self.old),
            show(&self.new)
        )?;
        if self.needs_restart {
            f.write_str(" (needs restart)")?;
        }
        Ok(())
    }
}

/// Every difference between `old` and `new`, in key order.
pub fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    diff_table(
        "general",
        &to_table(&old.general),
        &to_table(&new.general),
        &mut out,
    );
    diff_entries(
        "databases",
        &to_table(&old.databases),
        &to_table(&new.databases),
        &mut out,
    );
    diff_entries(
        "users",
        &to_table(&old.users),
        &to_table(&new.users),
        &mut out,
    );
    diff_entries(
        "peers",
        &to_table(&old.peers),
        &to_table(&new.peers),
        &mut out,
    );
    for change in &mut out {
        let key = change.key.strip_prefix("general.").unwrap_or("");
        change.needs_restart = RESTART_KEYS.contains(&key);
    }
    out
}

/// The changes as lines, e.g. `general.listen_port: 6432 -> 6433 (needs restart)`.
pub fn reload_changes(old: &Config, new: &Config) -> Vec<String> {
    changes(old, new).iter().map(Change::to_string).collect()
}

fn to_table<T: Serialize>(value: &T) -> Table {
    // Our types always serialize to a table; an empty one would only hide a change, not panic.
    Table::try_from(value).unwrap_or_default()
}

fn diff_entries(section: &str, old: &Table, new: &Table, out: &mut Vec<Change>) {
    for name in union(old, new) {
        let path = format!("{section}.{name}");
        match (
            old.get(name).and_then(Value::as_table),
            new.get(name).and_then(Value::as_table),
        ) {
            (Some(o), Some(n)) => diff_table(&path, o, n, out),
            (o, n) => out.push(entry_change(path, o.is_some(), n.is_some())),
        }
    }
}

fn entry_change(key: String, had: bool, has: bool) -> Change {
    let mark = |present: bool| present.then(|| "(entry)".to_owned());
    Change {
        key,
        old: mark(had),
        new: mark(has),
        needs_restart: false,
    }
}

fn diff_table(path: &str, old: &Table, new: &Table, out: &mut Vec<Change>) {
    for key in union(old, new) {
        let (o, n) = (old.get(key), new.get(key));
        if o != n {
            let secret = SECRET_KEYS.contains(&key.as_str());
            let show = |v: Option<&Value>| {
                v.map(|v| {
                    if secret {
                        "(hidden)".into()
                    } else {
                        v.to_string()
                    }
                })
            };
            out.push(Change {
                key: format!("{path}.{key}"),
                old: show(o),
                new: show(n),
                needs_restart: false,
            });
        }
    }
}

fn union<'a>(a: &'a Table, b: &'a Table) -> BTreeSet<&'a String> {
    a.keys().chain(b.keys()).collect()
}
