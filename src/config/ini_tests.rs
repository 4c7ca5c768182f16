//! Hermetic tests of the pgbouncer.ini import: Debian's shipped file, its commented examples
//! switched on, includes, every problem with its file:line, and the unsupported-key report.

use super::super::*;
use super::connstr;
use crate::server::addr::{server_targets, ServerAddr, Target};
use std::path::PathBuf;

/// Debian's /etc/pgbouncer/pgbouncer.ini (PgBouncer 1.18) as shipped: only comments and
/// these settings.
const DEBIAN_DEFAULT: &str = "\
[databases]

;; foodb over Unix socket
;foodb =

;; fallback connect string
;* = host=testserver

;; User-specific configuration
[users]

;user1 = pool_mode=transaction max_user_connections=10

;; Configuration section
[pgbouncer]

;;;
;;; Administrative settings
;;;

logfile = /var/log/postgresql/pgbouncer.log
pidfile = /var/run/postgresql/pgbouncer.pid

;;;
;;; Where to wait for clients
;;;

;; IP address or * which means all IPs
listen_addr = localhost
listen_port = 6432

;; Unix socket is also used for -R.
;; On Debian it should be /var/run/postgresql
;unix_socket_dir = /tmp
;unix_socket_mode = 0777
;unix_socket_group =
unix_socket_dir = /var/run/postgresql

;;;
;;; Authentication settings
;;;

;; any, trust, plain, md5, cert, hba, pam
auth_type = md5
auth_file = /etc/pgbouncer/userlist.txt
";

/// The same file with Debian's commented examples switched on.
const EXAMPLES: &str = "\
[databases]
foodb =
bardb = host=localhost dbname=bazdb
forcedb = host=localhost port=300 user=baz password=foo client_encoding=UNICODE datestyle=ISO connect_query='SELECT 1'
nondefaultdb = pool_size=50 reserve_pool=10
quoted = host=127.0.0.1 connect_query='SELECT ''it''''s'', 1' application_name = 'my app'
* = host=testserver

[users]
user1 = pool_mode=transaction max_user_connections=10

[pgbouncer]
listen_addr = *
listen_port = 6433
unix_socket_mode = 0700
auth_type = md5
auth_file = userlist.txt
admin_users = postgres, admin
stats_users = stats
pool_mode = transaction
server_reset_query = DISCARD ALL; -- a ; here is SQL
server_round_robin = 1
ignore_startup_parameters = extra_float_digits
max_client_conn = 100
default_pool_size = 20
reserve_pool_timeout = 0.5
server_lifetime = 3600
tcp_keepalive = yes
log_connections = 0
auth_hba_file =
";

/// A throwaway directory for one test's files.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("pgring-ini-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("subdir");
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_text(name: &str, text: &str) -> Result<Config, ConfigError> {
    let dir = Dir::new(name);
    Config::load(&dir.write("pgbouncer.ini", text))
}

fn problems(name: &str, text: &str) -> Vec<String> {
    match load_text(name, text) {
        Ok(_) => panic!("should fail:\n{text}"),
        Err(e) => e.problems,
    }
}

#[test]
fn debians_default_file_loads_as_pgbouncer_reads_it() {
    let config = load_text("debian", DEBIAN_DEFAULT).unwrap_or_else(|e| panic!("{e}"));
    let g = &config.general;
    assert_eq!((g.listen_addr.as_str(), g.listen_port), ("localhost", 6432));
    assert_eq!(g.unix_socket_dir, "/var/run/postgresql");
    assert_eq!(g.auth_type, AuthType::Md5);
    assert_eq!(
        g.auth_file.as_deref(),
        Some(std::path::Path::new("/etc/pgbouncer/userlist.txt"))
    );
    assert_eq!(
        g.pidfile.as_deref(),
        Some(std::path::Path::new("/var/run/postgresql/pgbouncer.pid"))
    );
    assert!(config.databases.is_empty() && config.users.is_empty());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // Everything else keeps PgBouncer's defaults.
    assert_eq!(g.pool_mode, PoolMode::Session);
    assert_eq!((g.max_client_conn, g.default_pool_size), (100, 20));
}

#[test]
fn commented_examples_map_onto_the_model() {
    let dir = Dir::new("examples");
    dir.write("userlist.txt", "");
    let config = Config::load(&dir.write("pgbouncer.ini", EXAMPLES))
        .unwrap_or_else(|e| panic!("should load:\n{e}"));
    let g = &config.general;
    assert_eq!((g.listen_addr.as_str(), g.listen_port), ("*", 6433));
    assert_eq!(g.unix_socket_mode, FileMode(0o700));
    assert_eq!(g.auth_file, Some(dir.0.join("userlist.txt")));
    assert_eq!(g.auth_hba_file, None, "an empty value is unset");
    assert_eq!(g.admin_users, vec!["postgres", "admin"]);
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(g.server_reset_query, "DISCARD ALL; -- a ; here is SQL");
    assert!(g.server_round_robin && g.tcp_keepalive && !g.log_connections);
    assert_eq!(g.ignore_startup_parameters, vec!["extra_float_digits"]);
    assert_eq!(g.reserve_pool_timeout, Seconds(0.5));

    let foodb = &config.databases["foodb"];
    assert_eq!((foodb.host.as_deref(), foodb.port), (None, 5432));
    let bardb = &config.databases["bardb"];
    assert_eq!(bardb.host.as_deref(), Some("localhost"));
    assert_eq!(bardb.target_dbname("bardb"), "bazdb");
    let forced = &config.databases["forcedb"];
    assert_eq!(forced.port, 300);
    assert_eq!(forced.user.as_deref(), Some("baz"));
    assert_eq!(forced.password.as_deref(), Some("foo"));
    assert_eq!(forced.client_encoding.as_deref(), Some("UNICODE"));
    assert_eq!(forced.datestyle.as_deref(), Some("ISO"));
    assert_eq!(forced.connect_query.as_deref(), Some("SELECT 1"));
    let sized = &config.databases["nondefaultdb"];
    assert_eq!(
        (sized.pool_size, sized.reserve_pool_size),
        (Some(50), Some(10))
    );
    let quoted = &config.databases["quoted"];
    assert_eq!(quoted.connect_query.as_deref(), Some("SELECT 'it''s', 1"));
    assert_eq!(quoted.application_name.as_deref(), Some("my app"));
    assert_eq!(
        config.database("unknown").and_then(|d| d.host.as_deref()),
        Some("testserver"),
        "`*` is the fallback"
    );
    let user1 = &config.users["user1"];
    assert_eq!(user1.pool_mode, Some(PoolMode::Transaction));
    assert_eq!(user1.max_user_connections, Some(10));
    assert_eq!(config.pool_mode("bardb", "user1"), PoolMode::Transaction);
    // foodb has no host: the server's unix socket in unix_socket_dir, as PgBouncer connects.
    assert!(
        !config.warnings.iter().any(|w| w.contains("foodb")),
        "{:?}",
        config.warnings
    );
    let foodb = &config.databases["foodb"];
    let targets = server_targets(foodb.host.as_deref(), foodb.port, &g.unix_socket_dir);
    assert_eq!(targets, [Target::Fixed(ServerAddr::unix("/tmp", 5432))]);
}

#[test]
fn tls_cipher_and_curve_keys_are_read_not_ignored() {
    let text = "[pgbouncer]\nauth_type = trust\nclient_tls_ecdhcurve = secp384r1\n\
                client_tls_ciphers = ECDHE-RSA-AES128-GCM-SHA256\n";
    let config = load_text("tlskeys", text).unwrap_or_else(|e| panic!("{e}"));
    let g = &config.general;
    assert_eq!(g.client_tls_ecdhcurve, "secp384r1");
    assert_eq!(g.client_tls_ciphers, "ECDHE-RSA-AES128-GCM-SHA256");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn no_listen_addr_means_unix_socket_only_as_in_pgbouncer() {
    let text = "[pgbouncer]\nauth_type = trust\n";
    let config = load_text("unixonly", text).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.general.listen_addrs().is_empty());
    assert_eq!(config.general.unix_socket_dir, "/tmp");
    let none = "[pgbouncer]\nauth_type = trust\nunix_socket_dir =\n";
    let found = problems("nowhere", none);
    assert!(found[0].contains("nowhere to listen"), "{found:?}");
}

#[test]
fn include_is_relative_to_the_including_file() {
    let dir = Dir::new("include");
    dir.write(
        "conf.d/databases.ini",
        "[databases]\napp = host=127.0.0.1 port=5433\n%include more.ini\n",
    );
    dir.write("conf.d/more.ini", "other = host=10.0.0.2\n");
    let main = dir.write(
        "pgbouncer.ini",
        "[pgbouncer]\nauth_type = trust\n%include conf.d/databases.ini\n[pgbouncer]\nlisten_port = 7000\n",
    );
    let config = Config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.databases["app"].port, 5433);
    assert_eq!(config.databases["other"].host.as_deref(), Some("10.0.0.2"));
    assert_eq!(config.general.listen_port, 7000);
}

#[test]
fn include_loops_and_missing_files_are_reported_with_their_line() {
    let dir = Dir::new("loop");
    let main = dir.write("pgbouncer.ini", "[pgbouncer]\n%include pgbouncer.ini\n");
    let err = Config::load(&main).expect_err("loop");
    assert!(err.problems[0].contains("nested more than"), "{err}");
    let main = dir.write("missing.ini", "\n%include nothere.ini\n");
    let err = Config::load(&main).expect_err("missing");
    assert!(
        err.problems[0].contains("missing.ini:2: %include")
            && err.problems[0].contains("cannot read"),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_with_file_and_line() {
    let text = "\
[pgbouncer]
lisen_port = 6432
listen_port = lots
pool_mode = sometimes
unix_socket_mode = 0999
[databases]
app = host=127.0.0.1 prot=5432
bad = host='unterminated
odd = host
[users]
u = pool_size=many
[pgbouncr]
x = 1
";
    let found = problems("many", text);
    let expect = [
        ":2: [pgbouncer] lisen_port: unknown key (did you mean `listen_port`?)",
        ":3: [pgbouncer] listen_port: invalid type: string \"lots\"",
        ":4: [pgbouncer] pool_mode: unknown variant `sometimes`",
        ":5: [pgbouncer] unix_socket_mode: invalid value",
        ":7: [databases] app: prot: unknown parameter (did you mean `port`?)",
        ":8: [databases] bad: unterminated quoted value",
        ":9: [databases] odd: syntax error in connection string",
        ":11: [users] u: pool_size: invalid type: string \"many\"",
        ":13: [pgbouncr]: unknown section (did you mean `pgbouncer`?)",
    ];
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    for (problem, want) in found.iter().zip(expect) {
        assert!(
            problem.contains("pgbouncer.ini") && problem.contains(want),
            "{problem:?} should contain {want:?}"
        );
    }
}

#[test]
fn keys_pgring_ignores_are_named_as_warnings_or_errors() {
    let text = "\
[pgbouncer]
auth_type = trust
sbuf_loopcnt = 10
syslog = 1
tcp_defer_accept = 45
disable_pqexec = 0
dns_zone_check_period = 60
[databases]
app = host=127.0.0.1
";
    let config = load_text("warn", text).unwrap_or_else(|e| panic!("{e}"));
    let warnings = config.warnings.join("\n");
    assert!(
        config.general.tcp_defer_accept,
        "an old config's 45 seconds mean on"
    );
    assert!(config.general.syslog, "syslog is honoured");
    for key in ["sbuf_loopcnt", "dns_zone_check_period"] {
        assert!(warnings.contains(key), "{key} missing from:\n{warnings}");
    }
    assert!(!warnings.contains("disable_pqexec"), "honoured");

    let text = "\
[pgbouncer]
auth_type = hba
auth_hba_file = hba.conf
client_tls_sslmode = verify-ca
client_tls_key_file = k
client_tls_cert_file = c
server_tls_sslmode = verify-full
[databases]
sock = host=/var/run/postgresql
replica = host=10.0.0.1 target_session_attrs=read-only
";
    let found = problems("errors", text).join("\n");
    let needle = "target_session_attrs=read-only: not implemented";
    assert!(found.contains(needle), "{needle} missing from:\n{found}");
    // Value-level gaps are judged after parsing, so they need a file that parses.
    let text = text.replace(" target_session_attrs=read-only", "");
    let found = problems("values", &text).join("\n");
    for needle in [
        "client_tls_sslmode: \"verify-ca\" needs client_tls_ca_file",
        "server_tls_sslmode: \"verify-full\" needs server_tls_ca_file",
    ] {
        assert!(found.contains(needle), "{needle} missing from:\n{found}");
    }
    assert!(!found.contains("auth_type"), "hba is implemented:\n{found}");
    assert!(
        !found.contains("[databases.sock]"),
        "a socket dir is fine:\n{found}"
    );
}

/// PgBouncer's documented two-process example: `peer_id` and a `[peers]` section listing
/// every process of the group, this one included.
#[test]
fn peers_and_peer_id_load_as_pgbouncer_reads_them() {
    let text = "\
[databases]
postgres = host=localhost dbname=postgres
[peers]
1 = host=/tmp/pgbouncer1
2 = host=/tmp/pgbouncer2 port=5555 pool_size=4
[pgbouncer]
auth_type=trust
listen_addr=127.0.0.1
so_reuseport=1
unix_socket_dir=/tmp/pgbouncer2
peer_id=2
";
    let config = load_text("peers", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.general.peer_id, 2);
    let one = &config.peers["1"];
    assert_eq!(
        (one.host.as_deref(), one.port, one.pool_size),
        (Some("/tmp/pgbouncer1"), 6432, None)
    );
    let two = &config.peers["2"];
    assert_eq!(
        (two.host.as_deref(), two.port, two.pool_size),
        (Some("/tmp/pgbouncer2"), 5555, Some(4))
    );

    let text = "\
[pgbouncer]
peer_id = 16384
[peers]
0 = host=10.0.0.1
web = host=10.0.0.2
3 = hots=10.0.0.3
";
    let found = problems("bad_peers", text).join("\n");
    assert!(found.contains("3: hots: unknown parameter"), "{found}");
    let text = text.replace("3 = hots=10.0.0.3\n", "");
    let found = problems("bad_peers2", &text).join("\n");
    for needle in [
        "peer_id: 16384 is above the largest peer id, 16383",
        "[peers.0]: the name is a peer_id",
        "[peers.web]: the name is a peer_id",
    ] {
        assert!(found.contains(needle), "{needle} missing from:\n{found}");
    }
}

#[test]
fn unix_socket_hosts_load_and_unusable_ones_are_refused_up_front() {
    let text = "\
[pgbouncer]
auth_type = trust
[databases]
sock = host=/var/run/postgresql port=5433
abstract = host=@pg
mixed = host=/run/pg,127.0.0.1
";
    let config = load_text("unixhosts", text).unwrap_or_else(|e| panic!("{e}"));
    let sock = &config.databases["sock"];
    let targets = server_targets(sock.host.as_deref(), sock.port, "/tmp");
    assert_eq!(
        targets,
        [Target::Fixed(ServerAddr::unix("/var/run/postgresql", 5433))]
    );

    let long = "d".repeat(120);
    let text = format!(
        "[pgbouncer]\nauth_type = trust\nunix_socket_dir =\nlisten_addr = 127.0.0.1\n\
         [databases]\nnohost = port=5432\nlong = host=/{long}\n"
    );
    let found = problems("badunix", &text).join("\n");
    for needle in [
        "[databases.nohost] host: unset means the server's unix socket in unix_socket_dir, which is empty",
        "[databases.long] host: the socket path /ddd",
    ] {
        assert!(found.contains(needle), "{needle} missing from:\n{found}");
    }
}

#[test]
fn toml_configs_get_the_same_unsupported_report() {
    let dir = Dir::new("toml");
    let path = dir.write(
        "pgring.toml",
        "[general]\nauth_type = \"pam\"\n[databases.app]\nhost = \"127.0.0.1\"\n",
    );
    let err = Config::load(&path).expect_err("pam");
    assert!(
        err.problems[0].contains("auth_type: \"pam\" is not implemented"),
        "{err}"
    );
}

#[test]
fn connection_strings_split_like_pgbouncers() {
    let pairs = connstr("  host = a   port=5 q='x y' e='it''s'").expect("parses");
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [("host", "a"), ("port", "5"), ("q", "x y"), ("e", "it's")]
    );
    assert!(connstr("").expect("empty is fine").is_empty());
    assert!(connstr("host=").is_err());
    assert!(connstr("=x").is_err());
    assert!(connstr("host").is_err());
}
