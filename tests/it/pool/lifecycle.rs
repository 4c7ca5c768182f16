//! Server lifecycle: server_idle_timeout, server_lifetime, min_pool_size, server_check_delay with
//! server_check_query, and servers that died while idle.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_servers() {
    let user = pg().fresh_user("svidle");
    let extra = "server_idle_timeout = 1\nmin_pool_size = 0";
    let pgring = Pgring::start(&config_for("transaction", 3, 2, extra));
    let admin = pg().admin("postgres").await;
    // A whole second each, so that the three overlap even when a loaded host is slow to
    // connect one of them (0.3 s was not always enough: two servers, not three).
    let errors = run_clients(pgring.port, "app", &user, 3, 1, "SELECT pg_sleep(1)").await;
    assert!(errors.is_empty(), "{errors:?}");
    let idle_from = Instant::now();
    assert_eq!(
        backends(&admin, &user).await,
        3,
        "three clients at once: three servers"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        backends(&admin, &user).await,
        3,
        "servers closed before server_idle_timeout"
    );
    let (n, _) = wait_backends(&admin, &user, Duration::from_secs(3), |n| n == 0).await;
    assert_eq!(
        n,
        0,
        "{} after the servers went idle, {n} of them are still open (server_idle_timeout 1 s)",
        secs(idle_from.elapsed())
    );
    let client = common::connect(pgring.port, "app", &user, "").await;
    assert_eq!(
        value(&client, "SELECT 'again'").await.as_deref(),
        Some("again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_retires_a_server_at_release_not_mid_transaction() {
    let user = pg().fresh_user("lifetime");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "server_lifetime = 1"));
    let admin = pg().admin("postgres").await;
    let client = common::connect(pgring.port, "app", &user, "").await;
    let first = pid_of(&client).await;
    client.simple_query("BEGIN").await.expect("BEGIN");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pid_of(&client).await,
        first,
        "the server was replaced inside a transaction"
    );
    client
        .simple_query("COMMIT")
        .await
        .expect("COMMIT past the lifetime");
    let second = pid_of(&client).await;
    assert_ne!(
        second, first,
        "server_lifetime 1 s, but the same server serves after 1.5 s"
    );
    assert!(
        !backend_exists(&admin, first).await,
        "the retired server {first} is still connected"
    );
    assert_eq!(pid_of(&client).await, second, "a young server is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_keeps_servers_open_with_no_clients_whatever_the_shard() {
    let user = pg().fresh_user("minpool");
    let extra = "min_pool_size = 3\nserver_idle_timeout = 1";
    let pgring = Pgring::start(&config_for("transaction", 5, 2, extra));
    let admin = pg().admin("postgres").await;
    // The pool's only client ever lands on shard 1, so shard 0 never saw this pool: the warm set
    // must not depend on which shard clients happen to use.
    let mut client = wire_on_shard(pgring.port, 1, "app", &user).await;
    client.query_value("SELECT 1").await;
    client.send(&wire::terminate()).await;
    drop(client);
    let (n, took) = wait_backends(&admin, &user, Duration::from_secs(3), |n| n >= 3).await;
    assert_eq!(
        n,
        3,
        "min_pool_size 3: {n} servers {} after the only client left",
        secs(took)
    );
    // Past server_idle_timeout: idle, but not below min_pool_size.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        backends(&admin, &user).await,
        3,
        "server_idle_timeout went below min_pool_size"
    );
}

// ---------------------------------------------------------------------------------------------
// Health checks and dead idle servers
// ---------------------------------------------------------------------------------------------

/// How many times the check query (nextval) has run.
async fn checks_run(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM t_pool_check_seq",
            &[],
        )
        .await
        .expect("reading the check counter")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_query_runs_only_on_servers_idle_past_server_check_delay() {
    let user = pg().fresh_user("check");
    pg().psql(
        "app",
        "DROP SEQUENCE IF EXISTS t_pool_check_seq; CREATE SEQUENCE t_pool_check_seq; \
         GRANT USAGE, SELECT ON SEQUENCE t_pool_check_seq TO PUBLIC",
    )
    .expect("creating the check counter");
    let extra =
        "server_check_delay = 0.5\nserver_check_query = \"SELECT nextval('t_pool_check_seq')\"";
    let pgring = Pgring::start(&config_for("transaction", 1, 2, extra));
    let admin = pg().admin("app").await;
    let client = common::connect(pgring.port, "app", &user, "").await;
    let pid = pid_of(&client).await;
    let before = checks_run(&admin).await;
    for _ in 0..5 {
        value(&client, "SELECT 1").await;
    }
    assert_eq!(
        checks_run(&admin).await,
        before,
        "checked a server idle for less than server_check_delay"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        pid_of(&client).await,
        pid,
        "the healthy server should be kept"
    );
    assert_eq!(
        checks_run(&admin).await,
        before + 1,
        "a server idle 0.8 s (server_check_delay 0.5) was reused without its check query"
    );
    value(&client, "SELECT 1").await;
    assert_eq!(
        checks_run(&admin).await,
        before + 1,
        "checked a server that was just used"
    );
}

/// A server killed while idle (here with checks switched off, so nothing but the dead socket
/// says so) must not be handed to the next client: its query succeeds on a fresh server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_idle_is_not_handed_out() {
    let user = pg().fresh_user("deadidle");
    let pgring = Pgring::start(&config_for(
        "transaction",
        1,
        2,
        "server_check_query = \"\"",
    ));
    let admin = pg().admin("postgres").await;
    let client = common::connect(pgring.port, "app", &user, "").await;
    for round in 0..3 {
        let pid = pid_of(&client).await;
        terminate_and_wait(&admin, pid).await;
        match client.simple_query("SELECT pg_backend_pid()").await {
            Ok(_) => {}
            Err(e) => panic!(
                "round {round}: the next query after its idle server was killed failed: {}",
                describe(&e)
            ),
        }
        assert_ne!(
            pid_of(&client).await,
            pid,
            "round {round}: still the killed server?"
        );
    }
}

/// The same across shards: a server killed while idle on shard 0 must not be handed to a
/// client of shard 1 that asks for it (a steal checks the server as a lease there would; it
/// used to send it unchecked, and the client got the dead backend's FATAL 57P01).
#[tokio::test]
async fn a_server_killed_while_idle_on_another_shard_is_not_handed_over() {
    let user = pg().fresh_user("deadsteal");
    let pgring = Pgring::start(&config_for(
        "transaction",
        1,
        2,
        "server_check_query = \"\"",
    ));
    let admin = pg().admin("postgres").await;
    // Both log in first (a login on a shard new to the pool leases a server itself), then the
    // one server ends its last transaction idle on shard 0.
    let mut on1 = wire_on_shard(pgring.port, 1, "app", &user).await;
    let mut on0 = wire_on_shard(pgring.port, 0, "app", &user).await;
    let pid = on0
        .query_value("SELECT pg_backend_pid()")
        .await
        .expect("pid on shard 0");
    terminate_and_wait(&admin, pid.parse().expect("pid")).await;
    let next = within(
        Duration::from_secs(5),
        "a query on shard 1",
        on1.simple_query("SELECT pg_backend_pid()"),
    )
    .await
    .unwrap_or_else(|e| panic!("the query on shard 1 got the server killed on shard 0: {e}"));
    let new_pid = next.first().and_then(|r| r.first().cloned().flatten());
    assert_ne!(
        new_pid.as_deref(),
        Some(pid.as_str()),
        "still the killed server?"
    );
}

/// The same with the default empty-query check, past server_check_delay: the check (or the dead
/// socket) finds the server gone and the query runs on a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_idle_past_server_check_delay_is_replaced() {
    let user = pg().fresh_user("deadcheck");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "server_check_delay = 0.5"));
    let admin = pg().admin("postgres").await;
    let client = common::connect(pgring.port, "app", &user, "").await;
    let pid = pid_of(&client).await;
    terminate_and_wait(&admin, pid).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let next = client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| describe(&e));
    assert!(
        next.is_ok(),
        "the query after the idle server was killed failed: {next:?}"
    );
    assert_ne!(pid_of(&client).await, pid);
}

/// `autodb_idle_timeout`: the pool of a database that only the `*` entry defines is dropped once
/// no client has used it for that long, and its servers are closed (PgBouncer frees such
/// databases); the pool of a database with its own entry stays; the next client of the
/// automatic database gets a fresh pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_automatic_database_is_dropped_after_autodb_idle_timeout() {
    let user = pg().fresh_user("autodb");
    let mut toml = config_for(
        "transaction",
        2,
        2,
        "autodb_idle_timeout = 1\nmin_pool_size = 0",
    );
    toml.push_str(&format!(
        "\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg().port
    ));
    let pgring = Pgring::start(&toml);
    for db in ["postgres", "app"] {
        let errors = run_clients(pgring.port, db, &user, 1, 1, "SELECT 1").await;
        assert!(errors.is_empty(), "{db}: {errors:?}");
    }
    let console = common::connect(pgring.port, "pgbouncer", "postgres", "").await;
    let auto = format!("postgres/{user}");
    let named = format!("app/{user}");
    let listed = pool_names(&console).await;
    assert!(
        listed.contains(&auto) && listed.contains(&named),
        "{listed:?}"
    );

    let admin = pg().admin("postgres").await;
    let started = Instant::now();
    loop {
        let listed = pool_names(&console).await;
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = 'postgres'",
                &[&user],
            )
            .await
            .expect("pg_stat_activity");
        let servers: i64 = row.get(0);
        if !listed.contains(&auto) && servers == 0 {
            assert!(
                listed.contains(&named),
                "the named database's pool went too: {listed:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "after {:?} the automatic database's pool is still there: {listed:?}, {servers} servers",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "dropped before autodb_idle_timeout"
    );
    let errors = run_clients(pgring.port, "postgres", &user, 1, 1, "SELECT 2").await;
    assert!(errors.is_empty(), "a client after the drop: {errors:?}");
}

/// SHOW POOLS as `database/user` names.
async fn pool_names(console: &tokio_postgres::Client) -> Vec<String> {
    let rows = console
        .simple_query("SHOW POOLS")
        .await
        .expect("SHOW POOLS");
    rows.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(format!(
                "{}/{}",
                r.get(0).unwrap_or(""),
                r.get(1).unwrap_or("")
            )),
            _ => None,
        })
        .collect()
}
