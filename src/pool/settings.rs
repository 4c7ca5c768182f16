//! A pool's effective settings, resolved from the configuration (database
//! entry over user entry over `[general]`, as PgBouncer resolves them).

use std::rc::Rc;
use std::time::Duration;

use super::{Caps, PoolKey};
use crate::config::{Config, PoolMode};
use crate::server::{ConnectSettings, ServerCredentials};

/// Effective settings of a pool, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// session / transaction / statement.
    pub mode: PoolMode,
    /// pool_size.
    pub size: u32,
    /// reserve_pool_size.
    pub reserve: u32,
    /// max_db_connections (0 = none).
    pub max_db: u32,
    /// max_user_connections (0 = none).
    pub max_user: u32,
    /// server_check_delay: an idle server older than this is checked.
    pub check_delay: Duration,
    /// server_check_query (`None`: no check; `Some("")`: empty query).
    pub check_query: Option<String>,
    /// min_pool_size.
    pub min: u32,
    /// reserve_pool_timeout.
    pub reserve_timeout: Duration,
    /// query_wait_timeout (zero: wait forever).
    pub query_wait_timeout: Duration,
    /// server_idle_timeout (zero: never).
    pub idle_timeout: Duration,
    /// server_lifetime (zero: forever).
    pub lifetime: Duration,
    /// server_login_retry.
    pub login_retry: Duration,
    /// server_reset_query.
    pub reset_query: String,
    /// server_reset_query_always.
    pub reset_always: bool,
    /// server_round_robin: lease the idle server that has waited longest, not the most recent.
    pub round_robin: bool,
    /// How to reach and log into PostgreSQL.
    pub connect: Rc<ConnectSettings>,
}

impl PoolSettings {
    /// Caps for a normal open (`reserve`: also the reserve pool).
    pub fn caps(&self, reserve: bool) -> Caps {
        Caps {
            pool: if reserve {
                self.size + self.reserve
            } else {
                self.size
            },
            db: self.max_db,
            user: self.max_user,
        }
    }

    /// Resolves the settings of `key` from `config`.
    pub fn resolve(config: &Config, key: &PoolKey, creds: ServerCredentials) -> PoolSettings {
        let g = &config.general;
        let db = config.database(&key.db);
        let connect = ConnectSettings::resolve(config, key, creds);
        PoolSettings {
            mode: config.pool_mode(&key.db, &key.user),
            size: config.pool_size(&key.db, &key.user),
            reserve: config.reserve_pool_size(&key.db, &key.user),
            max_db: config.max_db_connections(&key.db),
            max_user: config.max_user_connections(&key.user),
            check_delay: g.server_check_delay.duration(),
            check_query: g.health_check_query().map(str::to_owned),
            min: config.min_pool_size(&key.db, &key.user),
            reserve_timeout: g.reserve_pool_timeout.duration(),
            query_wait_timeout: g.query_wait_timeout.duration(),
            idle_timeout: g.server_idle_timeout.duration(),
            lifetime: db
                .and_then(|d| d.server_lifetime)
                .unwrap_or(g.server_lifetime)
                .duration(),
            login_retry: g.server_login_retry.duration(),
            reset_query: g.server_reset_query.clone(),
            reset_always: g.server_reset_query_always,
            round_robin: g.server_round_robin,
            connect: Rc::new(connect),
        }
    }
}
