//! The pool engine (issue 3) against a real PostgreSQL: global limits across shards, handoff
//! between shards, the reserve pool, every timeout, server lifecycle, fail-fast, recovery after a
//! PostgreSQL restart or a killed backend, client caps and statement mode, and servers reached
//! over PostgreSQL's unix socket.
//!
//! Each test logs in as a user of its own (`fresh_user`), so the server connections it counts in
//! pg_stat_activity are its own. Tests that must place a client on a given shard choose the
//! client's source port: the kernel picks the SO_REUSEPORT listener by a hash of the 4-tuple, so a
//! source port that once landed on shard N lands there again (see [`local_port_on_shard`]); the
//! shard is read back from the cancel key, whose low byte is the shard index.
//!
//! This file holds what the suites share; the tests are in `pool/`, one file per theme.

mod failures;
mod handoff;
mod lifecycle;
mod limits;
mod moving;
mod timeouts;
mod unix_server;
mod waiting;

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

/// A duration in seconds, for messages.
fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Awaits `fut`, failing the test (instead of hanging it) after `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {}", secs(limit)))
}

/// Connects from 127.0.0.1:`local` to 127.0.0.1:`port`. SO_REUSEADDR so that a port whose last
/// connection was reset can be bound again at once.
async fn connect_from(local: u16, port: u16) -> TcpStream {
    try_connect_from(local, port)
        .await
        .unwrap_or_else(|e| panic!("connect from {local} to {port}: {e}"))
}

async fn try_connect_from(local: u16, port: u16) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_reuseaddr(true).expect("SO_REUSEADDR");
    sock.bind(([127, 0, 0, 1], local).into())
        .unwrap_or_else(|e| panic!("binding local port {local}: {e}"));
    tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(([127, 0, 0, 1], port).into()))
        .await
        .unwrap_or_else(|_| panic!("connect from {local} to {port} hung"))
}

/// A connection to pgring on `port` that lands on `shard`. The probed source port is
/// occasionally still taken when tests run in parallel (EADDRNOTAVAIL): probe another.
async fn connect_on_shard(port: u16, shard: u32) -> TcpStream {
    for _ in 0..5 {
        let local = local_port_on_shard(port, shard).await;
        match try_connect_from(local, port).await {
            Ok(s) => return s,
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => continue,
            Err(e) => panic!("connect from {local} to {port}: {e}"),
        }
    }
    panic!("five probed source ports for shard {shard} were all taken again")
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
    let mut client = Wire::from_stream(connect_on_shard(port, shard).await);
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
            let mut sustained = crate::common::Sustained::default();
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
                seen.fetch_max(sustained.next(n), Ordering::Relaxed);
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

/// How long a query of [`run_clients`] may take before it counts as hung.
const QUERY_LIMIT: Duration = Duration::from_secs(20);

/// `n` clients of `user`@`db`, each running `sql` `times` times; every error, described.
pub(crate) async fn run_clients(
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
                    let query = tokio::time::timeout(QUERY_LIMIT, client.simple_query(&sql));
                    query
                        .await
                        .map_err(|_| {
                            format!("client {id} query {i}: no answer in {QUERY_LIMIT:?}")
                        })?
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
