//! Checks of the fixture itself, straight to PostgreSQL with no pgring in between: if these fail,
//! every other failure of the run is suspect.

use crate::common::{self, pg, sqlstate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_users_log_in_directly_with_their_method() {
    let port = pg().port;
    for (user, password) in [
        ("postgres", ""),
        ("trust_user", ""),
        ("md5_user", "md5pass"),
        ("scram_user", "scrampass"),
    ] {
        let client = common::connect(port, "app", user, password).await;
        assert_eq!(
            common::value(&client, "SELECT current_user")
                .await
                .as_deref(),
            Some(user)
        );
        // Everyone may create things in `app`.
        client
            .batch_execute("CREATE TEMP TABLE fixture_t (x int); INSERT INTO fixture_t VALUES (1)")
            .await
            .unwrap_or_else(|e| panic!("{user} cannot use app: {}", common::describe(&e)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_password_users_are_refused_with_a_wrong_password() {
    let port = pg().port;
    for user in ["md5_user", "scram_user"] {
        let err = common::try_connect(port, "app", user, "wrong").await.err();
        let err = err.unwrap_or_else(|| panic!("{user} logged in with a wrong password"));
        assert_eq!(
            sqlstate(&err),
            "28P01",
            "{user}: {}",
            common::describe(&err)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_passwords_are_stored_as_md5_and_scram() {
    let admin = pg().admin("postgres").await;
    let secret = |user: &'static str| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                    &[&user],
                )
                .await
                .expect("reading pg_authid");
            row.get::<_, String>(0)
        }
    };
    assert!(secret("md5_user").await.starts_with("md5"));
    assert!(secret("scram_user").await.starts_with("SCRAM-SHA-256$"));
    let hba = common::value(
        &admin,
        "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = 'scram-sha-256'",
    )
    .await;
    assert_eq!(hba.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_bench_database_has_pgbench_tables() {
    let client = common::connect(pg().port, "bench", "trust_user", "").await;
    let accounts = common::value(&client, "SELECT count(*) FROM pgbench_accounts").await;
    assert_eq!(accounts.as_deref(), Some("100000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_fresh_users_log_in_and_are_listed() {
    let user = pg().fresh_user("fixture_fresh");
    let client = common::connect(pg().port, "app", &user, "").await;
    assert_eq!(
        common::value(&client, "SELECT current_user").await,
        Some(user.clone())
    );
    assert!(common::default_userlist().contains(&format!("\"{user}\" \"\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_raw_wire_client_speaks_to_postgres() {
    use crate::common::wire::Wire;
    let (mut wire, login) =
        Wire::login(pg().port, &[("user", "trust_user"), ("database", "app")]).await;
    assert!(login.key.is_some(), "PostgreSQL sends BackendKeyData");
    assert_eq!(
        login.params.get("server_version").map(|v| &v[..2]),
        Some("15")
    );
    assert_eq!(
        wire.query_value("SELECT 40 + 2").await.as_deref(),
        Some("42")
    );
    let err = wire
        .simple_query("SELECT * FROM no_such_table")
        .await
        .expect_err("missing table");
    assert_eq!(err.code(), "42P01");
    assert_eq!(wire.query_value("SELECT NULL").await, None);
}

/// scripts/pg-cluster, as the demo and the benchmarks use it: primary plus streaming replica.
#[test]
fn fixture_pg_cluster_script_runs_a_primary_and_a_replica() {
    let _bin = common::cluster::pg_bin();
    let dir = std::path::PathBuf::from(format!("/tmp/pgring-it-replica-{}", std::process::id()));
    let (primary, replica) = (common::free_port(), common::free_port());
    let script = common::cluster::pg_cluster_script();
    common::cluster::spawn_watchdog(&dir).expect("watchdog");
    let start = || {
        common::cluster::run(
            std::process::Command::new(&script)
                .arg("start")
                .arg(&dir)
                .args([&primary.to_string(), "--replica", &replica.to_string()]),
        )
    };
    let stop = || common::cluster::run(std::process::Command::new(&script).arg("stop").arg(&dir));
    let started = start();
    let again = start(); // idempotent: already running is fine
    let in_recovery = psql_value(&dir, replica, "SELECT pg_is_in_recovery()");
    let stopped = stop();
    assert_eq!(
        started.expect("pg-cluster start"),
        format!("{primary}\n{replica}\n")
    );
    assert_eq!(
        again.expect("pg-cluster start, again"),
        format!("{primary}\n{replica}\n")
    );
    assert_eq!(
        in_recovery.as_deref(),
        Ok("t"),
        "the replica is a hot standby"
    );
    stopped.expect("pg-cluster stop");
    assert!(!dir.exists(), "pg-cluster stop removes its directory");
    stop().expect("stopping a stopped cluster is not an error");
}

fn psql_value(dir: &std::path::Path, port: u16, sql: &str) -> Result<String, String> {
    let psql = common::cluster::pg_bin().join("psql");
    let out = common::cluster::run(
        std::process::Command::new(psql)
            .args([
                "-XAt",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-p",
                &port.to_string(),
                "-h",
            ])
            .arg(dir)
            .args(["-c", sql]),
    )?;
    Ok(out.trim().to_owned())
}
