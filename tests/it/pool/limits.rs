//! Global limits: pool_size (+ reserve) across shards, max_client_conn, max_db_connections,
//! max_user_connections and the per-database / per-user client caps.

use super::*;

/// 500 clients over two shards; the most server connections PostgreSQL saw at once.
async fn five_hundred_clients(user: &str, extra_general: &str) -> i64 {
    let pgring = Pgring::start(&config_for("transaction", 10, 2, extra_general));
    let watch = BackendWatch::start(user).await;
    let started = Instant::now();
    let errors = run_clients(pgring.port, "app", user, 500, 4, "SELECT pg_sleep(0.005)").await;
    let max = watch.finish().await;
    println!(
        "500 clients ({extra_general:?}): {} in {}, max servers {max}",
        if errors.is_empty() {
            "all done"
        } else {
            "FAILED"
        },
        secs(started.elapsed())
    );
    assert!(
        errors.is_empty(),
        "{} of 500 clients failed, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_holds_across_two_shards_with_500_clients() {
    let _heavy = common::heavy().await;
    let user = pg().fresh_user("pool500");
    let max = five_hundred_clients(&user, "reserve_pool_size = 0").await;
    assert!(
        max <= 10,
        "pool_size 10 over 2 workers, but PostgreSQL saw {max} servers"
    );
    assert!(
        max >= 5,
        "500 clients used only {max} servers: the watch missed the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_plus_reserve_holds_across_two_shards_with_500_clients() {
    let _heavy = common::heavy().await;
    let user = pg().fresh_user("pool500r");
    // Waits are ~0.3 s each (500 clients x 5 ms / 10 servers), so the reserve opens.
    let extra = "reserve_pool_size = 3\nreserve_pool_timeout = 0.1";
    let max = five_hundred_clients(&user, extra).await;
    assert!(
        max <= 13,
        "pool_size 10 + reserve 3, but PostgreSQL saw {max} servers"
    );
    assert!(
        max >= 11,
        "clients waited past reserve_pool_timeout yet the reserve never opened (max {max})"
    );
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_the_sixth_client_with_pgbouncers_error() {
    let user = pg().fresh_user("maxclient");
    let pgring = Pgring::start(&config_for("transaction", 2, 2, "max_client_conn = 5"));
    let params = [("user", user.as_str()), ("database", "app")];
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(common::connect(pgring.port, "app", &user, "").await);
    }
    let refused = Wire::try_login(pgring.port, &params)
        .await
        .err()
        .expect("a 6th client got in with max_client_conn 5");
    assert_eq!(refused.severity(), "FATAL", "{refused}");
    assert_eq!(refused.code(), "53300", "{refused}");
    assert_eq!(
        refused.message(),
        "no more connections allowed (max_client_conn)"
    );
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(
            value(c, "SELECT 1").await.as_deref(),
            Some("1"),
            "client {i} after the refusal"
        );
    }
    drop(clients.pop());
    let started = Instant::now();
    loop {
        match Wire::try_login(pgring.port, &params).await {
            Ok((mut c, _)) => {
                assert_eq!(c.query_value("SELECT 'in'").await.as_deref(), Some("in"));
                break;
            }
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(3),
                "3 s after a client left, a new one is still refused: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_caps_servers_of_a_database() {
    let user = pg().fresh_user("maxdb");
    let mut toml = config_for("transaction", 10, 2, "reserve_pool_size = 0");
    toml.push_str(&database_section("capped", "app", "max_db_connections = 3"));
    let pgring = Pgring::start(&toml);
    let watch = BackendWatch::start(&user).await;
    let errors = run_clients(pgring.port, "capped", &user, 20, 3, "SELECT pg_sleep(0.05)").await;
    let max = watch.finish().await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        max <= 3,
        "max_db_connections 3 (pool_size 10), but PostgreSQL saw {max}"
    );
    assert!(
        max >= 2,
        "20 clients used {max} servers: the watch missed the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_caps_servers_of_a_user() {
    let user = pg().fresh_user("maxuser");
    let mut toml = config_for("transaction", 10, 2, "reserve_pool_size = 0");
    toml.push_str(&format!("\n[users.{user}]\nmax_user_connections = 3\n"));
    let pgring = Pgring::start(&toml);
    let watch = BackendWatch::start(&user).await;
    let errors = run_clients(pgring.port, "app", &user, 20, 3, "SELECT pg_sleep(0.05)").await;
    let max = watch.finish().await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        max <= 3,
        "max_user_connections 3 (pool_size 10), but PostgreSQL saw {max}"
    );
    assert!(
        max >= 2,
        "20 clients used {max} servers: the watch missed the load"
    );
}

/// When one pool holds every server a database allows, idle, another pool of that database must
/// not wait out query_wait_timeout: PgBouncer closes an idle server of the other pool
/// (`evict_connection` in launch_new_connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_evicts_an_idle_server_of_another_user() {
    let first = pg().fresh_user("maxdb_a");
    let second = pg().fresh_user("maxdb_b");
    let mut toml = config_for(
        "transaction",
        10,
        2,
        "reserve_pool_size = 0\nquery_wait_timeout = 5",
    );
    toml.push_str(&database_section("capped", "app", "max_db_connections = 3"));
    let pgring = Pgring::start(&toml);
    let watch = UsersWatch::start(&[first.clone(), second.clone()]).await;
    let errors = run_clients(pgring.port, "capped", &first, 6, 1, "SELECT pg_sleep(0.2)").await;
    assert!(errors.is_empty(), "{errors:?}");
    let started = Instant::now();
    let errors = run_clients(pgring.port, "capped", &second, 1, 1, "SELECT 1").await;
    let took = started.elapsed();
    let max = watch.finish().await;
    assert!(
        errors.is_empty(),
        "the second user's client failed after {}: {errors:?}",
        secs(took)
    );
    assert!(
        took < Duration::from_secs(2),
        "the second user waited {} while the first user's pool held the database's 3 servers idle",
        secs(took)
    );
    assert!(max <= 3, "max_db_connections 3, but PostgreSQL saw {max}");
}

/// The same for max_user_connections across two databases (`evict_user_connection`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_evicts_an_idle_server_of_another_database() {
    let user = pg().fresh_user("maxuser_ev");
    let mut toml = config_for(
        "transaction",
        10,
        2,
        "reserve_pool_size = 0\nquery_wait_timeout = 5",
    );
    toml.push_str(&format!("\n[users.{user}]\nmax_user_connections = 3\n"));
    let pgring = Pgring::start(&toml);
    let watch = BackendWatch::start(&user).await;
    let errors = run_clients(pgring.port, "app", &user, 6, 1, "SELECT pg_sleep(0.2)").await;
    assert!(errors.is_empty(), "{errors:?}");
    let started = Instant::now();
    let errors = run_clients(pgring.port, "bench", &user, 1, 1, "SELECT 1").await;
    let took = started.elapsed();
    let max = watch.finish().await;
    assert!(
        errors.is_empty(),
        "the client of the second database failed after {}: {errors:?}",
        secs(took)
    );
    assert!(
        took < Duration::from_secs(2),
        "a client of the second database waited {} while the first database's pool held the \
         user's 3 servers idle",
        secs(took)
    );
    assert!(max <= 3, "max_user_connections 3, but PostgreSQL saw {max}");
}

/// Logs in until the login succeeds (a slot freed asynchronously), at most 3 s.
async fn login_soon(port: u16, db: &str, user: &str) {
    let started = Instant::now();
    loop {
        match Wire::try_login(port, &[("user", user), ("database", db)]).await {
            Ok((mut c, _)) => {
                assert_eq!(c.query_value("SELECT 'in'").await.as_deref(), Some("in"));
                return;
            }
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(3),
                "3 s after a client of {user}@{db} left, a new one is still refused: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PgBouncer says `client connections exceeded (max_db_client_connections)` with 08P01; pgring
/// refuses like max_client_conn (53300). The assertion holds to the limit's name and FATAL.
fn assert_client_cap_error(refused: &ErrorFields, limit: &str) {
    println!("{limit}: {refused}");
    assert_eq!(refused.severity(), "FATAL", "{refused}");
    assert_eq!(refused.code(), "53300", "{refused}");
    assert!(
        refused.message().ends_with(&format!("({limit})")),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_client_connections_refuses_the_third_client_of_a_database() {
    let (one, other) = (pg().fresh_user("dbcl_a"), pg().fresh_user("dbcl_b"));
    let mut toml = config_for("transaction", 2, 2, "");
    toml.push_str(&database_section(
        "capped",
        "app",
        "max_db_client_connections = 2",
    ));
    let pgring = Pgring::start(&toml);
    let mut clients = vec![
        common::connect(pgring.port, "capped", &one, "").await,
        common::connect(pgring.port, "capped", &one, "").await,
    ];
    let refused = Wire::try_login(pgring.port, &[("user", &other), ("database", "capped")])
        .await
        .err()
        .expect("a third client of `capped` got in with max_db_client_connections 2");
    assert_client_cap_error(&refused, "max_db_client_connections");
    let elsewhere = common::connect(pgring.port, "app", &other, "").await;
    assert_eq!(value(&elsewhere, "SELECT 1").await.as_deref(), Some("1"));
    for c in &clients {
        assert_eq!(value(c, "SELECT 1").await.as_deref(), Some("1"));
    }
    drop(clients.pop());
    login_soon(pgring.port, "capped", &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_client_connections_refuses_the_third_client_of_a_user() {
    let (capped, other) = (pg().fresh_user("usercl_a"), pg().fresh_user("usercl_b"));
    let mut toml = config_for("transaction", 2, 2, "");
    toml.push_str(&format!(
        "\n[users.{capped}]\nmax_user_client_connections = 2\n"
    ));
    let pgring = Pgring::start(&toml);
    let mut clients = vec![
        common::connect(pgring.port, "app", &capped, "").await,
        common::connect(pgring.port, "app", &capped, "").await,
    ];
    let refused = Wire::try_login(pgring.port, &[("user", &capped), ("database", "bench")])
        .await
        .err()
        .expect("a third client of the user got in with max_user_client_connections 2");
    assert_client_cap_error(&refused, "max_user_client_connections");
    let elsewhere = common::connect(pgring.port, "app", &other, "").await;
    assert_eq!(value(&elsewhere, "SELECT 1").await.as_deref(), Some("1"));
    for c in &clients {
        assert_eq!(value(c, "SELECT 1").await.as_deref(), Some("1"));
    }
    drop(clients.pop());
    login_soon(pgring.port, "bench", &capped).await;
}

/// An evicted server's backend has exited before its replacement logs in: with
/// max_user_connections equal to the role's CONNECTION LIMIT in PostgreSQL, clients of two
/// databases taking turns (each turn evicts the other database's servers) never meet
/// PostgreSQL's "too many connections for role". PostgreSQL closes a backend's socket only
/// after the backend has left its process table (pqcomm.c's "synchronous close"), so pgring
/// gives a closed server's slot back at that end of stream, not when it drops the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_backend_has_exited_before_its_replacement_logs_in() {
    let user = pg().fresh_user("evict_strict");
    pg().psql("postgres", &format!("ALTER ROLE {user} CONNECTION LIMIT 2"))
        .expect("setting the role's connection limit");
    let mut toml = config_for(
        "transaction",
        10,
        2,
        "reserve_pool_size = 0\nquery_wait_timeout = 10\nserver_login_retry = 0\nserver_tls_sslmode = \"disable\"",
    );
    toml.push_str(&format!("\n[users.{user}]\nmax_user_connections = 2\n"));
    let pgring = Pgring::start(&toml);
    for turn in 0..40 {
        let db = if turn % 2 == 0 { "app" } else { "bench" };
        let errors = run_clients(pgring.port, db, &user, 2, 1, "SELECT pg_sleep(0.02)").await;
        assert!(
            errors.is_empty(),
            "turn {turn} ({db}), each turn evicting the other database's servers: {errors:?}"
        );
    }
}
