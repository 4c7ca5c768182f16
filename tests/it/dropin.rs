//! Drop-in for PgBouncer (issue 7): pgring started on a pgbouncer.ini, the unix socket, the
//! operator's password-less console over it, the pidfile, PgBouncer's command-line flags, and
//! one pgbouncer.ini driving Debian's PgBouncer and pgring in turn with the same workload.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::pgring::fresh_dir;
use crate::common::{self, describe, free_port, pg, Pgring};

/// Users of the fixture (plain passwords, so the pooler can log into PostgreSQL as them).
const USERLIST: &str = "\"postgres\" \"\"\n\"md5_user\" \"md5pass\"\n";

/// A pgbouncer.ini as an operator writes it: connection strings, comments, comma lists.
fn ini_text(dir: &Path, port: u16, extra: &str) -> String {
    format!(
        "\
;; written by the dropin tests
[databases]
;; session mode: Debian's PgBouncer 1.18 predates prepared statements in transaction mode
app = host=127.0.0.1 port={pg} dbname=app pool_mode=session
bench = host=127.0.0.1 port={pg} pool_size=3 reserve_pool=1

[users]
md5_user = pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {dir}
unix_socket_mode = 0777
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 5
max_client_conn = 200
server_connect_timeout = 5
{extra}
",
        pg = pg().port,
        dir = dir.display(),
    )
}

/// Writes the ini and the userlist into a fresh dir; returns (dir, ini path, port).
fn write_ini(extra: &str) -> (PathBuf, PathBuf, u16) {
    let dir = fresh_dir();
    let port = free_port();
    std::fs::write(dir.join("userlist.txt"), USERLIST).expect("userlist");
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(&ini, ini_text(&dir, port, extra)).expect("pgbouncer.ini");
    (dir, ini, port)
}

fn start(extra: &str) -> Pgring {
    let (dir, ini, port) = write_ini(extra);
    Pgring::start_file(&ini, dir, port)
}

/// psql with no password prompt (`-w`); its output, or its error text.
fn psql(host: &str, port: u16, db: &str, user: &str, sql: &str) -> Result<String, String> {
    common::psql(host, port, db, user, "prefer", sql)
}

fn socket_file(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// The client workload both poolers must pass: extended queries and a transaction on `app`
/// (session mode) over TCP and the unix socket, and a simple query on `bench` (transaction
/// mode, its own pool size).
async fn workload(dir: &Path, port: u16) -> Result<(), String> {
    let tcp = common::try_connect(port, "app", "postgres", "")
        .await
        .map_err(|e| format!("tcp connect: {}", describe(&e)))?;
    let unix = common::unix_connect(dir, port, "app", "postgres")
        .await
        .map_err(|e| format!("unix connect: {}", describe(&e)))?;
    for (name, client) in [("tcp", &tcp), ("unix", &unix)] {
        let row = client
            .query_one("SELECT $1::int + 1", &[&41_i32])
            .await
            .map_err(|e| format!("{name}: extended query: {}", describe(&e)))?;
        let got: i32 = row.get(0);
        if got != 42 {
            return Err(format!("{name}: got {got}, want 42"));
        }
        client
            .batch_execute("BEGIN; CREATE TEMP TABLE t (x int) ON COMMIT DROP; INSERT INTO t VALUES (1); COMMIT")
            .await
            .map_err(|e| format!("{name}: transaction: {}", describe(&e)))?;
    }
    let bench = common::try_connect(port, "bench", "postgres", "")
        .await
        .map_err(|e| format!("bench connect: {}", describe(&e)))?;
    let count = common::value(&bench, "SELECT count(*) FROM pgbench_branches").await;
    if count.as_deref() != Some("1") {
        return Err(format!("bench: pgbench_branches has {count:?} rows"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_ini_serves_over_tcp_and_the_unix_socket() {
    let mut pgring = start("");
    let dir = pgring.dir.clone();
    let meta = std::fs::metadata(socket_file(&dir, pgring.port)).expect("socket file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o777, "unix_socket_mode");
    if let Err(e) = workload(&dir, pgring.port).await {
        panic!("{e}\n{}", pgring.log());
    }
    pgring.assert_running();
}

#[test]
fn psql_over_the_unix_socket() {
    let pgring = start("");
    let dir = pgring.dir.to_str().expect("UTF-8 dir").to_owned();
    let got = psql(&dir, pgring.port, "app", "postgres", "SELECT 40 + 2");
    assert_eq!(got.as_deref(), Ok("42"), "{}", pgring.log());
}

/// PgBouncer's rule: `pgbouncer` on the unix socket from pgring's own uid is the operator.
/// The test runs as the same uid as pgring; over TCP the same login must prove a password.
#[test]
fn own_uid_reaches_the_console_without_password_on_the_unix_socket_only() {
    let pgring = start("auth_type = md5\n");
    let dir = pgring.dir.to_str().expect("UTF-8 dir").to_owned();
    let version = psql(&dir, pgring.port, "pgbouncer", "pgbouncer", "SHOW VERSION");
    assert!(
        version.as_deref().is_ok_and(|v| v.contains("pgring")),
        "{version:?}\n{}",
        pgring.log()
    );
    let tcp = psql(
        "127.0.0.1",
        pgring.port,
        "pgbouncer",
        "pgbouncer",
        "SHOW VERSION",
    );
    assert!(tcp.is_err(), "TCP must ask for a password: {tcp:?}");
    // Other users on the unix socket still authenticate (md5_user needs its password).
    let other = psql(&dir, pgring.port, "pgbouncer", "md5_user", "SHOW VERSION");
    assert!(other.is_err(), "md5_user without password: {other:?}");
}

#[test]
fn a_live_unix_socket_refuses_a_second_pgring_and_a_stale_one_is_replaced() {
    let (dir, ini, port) = write_ini("");
    // The first pgring keeps its log elsewhere, so that dropping it leaves `dir` alone.
    let first = Pgring::start_file(&ini, fresh_dir(), port);
    // Same port (TCP would share it through SO_REUSEPORT), same socket path: refused.
    let second = Command::new(env!("CARGO_BIN_EXE_pgring"))
        .arg(&ini)
        .stdin(Stdio::null())
        .output()
        .expect("running a second pgring");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "second pgring started: {stderr}");
    assert!(
        stderr.contains(".s.PGSQL.") && stderr.contains("another process is accepting"),
        "{stderr}"
    );
    // SIGKILL (the fixture's drop) leaves the socket file behind; the next start removes it.
    drop(first);
    let socket = socket_file(&dir, port);
    assert!(socket.exists(), "a killed pgring leaves its socket file");
    let mut third = Pgring::start_file(&ini, dir.clone(), port);
    let got = psql(
        dir.to_str().expect("UTF-8"),
        port,
        "app",
        "postgres",
        "SELECT 1",
    );
    assert_eq!(got.as_deref(), Ok("1"), "{}", third.log());
    third.assert_running();
}

#[test]
fn pidfile_and_socket_file_last_as_long_as_pgring() {
    let mut pgring = start("pidfile = pgring.pid\n");
    let (pidfile, socket) = (
        pgring.dir.join("pgring.pid"),
        socket_file(&pgring.dir, pgring.port),
    );
    let pid = std::fs::read_to_string(&pidfile).expect("pidfile written");
    assert_eq!(pid.trim(), pgring.pid().to_string());
    assert!(socket.exists());
    kill(pgring.pid(), libc::SIGTERM);
    let status = pgring.wait_exit();
    assert!(status.success(), "{status}\n{}", pgring.log());
    assert!(!pidfile.exists(), "pidfile removed at exit");
    assert!(!socket.exists(), "socket file removed at exit");
}

#[test]
fn daemon_mode_detaches_and_writes_its_pidfile() {
    let (dir, ini, port) = write_ini("pidfile = pgring.pid\nlogfile = pgring-daemon.log\n");
    let out = Command::new(env!("CARGO_BIN_EXE_pgring"))
        .args(["-d".as_ref(), ini.as_os_str()])
        .stdin(Stdio::null())
        .output()
        .expect("running pgring -d");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pidfile = dir.join("pgring.pid");
    let pid = wait_for(|| {
        std::fs::read_to_string(&pidfile)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    });
    let daemon = KillOnDrop(pid);
    let got = wait_for(|| psql("127.0.0.1", port, "app", "postgres", "SELECT 7").ok());
    assert_eq!(got, "7");
    kill(daemon.0, libc::SIGTERM);
    wait_for(|| (!pidfile.exists()).then_some(()));
    let log = std::fs::read_to_string(dir.join("pgring-daemon.log")).unwrap_or_default();
    assert!(log.contains("pgring started"), "logfile:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon the test started, killed if the test ends early.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill(self.0, libc::SIGKILL);
    }
}

#[test]
fn pgbouncer_flags_that_need_a_word() {
    let bin = env!("CARGO_BIN_EXE_pgring");
    let reboot = Command::new(bin)
        .args(["-R", "x.ini"])
        .output()
        .expect("pgring -R");
    let stderr = String::from_utf8_lossy(&reboot.stderr);
    assert_eq!(reboot.status.code(), Some(2));
    assert!(stderr.contains("SO_REUSEPORT"), "{stderr}");
    let version = Command::new(bin).arg("-V").output().expect("pgring -V");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("pgring "));
    let (dir, ini, _) = write_ini("");
    let daemon = Command::new(bin)
        .args(["-d".as_ref(), ini.as_os_str()])
        .output()
        .expect("-d");
    assert!(!daemon.status.success());
    assert!(String::from_utf8_lossy(&daemon.stderr).contains("-d needs logfile"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's PgBouncer, then pgring, on the very same pgbouncer.ini: the same workload passes
/// on both, and every console column PgBouncer 1.18 shows is in pgring's table, in the same
/// order. pgring follows PgBouncer 1.25 (`pgbouncer-compat.md`), which added columns (such as
/// `load_balance_hosts`) and renamed SHOW DATABASES `reserve_pool` to `reserve_pool_size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pgbouncer_ini_drives_pgbouncer_and_pgring() {
    let pgbouncer = Path::new("/usr/sbin/pgbouncer");
    assert!(
        pgbouncer.exists(),
        "PgBouncer is required: apt-get install -y pgbouncer"
    );
    let (dir, ini, port) = write_ini("");
    // PgBouncer takes a relative pidfile from its working directory: give an absolute one.
    let mut text = std::fs::read_to_string(&ini).expect("ini");
    text.push_str(&format!("pidfile = {}\n", dir.join("pooler.pid").display()));
    std::fs::write(&ini, text).expect("ini");
    // PgBouncer refuses to run as root; it runs as postgres, which must own its socket dir.
    chown_to_postgres(&dir);
    let log = std::fs::File::create(dir.join("pgbouncer.log")).expect("log");
    let mut bouncer = Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(pgbouncer)
        .arg(&ini)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting pgbouncer");
    let ready = wait_for(|| psql("127.0.0.1", port, "app", "postgres", "SELECT 1").ok());
    assert_eq!(ready, "1");
    let bouncer_result = workload(&dir, port).await;
    let bouncer_pools = columns(port, "SHOW POOLS");
    let bouncer_dbs = columns(port, "SHOW DATABASES");
    kill(bouncer.id(), libc::SIGINT);
    let _ = bouncer.wait();
    let bouncer_log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
    if let Err(e) = bouncer_result {
        panic!("PgBouncer failed the workload: {e}\n{bouncer_log}");
    }

    let pgring = Pgring::start_file(&ini, dir.clone(), port);
    if let Err(e) = workload(&dir, port).await {
        panic!(
            "pgring failed the workload PgBouncer passed: {e}\n{}",
            pgring.log()
        );
    }
    for (what, theirs, ours) in [
        ("SHOW POOLS", bouncer_pools, columns(port, "SHOW POOLS")),
        (
            "SHOW DATABASES",
            bouncer_dbs,
            columns(port, "SHOW DATABASES"),
        ),
    ] {
        assert!(
            in_order(&theirs, &ours),
            "{what}: PgBouncer's columns {theirs:?}, pgring's {ours:?}"
        );
    }
}

/// Whether every 1.18 column is among `ours` in the same order, with 1.25's renames applied.
fn in_order(theirs: &[String], ours: &[String]) -> bool {
    let mut ours = ours.iter();
    theirs.iter().all(|column| {
        let want = match column.as_str() {
            "reserve_pool" => "reserve_pool_size",
            other => other,
        };
        ours.any(|c| c == want)
    })
}

/// The column names of a console command, through psql's header line.
fn columns(port: u16, command: &str) -> Vec<String> {
    let out = Command::new(pg().bin.join("psql"))
        .args(["-X", "-w", "-A", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "pgbouncer", "-c", command])
        .output()
        .expect("psql");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = text.lines().next().unwrap_or_default();
    header.split('|').map(str::to_owned).collect()
}

fn chown_to_postgres(dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {}", dir.display());
}

fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill with a pid this test started and a valid signal number.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Polls `f` every 50 ms for up to 10 s until it answers.
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting");
        std::thread::sleep(Duration::from_millis(50));
    }
}
