//! The pool engine (issue 3) against a real PostgreSQL: global limits across shards, handoff
//! between shards, the reserve pool, every timeout, server lifecycle, fail-fast, recovery after a
//! PostgreSQL restart or a killed backend, client caps and statement mode.
//!
//! Each test logs in as a user of its own (`fresh_user`), so the server connections it counts in
//! pg_stat_activity are its own. Tests that must place a client on a given shard choose the
//! client's source port: the kernel picks the SO_REUSEPORT listener by a hash of the 4-tuple, so a
//! source port that once landed on shard N lands there again (see [`local_port_on_shard`]); the
//! shard is read back from the cancel key, whose low byte is the shard index.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::common::cluster::{pg_bin, pg_cluster_script, run, spawn_watchdog};
use crate::common::wire::{self, ErrorFields, Wire, ERROR_RESPONSE};
use crate::common::{
    self, client_config, config_for, database_section, database_section_on, describe, pg, sqlstate,
    value, BackendWatch, Pgring, CONNECT_TIMEOUT,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Seconds since `t`, for messages.
fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Connects from 127.0.0.1:`local` to 127.0.0.1:`port`. SO_REUSEADDR so that a port whose last
/// connection was reset can be bound again at once.
async fn connect_from(local: u16, port: u16) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_reuseaddr(true).expect("SO_REUSEADDR");
    sock.bind(([127, 0, 0, 1], local).into())
        .unwrap_or_else(|e| panic!("binding local port {local}: {e}"));
    tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(([127, 0, 0, 1], port).into()))
        .await
        .unwrap_or_else(|_| panic!("connect from {local} to {port} hung"))
        .unwrap_or_else(|e| panic!("connect from {local} to {port}: {e}"))
}

/// The shard that owns a client, from the cancel key pgring gave it.
fn shard_of(login: &wire::Login) -> u32 {
    login.key.expect("BackendKeyData at login").0 & 0xff
}

/// A local port whose connections to pgring on `port` land on `shard`. Probed with a
/// `trust_user` login (another pool than the test's), then reset (RST) so that neither side keeps
/// the 4-tuple in TIME_WAIT and the next connection from this port is the same 4-tuple again.
async fn local_port_on_shard(port: u16, shard: u32) -> u16 {
    for _ in 0..64 {
        let local = common::free_port();
        let mut probe = Wire::from_stream(connect_from(local, port).await);
        probe
            .send(&wire::startup(&[
                ("user", "trust_user"),
                ("database", "app"),
            ]))
            .await;
        let login = probe
            .finish_login()
            .await
            .unwrap_or_else(|e| panic!("probe login refused: {e}"));
        let landed = shard_of(&login);
        probe.abort();
        if landed == shard {
            return local;
        }
    }
    panic!("64 source ports and none landed on shard {shard}");
}

/// A raw client of `user`@`db` logged in on `shard`.
async fn wire_on_shard(port: u16, shard: u32, db: &str, user: &str) -> Wire {
    let local = local_port_on_shard(port, shard).await;
    let mut client = Wire::from_stream(connect_from(local, port).await);
    client
        .send(&wire::startup(&[("user", user), ("database", db)]))
        .await;
    let login = client
        .finish_login()
        .await
        .unwrap_or_else(|e| panic!("login of {user}@{db} on shard {shard} refused: {e}"));
    assert_eq!(
        shard_of(&login),
        shard,
        "the same source port landed on another shard: the shard-placement trick does not hold"
    );
    client
}

/// A tokio-postgres client of `user`@`db` logged in on `shard`; the error if refused.
async fn try_connect_on_shard(
    port: u16,
    shard: u32,
    db: &str,
    user: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let local = local_port_on_shard(port, shard).await;
    let stream = connect_from(local, port).await;
    let config = client_config(port, db, user, "");
    let (client, connection) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        config.connect_raw(stream, tokio_postgres::NoTls),
    )
    .await
    .unwrap_or_else(|_| panic!("login of {user}@{db} on shard {shard} hung"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// How many client backends `user` has now.
async fn backends(admin: &tokio_postgres::Client, user: &str) -> i64 {
    pg().backends_of(admin, user).await
}

/// Polls `user`'s backend count until `pred` holds or `within` passes; the last count and when.
async fn wait_backends(
    admin: &tokio_postgres::Client,
    user: &str,
    within: Duration,
    pred: impl Fn(i64) -> bool,
) -> (i64, Duration) {
    let started = Instant::now();
    loop {
        let n = backends(admin, user).await;
        if pred(n) || started.elapsed() > within {
            return (n, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Backends of `user` in state `idle in transaction` (a leaked transaction).
async fn idle_in_transaction(admin: &tokio_postgres::Client, user: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = $1 AND state LIKE 'idle in transaction%'",
            &[&user],
        )
        .await
        .expect("counting idle in transaction")
        .get(0)
}

/// Is a backend with this pid still there?
async fn backend_exists(admin: &tokio_postgres::Client, pid: i32) -> bool {
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("looking up a backend pid")
        .get(0);
    n > 0
}

/// Terminates backend `pid` and waits until PostgreSQL has removed it.
async fn terminate_and_wait(admin: &tokio_postgres::Client, pid: i32) {
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("pg_terminate_backend")
        .get(0);
    assert!(killed, "pg_terminate_backend({pid}) found no backend");
    let started = Instant::now();
    while backend_exists(admin, pid).await {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "backend {pid} still there 5 s after pg_terminate_backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `SELECT pg_backend_pid()` through a driver.
async fn pid_of(client: &tokio_postgres::Client) -> i32 {
    value(client, "SELECT pg_backend_pid()")
        .await
        .expect("pid")
        .parse()
        .expect("pid is a number")
}

/// Reads until the connection closes; the first ErrorResponse seen on the way, if any.
async fn error_then_close(client: &mut Wire) -> Option<ErrorFields> {
    let mut error = None;
    while let Some(msg) = client.recv().await {
        if msg.tag == ERROR_RESPONSE && error.is_none() {
            error = Some(ErrorFields::parse(&msg.body));
        }
    }
    error
}

/// Watches the backends of several users at once (sum), like [`BackendWatch`] for one.
struct UsersWatch {
    max: Arc<AtomicI64>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl UsersWatch {
    async fn start(users: &[String]) -> UsersWatch {
        let admin = pg().admin("postgres").await;
        let max = Arc::new(AtomicI64::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (users, seen) = (users.to_vec(), max.clone());
        let task = tokio::spawn(async move {
            while stopped.try_recv().is_err() {
                let n: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE usename = ANY($1) AND backend_type = 'client backend'",
                        &[&users],
                    )
                    .await
                    .expect("counting backends")
                    .get(0);
                seen.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        UsersWatch { max, stop, task }
    }

    async fn finish(self) -> i64 {
        let _ = self.stop.send(());
        self.task.await.expect("watch task");
        self.max.load(Ordering::Relaxed)
    }
}

/// `n` clients of `user`@`db`, each running `sql` `times` times; every error, described.
async fn run_clients(
    port: u16,
    db: &str,
    user: &str,
    n: usize,
    times: usize,
    sql: &str,
) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|id| {
            let (db, user, sql) = (db.to_owned(), user.to_owned(), sql.to_owned());
            tokio::spawn(async move {
                let client = common::try_connect(port, &db, &user, "")
                    .await
                    .map_err(|e| format!("client {id} connect: {}", describe(&e)))?;
                for i in 0..times {
                    client
                        .simple_query(&sql)
                        .await
                        .map_err(|e| format!("client {id} query {i}: {}", describe(&e)))?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.expect("client task") {
            errors.push(e);
        }
    }
    errors
}

/// A table in `app` that every test role may write.
fn scratch_table(name: &str) {
    pg().psql(
        "app",
        &format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (tag text); \
             GRANT ALL ON {name} TO PUBLIC"
        ),
    )
    .unwrap_or_else(|e| panic!("creating {name}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Global limits across shards
// ---------------------------------------------------------------------------------------------

/// 500 clients over two shards; the most server connections PostgreSQL saw at once.
async fn five_hundred_clients(user: &str, extra_general: &str) -> i64 {
    let pgring = Pgring::start(&config_for("transaction", 10, 2, extra_general));
    let watch = BackendWatch::start(user).await;
    let started = Instant::now();
    let errors = run_clients(pgring.port, "app", user, 500, 4, "SELECT pg_sleep(0.005)").await;
    let max = watch.finish().await;
    println!(
        "500 clients ({extra_general:?}): {} in {}, max servers {max}",
        if errors.is_empty() {
            "all done"
        } else {
            "FAILED"
        },
        secs(started.elapsed())
    );
    assert!(
        errors.is_empty(),
        "{} of 500 clients failed, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_holds_across_two_shards_with_500_clients() {
    let _heavy = common::heavy().await;
    let user = pg().fresh_user("pool500");
    let max = five_hundred_clients(&user, "reserve_pool_size = 0").await;
    assert!(
        max <= 10,
        "pool_size 10 over 2 workers, but PostgreSQL saw {max} servers"
    );
    assert!(
        max >= 5,
        "500 clients used only {max} servers: the watch missed the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_plus_reserve_holds_across_two_shards_with_500_clients() {
    let _heavy = common::heavy().await;
    let user = pg().fresh_user("pool500r");
    // Waits are ~0.3 s each (500 clients x 5 ms / 10 servers), so the reserve opens.
    let extra = "reserve_pool_size = 3\nreserve_pool_timeout = 0.1";
    let max = five_hundred_clients(&user, extra).await;
    assert!(
        max <= 13,
        "pool_size 10 + reserve 3, but PostgreSQL saw {max} servers"
    );
    assert!(
        max >= 11,
        "clients waited past reserve_pool_timeout yet the reserve never opened (max {max})"
    );
}

// ---------------------------------------------------------------------------------------------
// Handoff between shards
// ---------------------------------------------------------------------------------------------

/// Each client runs `sql` (one row, one value) at the same time; (value, time) per client.
async fn concurrently(
    clients: Vec<Wire>,
    sql: &str,
) -> (Vec<Wire>, Vec<(Result<String, String>, Duration)>) {
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let sql = sql.to_owned();
            tokio::spawn(async move {
                let r = c.simple_query(&sql).await;
                let took = started.elapsed();
                let r = match r {
                    Ok(rows) => Ok(rows
                        .first()
                        .and_then(|row| row.first().cloned().flatten())
                        .unwrap_or_default()),
                    Err(e) => Err(e.to_string()),
                };
                (c, r, took)
            })
        })
        .collect();
    let (mut clients, mut results) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, r, took) = t.await.expect("client task");
        clients.push(c);
        results.push((r, took));
    }
    (clients, results)
}

const HOLD_PID: &str = "SELECT pg_backend_pid() FROM pg_sleep(0.3)";

/// Two servers, both idle on shard `from`; two clients on shard `to` need them at once. Without
/// handoff the clients on `to` find no idle server and no budget, and wait out
/// query_wait_timeout (5 s): they must finish in well under that, on the same two servers.
async fn servers_move(to: Vec<Wire>, to_shard: u32, pids: &HashSet<String>) -> Vec<Wire> {
    let (to, results) = concurrently(to, HOLD_PID).await;
    for (r, took) in &results {
        let pid = r.as_ref().unwrap_or_else(|e| {
            panic!("a client on shard {to_shard} failed while the idle servers were on the other shard: {e}")
        });
        assert!(
            *took < Duration::from_millis(1500),
            "a client on shard {to_shard} waited {} for a server idle on the other shard",
            secs(*took)
        );
        assert!(
            pids.contains(pid),
            "shard {to_shard} used server {pid}, not one of {pids:?}"
        );
    }
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_gives_clients_the_servers_idle_on_the_other_shard() {
    let user = pg().fresh_user("handoff");
    let extra = "min_pool_size = 0\nreserve_pool_size = 0\nquery_wait_timeout = 5";
    let pgring = Pgring::start(&config_for("transaction", 2, 2, extra));
    let watch = BackendWatch::start(&user).await;
    let mut on0 = Vec::new();
    let mut on1 = Vec::new();
    for _ in 0..2 {
        on0.push(wire_on_shard(pgring.port, 0, "app", &user).await);
        on1.push(wire_on_shard(pgring.port, 1, "app", &user).await);
    }
    // Setup: both shard-0 clients hold a server at once, so both servers end up idle on shard 0.
    let (on0, results) = concurrently(on0, HOLD_PID).await;
    let pids: HashSet<String> = results
        .iter()
        .map(|(r, _)| {
            r.clone()
                .unwrap_or_else(|e| panic!("setup on shard 0: {e}"))
        })
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "setup: two clients at once must hold two servers"
    );
    // Idle on shard 0 -> needed on shard 1 -> back to shard 0 -> shard 1 again.
    let on1 = servers_move(on1, 1, &pids).await;
    let on0 = servers_move(on0, 0, &pids).await;
    let on1 = servers_move(on1, 1, &pids).await;
    // Release path: both servers busy on shard 1; a shard-0 client waiting meanwhile must get one
    // as soon as it is released (not after query_wait_timeout).
    let busy = tokio::spawn(concurrently(
        on1,
        "SELECT pg_backend_pid() FROM pg_sleep(0.6)",
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_on0, results) =
        concurrently(on0.into_iter().take(1).collect(), "SELECT pg_backend_pid()").await;
    let (r, took) = &results[0];
    assert!(r.is_ok(), "the waiting shard-0 client failed: {r:?}");
    assert!(
        *took < Duration::from_millis(1500),
        "a shard-0 client waited {} for a server released on shard 1 (released after ~0.4 s)",
        secs(*took)
    );
    let (_, busy) = busy.await.expect("busy clients");
    assert!(busy.iter().all(|(r, _)| r.is_ok()), "{busy:?}");
    let max = watch.finish().await;
    assert!(max <= 2, "pool_size 2, but PostgreSQL saw {max} servers");
}

// ---------------------------------------------------------------------------------------------
// Waiting: reserve pool, query_wait_timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_opens_only_after_reserve_pool_timeout() {
    let user = pg().fresh_user("reserve");
    let extra = "reserve_pool_size = 2\nreserve_pool_timeout = 1.0";
    let pgring = Pgring::start(&config_for("transaction", 2, 2, extra));
    let admin = pg().admin("postgres").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = common::connect(pgring.port, "app", &user, "").await;
        value(&c, "SELECT 1").await;
        clients.push(Arc::new(c));
    }
    let sleepers: Vec<_> = clients[..2]
        .iter()
        .map(|c| {
            let c = c.clone();
            tokio::spawn(async move { c.simple_query("SELECT pg_sleep(3)").await.map(drop) })
        })
        .collect();
    let (n, _) = wait_backends(&admin, &user, Duration::from_secs(2), |n| n == 2).await;
    assert_eq!(n, 2, "two sleepers should hold the two pool servers");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = clients[2].clone();
    let asked = Instant::now();
    let waiting = tokio::spawn(async move {
        third
            .simple_query("SELECT pg_backend_pid()")
            .await
            .map(drop)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !waiting.is_finished(),
        "the third client got a server {} after asking, before reserve_pool_timeout (1 s)",
        secs(asked.elapsed())
    );
    assert_eq!(
        backends(&admin, &user).await,
        2,
        "a server opened before reserve_pool_timeout"
    );
    let result = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the third client still waits 3.8 s after asking: the reserve pool never opened")
        .expect("task");
    let took = asked.elapsed();
    if let Err(e) = result {
        panic!(
            "the third client failed after {}: {}",
            secs(took),
            describe(&e)
        );
    }
    assert!(
        took < Duration::from_millis(2000),
        "the reserve pool opened {} after the client started waiting (reserve_pool_timeout 1 s)",
        secs(took)
    );
    assert_eq!(
        backends(&admin, &user).await,
        3,
        "pool 2 + one reserve server"
    );
    for s in sleepers {
        s.await.expect("sleeper").expect("pg_sleep(3)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_fails_a_waiting_client_with_pgbouncers_error() {
    let user = pg().fresh_user("qwait");
    let extra = "reserve_pool_size = 0\nquery_wait_timeout = 1";
    let pgring = Pgring::start(&config_for("transaction", 1, 2, extra));
    let holder = common::connect(pgring.port, "app", &user, "").await;
    let waiter = common::connect(pgring.port, "app", &user, "").await;
    value(&holder, "SELECT 1").await;
    value(&waiter, "SELECT 1").await;
    let holding =
        tokio::spawn(async move { holder.simple_query("SELECT pg_sleep(3)").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let error = waiter
        .simple_query("SELECT 1")
        .await
        .expect_err("a client got the only server while it was busy");
    let took = asked.elapsed();
    assert_eq!(sqlstate(&error), "08P01", "{}", describe(&error));
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.message(), "query_wait_timeout");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "query_wait_timeout 1 s, but the error came after {}",
        secs(took)
    );
    holding
        .await
        .expect("holder")
        .expect("the holder's pg_sleep(3)");
}

// ---------------------------------------------------------------------------------------------
// Client timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_query_and_the_pool_stays_usable() {
    let user = pg().fresh_user("qtimeout");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "query_timeout = 1"));
    let admin = pg().admin("postgres").await;
    let slow = common::connect(pgring.port, "app", &user, "").await;
    let next = common::connect(pgring.port, "app", &user, "").await;
    let asked = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(5),
        slow.simple_query("SELECT pg_sleep(10)"),
    )
    .await
    .expect("pg_sleep(10) still running 5 s into a query_timeout of 1 s")
    .expect_err("pg_sleep(10) finished despite query_timeout 1");
    let took = asked.elapsed();
    println!("query_timeout: {} after {}", describe(&error), secs(took));
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "query_timeout 1 s, but the error came after {}",
        secs(took)
    );
    if let Some(db) = error.as_db_error() {
        assert!(
            db.message().contains("query timeout"),
            "{}",
            describe(&error)
        );
    }
    // The backend must not go on sleeping for 9 more seconds.
    let started = Instant::now();
    loop {
        let sleeping: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 \
                 AND state = 'active' AND query LIKE '%pg_sleep(10)%'",
                &[&user],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if sleeping == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the timed-out pg_sleep(10) still runs on PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value(&next, "SELECT 'next'").await.as_deref(), Some("next"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_closes_the_client_and_rolls_the_server_back() {
    let user = pg().fresh_user("idletx");
    scratch_table("t_pool_idle_tx");
    let pgring = Pgring::start(&config_for(
        "transaction",
        1,
        2,
        "idle_transaction_timeout = 1",
    ));
    let admin = pg().admin("postgres").await;
    let next = common::connect(pgring.port, "app", &user, "").await;
    value(&next, "SELECT 1").await;
    let (mut idler, _) = Wire::login(pgring.port, &[("user", &user), ("database", "app")]).await;
    idler.simple_query("BEGIN").await.expect("BEGIN");
    idler
        .simple_query("INSERT INTO t_pool_idle_tx VALUES ('leaked?')")
        .await
        .expect("INSERT");
    let pid = idler
        .query_value("SELECT pg_backend_pid()")
        .await
        .expect("pid");
    let idle_since = Instant::now();
    let error = error_then_close(&mut idler).await;
    let took = idle_since.elapsed();
    let error = error.expect("the idle-in-transaction client was closed without an error");
    assert!(
        error.message().contains("idle transaction timeout"),
        "{error}"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "idle_transaction_timeout 1 s, but the client was closed after {}",
        secs(took)
    );
    assert_eq!(
        value(&next, "SELECT count(*) FROM t_pool_idle_tx")
            .await
            .as_deref(),
        Some("0"),
        "the abandoned transaction was committed"
    );
    assert_eq!(
        value(&next, "SELECT pg_backend_pid()").await,
        Some(pid),
        "the rolled-back server should be reused (pool_size 1)"
    );
    assert_eq!(idle_in_transaction(&admin, &user).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_timeout_ends_a_long_transaction() {
    let user = pg().fresh_user("txtimeout");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "transaction_timeout = 1"));
    let admin = pg().admin("postgres").await;
    let next = common::connect(pgring.port, "app", &user, "").await;
    value(&next, "SELECT 1").await;
    let (mut busy, _) = Wire::login(pgring.port, &[("user", &user), ("database", "app")]).await;
    let began = Instant::now();
    busy.simple_query("BEGIN").await.expect("BEGIN");
    // Never idle for long: only the transaction's age can end it.
    busy.send(&wire::query("SELECT pg_sleep(0.2)")).await;
    let mut error = None;
    while let Some(msg) = busy.recv().await {
        match msg.tag {
            ERROR_RESPONSE => error = Some(ErrorFields::parse(&msg.body)),
            wire::READY_FOR_QUERY if error.is_none() => {
                assert!(
                    began.elapsed() < Duration::from_secs(4),
                    "transaction still running after 4 s with transaction_timeout 1"
                );
                busy.send_lossy(&wire::query("SELECT pg_sleep(0.2)")).await;
            }
            _ => {}
        }
    }
    let took = began.elapsed();
    let error = error.expect("closed without an error");
    assert!(error.message().contains("transaction timeout"), "{error}");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "transaction_timeout 1 s, but the client was closed after {}",
        secs(took)
    );
    assert_eq!(value(&next, "SELECT 'next'").await.as_deref(), Some("next"));
    assert_eq!(idle_in_transaction(&admin, &user).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_closes_idle_clients_only() {
    let user = pg().fresh_user("clidle");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "client_idle_timeout = 1"));
    let params = [("user", user.as_str()), ("database", "app")];
    let (mut idle, _) = Wire::login(pgring.port, &params).await;
    let (mut chatty, _) = Wire::login(pgring.port, &params).await;
    idle.query_value("SELECT 1").await;
    let since = Instant::now();
    let idle_closed =
        tokio::spawn(async move { (error_then_close(&mut idle).await, since.elapsed()) });
    // A client that speaks every 0.3 s is never idle for 1 s.
    for _ in 0..6 {
        chatty.query_value("SELECT 1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    chatty.query_value("SELECT 'still here'").await;
    let (error, took) = idle_closed.await.expect("idle client task");
    let error = error.expect("the idle client was closed without an error");
    assert!(error.message().contains("client_idle_timeout"), "{error}");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "client_idle_timeout 1 s, but the client was closed after {}",
        secs(took)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_login_timeout_closes_a_silent_connection() {
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "client_login_timeout = 1"));
    let mut silent = TcpStream::connect(("127.0.0.1", pgring.port))
        .await
        .expect("connect");
    let since = Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;
    let took = since.elapsed();
    assert!(
        read.is_ok(),
        "a client that sent nothing is still connected after 5 s"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "client_login_timeout 1 s, but the connection closed after {}",
        secs(took)
    );
}

// ---------------------------------------------------------------------------------------------
// Server lifecycle
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_servers() {
    let user = pg().fresh_user("svidle");
    let extra = "server_idle_timeout = 1\nmin_pool_size = 0";
    let pgring = Pgring::start(&config_for("transaction", 3, 2, extra));
    let admin = pg().admin("postgres").await;
    let errors = run_clients(pgring.port, "app", &user, 3, 1, "SELECT pg_sleep(0.3)").await;
    assert!(errors.is_empty(), "{errors:?}");
    let idle_from = Instant::now();
    assert_eq!(
        backends(&admin, &user).await,
        3,
        "three clients at once: three servers"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        backends(&admin, &user).await,
        3,
        "servers closed before server_idle_timeout"
    );
    let (n, _) = wait_backends(&admin, &user, Duration::from_secs(3), |n| n == 0).await;
    assert_eq!(
        n,
        0,
        "{} after the servers went idle, {n} of them are still open (server_idle_timeout 1 s)",
        secs(idle_from.elapsed())
    );
    let client = common::connect(pgring.port, "app", &user, "").await;
    assert_eq!(
        value(&client, "SELECT 'again'").await.as_deref(),
        Some("again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_retires_a_server_at_release_not_mid_transaction() {
    let user = pg().fresh_user("lifetime");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "server_lifetime = 1"));
    let admin = pg().admin("postgres").await;
    let client = common::connect(pgring.port, "app", &user, "").await;
    let first = pid_of(&client).await;
    client.simple_query("BEGIN").await.expect("BEGIN");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pid_of(&client).await,
        first,
        "the server was replaced inside a transaction"
    );
    client
        .simple_query("COMMIT")
        .await
        .expect("COMMIT past the lifetime");
    let second = pid_of(&client).await;
    assert_ne!(
        second, first,
        "server_lifetime 1 s, but the same server serves after 1.5 s"
    );
    assert!(
        !backend_exists(&admin, first).await,
        "the retired server {first} is still connected"
    );
    assert_eq!(pid_of(&client).await, second, "a young server is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_keeps_servers_open_with_no_clients_whatever_the_shard() {
    let user = pg().fresh_user("minpool");
    let extra = "min_pool_size = 3\nserver_idle_timeout = 1";
    let pgring = Pgring::start(&config_for("transaction", 5, 2, extra));
    let admin = pg().admin("postgres").await;
    // The pool's only client ever lands on shard 1, so shard 0 never saw this pool: the warm set
    // must not depend on which shard clients happen to use.
    let mut client = wire_on_shard(pgring.port, 1, "app", &user).await;
    client.query_value("SELECT 1").await;
    client.send(&wire::terminate()).await;
    drop(client);
    let (n, took) = wait_backends(&admin, &user, Duration::from_secs(3), |n| n >= 3).await;
    assert_eq!(
        n,
        3,
        "min_pool_size 3: {n} servers {} after the only client left",
        secs(took)
    );
    // Past server_idle_timeout: idle, but not below min_pool_size.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        backends(&admin, &user).await,
        3,
        "server_idle_timeout went below min_pool_size"
    );
}

// ---------------------------------------------------------------------------------------------
// Unreachable PostgreSQL: fail fast
// ---------------------------------------------------------------------------------------------

/// Logs into database `down` on `shard`; the error and how long it took.
async fn down_login(port: u16, shard: u32) -> (tokio_postgres::Error, Duration) {
    let started = Instant::now();
    // Placement is probed first (on `app`), so time only the login itself.
    let local = local_port_on_shard(port, shard).await;
    let stream = connect_from(local, port).await;
    let asked = Instant::now();
    let login =
        client_config(port, "down", "trust_user", "").connect_raw(stream, tokio_postgres::NoTls);
    let result = tokio::time::timeout(Duration::from_secs(15), login)
        .await
        .unwrap_or_else(|_| panic!("login to a dead database hung for 15 s"));
    let _ = started;
    match result {
        Ok(_) => panic!("logged into a database whose server never answers"),
        Err(e) => (e, asked.elapsed()),
    }
}

/// A server that accepts TCP and never answers: each connect costs server_connect_timeout (2 s).
/// After one failure, within server_login_retry, clients on either shard must be refused at once,
/// and a client waiting while the failing connect ran must get the error with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_retry_fails_clients_fast_on_every_shard_while_the_server_is_down() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind silent server");
    let silent_port = silent.local_addr().expect("addr").port();
    let extra = "server_connect_timeout = 2\nserver_login_retry = 10\nquery_wait_timeout = 30";
    let mut toml = config_for("transaction", 1, 2, extra);
    toml.push_str(&database_section_on("down", silent_port, "app", ""));
    let pgring = Pgring::start(&toml);
    let port = pgring.port;
    let first = tokio::spawn(down_login(port, 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn(down_login(port, 1));
    let (e1, t1) = first.await.expect("first");
    let (e2, t2) = waiting.await.expect("waiting");
    println!(
        "first: {} after {}; waiting: {} after {}",
        describe(&e1),
        secs(t1),
        describe(&e2),
        secs(t2)
    );
    assert!(sqlstate(&e1).starts_with("08"), "first: {}", describe(&e1));
    assert!(
        sqlstate(&e2).starts_with("08"),
        "waiting: {}",
        describe(&e2)
    );
    assert!(
        t2 < Duration::from_millis(2800),
        "a client waiting (on the other shard) while the first connect failed got its error after \
         {}: it waited for a connect attempt of its own or for query_wait_timeout",
        secs(t2)
    );
    for shard in [0, 1] {
        let (e, took) = down_login(port, shard).await;
        assert!(
            sqlstate(&e).starts_with("08"),
            "shard {shard}: {}",
            describe(&e)
        );
        assert!(
            took < Duration::from_millis(500),
            "within server_login_retry, a new client on shard {shard} waited {} (connect timeout is 2 s)",
            secs(took)
        );
    }
    drop(silent);
}

// ---------------------------------------------------------------------------------------------
// Failures: a killed backend, a PostgreSQL restart
// ---------------------------------------------------------------------------------------------
