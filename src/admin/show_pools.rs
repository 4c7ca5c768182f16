//! SHOW POOLS, SHOW CLIENTS, SHOW SERVERS: the sizes of the pools' lists
//! and a row per connection, merged over every shard. Columns, order and
//! types are PgBouncer 1.25's (src/admin.c `admin_show_pools`,
//! `socket_header`).

use std::rc::Rc;

use super::gather;
use super::report::{merge_pools, ConnRow};
use super::rows::{self, time, v, ResultSet, Ty};
use super::show_config::enum_str;
use crate::runtime::Shard;

/// SHOW POOLS columns.
pub const POOLS_COLUMNS: &[(&str, Ty)] = &[
    ("database", Ty::Text),
    ("user", Ty::Text),
    ("cl_active", Ty::Int4),
    ("cl_waiting", Ty::Int4),
    ("cl_active_cancel_req", Ty::Int4),
    ("cl_waiting_cancel_req", Ty::Int4),
    ("sv_active", Ty::Int4),
    ("sv_active_cancel", Ty::Int4),
    ("sv_being_canceled", Ty::Int4),
    ("sv_idle", Ty::Int4),
    ("sv_used", Ty::Int4),
    ("sv_tested", Ty::Int4),
    ("sv_login", Ty::Int4),
    ("maxwait", Ty::Int4),
    ("maxwait_us", Ty::Int4),
    ("pool_mode", Ty::Text),
    ("load_balance_hosts", Ty::Text),
];

/// SHOW CLIENTS / SHOW SERVERS columns.
pub const SOCKET_COLUMNS: &[(&str, Ty)] = &[
    ("type", Ty::Text),
    ("user", Ty::Text),
    ("database", Ty::Text),
    ("replication", Ty::Text),
    ("state", Ty::Text),
    ("addr", Ty::Text),
    ("port", Ty::Int4),
    ("local_addr", Ty::Text),
    ("local_port", Ty::Int4),
    ("connect_time", Ty::Time),
    ("request_time", Ty::Time),
    ("wait", Ty::Int4),
    ("wait_us", Ty::Int4),
    ("close_needed", Ty::Int4),
    ("ptr", Ty::Text),
    ("link", Ty::Text),
    ("remote_pid", Ty::Int4),
    ("tls", Ty::Text),
    ("application_name", Ty::Text),
    ("prepared_statements", Ty::Int4),
    ("id", Ty::Int4),
];

/// SHOW POOLS.
pub async fn pools(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let reports = match gather::reports(shard, false).await {
        Ok(r) => r,
        Err(e) => return rows::error(out, e.to_string()),
    };
    let config = shard.config();
    let mut rs = ResultSet::new(out, POOLS_COLUMNS);
    for p in merge_pools(&reports) {
        let multi_host = config
            .database(&p.db)
            .and_then(|d| d.host.as_deref())
            .is_some_and(|h| h.contains(','));
        let lb = multi_host
            .then(|| config.database(&p.db).map(|d| enum_str(&d.load_balance())))
            .flatten();
        rs.row(&[
            v(&p.db),
            v(&p.user),
            v(p.cl_active),
            v(p.cl_waiting),
            v(p.cancels),
            v(0),
            v(p.sv_active),
            v(p.cancels),
            v(p.sv_being_canceled),
            v(p.sv_idle),
            v(0),
            v(0),
            v(p.sv_login),
            v(p.maxwait.as_secs()),
            v(p.maxwait.subsec_micros()),
            p.mode.map(|m| m.as_str().to_owned()),
            lb,
        ]);
    }
    rs.finish();
}

/// SHOW CLIENTS (`servers == false`) or SHOW SERVERS.
pub async fn connections(shard: &Rc<Shard>, out: &mut Vec<u8>, servers: bool) {
    let reports = match gather::reports(shard, true).await {
        Ok(r) => r,
        Err(e) => return rows::error(out, e.to_string()),
    };
    let listen_port = shard.config().general.listen_port;
    let mut rs = ResultSet::new(out, SOCKET_COLUMNS);
    for r in &reports {
        let list = if servers { &r.servers } else { &r.clients };
        for c in list {
            rs.row(&socket_row(c, listen_port));
        }
    }
    rs.finish();
}

/// `ptr` and `link` print connection ids the way PgBouncer prints object
/// addresses, so the two columns join.
fn ptr(id: u64) -> String {
    format!("{id:#x}")
}

/// A client with no IP address came over the unix socket: PgBouncer shows
/// it as addr `unix` with the listen port. A server reached over a unix socket
/// shows addr `unix` with the port of its socket name. Either way our end is
/// `unix` with the listen port (PgBouncer's `fill_local_addr`).
fn socket_row(c: &ConnRow, listen_port: u16) -> Vec<Option<String>> {
    let ip = |a: Option<std::net::SocketAddr>| a.map(|a| a.ip().to_string());
    let port = |a: Option<std::net::SocketAddr>| v(a.map_or(0, |a| a.port()));
    let unix_port = match c.kind {
        "C" if c.addr.is_none() => Some(listen_port),
        _ => c.unix_port,
    };
    let ((addr, addr_port), (local, local_port)) = match unix_port {
        Some(p) => ((v("unix"), v(p)), (v("unix"), v(listen_port))),
        None => ((ip(c.addr), port(c.addr)), (ip(c.local), port(c.local))),
    };
    vec![
        v(c.kind),
        v(&c.user),
        v(&c.db),
        v("none"),
        v(c.state),
        addr,
        addr_port,
        local,
        local_port,
        time(c.connect_time),
        time(c.request_time),
        v(c.wait.as_secs()),
        v(c.wait.subsec_micros()),
        v(u8::from(c.close_needed)),
        v(ptr(c.id)),
        v(c.link.map(ptr).unwrap_or_default()),
        v(c.remote_pid),
        v(c.tls.as_deref().unwrap_or("")),
        v(&c.app_name),
        v(c.prepared),
        v(c.id),
    ]
}
