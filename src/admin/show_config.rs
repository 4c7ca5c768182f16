//! SHOW CONFIG, SHOW DATABASES, SHOW USERS: the configuration as the
//! shard runs it, with the live counts merged over every shard. Columns as
//! PgBouncer 1.25 (src/admin.c `admin_show_config`, `admin_show_databases`,
//! `admin_show_users`).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde::Serialize;

use super::gather;
use super::report::{merge_pools, PoolReport};
use super::rows::{self, v, ResultSet, Ty};
use crate::config::{General, RESTART_KEYS};
use crate::runtime::Shard;

/// `[general]` keys that are unset by default, so serialization omits
/// them; SHOW CONFIG lists them with an empty value.
pub const OPTIONAL_KEYS: &[&str] = &[
    "auth_dbname",
    "auth_file",
    "auth_hba_file",
    "auth_ident_file",
    "auth_user",
    "client_tls_ca_file",
    "client_tls_cert_file",
    "client_tls_key_file",
    "logfile",
    "pidfile",
    "server_tls_ca_file",
    "server_tls_cert_file",
    "server_tls_key_file",
    "stats_listen",
    "unix_socket_group",
    "user",
];

/// A serde enum (pool mode, load balancing...) in its configuration spelling.
pub fn enum_str<T: Serialize>(x: &T) -> String {
    toml::Value::try_from(x)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A configuration value as PgBouncer prints it: lists comma-separated,
/// booleans 1/0, unset empty.
pub fn config_text(value: Option<&toml::Value>) -> String {
    use toml::Value;
    match value {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Boolean(b)) => u8::from(*b).to_string(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| config_text(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// Every `[general]` key with its value and default.
pub fn config_rows(general: &General) -> Vec<(String, String, String, bool)> {
    let now = toml::Table::try_from(general).unwrap_or_default();
    let default = toml::Table::try_from(General::default()).unwrap_or_default();
    let keys: BTreeSet<&str> = now
        .keys()
        .chain(default.keys())
        .map(String::as_str)
        .chain(OPTIONAL_KEYS.iter().copied())
        .collect();
    keys.into_iter()
        .map(|k| {
            (
                k.to_owned(),
                config_text(now.get(k)),
                config_text(default.get(k)),
                !RESTART_KEYS.contains(&k),
            )
        })
        .collect()
}

/// SHOW CONFIG.
pub fn config(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let cols = [
        ("key", Ty::Text),
        ("value", Ty::Text),
        ("default", Ty::Text),
        ("changeable", Ty::Text),
    ];
    let mut rs = ResultSet::new(out, &cols);
    for (key, value, default, changeable) in config_rows(&shard.config().general) {
        let yes = if changeable { "yes" } else { "no" };
        rs.row(&[v(key), v(value), v(default), v(yes)]);
    }
    rs.finish();
}

/// SHOW DATABASES columns.
pub const DATABASES_COLUMNS: &[(&str, Ty)] = &[
    ("name", Ty::Text),
    ("host", Ty::Text),
    ("port", Ty::Int4),
    ("database", Ty::Text),
    ("force_user", Ty::Text),
    ("pool_size", Ty::Int4),
    ("min_pool_size", Ty::Int4),
    ("reserve_pool_size", Ty::Int4),
    ("server_lifetime", Ty::Int4),
    ("pool_mode", Ty::Text),
    ("load_balance_hosts", Ty::Text),
    ("max_connections", Ty::Int4),
    ("current_connections", Ty::Int4),
    ("max_client_connections", Ty::Int4),
    ("current_client_connections", Ty::Int4),
    ("paused", Ty::Int4),
    ("disabled", Ty::Int4),
];

/// Open servers and logged-in clients per database (or per user).
fn sums(pools: &[PoolReport], by_user: bool) -> BTreeMap<String, (u32, u32)> {
    let mut m: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for p in pools {
        let key = if by_user { &p.user } else { &p.db };
        let e = m.entry(key.clone()).or_default();
        e.0 += p.open;
        e.1 += p.cl_active + p.cl_waiting;
    }
    m
}

/// SHOW DATABASES.
pub async fn databases(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let reports = match gather::reports(shard, false).await {
        Ok(r) => r,
        Err(e) => return rows::error(out, e.to_string()),
    };
    let counts = sums(&merge_pools(&reports), false);
    let config = shard.config();
    let g = &config.general;
    let mut names: BTreeSet<String> = config
        .databases
        .keys()
        .filter(|n| n.as_str() != "*")
        .cloned()
        .collect();
    names.extend(counts.keys().cloned());
    let mut rs = ResultSet::new(out, DATABASES_COLUMNS);
    for name in names {
        let (open, clients) = counts.get(&name).copied().unwrap_or_default();
        if name == super::ADMIN_DB {
            rs.row(&admin_db_row(g.listen_port, clients));
            continue;
        }
        let Some(d) = config.database(&name) else {
            continue;
        };
        let multi = d.host.as_deref().is_some_and(|h| h.contains(','));
        rs.row(&[
            v(&name),
            d.host.clone(),
            v(d.port),
            v(d.target_dbname(&name)),
            d.user.clone(),
            v(d.pool_size.unwrap_or(g.default_pool_size)),
            v(d.min_pool_size.unwrap_or(g.min_pool_size)),
            v(d.reserve_pool_size.unwrap_or(g.reserve_pool_size)),
            v(config.server_lifetime(&name).duration().as_secs()),
            d.pool_mode.map(|m| m.as_str().to_owned()),
            multi.then(|| enum_str(&d.load_balance())),
            v(config.max_db_connections(&name)),
            v(open),
            v(config.max_db_client_connections(&name)),
            v(clients),
            v(u8::from(shard.paused.get() || shard.admin.db_paused(&name))),
            v(u8::from(shard.admin.db_disabled(&name))),
        ]);
    }
    rs.finish();
}

/// PgBouncer's own row for the console database.
fn admin_db_row(port: u16, clients: u32) -> Vec<Option<String>> {
    let a = super::ADMIN_DB;
    vec![
        v(a),
        None,
        v(port),
        v(a),
        v(a),
        v(2),
        v(0),
        v(0),
        v(0),
        v("statement"),
        None,
        v(0),
        v(0),
        v(0),
        v(clients),
        v(0),
        v(0),
    ]
}

/// SHOW USERS columns.
pub const USERS_COLUMNS: &[(&str, Ty)] = &[
    ("name", Ty::Text),
    ("pool_size", Ty::Text),
    ("reserve_pool_size", Ty::Text),
    ("pool_mode", Ty::Text),
    ("max_user_connections", Ty::Int4),
    ("current_connections", Ty::Int4),
    ("max_user_client_connections", Ty::Int4),
    ("current_client_connections", Ty::Int4),
];

/// SHOW USERS: `[users]` entries and every user with a pool.
pub async fn users(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let reports = match gather::reports(shard, false).await {
        Ok(r) => r,
        Err(e) => return rows::error(out, e.to_string()),
    };
    let pools: Vec<PoolReport> = merge_pools(&reports)
        .into_iter()
        .filter(|p| p.db != super::ADMIN_DB)
        .collect();
    let counts = sums(&pools, true);
    let config = shard.config();
    let names: BTreeSet<String> = config
        .users
        .keys()
        .cloned()
        .chain(counts.keys().cloned())
        .collect();
    let mut rs = ResultSet::new(out, USERS_COLUMNS);
    for name in names {
        let u = config.user(&name);
        let (open, clients) = counts.get(&name).copied().unwrap_or_default();
        rs.row(&[
            v(&name),
            u.and_then(|u| u.pool_size).map(|n| n.to_string()),
            u.and_then(|u| u.reserve_pool_size).map(|n| n.to_string()),
            u.and_then(|u| u.pool_mode).map(|m| m.as_str().to_owned()),
            v(config.max_user_connections(&name)),
            v(open),
            v(config.max_user_client_connections(&name)),
            v(clients),
        ]);
    }
    rs.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// Every field of `[general]`, read from serde's own "expected one of"
    /// list, so a new optional key cannot be missed by SHOW CONFIG.
    fn all_general_keys() -> Vec<String> {
        let mut t = toml::Table::new();
        t.insert("__no_such_key__".into(), toml::Value::Integer(1));
        let err = General::deserialize(toml::Value::Table(t))
            .expect_err("unknown key")
            .to_string();
        err.split('`')
            .skip(3)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn show_config_lists_every_key() {
        let shown: BTreeSet<String> = config_rows(&General::default())
            .into_iter()
            .map(|r| r.0)
            .collect();
        let all = all_general_keys();
        assert!(all.len() > 50, "{all:?}");
        for k in all {
            assert!(shown.contains(&k), "SHOW CONFIG misses {k}");
        }
    }

    #[test]
    fn config_text_matches_pgbouncer_style() {
        let rows = config_rows(&General::default());
        let get = |k: &str| rows.iter().find(|r| r.0 == k).cloned().expect(k);
        assert_eq!(get("listen_port").1, "6432");
        assert!(!get("listen_port").3);
        assert_eq!(get("pool_mode").1, "session");
        assert_eq!(get("server_fast_close").1, "0");
        assert_eq!(get("auth_file").1, "");
        assert!(get("default_pool_size").3);
    }
}
