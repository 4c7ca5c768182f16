//! The admin console and observability (issue 4): PgBouncer's SHOW tables merged over shards,
//! control commands, two-phase RELOAD, permissions, Prometheus /metrics, the stats log line.
//! Every test runs pgring with two shards, so answers must be merged across them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::{self, config_for, describe, free_port, sqlstate, Pgring};

/// Column names and rows (by column name) of one console command.
pub(crate) struct Table {
    columns: Vec<String>,
    pub(crate) rows: Vec<HashMap<String, String>>,
}

impl Table {
    /// The row whose `key` column is `value`.
    pub(crate) fn row(&self, key: &str, value: &str) -> &HashMap<String, String> {
        self.rows
            .iter()
            .find(|r| r.get(key).map(String::as_str) == Some(value))
            .unwrap_or_else(|| panic!("no row with {key} = {value}: {:?}", self.rows))
    }

    /// How many rows have `value` in column `key`.
    pub(crate) fn rows_where(&self, key: &str, value: &str) -> usize {
        self.rows
            .iter()
            .filter(|r| r.get(key).map(String::as_str) == Some(value))
            .count()
    }

    pub(crate) fn num(&self, key: &str, value: &str, column: &str) -> u64 {
        let row = self.row(key, value);
        row.get(column)
            .unwrap_or_else(|| panic!("no column {column}"))
            .parse()
            .unwrap_or_else(|e| panic!("{column}: {e}"))
    }
}

pub(crate) async fn show(client: &Client, sql: &str) -> Table {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    let mut table = Table {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                table.columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                let values = table
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.clone(), row.get(i).unwrap_or("").to_owned()))
                    .collect();
                table.rows.push(values);
            }
            _ => {}
        }
    }
    table
}

pub(crate) async fn console(p: &Pgring, user: &str) -> Client {
    common::connect(p.port, "pgbouncer", user, "").await
}

async fn app(p: &Pgring) -> Client {
    common::connect(p.port, "app", "postgres", "").await
}

fn names(list: &str) -> Vec<String> {
    list.split(',').map(|s| s.trim().to_owned()).collect()
}

/// Column lists of ../shared/reference/pgbouncer-compat.md.
const POOLS: &str = "database, user, cl_active, cl_waiting, cl_active_cancel_req, cl_waiting_cancel_req, sv_active, sv_active_cancel, sv_being_canceled, sv_idle, sv_used, sv_tested, sv_login, maxwait, maxwait_us, pool_mode, load_balance_hosts";
const STATS: &str = "database, total_server_assignment_count, total_xact_count, total_query_count, total_received, total_sent, total_xact_time, total_query_time, total_wait_time, total_client_parse_count, total_server_parse_count, total_bind_count, total_client_login_count, avg_server_assignment_count, avg_xact_count, avg_query_count, avg_recv, avg_sent, avg_xact_time, avg_query_time, avg_wait_time, avg_client_parse_count, avg_server_parse_count, avg_bind_count, avg_client_login_count";
const PERCENTILES: &str = "xact_p50_us, xact_p90_us, xact_p99_us, xact_p99_9_us, query_p50_us, query_p90_us, query_p99_us, query_p99_9_us, wait_p50_us, wait_p90_us, wait_p99_us, wait_p99_9_us";
const SOCKETS: &str = "type, user, database, replication, state, addr, port, local_addr, local_port, connect_time, request_time, wait, wait_us, close_needed, ptr, link, remote_pid, tls, application_name, prepared_statements, id";
const DATABASES: &str = "name, host, port, database, force_user, pool_size, min_pool_size, reserve_pool_size, server_lifetime, pool_mode, load_balance_hosts, max_connections, current_connections, max_client_connections, current_client_connections, paused, disabled";
const USERS: &str = "name, pool_size, reserve_pool_size, pool_mode, max_user_connections, current_connections, max_user_client_connections, current_client_connections";
const TOTALS_SPLIT: &str = "database, server_assignment_count, xact_count, query_count, bytes_received, bytes_sent, xact_time, query_time, wait_time";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_show_columns_match_pgbouncer() {
    let p = Pgring::start(&config_for("transaction", 4, 2, ""));
    let _app = app(&p).await;
    let c = console(&p, "postgres").await;
    let mut stats = names(STATS);
    stats.extend(names(PERCENTILES));
    let mut split = names(TOTALS_SPLIT);
    let mut avgs = split.clone();
    split.extend(names(
        "client_parse_count, server_parse_count, bind_count, client_login_count",
    ));
    avgs.extend(names(
        "avg_client_parse_count, avg_server_parse_count, avg_bind_count, client_login_count",
    ));
    let expected: Vec<(&str, Vec<String>)> = vec![
        ("SHOW POOLS", names(POOLS)),
        ("SHOW STATS", stats),
        ("SHOW STATS_TOTALS", split),
        ("SHOW STATS_AVERAGES", avgs),
        ("SHOW TOTALS", names("name, value")),
        ("SHOW CLIENTS", names(SOCKETS)),
        ("SHOW SERVERS", names(SOCKETS)),
        ("SHOW DATABASES", names(DATABASES)),
        ("SHOW USERS", names(USERS)),
        ("SHOW LISTS", names("list, items")),
        ("SHOW CONFIG", names("key, value, default, changeable")),
        ("SHOW MEM", names("name, size, used, free, memtotal")),
        ("SHOW VERSION", names("version")),
        ("SHOW STATE", names("key, value")),
        ("select version", names("version")),
    ];
    for (sql, columns) in expected {
        assert_eq!(show(&c, sql).await.columns, columns, "{sql}");
    }
    let lists = show(&c, "SHOW LISTS").await;
    let list_names: Vec<&str> = lists.rows.iter().map(|r| r["list"].as_str()).collect();
    for want in names("databases, users, pools, free_clients, used_clients, login_clients, free_servers, used_servers, dns_names, dns_zones, dns_queries, dns_pending") {
        assert!(list_names.contains(&want.as_str()), "SHOW LISTS lacks {want}");
    }
    let config = show(&c, "SHOW CONFIG").await;
    assert_eq!(config.row("key", "default_pool_size")["value"], "4");
    assert_eq!(config.row("key", "listen_port")["changeable"], "no");
    let latency = show(&c, "SHOW LATENCY").await;
    assert_eq!(
        &latency.columns[..5],
        &names("database, user, metric, window, count")[..]
    );
    c.simple_query("SHOW HELP").await.expect("SHOW HELP");
    let err = c
        .simple_query("SHOW NOTHING")
        .await
        .expect_err("unknown SHOW");
    assert_eq!(sqlstate(&err), "08P01");
    assert!(
        describe(&err).contains("invalid command 'SHOW NOTHING', use SHOW HELP;"),
        "{}",
        describe(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_counts_follow_a_known_workload_across_shards() {
    let p = Pgring::start(&config_for("transaction", 4, 2, ""));
    let c = console(&p, "postgres").await;
    let clients = futures::future::join_all((0..4).map(|_| app(&p))).await;
    let pools = show(&c, "SHOW POOLS").await;
    assert_eq!(pools.num("database", "app", "cl_active"), 4);
    assert_eq!(pools.num("database", "app", "cl_waiting"), 0);
    let before = show(&c, "SHOW STATS").await;
    let lat_before = latency_counts(&c).await;
    const N: u64 = 40;
    for i in 0..N {
        let client = &clients[(i % 4) as usize];
        client.simple_query("SELECT 1").await.expect("SELECT 1");
    }
    let after = show(&c, "SHOW STATS").await;
    for col in [
        "total_xact_count",
        "total_query_count",
        "total_server_assignment_count",
    ] {
        let grew = after.num("database", "app", col) - before.num("database", "app", col);
        assert_eq!(grew, N, "{col}");
    }
    assert!(
        after.num("database", "app", "total_received")
            > before.num("database", "app", "total_received")
    );
    assert!(after.num("database", "app", "xact_p50_us") > 0);
    let lat_after = latency_counts(&c).await;
    for metric in ["xact", "query", "wait"] {
        assert_eq!(
            lat_after[metric] - lat_before[metric],
            N,
            "SHOW LATENCY {metric} count"
        );
    }
    let clients_table = show(&c, "SHOW CLIENTS").await;
    let app_rows = clients_table
        .rows
        .iter()
        .filter(|r| r["database"] == "app")
        .count();
    assert_eq!(app_rows, 4, "{:?}", clients_table.rows);
    let servers = show(&c, "SHOW SERVERS").await;
    let idle = servers
        .rows
        .iter()
        .filter(|r| r["database"] == "app" && r["state"] == "idle")
        .count();
    assert_eq!(pools_idle(&c).await, idle as u64);
    assert!(idle >= 1);
    // The test PostgreSQL has TLS, so pgring's servers speak it (server_tls_sslmode prefer):
    // SHOW SERVERS says so for a server a client holds as well as for an idle one.
    clients[0].simple_query("BEGIN").await.expect("BEGIN");
    let servers = show(&c, "SHOW SERVERS").await;
    let app_servers: Vec<_> = servers
        .rows
        .iter()
        .filter(|r| r["database"] == "app")
        .collect();
    assert!(
        app_servers.iter().any(|r| r["state"] == "active"),
        "{app_servers:?}"
    );
    for r in &app_servers {
        assert!(r["tls"].starts_with("TLSv1."), "{r:?}");
    }
    clients[0].simple_query("COMMIT").await.expect("COMMIT");
}

async fn pools_idle(c: &Client) -> u64 {
    show(c, "SHOW POOLS")
        .await
        .num("database", "app", "sv_idle")
}

/// SHOW LATENCY `count` since start of pool app/postgres, per metric.
async fn latency_counts(c: &Client) -> HashMap<String, u64> {
    let t = show(c, "SHOW LATENCY").await;
    t.rows
        .iter()
        .filter(|r| r["database"] == "app" && r["window"] == "total")
        .map(|r| (r["metric"].clone(), r["count"].parse().expect("count")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pause_holds_new_transactions_and_resume_releases_them() {
    let p = Pgring::start(&config_for("transaction", 4, 2, ""));
    let c = console(&p, "postgres").await;
    let clients = futures::future::join_all((0..2).map(|_| app(&p))).await;
    for client in &clients {
        client.simple_query("SELECT 1").await.expect("warm up");
    }
    c.simple_query("PAUSE").await.expect("PAUSE");
    assert_eq!(
        show(&c, "SHOW STATE").await.row("key", "paused")["value"],
        "yes"
    );
    let err = c.simple_query("PAUSE").await.expect_err("second PAUSE");
    assert!(describe(&err).contains("already suspended/paused"));
    let held: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move { client.simple_query("SELECT 2").await.map(|_| client) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "a transaction ran during PAUSE"
    );
    let resumed = Instant::now();
    c.simple_query("RESUME").await.expect("RESUME");
    for h in held {
        let done = tokio::time::timeout(Duration::from_secs(2), h).await;
        done.expect("held transaction did not finish after RESUME")
            .expect("task")
            .expect("query after RESUME");
    }
    assert!(resumed.elapsed() < Duration::from_secs(2));
    let err = c
        .simple_query("RESUME")
        .await
        .expect_err("RESUME when not paused");
    assert!(describe(&err).contains("pooler is not paused/suspended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_changes_a_pool_size_live() {
    let p = Pgring::start(&config_for("transaction", 1, 2, ""));
    let c = console(&p, "postgres").await;
    let holder = app(&p).await;
    let waiter = app(&p).await;
    holder.simple_query("BEGIN; SELECT 1").await.expect("BEGIN");
    let waiting =
        tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(|_| waiter) });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiting.is_finished(),
        "pool_size 1 let a second transaction in"
    );
    assert_eq!(
        show(&c, "SHOW POOLS")
            .await
            .num("database", "app", "cl_waiting"),
        1
    );
    rewrite_config(&p, "default_pool_size = 1", "default_pool_size = 2");
    c.simple_query("RELOAD").await.expect("RELOAD");
    let done = tokio::time::timeout(Duration::from_secs(3), waiting).await;
    done.expect("waiter still waiting after RELOAD raised pool_size")
        .expect("task")
        .expect("query");
    assert_eq!(
        show(&c, "SHOW CONFIG")
            .await
            .row("key", "default_pool_size")["value"],
        "2"
    );
    assert_eq!(
        show(&c, "SHOW DATABASES")
            .await
            .num("name", "app", "pool_size"),
        2
    );
    holder.simple_query("COMMIT").await.expect("COMMIT");
}

fn rewrite_config(p: &Pgring, from: &str, to: &str) {
    let path = p.dir.join("pgring.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(text.contains(from), "{text}");
    std::fs::write(&path, text.replace(from, to)).expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bad_reload_changes_nothing_and_says_why() {
    let p = Pgring::start(&config_for("transaction", 3, 2, ""));
    let c = console(&p, "postgres").await;
    rewrite_config(
        &p,
        "default_pool_size = 3",
        "default_pool_size = 9\nlisen_port = 1",
    );
    let err = c.simple_query("RELOAD").await.expect_err("bad RELOAD");
    assert_eq!(sqlstate(&err), "F0000");
    assert!(describe(&err).contains("lisen_port"), "{}", describe(&err));
    assert_eq!(
        show(&c, "SHOW CONFIG")
            .await
            .row("key", "default_pool_size")["value"],
        "3"
    );
    let err = c
        .simple_query("SET default_pool_size = 'many'")
        .await
        .expect_err("bad SET");
    assert!(describe(&err).contains("SET failed"), "{}", describe(&err));
    c.simple_query("SET default_pool_size = 5")
        .await
        .expect("SET");
    assert_eq!(
        show(&c, "SHOW CONFIG")
            .await
            .row("key", "default_pool_size")["value"],
        "5"
    );
    app(&p)
        .await
        .simple_query("SELECT 1")
        .await
        .expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_control_to_stats_users_and_login_to_others() {
    let extra = "stats_users = [\"trust_user\"]";
    let p = Pgring::start(&config_for("transaction", 2, 2, extra));
    let stats_user = console(&p, "trust_user").await;
    show(&stats_user, "SHOW POOLS").await;
    for cmd in [
        "PAUSE",
        "RELOAD",
        "KILL app",
        "SHUTDOWN",
        "SET default_pool_size = 3",
    ] {
        let err = stats_user.simple_query(cmd).await.expect_err(cmd);
        assert_eq!(sqlstate(&err), "08P01", "{cmd}");
        assert!(
            describe(&err).contains("admin access needed"),
            "{cmd}: {}",
            describe(&err)
        );
    }
    let Err(err) = common::try_connect(p.port, "pgbouncer", "md5_user", "md5pass").await else {
        panic!("md5_user is neither admin nor stats user, yet logged in");
    };
    assert_eq!(sqlstate(&err), "42501", "{}", describe(&err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_disable_kill_client_and_reconnect() {
    let p = Pgring::start(&config_for("transaction", 2, 2, ""));
    let c = console(&p, "postgres").await;
    let victim = app(&p).await;
    victim.simple_query("SELECT 1").await.expect("SELECT");
    c.simple_query("DISABLE app").await.expect("DISABLE");
    let Err(err) = common::try_connect(p.port, "app", "postgres", "").await else {
        panic!("logged into a disabled database");
    };
    assert!(
        describe(&err).contains("database does not allow connections: app"),
        "{}",
        describe(&err)
    );
    c.simple_query("ENABLE app").await.expect("ENABLE");
    app(&p)
        .await
        .simple_query("SELECT 1")
        .await
        .expect("after ENABLE");
    c.simple_query("RECONNECT app").await.expect("RECONNECT");
    c.simple_query("WAIT_CLOSE app").await.expect("WAIT_CLOSE");
    let err = c
        .simple_query("PAUSE nosuchdb")
        .await
        .expect_err("unknown db");
    assert!(describe(&err).contains("no such database: nosuchdb"));
    let clients = show(&c, "SHOW CLIENTS").await;
    let ids: Vec<&String> = clients
        .rows
        .iter()
        .filter(|r| r["database"] == "app")
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids.len(), 1, "{:?}", clients.rows);
    c.simple_query(&format!("KILL_CLIENT {}", ids[0]))
        .await
        .expect("KILL_CLIENT");
    assert!(
        victim.simple_query("SELECT 1").await.is_err(),
        "killed client still served"
    );
    let err = c
        .simple_query("KILL_CLIENT 12345")
        .await
        .expect_err("no such client");
    assert!(describe(&err).contains("client not found"));
}

/// Parses Prometheus text: every sample line is `name{labels} value` with a float value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name_ok = key.split('{').next().is_some_and(|n| {
            !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        assert!(name_ok, "bad metric name in {line}");
        assert!(
            !key.contains('{') || key.ends_with('}'),
            "bad labels in {line}"
        );
        samples.insert(key.to_owned(), value);
    }
    samples
}

async fn get_metrics(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_metrics_parse_and_match_show_stats() {
    let mport = free_port();
    let extra = format!("stats_listen = \"127.0.0.1:{mport}\"\nstats_period = 1");
    let p = Pgring::start(&config_for("transaction", 4, 2, &extra));
    let c = console(&p, "postgres").await;
    let clients = futures::future::join_all((0..3).map(|_| app(&p))).await;
    for i in 0..30 {
        clients[i % 3]
            .simple_query("SELECT 1")
            .await
            .expect("SELECT");
    }
    let samples = parse_metrics(&get_metrics(mport).await);
    assert!(samples["pgring_spin_seconds_total"] >= 0.0);
    let spun: f64 = show(&c, "SHOW STATE").await.row("key", "spin_seconds")["value"]
        .parse()
        .expect("spin_seconds is a number");
    // SHOW STATE rounds to milliseconds (it can read 0.0005 s under the earlier scrape).
    assert!(spun + 0.0005 >= samples["pgring_spin_seconds_total"]);
    // Each shard's CPU time and time waiting for a CPU, in both places.
    let state = show(&c, "SHOW STATE").await;
    for shard in 0..2 {
        let labels = format!("{{shard=\"{shard}\"}}");
        let cpu = samples[&format!("pgring_shard_cpu_seconds_total{labels}")];
        let wait = samples[&format!("pgring_shard_cpu_wait_seconds_total{labels}")];
        assert!(
            cpu > 0.0 && wait >= 0.0,
            "shard {shard}: {cpu} s on a CPU, {wait} s waiting"
        );
        let value = |key: String| -> f64 {
            state.row("key", &key)["value"]
                .parse()
                .unwrap_or_else(|e| panic!("{key}: {e}"))
        };
        assert!(value(format!("shard_{shard}_cpu_seconds")) + 0.0005 >= cpu);
        assert!(value(format!("shard_{shard}_cpu_wait_seconds")) + 0.0005 >= wait);
        // How often it slept (it served 30 queries, with waits between) and was preempted.
        let sleeps = samples[&format!("pgring_shard_sleeps_total{labels}")];
        let preempted = samples[&format!("pgring_shard_preemptions_total{labels}")];
        assert!(sleeps >= 1.0 && preempted >= 0.0, "{sleeps}, {preempted}");
        assert!(value(format!("shard_{shard}_sleeps")) >= sleeps);
        assert!(value(format!("shard_{shard}_preemptions")) >= preempted);
    }
    let stats = show(&c, "SHOW STATS").await;
    let xacts = stats.num("database", "app", "total_xact_count") as f64;
    let labels = "database=\"app\",user=\"postgres\"";
    assert_eq!(
        samples[&format!("pgring_xact_duration_seconds_count{{{labels}}}")],
        xacts
    );
    assert_eq!(
        samples[&format!("pgring_xact_duration_seconds_bucket{{{labels},le=\"+Inf\"}}")],
        xacts
    );
    assert_eq!(
        samples[&format!("pgring_query_duration_seconds_count{{{labels}}}")],
        stats.num("database", "app", "total_query_count") as f64
    );
    assert_eq!(
        samples[&format!("pgbouncer_pools_client_active_connections{{{labels}}}")],
        3.0
    );
    assert_eq!(
        samples["pgbouncer_stats_sql_transactions_pooled_total{database=\"app\"}"],
        xacts
    );
    let mut last = 0.0;
    for le in ["0.0001", "0.001", "0.01", "0.1", "1", "10", "+Inf"] {
        let n = samples[&format!("pgring_xact_duration_seconds_bucket{{{labels},le=\"{le}\"}}")];
        assert!(n >= last, "buckets not cumulative at {le}");
        last = n;
    }
    // stats_period = 1: the stats line appears in the log.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.log().contains("xacts/s") {
        assert!(
            Instant::now() < deadline,
            "no stats line in the log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains("stats: "))
        .expect("stats line");
    for part in [
        "queries/s",
        "client parses/s",
        "server parses/s",
        "binds/s",
        "B/s, out",
        "us, query",
        "us, wait",
    ] {
        assert!(line.contains(part), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sighup_reloads_every_shard() {
    let p = Pgring::start(&config_for("transaction", 3, 2, ""));
    let c = console(&p, "postgres").await;
    rewrite_config(&p, "default_pool_size = 3", "default_pool_size = 6");
    let port_line = format!("listen_port = {}", p.port);
    rewrite_config(&p, &port_line, "listen_port = 1");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let dbs = show(&c, "SHOW DATABASES").await;
        if dbs.num("name", "app", "pool_size") == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // listen_port needs a restart: kept, and the log says so.
    let config = show(&c, "SHOW CONFIG").await;
    assert_eq!(
        config.row("key", "listen_port")["value"],
        p.port.to_string()
    );
    assert!(
        p.log().contains("listen_port needs a restart"),
        "{}",
        p.log()
    );
}

/// `server_fast_close` (session mode): after RECONNECT, a client whose server must close is
/// ended as soon as no request of its is on the server, with FATAL 57P01 "database
/// configuration changed", and its backend goes; a client whose query is running gets its
/// answer first. Without the setting, RECONNECT leaves a session-mode client its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fast_close_ends_ready_session_clients_at_reconnect() {
    use crate::common::wire::{ErrorFields, Wire};
    let login = [("user", "trust_user"), ("database", "app")];
    for fast in [true, false] {
        let extra = if fast { "server_fast_close = 1" } else { "" };
        let p = Pgring::start(&config_for("session", 2, 2, extra));
        let (mut idle, _) = Wire::login(p.port, &login).await;
        let pid = idle
            .query_value("SELECT pg_backend_pid()")
            .await
            .expect("pid");
        let (mut running, _) = Wire::login(p.port, &login).await;
        running
            .send(&crate::common::wire::query("SELECT pg_sleep(1.5), 'done'"))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = console(&p, "postgres").await;
        c.simple_query("RECONNECT app").await.expect("RECONNECT");
        if !fast {
            let again = idle.query_value("SELECT pg_backend_pid()").await;
            assert_eq!(again.as_deref(), Some(pid.as_str()), "kept its server");
            let rows = running.read_result().await.expect("the sleeper's answer");
            assert_eq!(rows[0][1].as_deref(), Some("done"));
            continue;
        }
        let msg = tokio::time::timeout(Duration::from_secs(2), idle.recv())
            .await
            .expect("the ready client was not ended within 2 s")
            .expect("an ErrorResponse before the close");
        assert_eq!(msg.tag, b'E');
        let e = ErrorFields::parse(&msg.body);
        assert_eq!(
            (e.severity(), e.code(), e.message()),
            ("FATAL", "57P01", "database configuration changed")
        );
        // The running query is answered, then its client is ended too (within a janitor
        // second).
        let rows = running.read_result().await.expect("the sleeper's answer");
        assert_eq!(rows[0][1].as_deref(), Some("done"));
        let ended = tokio::time::timeout(Duration::from_secs(3), running.recv()).await;
        let msg = ended.expect("the sleeper was not ended after its query");
        assert_eq!(msg.map(|m| m.tag), Some(b'E'));
        // Its backend is gone.
        let admin = crate::common::pg().admin("postgres").await;
        let started = std::time::Instant::now();
        loop {
            let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
            let n: i64 = admin.query_one(&sql, &[]).await.expect("count").get(0);
            if n == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "backend {pid} still there"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
