//! A real `pgring` process for one test: its config, its userlist, its log, its end.
//!
//! The TOML text may say `@DIR@` for the process's own temp dir (the default `auth_file` is
//! `@DIR@/users.txt`). The log (RUST_LOG=info, stdout and stderr) goes to a file that is printed
//! when the test fails, and the process is killed when the handle drops.

use std::fs::File;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::cluster::pg;

/// How long pgring may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running pgring, killed on drop.
pub struct Pgring {
    /// The port it listens on (from `listen_port` in the config).
    pub port: u16,
    /// Its temp dir: config, userlist, log.
    pub dir: PathBuf,
    child: Child,
}

impl Pgring {
    /// Starts pgring with this config and the default userlist ([`default_userlist`]).
    pub fn start(toml_text: &str) -> Pgring {
        Self::start_with_userlist(toml_text, &default_userlist())
    }

    /// Starts pgring with this config, the default userlist and these environment variables
    /// (e.g. `RUST_LOG`, or a test hook).
    pub fn start_with_env(toml_text: &str, env: &[(&str, &str)]) -> Pgring {
        Self::start_with(toml_text, &default_userlist(), env)
    }

    /// Starts pgring with this config and this userlist text, written to `@DIR@/users.txt`.
    pub fn start_with_userlist(toml_text: &str, userlist: &str) -> Pgring {
        Self::start_with(toml_text, userlist, &[])
    }

    /// Starts pgring with this config, this userlist text and these environment variables.
    pub fn start_with(toml_text: &str, userlist: &str, env: &[(&str, &str)]) -> Pgring {
        let dir = fresh_dir();
        let toml_text = toml_text.replace("@DIR@", dir.to_str().expect("UTF-8 temp dir"));
        let port = listen_port(&toml_text);
        let config = dir.join("pgring.toml");
        std::fs::write(&config, &toml_text).expect("writing pgring.toml");
        std::fs::write(dir.join("users.txt"), userlist).expect("writing users.txt");
        let child = spawn(&config, &dir.join("pgring.log"), env);
        let mut pgring = Pgring { port, dir, child };
        pgring.wait_until_listening();
        pgring
    }

    /// Starts pgring on a config file the test wrote itself (e.g. a pgbouncer.ini) in `dir`,
    /// listening on `port`; the log goes to `dir/pgring.log`. `dir` is removed on drop.
    pub fn start_file(config: &std::path::Path, dir: PathBuf, port: u16) -> Pgring {
        let child = spawn(config, &dir.join("pgring.log"), &[]);
        let mut pgring = Pgring { port, dir, child };
        pgring.wait_until_listening();
        pgring
    }

    /// Waits (up to 10 s) for pgring to exit by itself, e.g. after SIGTERM; its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pgring did not exit; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything pgring has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgring.log")).unwrap_or_default()
    }

    /// The process id, for signalling it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (with the log) if pgring has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("pgring exited ({status}); its log:\n{}", self.log());
        }
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = ([127, 0, 0, 1], self.port).into();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "pgring did not accept on port {} within {START_TIMEOUT:?}; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The port can answer before this process does: a pgring that just
        // died on the same port keeps its listeners for a few milliseconds
        // while io_uring tears down, and SO_REUSEPORT lets both be bound. So
        // also wait for this process to say its shards listen (if it logs).
        while !self.log().contains("listening") && Instant::now() < deadline {
            self.assert_running();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pgring {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- pgring log ({}) ----\n{}",
                self.dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn spawn(config: &std::path::Path, log: &std::path::Path, env: &[(&str, &str)]) -> Child {
    let log = File::create(log).expect("creating pgring.log");
    Command::new(pgring_bin())
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("cloning log handle"))
        .stderr(log)
        .spawn()
        .expect("spawning the pgring binary")
}

/// The binary under test: this crate's `pgring`, or `PGRING_TEST_BIN` (e.g. a wrapper that runs
/// PgBouncer from the same TOML, to compare behaviour with the pooler we replace).
fn pgring_bin() -> PathBuf {
    std::env::var_os("PGRING_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_pgring")),
        PathBuf::from,
    )
}

/// A fresh, empty temp dir of this run (removed by a later run once this one is over).
pub fn fresh_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(remove_dirs_of_dead_runs);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(format!("/tmp/pgring-it-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating pgring temp dir");
    dir
}

/// The temp dirs of failed tests are kept for their logs; those of runs that are over go now.
fn remove_dirs_of_dead_runs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("pgring-it-")) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn listen_port(toml_text: &str) -> u16 {
    let value: toml::Value = toml_text
        .parse()
        .unwrap_or_else(|e| panic!("test config is not TOML: {e}\n{toml_text}"));
    let port = value
        .get("general")
        .and_then(|g| g.get("listen_port"))
        .and_then(|p| p.as_integer());
    let port = port.expect("test config needs [general] listen_port");
    u16::try_from(port).expect("listen_port fits u16")
}

/// The fixture's users with their plain passwords (so pgring can log into PostgreSQL as them),
/// plus every role made by `fresh_user` so far.
pub fn default_userlist() -> String {
    let mut text = String::from(
        "\"postgres\" \"\"\n\"trust_user\" \"\"\n\"md5_user\" \"md5pass\"\n\"scram_user\" \"scrampass\"\n",
    );
    for user in pg().fresh_users() {
        text.push_str(&format!("\"{user}\" \"\"\n"));
    }
    text
}

/// Keys `config_for` writes into `[general]` unless `extra_general` sets them itself.
const GENERAL_DEFAULTS: &[(&str, &str)] = &[
    ("listen_addr", "\"127.0.0.1\""),
    ("unix_socket_dir", "\"@DIR@\""),
    ("auth_type", "\"trust\""),
    ("auth_file", "\"@DIR@/users.txt\""),
    ("max_client_conn", "15000"),
    ("admin_users", "[\"postgres\"]"),
    ("server_connect_timeout", "5"),
];

/// A pgring config on a free port with `[databases.app]` and `[databases.bench]` pointing at the
/// test cluster. `extra_general` is more `[general]` lines; a key it sets replaces the default.
pub fn config_for(pool_mode: &str, pool_size: u32, workers: u32, extra_general: &str) -> String {
    let sets = |key: &str| {
        extra_general.lines().any(|line| {
            let line = line.trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    let mut text = format!(
        "[general]\nlisten_port = {}\npool_mode = \"{pool_mode}\"\ndefault_pool_size = {pool_size}\nworkers = {workers}\n",
        super::free_port()
    );
    for (key, value) in GENERAL_DEFAULTS.iter().filter(|(key, _)| !sets(key)) {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text.push_str(extra_general);
    text.push('\n');
    text.push_str(&database_section("app", "app", ""));
    text.push_str(&database_section("bench", "bench", ""));
    text
}

/// A `[databases.NAME]` table for the test cluster's database `dbname`; `extra` is more lines.
pub fn database_section(name: &str, dbname: &str, extra: &str) -> String {
    database_section_on(name, pg().port, dbname, extra)
}

/// A `[databases.NAME]` table for database `dbname` of a server on 127.0.0.1:`port`.
pub fn database_section_on(name: &str, port: u16, dbname: &str, extra: &str) -> String {
    format!("\n[databases.{name}]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"{dbname}\"\n{extra}\n")
}
