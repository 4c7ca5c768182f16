//! Hermetic tests of the configuration room: defaults, parsing, error reporting, precedence,
//! validation, reload diffs and the shipped reference config.

use super::*;
use std::time::Duration;

/// The shape outside scripts start pgring with; it must keep parsing unchanged.
const OUTSIDE_SCRIPTS: &str = r#"
[general]
listen_addr = "127.0.0.1"
listen_port = 6436
auth_type = "trust"
auth_file = "/tmp/x/users.txt"
pool_mode = "transaction"
default_pool_size = 20
max_client_conn = 15000
admin_users = ["postgres"]

[databases.bench]
host = "127.0.0.1"
port = 5435
dbname = "bench"
"#;

/// The shipped reference deployment (crate-root `config/pgring.toml`).
const REFERENCE: &str = include_str!("../../config/pgring.toml");

/// Parses and validates.
fn parse(text: &str) -> Config {
    Config::from_toml_str(text, "test.toml").unwrap_or_else(|e| panic!("should parse:\n{e}"))
}

/// Parses only: for tests about reading values, where validation rules would be noise
/// (PgBouncer's default auth_type md5 needs an auth_file to validate).
fn read(text: &str) -> Config {
    super::parse::parse(text, "test.toml").unwrap_or_else(|e| panic!("should parse:\n{e}"))
}

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml_str(text, "test.toml") {
        Ok(_) => panic!("should fail:\n{text}"),
        Err(e) => e.problems,
    }
}

#[test]
fn defaults_match_pgbouncer() {
    let g = General::default();
    assert_eq!(g.listen_port, 6432);
    assert_eq!(g.listen_backlog, 128);
    assert_eq!(g.unix_socket_dir, "/tmp");
    assert_eq!(g.unix_socket_mode, FileMode(0o777));
    assert_eq!(g.pool_mode, PoolMode::Session);
    assert_eq!((g.max_client_conn, g.default_pool_size), (100, 20));
    assert_eq!((g.min_pool_size, g.reserve_pool_size), (0, 0));
    assert_eq!(g.reserve_pool_timeout, Seconds(5.0));
    assert_eq!(g.track_extra_parameters, vec!["IntervalStyle"]);
    assert_eq!((g.max_prepared_statements, g.pkt_buf), (200, 4096));
    assert_eq!(g.max_packet_size, 2_147_483_647);
    assert_eq!(g.auth_type, AuthType::Md5);
    assert_eq!(g.auth_query, DEFAULT_AUTH_QUERY);
    assert_eq!(g.server_reset_query, "DISCARD ALL");
    assert_eq!(g.server_check_query, "<empty>");
    assert_eq!(g.server_lifetime.duration(), Duration::from_secs(3600));
    assert_eq!(g.server_idle_timeout.duration(), Duration::from_secs(600));
    assert_eq!(g.query_wait_timeout, Seconds(120.0));
    assert_eq!(g.client_login_timeout, Seconds(60.0));
    assert!(g.query_timeout.is_zero() && g.client_idle_timeout.is_zero());
    assert_eq!(g.server_tls_sslmode, SslMode::Prefer);
    assert!(g.tcp_keepalive && g.log_connections && g.log_stats);
    assert_eq!(
        (g.workers, g.ring_depth, g.spin_before_park_us),
        (0, 128, 200)
    );
}

#[test]
fn empty_file_is_all_defaults_and_needs_an_auth_source() {
    assert_eq!(read(""), Config::default());
    let err = Config::from_toml_str("", "empty.toml").expect_err("md5 without auth_file");
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(err.problems[0].starts_with("empty.toml: [general] auth_type: \"md5\" needs passwords"));
}

#[test]
fn default_auth_query_is_pgbouncers() {
    assert!(DEFAULT_AUTH_QUERY.contains("FROM pg_authid WHERE rolname=$1 AND rolcanlogin"));
    assert!(DEFAULT_AUTH_QUERY.contains("CASE WHEN rolvaliduntil < now() THEN NULL"));
}

#[test]
fn outside_scripts_config_parses() {
    let config = parse(OUTSIDE_SCRIPTS);
    let g = &config.general;
    assert_eq!((g.listen_addr.as_str(), g.listen_port), ("127.0.0.1", 6436));
    assert_eq!(g.auth_type, AuthType::Trust);
    assert_eq!(
        g.auth_file.as_deref(),
        Some(std::path::Path::new("/tmp/x/users.txt"))
    );
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!((g.default_pool_size, g.max_client_conn), (20, 15000));
    assert_eq!(g.admin_users, vec!["postgres"]);
    let bench = config.database("bench").expect("bench entry");
    assert_eq!(
        (bench.host.as_deref(), bench.port),
        (Some("127.0.0.1"), 5435)
    );
    assert_eq!(bench.target_dbname("bench"), "bench");
}

#[test]
fn reference_config_parses_and_validates() {
    let config = parse(REFERENCE);
    let g = &config.general;
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(
        (g.default_pool_size, g.min_pool_size, g.reserve_pool_size),
        (20, 5, 5)
    );
    assert_eq!(g.reserve_pool_timeout.duration(), Duration::from_secs(3));
    assert_eq!((g.max_client_conn, g.listen_port), (10000, 6432));
    assert_eq!(g.auth_type, AuthType::Md5);
    assert_eq!(g.stats_users, vec!["stats"]);
    let (primary, replica) = (&config.databases["agora"], &config.databases["agora_ro"]);
    assert_eq!((primary.port, replica.port), (5432, 5433));
    assert_eq!(replica.target_dbname("agora_ro"), "agora");
}

#[test]
fn load_resolves_relative_paths_against_the_config_directory() {
    let dir = std::env::temp_dir().join(format!("pgring-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("pgring.toml");
    std::fs::write(&path, REFERENCE).expect("write config");
    let loaded = Config::load(&path);
    std::fs::remove_dir_all(&dir).ok();
    let config = loaded.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.general.auth_file, Some(dir.join("userlist.txt")));
}

#[test]
fn load_names_the_file_in_every_problem() {
    let missing = std::path::Path::new("/nonexistent/pgring.toml");
    let err = Config::load(missing).expect_err("missing file");
    assert!(err.problems[0].starts_with("/nonexistent/pgring.toml: cannot read"));
    let ini = Config::load(std::path::Path::new("pgbouncer.ini")).expect_err("ini not yet");
    assert!(err.to_string().contains("cannot read") && ini.problems[0].contains("pgbouncer.ini"));
}

#[test]
fn every_unknown_key_is_reported_with_its_location() {
    let found = problems(
        r#"
        [general]
        lisen_port = 6432
        pool_mode = "transaction"
        frobnicate = 1
        [databases.app]
        hots = "db1"
        [users.alice]
        pool_sise = 3
        [generl]
        x = 1
        "#,
    );
    let expected = [
        "test.toml: [general] lisen_port: unknown key (did you mean `listen_port`?)",
        "test.toml: [general] frobnicate: unknown key",
        "test.toml: [databases.app] hots: unknown key (did you mean `host`?)",
        "test.toml: [users.alice] pool_sise: unknown key (did you mean `pool_size`?)",
        "test.toml: [generl]: unknown table (did you mean `general`?)",
    ];
    for line in expected {
        assert!(
            found.contains(&line.to_owned()),
            "missing {line:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn wrong_types_are_all_reported() {
    let found = problems(
        r#"
        [general]
        listen_port = "6432"
        max_client_conn = -1
        pool_mode = "transactional"
        auth_type = "sha1"
        reserve_pool_timeout = -3
        [databases.app]
        port = 70000
        [users.bob]
        pool_mode = 3
        "#,
    );
    assert!(found
        .contains(&"test.toml: [users.bob] pool_mode: expected a string, found integer".into()));
    let keys = [
        "[general] listen_port:",
        "[general] max_client_conn:",
        "[general] pool_mode:",
        "[general] auth_type:",
        "[general] reserve_pool_timeout:",
        "[databases.app] port:",
        "[users.bob] pool_mode:",
    ];
    for key in keys {
        assert!(
            found.iter().any(|p| p.contains(key)),
            "missing {key:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), keys.len(), "{found:#?}");
    let display = ConfigError { problems: found }.to_string();
    assert_eq!(display.lines().count(), keys.len());
}

#[test]
fn misplaced_settings_get_a_hint() {
    let found = problems("listen_port = 6432\n[databases]\napp = \"host=db1 port=5432\"\n");
    // Problems come in key order (toml::Table is sorted), not file order.
    assert!(
        found[0].contains("[databases] app: expected a table [databases.app], found string"),
        "{found:?}"
    );
    assert!(
        found[1].contains("listen_port: settings go under [general]"),
        "{found:?}"
    );
}

#[test]
fn syntax_errors_carry_line_numbers() {
    let found = problems("[general]\nlisten_port = 6432\npool_mode = \n");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("test.toml: line 3"), "{found:?}");
}

#[test]
fn lists_accept_arrays_and_comma_strings() {
    let config = read(
        r#"
        [general]
        admin_users = "postgres, admin ,ops"
        stats_users = ["stats", "grafana"]
        ignore_startup_parameters = "extra_float_digits,search_path"
        track_extra_parameters = ""
        "#,
    );
    let g = &config.general;
    assert_eq!(g.admin_users, vec!["postgres", "admin", "ops"]);
    assert_eq!(g.stats_users, vec!["stats", "grafana"]);
    assert_eq!(
        g.ignore_startup_parameters,
        vec!["extra_float_digits", "search_path"]
    );
    assert!(g.track_extra_parameters.is_empty());
}

#[test]
fn seconds_accept_integers_and_floats() {
    let config = read(
        "[general]\nreserve_pool_timeout = 0.5\nquery_timeout = 30\nclient_idle_timeout = 0\n",
    );
    let g = &config.general;
    assert_eq!(
        g.reserve_pool_timeout.duration(),
        Duration::from_millis(500)
    );
    assert_eq!(g.query_timeout.timeout(), Some(Duration::from_secs(30)));
    assert_eq!(g.client_idle_timeout.timeout(), None);
    assert_eq!(Seconds(-1.0).duration(), Duration::ZERO);
    assert_eq!(Seconds(f64::INFINITY).duration(), Duration::MAX);
}

#[test]
fn pgbouncer_spellings_are_accepted() {
    let config = parse(
        r#"
        [general]
        auth_type = "scram-sha-256"
        auth_file = "users.txt"
        unix_socket_mode = "0700"
        server_round_robin = 1
        tcp_keepalive = 0
        server_tls_sslmode = "verify-full"
        server_tls_ca_file = "root.crt"
        [databases.app]
        load_balance_hosts = "disable"
        "#,
    );
    let g = &config.general;
    assert_eq!(g.auth_type, AuthType::ScramSha256);
    assert_eq!(g.unix_socket_mode, FileMode(0o700));
    assert!(g.server_round_robin && !g.tcp_keepalive);
    assert_eq!(g.server_tls_sslmode, SslMode::VerifyFull);
    assert_eq!(
        config.databases["app"].load_balance(),
        LoadBalanceHosts::Disable
    );
    assert_eq!(
        read("[general]\nunix_socket_mode = 0o755\n")
            .general
            .unix_socket_mode,
        FileMode(0o755)
    );
}

const PRECEDENCE: &str = r#"
[general]
default_pool_size = 20
reserve_pool_size = 1
min_pool_size = 2
pool_mode = "session"
[databases.sized]
pool_size = 10
reserve_pool_size = 3
min_pool_size = 4
pool_mode = "transaction"
[databases.plain]
[users.capped]
pool_size = 5
reserve_pool_size = 0
pool_mode = "statement"
"#;

#[test]
fn pool_size_precedence_is_user_then_database_then_default() {
    let config = read(PRECEDENCE);
    // PgBouncer 1.23+ (pool_pool_size): a [users] pool_size beats the database's.
    assert_eq!(config.pool_size("sized", "capped"), 5);
    assert_eq!(config.pool_size("sized", "someone"), 10);
    assert_eq!(config.pool_size("plain", "someone"), 20);
    assert_eq!(config.reserve_pool_size("sized", "capped"), 0);
    assert_eq!(config.reserve_pool_size("sized", "someone"), 3);
    assert_eq!(config.reserve_pool_size("plain", "someone"), 1);
    assert_eq!(config.pool_mode("sized", "capped"), PoolMode::Statement);
    assert_eq!(config.pool_mode("sized", "someone"), PoolMode::Transaction);
    assert_eq!(config.pool_mode("plain", "someone"), PoolMode::Session);
    assert_eq!(config.min_pool_size("sized", "capped"), 4);
    assert_eq!(config.min_pool_size("plain", "capped"), 2);
}

#[test]
fn connection_caps_treat_zero_as_unset() {
    let config = read(
        "[general]\nmax_db_connections = 50\n[databases.a]\nmax_db_connections = 0\n[databases.b]\nmax_db_connections = 7\n",
    );
    assert_eq!(config.max_db_connections("a"), 50);
    assert_eq!(config.max_db_connections("b"), 7);
}

#[test]
fn star_entry_is_the_fallback() {
    let config = read(
        r#"
        [databases.app]
        host = "db1"
        [databases."*"]
        host = "db-any"
        pool_size = 7
        "#,
    );
    assert_eq!(
        config.database("app").and_then(|d| d.host.as_deref()),
        Some("db1")
    );
    let other = config.database("reports").expect("fallback");
    assert_eq!(other.host.as_deref(), Some("db-any"));
    assert_eq!(other.target_dbname("reports"), "reports");
    assert_eq!(config.pool_size("reports", "anyone"), 7);
    assert!(read("").database("reports").is_none());
}

#[test]
fn validate_reports_every_cross_key_problem() {
    let found = problems(
        r#"
        [general]
        listen_port = 0
        max_client_conn = 0
        default_pool_size = 5
        min_pool_size = 10
        auth_type = "md5"
        stats_listen = "localhost"
        [databases.pgbouncer]
        port = 0
        [databases.app]
        host = "a,,b"
        pool_size = 3
        "#,
    );
    let expected = [
        "test.toml: [general] listen_port: must not be 0",
        "test.toml: [general] max_client_conn: must be at least 1",
        "test.toml: [general] min_pool_size: 10 is larger than default_pool_size 5",
        "test.toml: [general] stats_listen: \"localhost\" is not an address:port such as \"127.0.0.1:9127\"",
        "test.toml: [general] auth_type: \"md5\" needs passwords: set auth_file, or auth_user for auth_query",
        "test.toml: [databases.pgbouncer]: the name `pgbouncer` is reserved for the admin console",
        "test.toml: [databases.pgbouncer] port: must not be 0",
        "test.toml: [databases.app] host: \"a,,b\" has an empty host in its list",
        "test.toml: [databases.app] min_pool_size: 10 is larger than pool_size 3",
    ];
    for line in expected {
        assert!(
            found.contains(&line.to_owned()),
            "missing {line:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn auth_user_satisfies_password_auth_without_auth_file() {
    parse("[general]\nauth_type = \"scram-sha-256\"\nauth_user = \"pgbouncer\"\n");
    parse("[general]\nauth_type = \"md5\"\n[databases.app]\nauth_user = \"pgbouncer\"\n");
}

#[test]
fn reload_diff_names_changed_keys_and_restart_needs() {
    let old = parse(OUTSIDE_SCRIPTS);
    let mut new = old.clone();
    new.general.listen_port = 6437;
    new.general.default_pool_size = 30;
    new.databases.get_mut("bench").expect("bench").password = Some("s3cret".into());
    new.databases.insert("extra".into(), Database::default());
    new.users.insert("alice".into(), User::default());
    let lines = reload_changes(&old, &new);
    assert_eq!(
        lines,
        vec![
            "general.default_pool_size: 20 -> 30",
            "general.listen_port: 6436 -> 6437 (needs restart)",
            "databases.bench.password: (unset) -> (hidden)",
            "databases.extra: (unset) -> (entry)",
            "users.alice: (unset) -> (entry)",
        ]
    );
    assert!(reload_changes(&old, &old).is_empty());
}

#[test]
fn debug_output_hides_server_passwords() {
    let db = Database {
        user: Some("app".into()),
        password: Some("s3cret".into()),
        ..Database::default()
    };
    let shown = format!("{db:?}");
    assert!(
        !shown.contains("s3cret") && shown.contains("<redacted>"),
        "{shown}"
    );
}

#[test]
fn listen_addrs_and_health_check_helpers() {
    let mut g = General {
        listen_addr: "127.0.0.1, ::1".into(),
        ..General::default()
    };
    assert_eq!(g.listen_addrs(), vec!["127.0.0.1", "::1"]);
    assert_eq!(g.health_check_query(), Some(""));
    g.server_check_query = String::new();
    assert_eq!(g.health_check_query(), None);
    g.server_check_query = "SELECT 1".into();
    assert_eq!(g.health_check_query(), Some("SELECT 1"));
}

#[test]
fn tls_protocol_lists_map_to_the_versions_rustls_speaks() {
    let p = |s: &str| TlsProtocols::parse(s);
    let both = TlsProtocols {
        v12: true,
        v13: true,
        dropped: false,
    };
    assert_eq!(p("secure"), Ok(both));
    assert_eq!(p("TLSv1.2,tlsv1.3"), Ok(both));
    let only13 = p("tlsv1.3").unwrap();
    assert!(only13.v13 && !only13.v12 && !only13.dropped);
    let legacy = p("tlsv1.1:tlsv1.2").unwrap();
    assert!(
        legacy.v12 && !legacy.v13 && legacy.dropped,
        "1.1 is dropped, with a warning"
    );
    assert!(p("tlsv1.0").unwrap_err().contains("leaves no TLS version"));
    assert!(p("sslv3").unwrap_err().contains("unknown TLS protocol"));
}

#[test]
fn tls12_cipher_lists_are_honoured_where_rustls_has_the_suites() {
    let p = Tls12Ciphers::parse;
    for all in [
        "", "default", "secure", "fast", "normal", "compat", "legacy", "insecure",
    ] {
        assert_eq!(
            p(all),
            Tls12Ciphers::default(),
            "{all}: every suite, no warning"
        );
    }
    let listed =
        p("ECDHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-GCM-SHA384,ecdhe-ecdsa-aes128-gcm-sha256");
    assert_eq!(
        listed.names,
        [
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-AES128-GCM-SHA256"
        ]
    );
    assert_eq!(listed.skipped, ["DHE-RSA-AES256-GCM-SHA384"]);
    assert!(!listed.rules);
    let rules = p("HIGH:!aNULL:ECDHE-RSA-AES256-GCM-SHA384");
    assert!(rules.rules && rules.names.is_empty(), "{rules:?}");

    let warning = |ciphers: &str| {
        let mut config = Config::default();
        config.general.client_tls_ciphers = ciphers.into();
        let (errors, warnings) = validate::unsupported(&config);
        assert!(errors.is_empty(), "{errors:?}");
        warnings
            .into_iter()
            .find(|w| w.contains("client_tls_ciphers"))
    };
    assert_eq!(warning("secure"), None);
    assert_eq!(warning("ECDHE-RSA-AES128-GCM-SHA256"), None);
    assert!(warning("HIGH:!aNULL").is_some_and(|w| w.contains("rule syntax")));
    assert!(warning("AES256-SHA").is_some_and(|w| w.contains("names no suite pgring has")));
    assert!(warning("ECDHE-RSA-AES128-GCM-SHA256:AES256-SHA")
        .is_some_and(|w| w.contains("pgring has no AES256-SHA")));
}

#[test]
fn ecdh_curve_names_narrow_the_key_exchange_groups() {
    let p = KxGroups::parse;
    for all in ["", "auto", "default", "Secure"] {
        assert_eq!(p(all), KxGroups::default(), "{all}");
    }
    assert_eq!(p("secp384r1").names, ["P-384"]);
    assert_eq!(p("prime256v1:X25519,P-256").names, ["P-256", "X25519"]);
    let odd = p("brainpoolP512r1,secp384r1");
    assert_eq!(
        (odd.names, odd.unknown),
        (vec!["P-384"], vec!["brainpoolP512r1"])
    );
    let warning = |curve: &str| {
        let mut config = Config::default();
        config.general.client_tls_ecdhcurve = curve.into();
        let (_, warnings) = validate::unsupported(&config);
        warnings.into_iter().find(|w| w.contains("ecdhcurve"))
    };
    assert_eq!(warning("auto"), None);
    assert_eq!(warning("secp384r1"), None);
    assert!(warning("none").is_some_and(|w| w.contains("every key exchange group")));
}
