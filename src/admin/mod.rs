//! The `pgbouncer` admin console (also reachable as `pgring`): SHOW
//! commands merged across shards, and control commands fanned out to them.
//!
//! Layout, one small file per command family (as pgdog does): `parse`
//! (PgBouncer's console grammar), `console` (the session and dispatch),
//! `gather` (ask every shard, collect the answers), `report` (what one shard
//! says about itself), `rows` (result-set encoding), `show_*` (the tables),
//! `control` (PAUSE, KILL, ... applied on one shard), `reload` (RELOAD and
//! SET, two-phase).
//!
//! Each shard keeps its own copy of the console's state ([`ShardAdmin`]:
//! paused and disabled databases, servers to close at release); a control
//! command updates every copy through the mesh, so the hot path only ever
//! reads shard-local `Cell`s.

pub mod console;
pub mod control;
pub mod gather;
pub mod parse;
pub mod reload;
pub mod report;
pub mod rows;
pub mod show_config;
pub mod show_misc;
pub mod show_pools;
pub mod show_stats;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, PgError, Result};
use crate::pool::Pool;
use crate::runtime::files::Files;
use crate::runtime::Shard;

pub use gather::{gather, Answer, Op};

/// What `SHOW VERSION` and the console's `server_version` say.
pub const SERVER_VERSION: &str = concat!("pgring ", env!("CARGO_PKG_VERSION"));

/// The name of the console's database and pool in SHOW tables.
pub const ADMIN_DB: &str = "pgbouncer";

/// PgBouncer answers every console error with SQLSTATE 08P01
/// (`send_pooler_error` without a code, src/objects.c).
pub const CONSOLE_SQLSTATE: &str = "08P01";

/// A console request sent to another shard, answered on its own channel.
pub struct AdminRequest {
    /// What to do.
    pub op: Op,
    /// Where the answer goes (tagged with nothing: order does not matter).
    pub reply: crossbeam::channel::Sender<Answer>,
}

/// Serves a console request from another shard: answers at once, without
/// a task, so a busy console never holds a shard's mesh loop.
pub fn serve_remote(shard: &Rc<Shard>, req: AdminRequest) {
    let answer = gather::handle(shard, req.op);
    // The requester may have given up (timeout); nothing to do then.
    let _ = req.reply.send(answer);
}

/// One shard's copy of the console's state.
#[derive(Debug, Default)]
pub struct ShardAdmin {
    /// Databases under PAUSE db (or KILL db).
    paused_dbs: RefCell<HashSet<String>>,
    /// Databases under DISABLE.
    disabled_dbs: RefCell<HashSet<String>>,
    /// SUSPEND in force.
    suspended: Cell<bool>,
    /// Servers in use at RECONNECT time: closed when released.
    close_needed: RefCell<HashSet<u64>>,
    /// A validated configuration waiting for RELOAD's second phase.
    pending: RefCell<Option<(Arc<Config>, Arc<Files>)>>,
}

impl ShardAdmin {
    /// Is `db` paused (PAUSE db / KILL db)?
    pub fn db_paused(&self, db: &str) -> bool {
        self.paused_dbs.borrow().contains(db)
    }

    /// Is `db` disabled?
    pub fn db_disabled(&self, db: &str) -> bool {
        self.disabled_dbs.borrow().contains(db)
    }

    /// Is SUSPEND in force?
    pub fn suspended(&self) -> bool {
        self.suspended.get()
    }

    /// Called when a server is released: true (once) if RECONNECT asked for
    /// it to be closed instead of reused.
    pub fn take_close_needed(&self, server_id: u64) -> bool {
        let mut set = self.close_needed.borrow_mut();
        !set.is_empty() && set.remove(&server_id)
    }

    /// Is this server marked for closing?
    pub fn close_needed(&self, server_id: u64) -> bool {
        self.close_needed.borrow().contains(&server_id)
    }
}

/// May a new transaction of `pool` start now? False under PAUSE, PAUSE db,
/// KILL db or SUSPEND; the session then waits on `shard.state_changed`.
pub fn is_paused(shard: &Shard, pool: &Pool) -> bool {
    shard.paused.get() || shard.admin.suspended() || shard.admin.db_paused(&pool.key.db)
}

/// Refuses a login to a database under DISABLE, in PgBouncer's words
/// (src/client.c, `set_pool`).
pub fn check_login_allowed(shard: &Shard, db: &str) -> Result<()> {
    if shard.admin.db_disabled(db) {
        return Err(Error::Refused(PgError::fatal(
            CONSOLE_SQLSTATE,
            format!("database does not allow connections: {db}"),
        )));
    }
    Ok(())
}

/// Does the console know database `name` (a configured entry, or a pool
/// made through the `*` fallback)?
pub fn known_database(shard: &Shard, name: &str) -> bool {
    shard.config().databases.contains_key(name)
        || shard.pools.borrow().keys().any(|k| &*k.db == name)
}
