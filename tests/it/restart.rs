//! Online restart (issue 7, item 5): a second pgring starts on the same port while the first one
//! runs pgbench, the first gets `SHUTDOWN WAIT_FOR_CLIENTS`, and nobody notices. pgbench's
//! clients finish on the old process, every new connection during and after the switch lands
//! on one of the two, the old one exits when its clients are gone, and the new one serves on.
//!
//! Each pgring gets its own `unix_socket_dir` (the fixture's `@DIR@` is per process): a socket
//! path names one listener, so a second process on the same path is refused by design.

use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, config_for, connect, describe, pg, try_connect, value, Pgring};

const CLIENTS: &str = "50";
const SECONDS: &str = "8";
/// How long pgbench runs on the old pgring before the new one starts.
const BEFORE_SWITCH: Duration = Duration::from_secs(2);
/// Concurrent loops opening a fresh connection (and running SELECT 1) every 50 ms each.
const PROBES: usize = 4;
const WORKERS: u32 = 2;

/// The host setting the README asks for before an online restart: connections still queued on
/// the old process's listener when it closes move to the new one (Linux 5.14+) instead of being
/// reset. Without it a connect that lands in that queue in the last microseconds is reset (seen
/// about once in ten runs here). Set when we may (root, as in CI); otherwise the test runs as the
/// host is and says so.
fn migrate_queued_connections() -> bool {
    const KNOB: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    if std::fs::read_to_string(KNOB).is_ok_and(|v| v.trim() == "1") {
        return true;
    }
    match std::fs::write(KNOB, "1") {
        Ok(()) => true,
        Err(e) => {
            println!(
                "note: could not set {KNOB} ({e}); a connect queued on the old listener at the \
                 moment it closes may be reset (one such reset is tolerated below)"
            );
            false
        }
    }
}

/// New connections made during the test, and the errors of those that failed.
#[derive(Default)]
struct Probes {
    ok: AtomicU64,
    failed: Mutex<Vec<(Duration, String)>>,
}

impl Probes {
    async fn one(&self, port: u16, user: &str, since: Instant) {
        let result = match try_connect(port, "bench", user, "").await {
            Ok(client) => client.simple_query("SELECT 1").await.map(drop),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((since.elapsed(), describe(&e))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_restart_under_pgbench_loses_nothing() {
    let _heavy = common::heavy().await;
    let migrating = migrate_queued_connections();
    let user = pg().fresh_user("restart");
    let toml = config_for("transaction", 10, WORKERS, "");
    let mut old = Pgring::start(&toml);
    let port = old.port;
    // Held from before the new process exists, so that SHUTDOWN surely reaches the old one.
    let console = connect(port, "pgbouncer", "postgres", "").await;
    let since = Instant::now();
    let pgbench = tokio::task::spawn_blocking({
        let user = user.clone();
        move || run_pgbench(port, &user)
    });
    let probes = Arc::new(Probes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..PROBES)
        .map(|_| {
            let (probes, stop, user) = (probes.clone(), stop.clone(), user.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    probes.one(port, &user, since).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(BEFORE_SWITCH).await;
    let new = tokio::task::spawn_blocking(move || start_beside(&toml))
        .await
        .expect("starting the new pgring");
    let switch_at = since.elapsed();
    console
        .simple_query("SHUTDOWN WAIT_FOR_CLIENTS")
        .await
        .unwrap_or_else(|e| panic!("SHUTDOWN WAIT_FOR_CLIENTS: {}", describe(&e)));
    drop(console);

    let output = pgbench.await.expect("pgbench task");
    let pgbench_done = since.elapsed();
    let old_status = tokio::task::spawn_blocking(move || {
        let status = old.wait_exit();
        (old, status)
    })
    .await
    .expect("waiting for the old pgring");
    let old_exit = since.elapsed();
    // Keep probing a little after the old process is gone: only the new one is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("probe loop");
    }

    let (old, status) = old_status;
    let after = connect(port, "bench", &user, "").await;
    assert_eq!(value(&after, "SELECT 1").await.as_deref(), Some("1"));

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failed = probes.failed.lock().unwrap_or_else(|e| e.into_inner());
    let report = format!(
        "pgbench {}:\n{stdout}\n{stderr}\nswitch at {switch_at:?}, pgbench done at {pgbench_done:?}, \
         old pgring exited at {old_exit:?} ({status}); new connections: {} ok, {} failed: {:#?}",
        output.status,
        probes.ok.load(Ordering::Relaxed),
        failed.len(),
        *failed,
    );
    println!("{report}");
    assert!(output.status.success(), "{report}");
    assert_eq!(failed_transactions(&stdout), Some(0), "{report}");
    assert!(status.success(), "{report}\nold log:\n{}", old.log());
    // Without the host setting the kernel resets what sits in the closing listener's queue:
    // at most one such connect, refused by a reset, is the kernel's doing, not pgring's.
    let kernel_resets = !migrating
        && failed.len() <= 1
        && failed.iter().all(|(_, e)| e.contains("ConnectionReset"));
    assert!(
        failed.is_empty() || kernel_resets,
        "{report}\nold log:\n{}\nnew log:\n{}",
        old.log(),
        new.log()
    );
    assert!(probes.ok.load(Ordering::Relaxed) > 0, "{report}");
    // PgBouncer's wording for the lines operators alert on (issue 7, item 4).
    let login = format!("login attempt: db=bench user={user} tls=no");
    assert!(
        new.log().contains(&login),
        "the new pgring never got a client (or words its login line differently):\n{report}\n{}",
        new.log()
    );
    assert!(
        old.log()
            .contains("new connection to server (from 127.0.0.1:"),
        "{}",
        old.log()
    );
}

/// Starts a second pgring from the same config text (same port, its own `@DIR@` and so its own
/// unix socket) and waits until each of its shards listens: the fixture's TCP probe cannot tell,
/// since the old process answers on the port too.
fn start_beside(toml: &str) -> Pgring {
    let mut new = Pgring::start(toml);
    let deadline = Instant::now() + Duration::from_secs(10);
    while new.log().matches(" listening").count() < WORKERS as usize {
        new.assert_running();
        assert!(Instant::now() < deadline, "not listening:\n{}", new.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    new
}

fn run_pgbench(port: u16, user: &str) -> Output {
    let args = ["-S", "-c", CLIENTS, "-j", "2", "-T", SECONDS, "bench"];
    common::pgbench_blocking(port, user, 60, &args)
}

fn failed_transactions(out: &str) -> Option<u64> {
    let rest = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("number of failed transactions:"))?;
    rest.split_whitespace().next()?.parse().ok()
}
