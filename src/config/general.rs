//! The `[general]` table: PgBouncer's `[pgbouncer]` section under its own key names and
//! defaults (PgBouncer 1.25 `src/main.c`, `bouncer_params`), plus the few pgring-only knobs
//! of the thread-per-core runtime (`workers`, `ring_depth`, `spin_before_park_us`,
//! `stats_listen`).
//!
//! Every key is accepted even when pgring does not act on it yet (TLS, DNS, PAM/LDAP): a
//! config written for PgBouncer must load. This file only describes and defaults; rules that
//! span keys live in `validate`, and which keys need a restart lives in `reload`.
//!
//! Deliberate differences from PgBouncer, each noted on its field: `listen_addr` defaults to
//! `127.0.0.1` (PgBouncer: unset = unix socket only), relative paths are resolved against the
//! config file's directory (PgBouncer: the working directory), booleans are `true`/`false`
//! (PgBouncer's `0`/`1` are accepted too), and durations are seconds as numbers.

use super::types::{flag, flag_or_seconds, list, AuthType, FileMode, PoolMode, Seconds, SslMode};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// PgBouncer 1.25's default `auth_query`: the stored secret, or NULL once `VALID UNTIL` has passed.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// PgBouncer's marker for "health-check with an empty query" (`server_check_query` default).
pub const EMPTY_CHECK_QUERY: &str = "<empty>";

/// Process-wide settings: the `[general]` table.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct General {
    // ---- listening -------------------------------------------------------------------------
    /// Comma-separated TCP addresses to listen on; `*` = all. Empty = unix socket only.
    /// pgring defaults to `127.0.0.1` (PgBouncer's default is empty: unix socket only).
    pub listen_addr: String,
    /// TCP port, also the unix socket's `.s.PGSQL.<port>` suffix. Needs a restart.
    pub listen_port: u16,
    /// `listen(2)` backlog of each shard's socket.
    pub listen_backlog: u32,
    /// Directory of the unix socket; empty disables it.
    pub unix_socket_dir: String,
    /// Permission bits of the unix socket (`"0777"` or `0o777`).
    pub unix_socket_mode: FileMode,
    /// Group owning the unix socket.
    pub unix_socket_group: Option<String>,
    /// Accepted for compatibility: pgring always sets SO_REUSEPORT, one socket per shard.
    #[serde(deserialize_with = "flag")]
    pub so_reuseport: bool,
    /// This process's id in a peered group (PgBouncer 1.19): 1..16383, 0 = no peering. Each
    /// client's cancel key carries it, and a cancel request carrying another id is forwarded
    /// to that `[peers]` entry. Needs a restart.
    pub peer_id: u16,
    /// pgring: number of shards (pinned executors); 0 = one per available core.
    pub workers: usize,
    /// pgring: io_uring submission ring depth per shard.
    pub ring_depth: usize,
    /// pgring: pin each shard thread to its own core (thread-per-core). Off lets the kernel
    /// place shards next to the processes they talk to, which can cut wake-up latency on a
    /// small host shared with PostgreSQL and the clients.
    #[serde(deserialize_with = "flag")]
    pub pin_shards: bool,
    /// pgring: microseconds a shard with nothing to run keeps polling before it sleeps
    /// (default 200, Seastar's idle-poll default too); 0 = sleep at once. It saves the wake-up of an idle core (most of the latency a pooler adds
    /// at light load), and is only done while the host has a whole core idle (sampled every
    /// 100 ms), so it never takes CPU a busy PostgreSQL on the same host could use; never under
    /// a cgroup CPU quota; and only while the shard's recent idle spells say it pays (see
    /// `runtime::spare::SpinOdds`).
    pub spin_before_park_us: u64,
    /// pgring: move client sessions between transactions from a shard whose clients wait
    /// markedly longer (its core starved) to the shard whose clients wait least (see
    /// `client::balance`). Off by default: it evens out a core shared with a noisy neighbour,
    /// but at 10,000 saturating clients it cost 20% of the throughput in the benchmark.
    #[serde(deserialize_with = "flag")]
    pub balance_clients: bool,
    /// pgring: `addr:port` serving Prometheus `/metrics` (e.g. `127.0.0.1:9127`); unset = off.
    pub stats_listen: Option<String>,

    // ---- pooling ---------------------------------------------------------------------------
    /// Default pool mode; a `[databases]` or `[users]` entry may override it.
    pub pool_mode: PoolMode,
    /// Maximum client connections, for the whole process (not per shard).
    pub max_client_conn: u32,
    /// Server connections per (database, user) pool, unless an entry says otherwise.
    pub default_pool_size: u32,
    /// Keep at least this many server connections open per pool.
    pub min_pool_size: u32,
    /// Extra connections a pool may open once a client waited `reserve_pool_timeout`.
    pub reserve_pool_size: u32,
    /// How long a client waits before the reserve pool is used (seconds).
    pub reserve_pool_timeout: Seconds,
    /// Server connections per database, all users together; 0 = unlimited.
    pub max_db_connections: u32,
    /// Server connections per user, all databases together; 0 = unlimited.
    pub max_user_connections: u32,
    /// Client connections per database; 0 = unlimited.
    pub max_db_client_connections: u32,
    /// Client connections per user; 0 = unlimited.
    pub max_user_client_connections: u32,
    /// Reuse servers round-robin instead of most-recently-used first.
    #[serde(deserialize_with = "flag")]
    pub server_round_robin: bool,
    /// Refuse simple-protocol queries (PQexec), which can carry several statements in one
    /// message: a client sending one is ended with "PQexec disallowed". Extended-protocol
    /// clients only.
    #[serde(deserialize_with = "flag")]
    pub disable_pqexec: bool,
    /// Startup parameters tracked per client beyond the built-in set (array or comma list).
    #[serde(deserialize_with = "list")]
    pub track_extra_parameters: Vec<String>,
    /// Startup parameters silently dropped (array or comma list).
    #[serde(deserialize_with = "list")]
    pub ignore_startup_parameters: Vec<String>,
    /// Append the client's address to `application_name`.
    #[serde(deserialize_with = "flag")]
    pub application_name_add_host: bool,
    /// Protocol-level prepared statements tracked per server in transaction mode; 0 = off.
    pub max_prepared_statements: u32,
    /// Memory one client's named prepared statements may take in pgring (their names and
    /// texts); past it, new named Parses get 53400. 0 = no cap. pgring's own. [bytes]
    pub max_client_prepared_memory: u32,
    /// Internal buffer size for packets. [bytes]
    pub pkt_buf: u32,
    /// Largest packet accepted from a client or server. [bytes]
    pub max_packet_size: u32,
    /// Period of the averages in SHOW STATS and of the log stats line (seconds).
    pub stats_period: u32,
    /// Idle time after which pools of the `*` fallback database are dropped (seconds).
    pub autodb_idle_timeout: Seconds,

    // ---- authentication --------------------------------------------------------------------
    /// How clients authenticate.
    pub auth_type: AuthType,
    /// userlist.txt: `"user" "secret"` per line (plain, `md5…` or `SCRAM-SHA-256$…`).
    pub auth_file: Option<PathBuf>,
    /// pg_hba.conf-style rules, used with `auth_type = "hba"`.
    pub auth_hba_file: Option<PathBuf>,
    /// Ident map for `hba` rules with `map=`.
    pub auth_ident_file: Option<PathBuf>,
    /// User that runs `auth_query` for users missing from `auth_file`.
    pub auth_user: Option<String>,
    /// Query returning (user, secret) for `$1`.
    pub auth_query: String,
    /// Database in which `auth_query` runs; unset = the database the client asked for.
    pub auth_dbname: Option<String>,
    /// Users who may run every admin console command (array or comma list).
    #[serde(deserialize_with = "list")]
    pub admin_users: Vec<String>,
    /// Users who may run read-only SHOW commands (array or comma list).
    #[serde(deserialize_with = "list")]
    pub stats_users: Vec<String>,
    /// PBKDF2 iterations for SCRAM verifiers pgring computes from plain passwords.
    pub scram_iterations: u32,

    // ---- server hygiene --------------------------------------------------------------------
    /// Run when a session-mode server is released.
    pub server_reset_query: String,
    /// Also run `server_reset_query` in transaction and statement modes.
    #[serde(deserialize_with = "flag")]
    pub server_reset_query_always: bool,
    /// Idle time after which a server is health-checked before reuse (seconds).
    pub server_check_delay: Seconds,
    /// Health-check query: `"<empty>"` (default) sends an empty query, `""` disables checks.
    pub server_check_query: String,
    /// In PAUSE/RECONNECT, close servers at once rather than after their transaction.
    #[serde(deserialize_with = "flag")]
    pub server_fast_close: bool,
    /// Close a server connection older than this once released; 0 = only once (seconds).
    pub server_lifetime: Seconds,
    /// Close a server idle longer than this (seconds).
    pub server_idle_timeout: Seconds,
    /// Give up connecting + logging into a server after this (seconds).
    pub server_connect_timeout: Seconds,
    /// Wait after a failed server login before trying again (seconds).
    pub server_login_retry: Seconds,
    /// Drop a client that has not finished logging in after this (seconds).
    pub client_login_timeout: Seconds,

    // ---- dangerous timeouts ----------------------------------------------------------------
    /// Cancel queries running longer than this; 0 = off (seconds).
    pub query_timeout: Seconds,
    /// Fail clients waiting for a server longer than this; 0 = wait forever (seconds).
    pub query_wait_timeout: Seconds,
    /// Give up on a cancel request that found no connection after this (seconds).
    pub cancel_wait_timeout: Seconds,
    /// Tell a client waiting for a server this long, once, that it is queued (a NOTICE, as
    /// PgBouncer 1.25 sends); 0 = never (seconds).
    pub query_wait_notify: Seconds,
    /// Close clients idle (between transactions) longer than this; 0 = off (seconds).
    pub client_idle_timeout: Seconds,
    /// Close clients idle inside a transaction longer than this; 0 = off (seconds).
    pub idle_transaction_timeout: Seconds,
    /// Close clients whose transaction lasts longer than this; 0 = off (seconds).
    pub transaction_timeout: Seconds,
    /// How long SUSPEND waits for buffers to flush (seconds).
    pub suspend_timeout: Seconds,

    // ---- TLS (accepted; see the lead's notes for what is implemented) ----------------------
    /// TLS towards clients.
    pub client_tls_sslmode: SslMode,
    /// Private key for client-facing TLS.
    pub client_tls_key_file: Option<PathBuf>,
    /// Certificate for client-facing TLS.
    pub client_tls_cert_file: Option<PathBuf>,
    /// CA to verify client certificates.
    pub client_tls_ca_file: Option<PathBuf>,
    /// Allowed TLS versions towards clients.
    pub client_tls_protocols: String,
    /// Cipher list towards clients.
    pub client_tls_ciphers: String,
    /// TLS 1.3 cipher suites towards clients, colon-separated (empty: all rustls has).
    pub client_tls13_ciphers: String,
    /// Key exchange groups offered to clients (`auto`: all rustls has; or curve names,
    /// see [`super::KxGroups`]).
    pub client_tls_ecdhcurve: String,
    /// TLS towards servers.
    pub server_tls_sslmode: SslMode,
    /// CA to verify server certificates.
    pub server_tls_ca_file: Option<PathBuf>,
    /// Client key presented to servers.
    pub server_tls_key_file: Option<PathBuf>,
    /// Client certificate presented to servers.
    pub server_tls_cert_file: Option<PathBuf>,
    /// Allowed TLS versions towards servers.
    pub server_tls_protocols: String,
    /// Cipher list towards servers.
    pub server_tls_ciphers: String,
    /// TLS 1.3 cipher suites towards servers, colon-separated (empty: all rustls has).
    pub server_tls13_ciphers: String,

    // ---- network ---------------------------------------------------------------------------
    /// Enable TCP keepalive on client and server sockets.
    #[serde(deserialize_with = "flag")]
    pub tcp_keepalive: bool,
    /// TCP_KEEPIDLE; 0 = kernel default (seconds).
    pub tcp_keepidle: u32,
    /// TCP_KEEPINTVL; 0 = kernel default (seconds).
    pub tcp_keepintvl: u32,
    /// TCP_KEEPCNT; 0 = kernel default.
    pub tcp_keepcnt: u32,
    /// TCP_USER_TIMEOUT; 0 = kernel default (milliseconds).
    pub tcp_user_timeout: u32,
    /// SO_SNDBUF/SO_RCVBUF; 0 = kernel default. [bytes]
    pub tcp_socket_buffer: u32,
    /// TCP_DEFER_ACCEPT on the listening sockets (45 s, as PgBouncer): a connection is handed
    /// to pgring once its first bytes arrive, saving a wake-up per connection. (Old
    /// PgBouncer configs give seconds: any positive number is on.)
    #[serde(deserialize_with = "flag_or_seconds")]
    pub tcp_defer_accept: bool,
    /// How long a DNS answer is cached (seconds).
    pub dns_max_ttl: Seconds,
    /// How long a "no such host" answer is cached (seconds).
    pub dns_nxdomain_ttl: Seconds,
    /// Period of DNS zone serial checks; 0 = off (seconds).
    pub dns_zone_check_period: Seconds,

    // ---- process and logging ---------------------------------------------------------------
    /// Write the process id here at start (after the listeners are bound); removed at exit.
    pub pidfile: Option<PathBuf>,
    /// Unix user to switch to once the listeners are bound (PgBouncer's `user`, like `-u`).
    /// Only meaningful when started as root. Needs a restart.
    pub user: Option<String>,
    /// Also log to this file (reopened on SIGHUP).
    pub logfile: Option<PathBuf>,
    /// Also log to the system logger (`/dev/log`).
    #[serde(deserialize_with = "flag")]
    pub syslog: bool,
    /// The name log lines carry in the system log (PgBouncer's default, so that existing
    /// filters keep matching).
    pub syslog_ident: String,
    /// The syslog facility: auth, authpriv, daemon, user, local0-local7.
    pub syslog_facility: String,
    /// Log each client login.
    #[serde(deserialize_with = "flag")]
    pub log_connections: bool,
    /// Log each disconnect with its reason.
    #[serde(deserialize_with = "flag")]
    pub log_disconnections: bool,
    /// Log errors pgring sends to clients.
    #[serde(deserialize_with = "flag")]
    pub log_pooler_errors: bool,
    /// Log the aggregated stats line every `stats_period`.
    #[serde(deserialize_with = "flag")]
    pub log_stats: bool,
    /// Verbosity: 0 = info, 1 = debug, 2+ = trace (`-v` adds to it).
    pub verbose: u8,
}

impl Default for General {
    fn default() -> Self {
        General {
            listen_addr: "127.0.0.1".into(),
            listen_port: 6432,
            listen_backlog: 128,
            unix_socket_dir: "/tmp".into(),
            unix_socket_mode: FileMode(0o777),
            unix_socket_group: None,
            so_reuseport: false,
            peer_id: 0,
            workers: 0,
            ring_depth: 128,
            pin_shards: true,
            spin_before_park_us: 200,
            balance_clients: false,
            stats_listen: None,
            pool_mode: PoolMode::Session,
            max_client_conn: 100,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Seconds(5.0),
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            server_round_robin: false,
            disable_pqexec: false,
            track_extra_parameters: vec!["IntervalStyle".into()],
            ignore_startup_parameters: Vec::new(),
            application_name_add_host: false,
            max_prepared_statements: 200,
            max_client_prepared_memory: 64 << 20,
            pkt_buf: 4096,
            max_packet_size: 2_147_483_647,
            stats_period: 60,
            autodb_idle_timeout: Seconds(3600.0),
            auth_type: AuthType::Md5,
            auth_file: None,
            auth_hba_file: None,
            auth_ident_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_dbname: None,
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            scram_iterations: 4096,
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            server_check_delay: Seconds(30.0),
            server_check_query: EMPTY_CHECK_QUERY.into(),
            server_fast_close: false,
            server_lifetime: Seconds(3600.0),
            server_idle_timeout: Seconds(600.0),
            server_connect_timeout: Seconds(15.0),
            server_login_retry: Seconds(15.0),
            client_login_timeout: Seconds(60.0),
            query_timeout: Seconds::ZERO,
            query_wait_timeout: Seconds(120.0),
            cancel_wait_timeout: Seconds(10.0),
            query_wait_notify: Seconds(5.0),
            client_idle_timeout: Seconds::ZERO,
            idle_transaction_timeout: Seconds::ZERO,
            transaction_timeout: Seconds::ZERO,
            suspend_timeout: Seconds(10.0),
            client_tls_sslmode: SslMode::Disable,
            client_tls_key_file: None,
            client_tls_cert_file: None,
            client_tls_ca_file: None,
            client_tls_protocols: "secure".into(),
            client_tls_ciphers: "default".into(),
            client_tls13_ciphers: String::new(),
            client_tls_ecdhcurve: "auto".into(),
            server_tls_sslmode: SslMode::Prefer,
            server_tls_ca_file: None,
            server_tls_key_file: None,
            server_tls_cert_file: None,
            server_tls_protocols: "secure".into(),
            server_tls_ciphers: "default".into(),
            server_tls13_ciphers: String::new(),
            tcp_keepalive: true,
            tcp_keepidle: 0,
            tcp_keepintvl: 0,
            tcp_keepcnt: 0,
            tcp_user_timeout: 0,
            tcp_socket_buffer: 0,
            tcp_defer_accept: true,
            dns_max_ttl: Seconds(15.0),
            dns_nxdomain_ttl: Seconds(15.0),
            dns_zone_check_period: Seconds::ZERO,
            pidfile: None,
            user: None,
            logfile: None,
            syslog: false,
            syslog_ident: "pgbouncer".into(),
            syslog_facility: "daemon".into(),
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            log_stats: true,
            verbose: 0,
        }
    }
}

/// The TCP options set on client and server sockets (PgBouncer's `tune_socket`): `tcp_keepalive`
/// with `tcp_keepidle` / `tcp_keepintvl` / `tcp_keepcnt`, `tcp_user_timeout`,
/// `tcp_socket_buffer`. A zero means the kernel's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpTuning {
    /// SO_KEEPALIVE.
    pub keepalive: bool,
    /// TCP_KEEPIDLE, seconds.
    pub keepidle: u32,
    /// TCP_KEEPINTVL, seconds.
    pub keepintvl: u32,
    /// TCP_KEEPCNT.
    pub keepcnt: u32,
    /// TCP_USER_TIMEOUT, milliseconds.
    pub user_timeout: u32,
    /// SO_SNDBUF and SO_RCVBUF, bytes.
    pub buffer: u32,
    /// TCP_DEFER_ACCEPT (listening sockets only).
    pub defer_accept: bool,
}

impl General {
    /// The TCP options these settings ask for.
    pub fn tcp_tuning(&self) -> TcpTuning {
        TcpTuning {
            keepalive: self.tcp_keepalive,
            keepidle: self.tcp_keepidle,
            keepintvl: self.tcp_keepintvl,
            keepcnt: self.tcp_keepcnt,
            user_timeout: self.tcp_user_timeout,
            buffer: self.tcp_socket_buffer,
            defer_accept: self.tcp_defer_accept,
        }
    }

    /// The TCP addresses of `listen_addr`, split on commas; empty means unix socket only.
    pub fn listen_addrs(&self) -> Vec<&str> {
        self.listen_addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// The health-check query: `None` = checks disabled, `Some("")` = an empty query
    /// (PgBouncer's `<empty>`), otherwise the SQL to run.
    pub fn health_check_query(&self) -> Option<&str> {
        match self.server_check_query.as_str() {
            "" => None,
            EMPTY_CHECK_QUERY => Some(""),
            q => Some(q),
        }
    }

    /// Makes every relative file path absolute against `base` (the config file's directory),
    /// so pgring finds its files whatever its working directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        for path in self.paths_mut().into_iter().flatten() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    fn paths_mut(&mut self) -> [Option<&mut PathBuf>; 11] {
        [
            self.auth_file.as_mut(),
            self.auth_hba_file.as_mut(),
            self.auth_ident_file.as_mut(),
            self.client_tls_key_file.as_mut(),
            self.client_tls_cert_file.as_mut(),
            self.client_tls_ca_file.as_mut(),
            self.server_tls_ca_file.as_mut(),
            self.server_tls_key_file.as_mut(),
            self.server_tls_cert_file.as_mut(),
            self.pidfile.as_mut(),
            self.logfile.as_mut(),
        ]
    }
}
