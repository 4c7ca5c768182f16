//! What one shard says about itself: its pool slices (the sizes of their
//! lists, as PgBouncer's SHOW POOLS is), their stats, and on request a row
//! per client and server connection. Plain data, so it crosses the mesh.
//!
//! Clients are counted from the shard's session table and servers from the
//! pool slices, so the console reports the same state the pool acts on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use crate::client::{ClientInfo, ClientState};
use crate::config::{Config, PoolMode};
use crate::pool::{Pool, PoolKey};
use crate::runtime::Shard;
use crate::server::ServerConn;
use crate::stats::StatsSnapshot;

/// One shard's report.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    /// Shard index.
    pub shard: usize,
    /// PAUSE (global) in force.
    pub paused: bool,
    /// SUSPEND in force.
    pub suspended: bool,
    /// Pool slices, by (database, user); the console pool included.
    pub pools: Vec<PoolReport>,
    /// Clients still logging in.
    pub login_clients: u32,
    /// SHOW CLIENTS rows (when asked for).
    pub clients: Vec<ConnRow>,
    /// SHOW SERVERS rows (when asked for).
    pub servers: Vec<ConnRow>,
}

/// One pool slice.
#[derive(Debug, Clone, Default)]
pub struct PoolReport {
    /// Database name as clients ask for it.
    pub db: String,
    /// Server login user.
    pub user: String,
    /// Pool mode.
    pub mode: Option<PoolMode>,
    /// Logged-in clients not waiting for a server.
    pub cl_active: u32,
    /// Clients waiting for a server.
    pub cl_waiting: u32,
    /// Cancel requests on their way to this pool's servers (`cl_active_cancel_req`; each
    /// travels on a connection of its own, `sv_active_cancel`).
    pub cancels: u32,
    /// Servers linked to a client.
    pub sv_active: u32,
    /// Servers held back until a cancel request for them lands.
    pub sv_being_canceled: u32,
    /// Idle servers.
    pub sv_idle: u32,
    /// Servers being opened.
    pub sv_login: u32,
    /// Servers marked by RECONNECT, still open.
    pub close_needed: u32,
    /// Oldest current wait.
    pub maxwait: Duration,
    /// Server connections open across all shards (the global budget).
    pub open: u32,
    /// Counters and histograms.
    pub stats: StatsSnapshot,
}

impl PoolReport {
    /// Folds another shard's slice of the same pool into this one.
    pub fn merge(&mut self, o: &PoolReport) {
        self.cl_active += o.cl_active;
        self.cl_waiting += o.cl_waiting;
        self.cancels += o.cancels;
        self.sv_active += o.sv_active;
        self.sv_being_canceled += o.sv_being_canceled;
        self.sv_idle += o.sv_idle;
        self.sv_login += o.sv_login;
        self.close_needed += o.close_needed;
        self.maxwait = self.maxwait.max(o.maxwait);
        self.open = self.open.max(o.open);
        self.mode = self.mode.or(o.mode);
        self.stats.merge(&o.stats);
    }
}

/// One row of SHOW CLIENTS / SHOW SERVERS.
#[derive(Debug, Clone)]
pub struct ConnRow {
    /// `C` or `S`.
    pub kind: &'static str,
    /// User.
    pub user: String,
    /// Database.
    pub db: String,
    /// PgBouncer's state word.
    pub state: &'static str,
    /// Peer address (`None` on a unix socket).
    pub addr: Option<SocketAddr>,
    /// A server reached over a unix socket: the port of its socket name, which SHOW SERVERS
    /// prints beside addr `unix`, as PgBouncer does.
    pub unix_port: Option<u16>,
    /// Our address.
    pub local: Option<SocketAddr>,
    /// When it connected (unknown for a server while it is leased).
    pub connect_time: Option<SystemTime>,
    /// Last request (client) or release (server).
    pub request_time: Option<SystemTime>,
    /// Current wait for a server.
    pub wait: Duration,
    /// Marked by RECONNECT.
    pub close_needed: bool,
    /// This connection's id (shown as `ptr`).
    pub id: u64,
    /// The linked connection's id.
    pub link: Option<u64>,
    /// Backend pid for servers.
    pub remote_pid: u32,
    /// TLS version and cipher (clients that use TLS).
    pub tls: Option<String>,
    /// application_name.
    pub app_name: String,
    /// prepared_statements: the client's mapped names, or the statements
    /// the server has prepared.
    pub prepared: usize,
}

/// Merges pool reports of many shards by (database, user), sorted.
pub fn merge_pools(reports: &[ShardReport]) -> Vec<PoolReport> {
    let mut by_key: BTreeMap<(String, String), PoolReport> = BTreeMap::new();
    for p in reports.iter().flat_map(|r| &r.pools) {
        match by_key.get_mut(&(p.db.clone(), p.user.clone())) {
            Some(m) => m.merge(p),
            None => {
                by_key.insert((p.db.clone(), p.user.clone()), p.clone());
            }
        }
    }
    by_key.into_values().collect()
}

/// This shard's report.
pub fn build(shard: &Rc<Shard>, conns: bool) -> ShardReport {
    let config = shard.config();
    let clients: Vec<Rc<ClientInfo>> = shard.clients.borrow().values().cloned().collect();
    let mut pools: BTreeMap<PoolKey, PoolReport> = shard
        .pools
        .borrow()
        .iter()
        .map(|(k, p)| (k.clone(), pool_report(shard, p)))
        .collect();
    let admin_key = PoolKey {
        db: super::ADMIN_DB.into(),
        user: super::ADMIN_DB.into(),
    };
    pools.insert(admin_key.clone(), admin_pool());
    let mut report = ShardReport {
        shard: shard.id,
        paused: shard.paused.get(),
        suspended: shard.admin.suspended(),
        ..Default::default()
    };
    for c in &clients {
        if c.state.get() == ClientState::Login {
            report.login_clients += 1;
            continue;
        }
        let key = if c.is_admin.get() {
            admin_key.clone()
        } else {
            client_pool_key(&config, c)
        };
        if let Some(p) = pools.get_mut(&key) {
            match c.state.get() {
                ClientState::Waiting => p.cl_waiting += 1,
                _ => p.cl_active += 1,
            }
            if let Some(l) = &*c.linked.borrow() {
                p.close_needed += u32::from(shard.admin.close_needed(l.server_id));
            }
        }
        if conns {
            report.clients.push(client_row(shard, c));
            if let Some(row) = linked_server_row(shard, &key, c) {
                report.servers.push(row);
            }
        }
    }
    if conns {
        for (key, pool) in shard.pools.borrow().iter() {
            idle_server_rows(shard, key, pool, &mut report.servers);
        }
    }
    shard.cancelling.by_pool(|key, n| {
        if let Some(p) = pools.get_mut(key) {
            p.cancels += n;
        }
    });
    report.pools = pools.into_values().collect();
    report
}

fn pool_report(shard: &Shard, p: &Pool) -> PoolReport {
    let mut close_needed = 0;
    p.for_each_idle(|s| close_needed += u32::from(shard.admin.close_needed(s.meta.id)));
    PoolReport {
        db: p.key.db.to_string(),
        user: p.key.user.to_string(),
        mode: Some(p.mode()),
        sv_active: p.active_count() - p.being_canceled_count(),
        sv_being_canceled: p.being_canceled_count(),
        sv_idle: p.idle_count() as u32,
        sv_login: p.opening_count(),
        close_needed,
        maxwait: p.max_wait(),
        open: p.global.open_count(),
        stats: p.stats.snapshot(),
        ..Default::default()
    }
}

/// PgBouncer lists its console as pool `pgbouncer`/`pgbouncer` in
/// statement mode.
fn admin_pool() -> PoolReport {
    PoolReport {
        db: super::ADMIN_DB.into(),
        user: super::ADMIN_DB.into(),
        mode: Some(PoolMode::Statement),
        ..Default::default()
    }
}

/// The pool a logged-in client uses: its database, and the database's
/// forced user if it has one (as login does).
pub fn client_pool_key(config: &Config, c: &ClientInfo) -> PoolKey {
    let db = c.db.borrow().clone();
    let user = match config.database(&db).and_then(|d| d.user.as_deref()) {
        Some(forced) => forced.into(),
        None => c.user.borrow().clone(),
    };
    PoolKey { db, user }
}

/// An `Instant` in the past as wall-clock time.
pub fn wall(at: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(at.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn client_row(shard: &Shard, c: &ClientInfo) -> ConnRow {
    let (state, wait) = match c.state.get() {
        ClientState::Active => ("active", Duration::ZERO),
        ClientState::Waiting => ("waiting", c.request_time.get().elapsed()),
        _ => ("idle", Duration::ZERO),
    };
    ConnRow {
        kind: "C",
        user: c.user.borrow().to_string(),
        db: c.db.borrow().to_string(),
        state,
        addr: c.peer_addr(),
        unix_port: None,
        local: c.local_addr(),
        connect_time: Some(c.connect_time),
        request_time: Some(wall(c.request_time.get())),
        wait,
        close_needed: false,
        id: c.id,
        link: c.linked.borrow().as_ref().map(|l| l.server_id),
        remote_pid: 0,
        tls: shard
            .tls_clients
            .borrow()
            .get(&c.key)
            .map(|t| t.to_string()),
        app_name: c.app_name.borrow().to_string(),
        prepared: c.prepared_statements.get() as usize,
    }
}

fn linked_server_row(shard: &Shard, key: &PoolKey, c: &ClientInfo) -> Option<ConnRow> {
    let linked = c.linked.borrow();
    let l = linked.as_ref()?;
    Some(ConnRow {
        kind: "S",
        user: key.user.to_string(),
        db: key.db.to_string(),
        state: "active",
        addr: l.addr.tcp(),
        unix_port: l.addr.unix_port(),
        local: l.local_addr,
        connect_time: Some(l.connect_time),
        request_time: Some(wall(c.request_time.get())),
        wait: Duration::ZERO,
        close_needed: shard.admin.close_needed(l.server_id),
        id: l.server_id,
        link: Some(c.id),
        remote_pid: l.backend_key.pid,
        tls: l.tls.as_deref().map(str::to_string),
        app_name: c.app_name.borrow().to_string(),
        prepared: l.prepared,
    })
}

fn idle_server_rows(shard: &Shard, key: &PoolKey, pool: &Pool, out: &mut Vec<ConnRow>) {
    let mut row = |s: &ServerConn, state| {
        out.push(ConnRow {
            kind: "S",
            user: key.user.to_string(),
            db: key.db.to_string(),
            state,
            addr: s.meta.addr.tcp(),
            unix_port: s.meta.addr.unix_port(),
            local: s.meta.local_addr,
            connect_time: Some(s.meta.connect_time),
            request_time: Some(wall(s.meta.last_used)),
            wait: Duration::ZERO,
            close_needed: shard.admin.close_needed(s.meta.id),
            id: s.meta.id,
            link: None,
            remote_pid: s.meta.backend_key.pid,
            tls: s.meta.tls.as_deref().map(str::to_string),
            app_name: String::new(),
            prepared: s.meta.prepared.len(),
        })
    };
    pool.for_each_idle(|s| row(s, "idle"));
    pool.for_each_being_canceled(|s| row(s, "being_canceled"));
}
