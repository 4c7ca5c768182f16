//! The small SHOW tables: HELP, VERSION, STATE, LISTS, MEM, PEERS, PEER_POOLS, DNS_HOSTS, and
//! DNS_ZONES (PgBouncer's header, no rows: pgring follows no zones). Also PgBouncer's fake
//! parameters (`SHOW client_encoding` and friends), which some drivers ask of any server.

use std::rc::Rc;

use super::gather;
use super::report::merge_pools;
use super::rows::{self, v, ResultSet, Ty};
use crate::runtime::Shard;

/// SHOW HELP's detail text: PgBouncer's list plus pgring's SHOW LATENCY.
const HELP: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
\tSHOW PEERS|PEER_POOLS\n\
\tSHOW LISTS|MEM|STATE\n\
\tSHOW DNS_HOSTS|DNS_ZONES\n\
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|LATENCY\n\
\tSET key = arg\n\
\tRELOAD\n\
\tPAUSE [<db>]\n\
\tRESUME [<db>]\n\
\tDISABLE <db>\n\
\tENABLE <db>\n\
\tRECONNECT [<db>]\n\
\tKILL [<db>]\n\
\tKILL_CLIENT <client_id>\n\
\tSUSPEND\n\
\tSHUTDOWN\n\
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\
\tWAIT_CLOSE [<db>]";

/// SHOW HELP: a NOTICE, then `SHOW` with no rows.
pub fn help(out: &mut Vec<u8>) {
    rows::notice(out, "Console usage", Some(HELP));
    crate::protocol::build::command_complete(out, "SHOW");
}

/// SHOW VERSION.
pub fn version(out: &mut Vec<u8>) {
    let mut rs = ResultSet::new(out, &[("version", Ty::Text)]);
    rs.row(&[v(super::SERVER_VERSION)]);
    rs.finish();
}

/// SHOW STATE.
pub fn state(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let paused = shard.paused.get();
    let suspended = shard.admin.suspended();
    let yes = |b: bool| v(if b { "yes" } else { "no" });
    let mut rs = ResultSet::new(out, &[("key", Ty::Text), ("value", Ty::Text)]);
    rs.row(&[v("active"), yes(!paused && !suspended)]);
    rs.row(&[v("paused"), yes(paused)]);
    rs.row(&[v("suspended"), yes(suspended)]);
    let secs = |d: std::time::Duration| format!("{:.3}", d.as_secs_f64());
    // pgring's own: CPU time the shards spent polling before they slept (spin_before_park_us).
    rs.row(&[v("spin_seconds"), v(secs(crate::runtime::spun_total()))]);
    // pgring's own: each shard thread's time on a CPU and time waiting for one (`runtime::sched`).
    for (i, cpu) in shard.shared.threads.cpu().iter().enumerate() {
        if let Some(cpu) = cpu {
            rs.row(&[v(format!("shard_{i}_cpu_seconds")), v(secs(cpu.on_cpu))]);
            rs.row(&[
                v(format!("shard_{i}_cpu_wait_seconds")),
                v(secs(cpu.waiting)),
            ]);
            let counts = [("sleeps", cpu.sleeps), ("preemptions", cpu.preempted)];
            for (what, n) in counts {
                if let Some(n) = n {
                    rs.row(&[v(format!("shard_{i}_{what}")), v(n.to_string())]);
                }
            }
        }
    }
    rs.finish();
}

/// SHOW LISTS. pgring has no slab caches, so `free_*` are 0 and `used_*`
/// count live connections.
pub async fn lists(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let reports = match gather::reports(shard, false).await {
        Ok(r) => r,
        Err(e) => return rows::error(out, e.to_string()),
    };
    let pools = merge_pools(&reports);
    let config = shard.config();
    let clients: u32 = pools.iter().map(|p| p.cl_active + p.cl_waiting).sum();
    let login: u32 = reports.iter().map(|r| r.login_clients).sum();
    let servers: u32 = pools
        .iter()
        .map(|p| p.sv_active + p.sv_idle + p.sv_login)
        .sum();
    let users: std::collections::BTreeSet<&str> = pools.iter().map(|p| p.user.as_str()).collect();
    let (dns_names, dns_queries) = crate::server::dns::hosts().counts();
    let mut rs = ResultSet::new(out, &[("list", Ty::Text), ("items", Ty::Int4)]);
    for (name, n) in [
        ("databases", config.databases.len() as u32 + 1),
        ("users", users.len() as u32),
        ("peers", config.peers.len() as u32),
        ("pools", pools.len() as u32),
        ("peer_pools", config.peers.len() as u32),
        ("free_clients", 0),
        ("used_clients", clients + login),
        ("login_clients", login),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", dns_names as u32),
        ("dns_zones", 0),
        ("dns_queries", dns_queries as u32),
        ("dns_pending", 0),
    ] {
        rs.row(&[v(name), v(n)]);
    }
    rs.finish();
}

/// SHOW MEM: what pgring can count of its own structures.
pub fn mem(shard: &Rc<Shard>, out: &mut Vec<u8>) {
    let cols = [
        ("name", Ty::Text),
        ("size", Ty::Int4),
        ("used", Ty::Int4),
        ("free", Ty::Int4),
        ("memtotal", Ty::Int4),
    ];
    let mut rs = ResultSet::new(out, &cols);
    let clients = shard.client_count();
    let size = std::mem::size_of::<crate::client::ClientInfo>();
    rs.row(&[
        v("client_info"),
        v(size),
        v(clients),
        v(0),
        v(size * clients),
    ]);
    let pools = shard.pools.borrow().len();
    let psize = std::mem::size_of::<crate::pool::Pool>();
    rs.row(&[v("pool"), v(psize), v(pools), v(0), v(psize * pools)]);
    rs.finish();
}

/// SHOW PEERS's columns (PgBouncer 1.19+).
const PEERS_COLUMNS: &[(&str, Ty)] = &[
    ("peer_id", Ty::Int4),
    ("host", Ty::Text),
    ("port", Ty::Int4),
    ("pool_size", Ty::Int4),
];

/// The `[peers]` entries, by id.
fn configured_peers(config: &crate::config::Config) -> Vec<(u16, &crate::config::Peer)> {
    let mut peers: Vec<_> = config
        .peers
        .iter()
        .filter_map(|(id, p)| Some((id.parse::<u16>().ok()?, p)))
        .collect();
    peers.sort_by_key(|(id, _)| *id);
    peers
}

/// SHOW PEERS: the `[peers]` entries, by id (pool_size defaults to `default_pool_size`).
pub fn peers(shard: &Shard, out: &mut Vec<u8>) {
    let config = shard.config();
    let mut rs = ResultSet::new(out, PEERS_COLUMNS);
    for (id, p) in configured_peers(&config) {
        rs.row(&[
            v(id),
            p.host.clone(),
            v(p.port),
            v(p.pool_size.unwrap_or(config.general.default_pool_size)),
        ]);
    }
    rs.finish();
}

/// SHOW PEER_POOLS: per `[peers]` entry, the cancel requests forwarded to it now (each
/// travels on a connection of its own, so a client request and its connection are counted
/// alike).
pub fn peer_pools(shard: &Shard, out: &mut Vec<u8>) {
    let config = shard.config();
    let cols: &[(&str, Ty)] = &[
        ("peer_id", Ty::Int4),
        ("cl_active_cancel_req", Ty::Int4),
        ("cl_waiting_cancel_req", Ty::Int4),
        ("sv_active_cancel", Ty::Int4),
        ("sv_login", Ty::Int4),
    ];
    let mut rs = ResultSet::new(out, cols);
    for (id, _) in configured_peers(&config) {
        let c = shard.shared.peer_pools.counts(id);
        rs.row(&[
            v(id),
            v(c.login + c.active),
            v(c.waiting),
            v(c.active),
            v(c.login),
        ]);
    }
    rs.finish();
}

/// SHOW DNS_HOSTS: the names looked up so far (database and peer hosts), with the seconds
/// until each is looked up again and its addresses.
pub fn dns_hosts(shard: &Shard, out: &mut Vec<u8>) {
    let ttl = crate::server::dns::Ttl::of_config(&shard.config().general);
    let mut rs = ResultSet::new(
        out,
        &[
            ("hostname", Ty::Text),
            ("ttl", Ty::Int8),
            ("addrs", Ty::Text),
        ],
    );
    for h in crate::server::dns::hosts().list(ttl) {
        rs.row(&[v(h.name), v(h.ttl), v(h.addrs)]);
    }
    rs.finish();
}

/// SHOW DNS_ZONES: PgBouncer's header, no rows (zones are followed only by its c-ares build,
/// through SOA serials; pgring looks names up again when their TTL ends).
pub fn dns_zones(out: &mut Vec<u8>) {
    let cols: &[(&str, Ty)] = &[
        ("zonename", Ty::Text),
        ("serial", Ty::Int8),
        ("count", Ty::Int4),
    ];
    ResultSet::new(out, cols).finish();
}

/// PgBouncer's fake session parameters (src/admin.c `fake_param_list`).
const FAKE_PARAMS: [(&str, &str); 6] = [
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
    ("extra_float_digits", "2"),
];

/// `SHOW <fake parameter>`; false if `name` is not one.
pub fn fake_show(out: &mut Vec<u8>, name: &str) -> bool {
    let Some((n, value)) = FAKE_PARAMS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    else {
        return false;
    };
    let mut rs = ResultSet::new(out, &[(n, Ty::Text)]);
    rs.row(&[v(value)]);
    rs.finish();
    true
}

/// `SET <fake parameter> = ...`: ignored with a notice, for anyone.
pub fn fake_set(out: &mut Vec<u8>, key: &str) -> bool {
    if !FAKE_PARAMS.iter().any(|(n, _)| n.eq_ignore_ascii_case(key)) {
        return false;
    }
    rows::notice(out, "SET ignored", None);
    crate::protocol::build::command_complete(out, "SET");
    true
}
