//! Control commands as one shard applies them. The console checks
//! permissions and arguments and waits where PgBouncer waits (PAUSE,
//! WAIT_CLOSE); this file only changes this shard's state.
//!
//! - PAUSE \[db\]: new transactions wait (the session checks
//!   [`super::is_paused`] between transactions); idle servers are closed,
//!   as PgBouncer disconnects servers under PAUSE.
//! - KILL \[db\]: pause the database, end its clients, close its idle servers.
//! - RECONNECT \[db\]: close idle servers now; mark leased ones so that their
//!   release closes them (`close_needed` in SHOW SERVERS). With `server_fast_close`, a
//!   session-mode client whose server is marked is ended as soon as no request of its is on
//!   the server ([`fast_close`]), rather than at its disconnect.
//! - DISABLE / ENABLE db: refuse or allow new logins.
//! - SUSPEND: hold every new transaction until RESUME.

use std::rc::Rc;

use tracing::info;

use super::report::client_pool_key;
use crate::runtime::Shard;

/// A control command, applied on every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardCommand {
    /// PAUSE, or PAUSE db.
    Pause(Option<String>),
    /// RESUME, or RESUME db.
    Resume(Option<String>),
    /// SUSPEND.
    Suspend,
    /// DISABLE db.
    Disable(String),
    /// ENABLE db.
    Enable(String),
    /// RECONNECT, or RECONNECT db.
    Reconnect(Option<String>),
    /// KILL, or KILL db.
    Kill(Option<String>),
    /// KILL_CLIENT id (only the owning shard finds it).
    KillClient(u64),
}

fn matches(filter: &Option<String>, db: &str) -> bool {
    filter.as_deref().is_none_or(|f| f == db)
}

/// Applies `cmd` on this shard; returns how many clients or servers it
/// touched (KILL_CLIENT: 1 if the client was here).
pub fn apply(shard: &Rc<Shard>, cmd: &ShardCommand) -> u32 {
    let n = match cmd {
        ShardCommand::Pause(db) => pause(shard, db),
        ShardCommand::Resume(db) => resume(shard, db),
        ShardCommand::Suspend => {
            shard.admin.suspended.set(true);
            0
        }
        ShardCommand::Disable(db) => {
            shard.admin.disabled_dbs.borrow_mut().insert(db.clone());
            0
        }
        ShardCommand::Enable(db) => {
            shard.admin.disabled_dbs.borrow_mut().remove(db);
            0
        }
        ShardCommand::Reconnect(db) => reconnect(shard, db),
        ShardCommand::Kill(db) => kill(shard, db),
        ShardCommand::KillClient(id) => kill_client(shard, *id),
    };
    shard.state_changed.notify_all();
    n
}

fn pause(shard: &Rc<Shard>, db: &Option<String>) -> u32 {
    match db {
        None => shard.paused.set(true),
        Some(d) => {
            shard.admin.paused_dbs.borrow_mut().insert(d.clone());
        }
    }
    close_idle(shard, db, "database paused")
}

fn resume(shard: &Rc<Shard>, db: &Option<String>) -> u32 {
    match db {
        None => {
            shard.paused.set(false);
            shard.admin.suspended.set(false);
        }
        Some(d) => {
            shard.admin.paused_dbs.borrow_mut().remove(d);
        }
    }
    0
}

/// Closes the idle servers of matching pools; returns how many.
fn close_idle(shard: &Rc<Shard>, db: &Option<String>, reason: &str) -> u32 {
    let mut closed = 0;
    for (key, pool) in shard.pools.borrow().iter() {
        if matches(db, &key.db) {
            closed += pool.idle_count() as u32;
            pool.close_idle(shard, reason);
        }
    }
    closed
}

fn reconnect(shard: &Rc<Shard>, db: &Option<String>) -> u32 {
    let closed = close_idle(shard, db, "obsolete connection");
    let config = shard.config();
    let mut marked = 0;
    for c in shard.clients.borrow().values() {
        if c.is_admin.get() || !matches(db, &client_pool_key(&config, c).db) {
            continue;
        }
        if let Some(l) = &*c.linked.borrow() {
            shard.admin.close_needed.borrow_mut().insert(l.server_id);
            marked += 1;
        }
    }
    info!(shard = shard.id, closed, marked, "RECONNECT");
    fast_close(shard);
    closed + marked
}

/// `server_fast_close`: ends each session-mode client whose server must close (RECONNECT, a
/// RELOAD that changed its database) and has no request on it, so that the server closes now
/// instead of when the client leaves (PgBouncer's janitor does the same with a "ready"
/// server). A transaction open on it is rolled back as the session ends. Run at RECONNECT and
/// every second; touches nothing unless both the setting and a marked server are there.
pub fn fast_close(shard: &Rc<Shard>) {
    if shard.admin.close_needed.borrow().is_empty() {
        return;
    }
    let config = shard.config();
    if !config.general.server_fast_close {
        return;
    }
    let pools = shard.pools.borrow();
    let victims: Vec<_> = shard
        .clients
        .borrow()
        .values()
        .filter(|c| {
            let marked = c
                .linked
                .borrow()
                .as_ref()
                .is_some_and(|l| shard.admin.close_needed(l.server_id));
            marked
                && !c.busy.get()
                && !c.is_killed()
                && pools
                    .get(&client_pool_key(&config, c))
                    .is_some_and(|p| p.mode() == crate::config::PoolMode::Session)
        })
        .cloned()
        .collect();
    drop(pools);
    for c in victims {
        c.kill("database configuration changed");
    }
}

fn kill(shard: &Rc<Shard>, db: &Option<String>) -> u32 {
    let dbs: Vec<String> = match db {
        Some(d) => vec![d.clone()],
        None => shard
            .pools
            .borrow()
            .keys()
            .map(|k| k.db.to_string())
            .collect(),
    };
    shard.admin.paused_dbs.borrow_mut().extend(dbs);
    let victims: Vec<_> = shard
        .clients
        .borrow()
        .values()
        .filter(|c| !c.is_admin.get() && matches(db, &c.db.borrow()))
        .cloned()
        .collect();
    for c in &victims {
        c.kill("database killed by admin");
    }
    close_idle(shard, db, "database killed by admin");
    victims.len() as u32
}

fn kill_client(shard: &Rc<Shard>, id: u64) -> u32 {
    let client = shard
        .clients
        .borrow()
        .values()
        .find(|c| c.id == id)
        .cloned();
    match client {
        Some(c) => {
            c.kill("admin forced disconnect");
            1
        }
        None => 0,
    }
}
