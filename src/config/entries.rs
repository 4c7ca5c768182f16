//! The per-name tables: `[databases.NAME]` (where a client database name leads) and
//! `[users.NAME]` (per-user overrides). Keys are those of PgBouncer's `[databases]`
//! connection strings and `[users]` lines; everything is optional so that "unset" can fall
//! back to `[general]`, which `Config`'s effective-setting methods do.
//!
//! `[peers.ID]` (PgBouncer 1.19's `[peers]`) names the other pooler processes that cancel
//! requests may be forwarded to.
//!
//! The entry named `*` is PgBouncer's fallback: any database name without its own entry uses
//! it (write it as `[databases."*"]` in TOML).

use super::types::{LoadBalanceHosts, PoolMode, Seconds};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where one client-visible database name leads: `[databases.NAME]`.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// Server host, or a comma-separated list of hosts. Unset = the unix socket in
    /// `unix_socket_dir` (as PgBouncer); a value starting with `/` is a socket directory, one
    /// starting with `@` a prefix in Linux's abstract namespace (see `server::addr`).
    pub host: Option<String>,
    /// Server port (default 5432).
    pub port: u16,
    /// Database name on the server; unset = the name the client asked for.
    pub dbname: Option<String>,
    /// Log into the server as this user whatever the client's name (one shared pool).
    pub user: Option<String>,
    /// Password for `user`; unset = looked up in `auth_file`. Never printed by Debug.
    pub password: Option<String>,
    /// Overrides the global `auth_user` for this database.
    pub auth_user: Option<String>,
    /// Overrides the global `auth_query` for this database.
    pub auth_query: Option<String>,
    /// Overrides the global `auth_dbname` for this database.
    pub auth_dbname: Option<String>,
    /// Pool size for this database (a `[users]` pool_size still wins, as in PgBouncer).
    pub pool_size: Option<u32>,
    /// Minimum pool size for this database.
    pub min_pool_size: Option<u32>,
    /// Reserve pool size for this database (a `[users]` value still wins).
    pub reserve_pool_size: Option<u32>,
    /// Run once on each new server connection, before any client uses it.
    pub connect_query: Option<String>,
    /// Pool mode for this database (a `[users]` value still wins).
    pub pool_mode: Option<PoolMode>,
    /// Server connections to this database, all users together; 0/unset = global value.
    pub max_db_connections: Option<u32>,
    /// Client connections to this database; 0/unset = global value.
    pub max_db_client_connections: Option<u32>,
    /// Overrides `server_lifetime`; 0/unset = global value (seconds).
    pub server_lifetime: Option<Seconds>,
    /// Overrides `query_wait_timeout` for this database (seconds).
    pub query_wait_timeout: Option<Seconds>,
    /// `client_encoding` asked of the server.
    pub client_encoding: Option<String>,
    /// `DateStyle` asked of the server.
    pub datestyle: Option<String>,
    /// `TimeZone` asked of the server.
    pub timezone: Option<String>,
    /// `application_name` given to server connections.
    pub application_name: Option<String>,
    /// How a host list is used (default round-robin).
    pub load_balance_hosts: Option<LoadBalanceHosts>,
}

impl Database {
    /// The hosts of `host`, split on commas; empty when unset (unix socket).
    pub fn hosts(&self) -> Vec<&str> {
        self.host
            .as_deref()
            .map(|h| h.split(',').map(str::trim).collect())
            .unwrap_or_default()
    }

    /// The server-side database name for a client that asked for `requested`.
    pub fn target_dbname<'a>(&'a self, requested: &'a str) -> &'a str {
        self.dbname.as_deref().unwrap_or(requested)
    }

    /// The host-list policy, defaulting to PgBouncer's round-robin.
    pub fn load_balance(&self) -> LoadBalanceHosts {
        self.load_balance_hosts.unwrap_or_default()
    }
}

/// PgBouncer's defaults: port 5432, everything else unset. Serde fills missing keys from here.
impl Default for Database {
    fn default() -> Self {
        Database {
            host: None,
            port: 5432,
            dbname: None,
            user: None,
            password: None,
            auth_user: None,
            auth_query: None,
            auth_dbname: None,
            pool_size: None,
            min_pool_size: None,
            reserve_pool_size: None,
            connect_query: None,
            pool_mode: None,
            max_db_connections: None,
            max_db_client_connections: None,
            server_lifetime: None,
            query_wait_timeout: None,
            client_encoding: None,
            datestyle: None,
            timezone: None,
            application_name: None,
            load_balance_hosts: None,
        }
    }
}

/// Hand-written so that a logged config never shows the server password.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("auth_user", &self.auth_user)
            .field("pool_size", &self.pool_size)
            .field("min_pool_size", &self.min_pool_size)
            .field("reserve_pool_size", &self.reserve_pool_size)
            .field("pool_mode", &self.pool_mode)
            .finish_non_exhaustive()
    }
}

/// Per-user overrides: `[users.NAME]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct User {
    /// Pool size for every pool of this user; wins over the database's (PgBouncer 1.23+).
    pub pool_size: Option<u32>,
    /// Reserve pool size for every pool of this user; wins over the database's.
    pub reserve_pool_size: Option<u32>,
    /// Pool mode for this user; wins over the database's.
    pub pool_mode: Option<PoolMode>,
    /// Server connections of this user, all databases together; 0/unset = global value.
    pub max_user_connections: Option<u32>,
    /// Client connections of this user; 0/unset = global value.
    pub max_user_client_connections: Option<u32>,
    /// Overrides `query_timeout` (seconds).
    pub query_timeout: Option<Seconds>,
    /// Overrides `query_wait_timeout` (seconds).
    pub query_wait_timeout: Option<Seconds>,
    /// Overrides `idle_transaction_timeout` (seconds).
    pub idle_transaction_timeout: Option<Seconds>,
    /// Overrides `transaction_timeout` (seconds).
    pub transaction_timeout: Option<Seconds>,
    /// Overrides `client_idle_timeout` (seconds).
    pub client_idle_timeout: Option<Seconds>,
}

/// Another pooler process of a peered group: `[peers.ID]`, where ID is that process's
/// `peer_id`. A cancel request whose key carries that id is forwarded there.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Peer {
    /// Host name or address; a value starting with `/` is a unix socket directory, `@` a name
    /// in the abstract namespace. Unset = the unix socket in `unix_socket_dir`.
    pub host: Option<String>,
    /// Port (default 6432).
    pub port: u16,
    /// Cancel requests travelling to the peer at once (default `default_pool_size`), each on
    /// a short connection of its own; more wait their turn for `cancel_wait_timeout` at most.
    pub pool_size: Option<u32>,
}

/// PgBouncer's defaults: port 6432.
impl Default for Peer {
    fn default() -> Self {
        Peer {
            host: None,
            port: 6432,
            pool_size: None,
        }
    }
}
