//! The throwaway PostgreSQL 15 that every test of the run shares.
//!
//! Started once, on first use, through `scripts/pg-cluster` (the same script the demo and the
//! benchmarks use), then given the users the tests need: `trust_user` (trust), `md5_user`
//! (password `md5pass`, stored and checked as md5), `scram_user` (password `scrampass`, SCRAM),
//! `postgres` (superuser, trust), the database `app` that everyone may use and the database
//! `bench` with pgbench's tables.
//!
//! Stopping it must not depend on the tests ending well: a shell watchdog started beside it stops
//! it once this test process is gone (even after SIGKILL), and an `atexit` hook stops it at once on
//! a normal exit. A missing PostgreSQL install is a panic with the path, never a skipped test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::free_port;

/// Where PostgreSQL 15 lives unless `PG_BIN` says otherwise.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The shared test cluster.
pub struct PgCluster {
    /// Cluster directory: data dir, logs and the unix socket.
    pub dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// PostgreSQL's bin directory (psql, pgbench...).
    pub bin: PathBuf,
    /// Roles made by [`PgCluster::fresh_user`], so pgring's default userlist can name them.
    users: Mutex<Vec<String>>,
}

static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();
/// Set before the cluster starts, so the exit hook can clean up a half-started one too.
static CLUSTER_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The shared cluster, started on first call. A failed start is remembered, so that every test
/// reports the same cause instead of each retrying initdb.
pub fn pg() -> &'static PgCluster {
    match CLUSTER.get_or_init(PgCluster::start) {
        Ok(cluster) => cluster,
        Err(why) => panic!("the test PostgreSQL could not be started: {why}"),
    }
}

/// `scripts/pg-cluster` in this checkout.
pub fn pg_cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster")
}

/// PostgreSQL's bin directory; panics with the path when it is not installed.
pub fn pg_bin() -> PathBuf {
    let bin = PathBuf::from(std::env::var("PG_BIN").unwrap_or_else(|_| DEFAULT_PG_BIN.into()));
    for prog in ["initdb", "pg_ctl", "postgres", "psql", "pgbench"] {
        assert!(
            bin.join(prog).exists(),
            "PostgreSQL 15 is required by the tests but {} is missing: install it \
             (apt-get install -y postgresql-15) or point PG_BIN at its bin directory",
            bin.join(prog).display()
        );
    }
    bin
}

const SETUP_SQL: &str = r#"
\set ON_ERROR_STOP on
ALTER SYSTEM SET password_encryption = 'scram-sha-256';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5pass';
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN PASSWORD 'scrampass';
CREATE ROLE trust_user LOGIN;
CREATE DATABASE app OWNER postgres;
CREATE DATABASE bench OWNER postgres;
GRANT ALL ON DATABASE app TO PUBLIC;
GRANT ALL ON DATABASE bench TO PUBLIC;
\c app
GRANT ALL ON SCHEMA public TO PUBLIC;
"#;

/// One line per user, then a catch-all for the roles that tests make for themselves (trust).
const PG_HBA: &str = "\
local   all             all                             trust
host    all             postgres        127.0.0.1/32    trust
host    all             trust_user      127.0.0.1/32    trust
host    all             md5_user        127.0.0.1/32    md5
host    all             scram_user      127.0.0.1/32    scram-sha-256
host    all             all             127.0.0.1/32    trust
local   replication     all                             trust
host    replication     all             127.0.0.1/32    trust
";

impl PgCluster {
    fn start() -> Result<PgCluster, String> {
        let bin = pg_bin();
        raise_fd_limit();
        let dir = PathBuf::from(format!("/tmp/pgring-it-pg-{}", std::process::id()));
        let port = free_port();
        CLUSTER_DIR.set(dir.clone()).ok();
        spawn_watchdog(&dir)?;
        // SAFETY: registering a plain `extern "C" fn` that only reads a OnceLock and runs a
        // command; it runs once, at exit, on the exiting thread.
        unsafe { libc::atexit(stop_at_exit) };
        run(Command::new(pg_cluster_script()).args([
            "start",
            path_str(&dir),
            &port.to_string(),
            "--max-connections",
            "400",
        ]))?;
        let cluster = PgCluster {
            dir,
            port,
            bin,
            users: Mutex::new(Vec::new()),
        };
        cluster.configure()?;
        Ok(cluster)
    }

    /// Users, databases, pg_hba.conf and pgbench's tables.
    fn configure(&self) -> Result<(), String> {
        self.psql_script("postgres", SETUP_SQL)?;
        self.enable_tls()?;
        std::fs::write(self.dir.join("data/pg_hba.conf"), PG_HBA)
            .map_err(|e| format!("writing pg_hba.conf: {e}"))?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        run(Command::new(self.bin.join("pgbench"))
            .args([
                "-i",
                "-s",
                "1",
                "-q",
                "-h",
                path_str(&self.dir),
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "bench"]))?;
        self.psql("bench", "GRANT ALL ON SCHEMA public TO PUBLIC; GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC")?;
        Ok(())
    }

    /// TLS on, with a certificate for 127.0.0.1 signed by a test CA ([`PgCluster::ca_file`]):
    /// pgring's default `server_tls_sslmode = prefer` then speaks TLS to this server in every
    /// test, as it would to a production PostgreSQL with `ssl = on`.
    fn enable_tls(&self) -> Result<(), String> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let fail = |e: rcgen::Error| format!("making the test certificates: {e}");
        let ca_key = KeyPair::generate().map_err(fail)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "pgring test PostgreSQL CA");
        let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
        let key = KeyPair::generate().map_err(fail)?;
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let server = CertificateParams::new(names).map_err(fail)?;
        let cert = server.signed_by(&key, &ca_cert, &ca_key).map_err(fail)?;
        let data = self.dir.join("data");
        let write = |name: &str, text: String| {
            let path = data.join(name);
            std::fs::write(&path, text).map_err(|e| format!("writing {name}: {e}"))?;
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&path, mode).map_err(|e| format!("chmod {name}: {e}"))?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                run(Command::new("chown").args(["postgres:postgres", path_str(&path)]))?;
            }
            Ok::<(), String>(())
        };
        write("server.crt", cert.pem())?;
        write("server.key", key.serialize_pem())?;
        std::fs::write(self.ca_file(), ca_cert.pem()).map_err(|e| format!("writing ca: {e}"))?;
        self.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
        Ok(())
    }

    /// The CA that signed the server's certificate (for `verify-ca` / `verify-full`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("test-ca.crt")
    }

    /// Runs SQL as `postgres` over the unix socket; returns psql's unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        run(self.psql_command(db).args(["-Atc", sql]))
    }

    fn psql_script(&self, db: &str, script: &str) -> Result<String, String> {
        let path = self.dir.join(format!("setup-{}.sql", std::process::id()));
        std::fs::write(&path, script).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let out = run(self.psql_command(db).arg("-qf").arg(&path));
        std::fs::remove_file(&path).ok();
        out
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            path_str(&self.dir),
            "-U",
            "postgres",
        ])
        .args(["-p", &self.port.to_string(), "-d", db]);
        cmd
    }

    /// A login role of the test's own (trust on 127.0.0.1, may use `app` and `bench`), so that a
    /// test can count its server connections in pg_stat_activity without seeing other tests'.
    /// pgring's default userlist names it too.
    pub fn fresh_user(&self, name: &str) -> String {
        let name = format!("t_{name}");
        let sql = format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') \
             THEN CREATE ROLE {name} LOGIN; END IF; END $$"
        );
        self.psql("postgres", &sql)
            .unwrap_or_else(|e| panic!("creating role {name}: {e}"));
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        name
    }

    /// Roles made by [`PgCluster::fresh_user`] so far.
    pub fn fresh_users(&self) -> Vec<String> {
        self.users.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A direct connection to PostgreSQL (not through pgring) as the superuser.
    pub async fn admin(&self, db: &str) -> tokio_postgres::Client {
        super::connect(self.port, db, "postgres", "").await
    }

    /// How many client backends `user` has on the server right now.
    pub async fn backends_of(&self, admin: &tokio_postgres::Client, user: &str) -> i64 {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = $1 AND backend_type = 'client backend'",
                &[&user],
            )
            .await
            .expect("counting backends in pg_stat_activity");
        row.get(0)
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs a command to completion; Err carries its output.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{cmd:?} failed ({}):\n{stdout}{stderr}",
        out.status
    ))
}

/// A detached shell that stops the cluster in `dir` once this process has gone, however it went.
/// If we died during `pg-cluster start`, that start goes on without us: the stop waits for it
/// (pg-cluster locks the directory), and is retried while the directory is not yet marked.
pub fn spawn_watchdog(dir: &Path) -> Result<(), String> {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         for try in 1 2 3 4 5 6 7 8 9 10; do '{stop}' stop '{dir}' --immediate && exit 0; sleep 2; done",
        pid = std::process::id(),
        stop = pg_cluster_script().display(),
        dir = dir.display(),
    );
    // setsid: a Ctrl-C to the test's process group must not take the watchdog with it.
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("could not start the cluster watchdog: {e}"))
}

extern "C" fn stop_at_exit() {
    if let Some(dir) = CLUSTER_DIR.get() {
        let _ = Command::new(pg_cluster_script())
            .args(["stop", path_str(dir), "--immediate"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// 1000 pgbench clients need more than the usual 1024 descriptors; children inherit the soft
/// limit, so raise it to the hard limit once for the whole run.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
