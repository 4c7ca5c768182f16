//! The test fixture: one throwaway PostgreSQL per run, a pgring process per test, drivers.
//!
//! - [`pg`]: the shared PostgreSQL 15 cluster (see `cluster`).
//! - [`Pgring`]: a real pgring binary with a config of the test's own (see `pgring`).
//! - [`connect`] and friends: tokio-postgres clients, their connection task already spawned.
//! - [`wire`]: raw protocol bytes.
#![allow(dead_code)] // each test file uses its own part of the fixture

pub mod cluster;
pub mod pgring;
pub mod wire;

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use cluster::pg;
pub use pgring::{config_for, database_section, database_section_on, default_userlist, Pgring};

/// How long a driver may take to connect before the test fails as a hang.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A TCP port on 127.0.0.1 that nothing listens on now and that no other test of this run was
/// given. Ports come from below Linux's ephemeral range (32768+), so the many outgoing
/// connections of the load tests cannot take them between this call and the bind.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut given = GIVEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let start = 20_000 + (std::process::id() % 1000) as u16 * 12;
    let port = (0..12_000)
        .map(|i| 20_000 + (start - 20_000 + i) % 12_000)
        .find(|port| !given.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("no free TCP port in 20000..32000");
    given.insert(port);
    port
}

/// Serialises the tests that load both cores (or measure latency), so that one does not starve
/// the other's timing on this two-core machine. Each test has its own runtime; tokio's Mutex
/// needs none, so one static serves them all.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// A tokio-postgres config for 127.0.0.1:port; an empty password means none.
pub fn client_config(port: u16, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).dbname(db).user(user);
    config.connect_timeout(CONNECT_TIMEOUT);
    if !password.is_empty() {
        config.password(password);
    }
    config
}

/// Connects with this config and spawns the connection task.
pub async fn try_connect_with(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let connecting = config.connect(tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .unwrap_or_else(|_| panic!("connect hung for {CONNECT_TIMEOUT:?}: {config:?}"))?;
    tokio::spawn(async move {
        // A connection the driver ends on a protocol error says why (the client only sees
        // "closed").
        if let Err(e) = connection.await {
            println!("tokio-postgres connection ended: {e:?}");
        }
    });
    Ok(client)
}

/// Connects to 127.0.0.1:port (pgring or PostgreSQL); the error if refused.
pub async fn try_connect(
    port: u16,
    db: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    try_connect_with(&client_config(port, db, user, password)).await
}

/// psql (libpq) with no password prompt (`-w`) and `PGSSLMODE=sslmode`: its output, or its
/// error text.
pub fn psql(
    host: &str,
    port: u16,
    db: &str,
    user: &str,
    sslmode: &str,
    sql: &str,
) -> Result<String, String> {
    psql_env(host, port, db, user, &[("PGSSLMODE", sslmode)], sql)
}

/// psql (libpq) with no password prompt and these libpq environment variables (PGSSLMODE,
/// PGSSLCERT...): its output, or its error text.
pub fn psql_env(
    host: &str,
    port: u16,
    db: &str,
    user: &str,
    env: &[(&str, &str)],
    sql: &str,
) -> Result<String, String> {
    let out = std::process::Command::new(pg().bin.join("psql"))
        .args(["-X", "-w", "-At", "-h", host, "-p", &port.to_string()])
        .args(["-U", user, "-d", db, "-c", sql])
        .envs(env.iter().copied())
        .env_remove("PGPASSWORD")
        .output()
        .expect("running psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// tokio-postgres over the unix socket in `dir` (no password).
pub async fn unix_connect(
    dir: &std::path::Path,
    port: u16,
    db: &str,
    user: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config.host_path(dir).port(port).dbname(db).user(user);
    config.connect_timeout(CONNECT_TIMEOUT);
    try_connect_with(&config).await
}

/// pgbench against 127.0.0.1:`port` as `user` with `args` (the database name last), under
/// `timeout` so that a pgbench stuck on a hung pooler fails its test, not the whole run.
pub fn pgbench_blocking(
    port: u16,
    user: &str,
    limit_s: u32,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new("timeout")
        .args(["--kill-after=5", &limit_s.to_string()])
        .arg(pg().bin.join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(args)
        .output()
        .expect("running pgbench")
}

/// [`pgbench_blocking`] off the test's runtime threads, with two minutes to finish.
pub async fn pgbench(port: u16, user: &str, args: &[&str]) -> std::process::Output {
    let (user, args): (String, Vec<String>) = (
        user.to_string(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pgbench_blocking(port, &user, 120, &args)
    })
    .await
    .expect("pgbench task")
}

/// Connects to 127.0.0.1:port (pgring or PostgreSQL); panics if refused.
pub async fn connect(port: u16, db: &str, user: &str, password: &str) -> tokio_postgres::Client {
    try_connect(port, db, user, password)
        .await
        .unwrap_or_else(|e| panic!("connecting to port {port} as {user}@{db}: {}", describe(&e)))
}

/// The SQLSTATE of a driver error, or "" when it carries none (I/O, closed...).
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// An error with its SQLSTATE and severity, for assertion messages.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("{e:?}"),
    }
}

/// Runs a one-value simple query through a driver and returns the value as text.
pub async fn value(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    let row = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    row.unwrap_or_else(|| panic!("{sql}: no row"))
        .get(0)
        .map(str::to_owned)
}

/// Watches pg_stat_activity for `user`'s backends every few milliseconds until stopped; the most
/// seen at once (pgring must never hold more than its pool size).
/// A backend count as a watch should judge it: the lower of two samples taken ~10 ms apart.
/// A server pgring has closed (sent Terminate, closed the socket) stays in pg_stat_activity
/// until its backend process gets the CPU to exit, which on a loaded 2-core host can outlast the
/// fork and login of the server opened in its place; PgBouncer's close-then-open has the same
/// window. A server pgring really holds beyond a limit stays for its whole life, and is seen.
#[derive(Default)]
pub struct Sustained(i64);

impl Sustained {
    /// The count to record for this sample.
    pub fn next(&mut self, n: i64) -> i64 {
        let judged = n.min(self.0);
        self.0 = n;
        judged
    }
}

pub struct BackendWatch {
    max: Arc<AtomicI64>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl BackendWatch {
    pub async fn start(user: &str) -> BackendWatch {
        let admin = pg().admin("postgres").await;
        let max = Arc::new(AtomicI64::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (user, seen) = (user.to_owned(), max.clone());
        let task = tokio::spawn(async move {
            let mut sustained = Sustained::default();
            while stopped.try_recv().is_err() {
                let n = pg().backends_of(&admin, &user).await;
                seen.fetch_max(sustained.next(n), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        BackendWatch { max, stop, task }
    }

    pub async fn finish(self) -> i64 {
        let _ = self.stop.send(());
        self.task.await.expect("backend watch task");
        self.max.load(Ordering::Relaxed)
    }
}

/// Starts `SELECT pg_sleep(30)` on `client`, cancels it through the driver's CancelToken after
/// 300 ms, and checks that it ends with SQLSTATE 57014 within 5 s and that the connection is
/// usable afterwards. Returns how long the cancel took to end the query. `label` names the
/// case in failure messages.
pub async fn cancel_a_sleep(client: tokio_postgres::Client, label: &str) -> Duration {
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(30)").await.map(drop);
        (result, client)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{label}: sending cancel: {e}"));
    let (result, client) = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .unwrap_or_else(|_| panic!("{label}: pg_sleep(30) still running 5 s after the cancel"))
        .expect("sleeper task");
    let took = asked.elapsed();
    let err = result.expect_err("pg_sleep(30) finished without being cancelled");
    assert_eq!(sqlstate(&err), "57014", "{label}: {}", describe(&err));
    assert_eq!(
        value(&client, "SELECT 1").await.as_deref(),
        Some("1"),
        "{label}: usable after cancel"
    );
    took
}

/// A TCP relay on 127.0.0.1 in front of the fixture's PostgreSQL that holds each CancelRequest
/// for `delay` before passing it on (a slow link, a postmaster busy forking), and relays every
/// other connection as it comes. Returns its port; it lives as long as the test's runtime.
pub async fn slow_cancel_relay(delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CANCEL_REQUEST_CODE: u32 = 80_877_102;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let port = listener.local_addr().expect("relay address").port();
    let upstream = pg().port;
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if inbound.read_exact(&mut head).await.is_err() {
                    return;
                }
                let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                if code == CANCEL_REQUEST_CODE {
                    tokio::time::sleep(delay).await;
                }
                let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                if outbound.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}
