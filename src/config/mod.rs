//! The configuration model: what pgring is told to do, checked before anything starts.
//!
//! A config file is TOML with PgBouncer's key names and defaults (`[general]`,
//! `[databases.NAME]`, `[users.NAME]`), so a PgBouncer user recognises every key. Loading is
//! strict and boring: an unknown key or a wrong type is an error naming the file, table and
//! key, and all problems are reported in one go (`parse`), then cross-key rules are checked
//! (`validate`). The effective setting of a pool (database entry, user entry, general
//! default) is answered here, in one place, with PgBouncer's precedence.
//!
//! This room does not read the auth file, resolve hosts or apply a reload; it describes.
//! Files: `general` and `entries` (the tables), `types` (value types), `parse`, `validate`,
//! `reload` (diff for RELOAD), `ini` (pgbouncer.ini import onto the same model).

mod entries;
mod general;
mod ini;
mod parse;
mod reload;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use entries::{Database, Peer, User};
pub use general::{General, TcpTuning, DEFAULT_AUTH_QUERY, EMPTY_CHECK_QUERY};
pub use reload::{changes, reload_changes, Change, RESTART_KEYS};
pub use types::{
    split_list, AuthType, FileMode, KxGroups, LoadBalanceHosts, PoolMode, Seconds, SslMode,
    Tls12Ciphers, TlsProtocols, TLS12_SUITES,
};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[general]`: process-wide settings and defaults.
    pub general: General,
    /// `[databases.NAME]`: where each client database name leads; `*` is the fallback.
    pub databases: BTreeMap<String, Database>,
    /// `[users.NAME]`: per-user overrides.
    pub users: BTreeMap<String, User>,
    /// `[peers.ID]`: the other processes of a peered group (cancel forwarding), by `peer_id`.
    pub peers: BTreeMap<String, Peer>,
    /// What the file asks for that pgring ignores without changing what clients or servers
    /// see (`syslog`, DNS tuning...), one line each with its location, for `main` to log at
    /// start. Not a setting: never read from or written to TOML.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Every problem found in a configuration, one per line, each with its location
/// (`pgring.toml: [general] lisen_port: unknown key (did you mean `listen_port`?)`).
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    /// The problems: parse problems sorted by table and key, then validation problems.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn new(problems: Vec<String>) -> Self {
        ConfigError { problems }
    }

    fn one(problem: String) -> Self {
        ConfigError {
            problems: vec![problem],
        }
    }

    /// Prefixes every problem with the file it came from.
    fn located(self, origin: &str) -> Self {
        let problems = self
            .problems
            .into_iter()
            .map(|p| format!("{origin}: {p}"))
            .collect();
        ConfigError { problems }
    }
}

impl Config {
    /// Reads, parses and validates a config file: pgbouncer.ini (by its `.ini` extension) or
    /// TOML. Relative file paths inside it (`auth_file`, `pidfile`, TLS files...) are resolved
    /// against the file's directory, unlike PgBouncer (working directory), so the same file
    /// works wherever pgring is started from. Settings pgring does not implement are errors
    /// when ignoring them would change behaviour, else lines in [`Config::warnings`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let is_ini = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ini"));
        let mut config = if is_ini {
            ini::parse(path)?
        } else {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::one(format!("{origin}: cannot read: {e}")))?;
            parse::parse(&text, &origin)?
        };
        config
            .general
            .resolve_paths(path.parent().unwrap_or(Path::new("")));
        let mut problems = validate::problems(&config);
        let (unsupported, warnings) = validate::unsupported(&config);
        problems.extend(unsupported);
        if !problems.is_empty() {
            return Err(ConfigError::new(problems).located(&origin));
        }
        config
            .warnings
            .extend(warnings.into_iter().map(|w| format!("{origin}: {w}")));
        Ok(config)
    }

    /// Parses and validates TOML text; `origin` (a file name) prefixes every problem.
    /// Relative paths are left as written.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config = parse::parse(text, origin)?;
        config.validate().map_err(|e| e.located(origin))?;
        Ok(config)
    }

    /// Checks the rules that span keys (pool sizes, auth sources, ports...), all at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = validate::problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::new(problems))
        }
    }

    /// The entry for database `name`, or the `*` fallback entry when it has none.
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.get(name).or_else(|| self.databases.get("*"))
    }

    /// The `[users]` entry for `name`, if any.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Server connections for the (db, user) pool. PgBouncer's precedence (`pool_pool_size`
    /// in src/server.c, 1.23+): user `pool_size`, else database `pool_size`, else
    /// `default_pool_size`.
    pub fn pool_size(&self, db: &str, user: &str) -> u32 {
        self.user(user)
            .and_then(|u| u.pool_size)
            .or_else(|| self.database(db).and_then(|d| d.pool_size))
            .unwrap_or(self.general.default_pool_size)
    }

    /// Minimum server connections for the pool: database `min_pool_size`, else general.
    /// PgBouncer has no per-user `min_pool_size`, so `_user` is not consulted.
    pub fn min_pool_size(&self, db: &str, _user: &str) -> u32 {
        self.database(db)
            .and_then(|d| d.min_pool_size)
            .unwrap_or(self.general.min_pool_size)
    }

    /// Reserve connections for the pool: user, else database, else general (as `pool_size`).
    pub fn reserve_pool_size(&self, db: &str, user: &str) -> u32 {
        self.user(user)
            .and_then(|u| u.reserve_pool_size)
            .or_else(|| self.database(db).and_then(|d| d.reserve_pool_size))
            .unwrap_or(self.general.reserve_pool_size)
    }

    /// Pool mode for the pool: user, else database, else general (PgBouncer's order).
    pub fn pool_mode(&self, db: &str, user: &str) -> PoolMode {
        self.user(user)
            .and_then(|u| u.pool_mode)
            .or_else(|| self.database(db).and_then(|d| d.pool_mode))
            .unwrap_or(self.general.pool_mode)
    }

    /// `query_wait_timeout` for the pool: user, else database, else general. PgBouncer's docs
    /// describe each as falling back to the other; pgring settles on the pool_size order.
    pub fn query_wait_timeout(&self, db: &str, user: &str) -> Seconds {
        self.user(user)
            .and_then(|u| u.query_wait_timeout)
            .or_else(|| self.database(db).and_then(|d| d.query_wait_timeout))
            .unwrap_or(self.general.query_wait_timeout)
    }

    /// Server lifetime for connections to `db`: the database's if non-zero, else general.
    pub fn server_lifetime(&self, db: &str) -> Seconds {
        self.database(db)
            .and_then(|d| d.server_lifetime)
            .filter(|s| !s.is_zero())
            .unwrap_or(self.general.server_lifetime)
    }

    /// Server connection cap for `db` (0 = none): the database's if non-zero, else general.
    pub fn max_db_connections(&self, db: &str) -> u32 {
        let own = self.database(db).and_then(|d| d.max_db_connections);
        nonzero_or(own, self.general.max_db_connections)
    }

    /// Client connection cap for `db` (0 = none): the database's if non-zero, else general.
    pub fn max_db_client_connections(&self, db: &str) -> u32 {
        let own = self.database(db).and_then(|d| d.max_db_client_connections);
        nonzero_or(own, self.general.max_db_client_connections)
    }

    /// Server connection cap for `user` (0 = none): the user's if non-zero, else general.
    pub fn max_user_connections(&self, user: &str) -> u32 {
        let own = self.user(user).and_then(|u| u.max_user_connections);
        nonzero_or(own, self.general.max_user_connections)
    }

    /// Client connection cap for `user` (0 = none): the user's if non-zero, else general.
    pub fn max_user_client_connections(&self, user: &str) -> u32 {
        let own = self.user(user).and_then(|u| u.max_user_client_connections);
        nonzero_or(own, self.general.max_user_client_connections)
    }

    /// `query_timeout` for `user`: the user's if set, else general.
    pub fn query_timeout(&self, user: &str) -> Seconds {
        self.user(user)
            .and_then(|u| u.query_timeout)
            .unwrap_or(self.general.query_timeout)
    }

    /// `idle_transaction_timeout` for `user`: the user's if set, else general.
    pub fn idle_transaction_timeout(&self, user: &str) -> Seconds {
        let own = self.user(user).and_then(|u| u.idle_transaction_timeout);
        own.unwrap_or(self.general.idle_transaction_timeout)
    }

    /// `transaction_timeout` for `user`: the user's if set, else general.
    pub fn transaction_timeout(&self, user: &str) -> Seconds {
        let own = self.user(user).and_then(|u| u.transaction_timeout);
        own.unwrap_or(self.general.transaction_timeout)
    }

    /// `client_idle_timeout` for `user`: the user's if set, else general.
    pub fn client_idle_timeout(&self, user: &str) -> Seconds {
        let own = self.user(user).and_then(|u| u.client_idle_timeout);
        own.unwrap_or(self.general.client_idle_timeout)
    }
}

/// PgBouncer treats a per-entry connection cap of 0 as "not set" (`database_max_connections`).
fn nonzero_or(own: Option<u32>, general: u32) -> u32 {
    own.filter(|v| *v > 0).unwrap_or(general)
}
