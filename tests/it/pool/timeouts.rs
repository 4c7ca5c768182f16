//! What the relay enforces on a client: query_timeout, idle_transaction_timeout,
//! transaction_timeout, client_idle_timeout, client_login_timeout, and statement mode.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_query_and_the_pool_stays_usable() {
    let user = pg().fresh_user("qtimeout");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "query_timeout = 1"));
    let admin = pg().admin("postgres").await;
    let slow = common::connect(pgring.port, "app", &user, "").await;
    let next = common::connect(pgring.port, "app", &user, "").await;
    let asked = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(5),
        slow.simple_query("SELECT pg_sleep(10)"),
    )
    .await
    .expect("pg_sleep(10) still running 5 s into a query_timeout of 1 s")
    .expect_err("pg_sleep(10) finished despite query_timeout 1");
    let took = asked.elapsed();
    println!("query_timeout: {} after {}", describe(&error), secs(took));
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "query_timeout 1 s, but the error came after {}",
        secs(took)
    );
    if let Some(db) = error.as_db_error() {
        assert!(
            db.message().contains("query timeout"),
            "{}",
            describe(&error)
        );
    }
    // The backend must not go on sleeping for 9 more seconds.
    let started = Instant::now();
    loop {
        let sleeping: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 \
                 AND state = 'active' AND query LIKE '%pg_sleep(10)%'",
                &[&user],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if sleeping == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the timed-out pg_sleep(10) still runs on PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value(&next, "SELECT 'next'").await.as_deref(), Some("next"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_closes_the_client_and_rolls_the_server_back() {
    let user = pg().fresh_user("idletx");
    scratch_table("t_pool_idle_tx");
    let pgring = Pgring::start(&config_for(
        "transaction",
        1,
        2,
        "idle_transaction_timeout = 1",
    ));
    let admin = pg().admin("postgres").await;
    let next = common::connect(pgring.port, "app", &user, "").await;
    value(&next, "SELECT 1").await;
    let (mut idler, _) = Wire::login(pgring.port, &[("user", &user), ("database", "app")]).await;
    idler.simple_query("BEGIN").await.expect("BEGIN");
    idler
        .simple_query("INSERT INTO t_pool_idle_tx VALUES ('leaked?')")
        .await
        .expect("INSERT");
    let pid = idler
        .query_value("SELECT pg_backend_pid()")
        .await
        .expect("pid");
    let idle_since = Instant::now();
    let error = error_then_close(&mut idler).await;
    let took = idle_since.elapsed();
    let error = error.expect("the idle-in-transaction client was closed without an error");
    assert!(
        error.message().contains("idle transaction timeout"),
        "{error}"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "idle_transaction_timeout 1 s, but the client was closed after {}",
        secs(took)
    );
    assert_eq!(
        value(&next, "SELECT count(*) FROM t_pool_idle_tx")
            .await
            .as_deref(),
        Some("0"),
        "the abandoned transaction was committed"
    );
    assert_eq!(
        value(&next, "SELECT pg_backend_pid()").await,
        Some(pid),
        "the rolled-back server should be reused (pool_size 1)"
    );
    assert_eq!(idle_in_transaction(&admin, &user).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_timeout_ends_a_long_transaction() {
    let user = pg().fresh_user("txtimeout");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "transaction_timeout = 1"));
    let admin = pg().admin("postgres").await;
    let next = common::connect(pgring.port, "app", &user, "").await;
    value(&next, "SELECT 1").await;
    let (mut busy, _) = Wire::login(pgring.port, &[("user", &user), ("database", "app")]).await;
    let began = Instant::now();
    busy.simple_query("BEGIN").await.expect("BEGIN");
    // Never idle for long: only the transaction's age can end it.
    busy.send(&wire::query("SELECT pg_sleep(0.2)")).await;
    let mut error = None;
    while let Some(msg) = busy.recv().await {
        match msg.tag {
            ERROR_RESPONSE => error = Some(ErrorFields::parse(&msg.body)),
            wire::READY_FOR_QUERY if error.is_none() => {
                assert!(
                    began.elapsed() < Duration::from_secs(4),
                    "transaction still running after 4 s with transaction_timeout 1"
                );
                busy.send_lossy(&wire::query("SELECT pg_sleep(0.2)")).await;
            }
            _ => {}
        }
    }
    let took = began.elapsed();
    let error = error.expect("closed without an error");
    assert!(error.message().contains("transaction timeout"), "{error}");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "transaction_timeout 1 s, but the client was closed after {}",
        secs(took)
    );
    assert_eq!(value(&next, "SELECT 'next'").await.as_deref(), Some("next"));
    assert_eq!(idle_in_transaction(&admin, &user).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_closes_idle_clients_only() {
    let user = pg().fresh_user("clidle");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "client_idle_timeout = 1"));
    let params = [("user", user.as_str()), ("database", "app")];
    let (mut idle, _) = Wire::login(pgring.port, &params).await;
    let (mut chatty, _) = Wire::login(pgring.port, &params).await;
    idle.query_value("SELECT 1").await;
    let since = Instant::now();
    let idle_closed =
        tokio::spawn(async move { (error_then_close(&mut idle).await, since.elapsed()) });
    // A client that speaks every 0.3 s is never idle for 1 s.
    for _ in 0..6 {
        chatty.query_value("SELECT 1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    chatty.query_value("SELECT 'still here'").await;
    let (error, took) = idle_closed.await.expect("idle client task");
    let error = error.expect("the idle client was closed without an error");
    assert!(error.message().contains("client_idle_timeout"), "{error}");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "client_idle_timeout 1 s, but the client was closed after {}",
        secs(took)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_login_timeout_closes_a_silent_connection() {
    // With tcp_defer_accept (the default) the kernel keeps a silent connection from pgring
    // until it speaks (or 45 s pass), as it keeps it from PgBouncer.
    let extra = "client_login_timeout = 1\ntcp_defer_accept = 0";
    let pgring = Pgring::start(&config_for("transaction", 1, 2, extra));
    let mut silent = TcpStream::connect(("127.0.0.1", pgring.port))
        .await
        .expect("connect");
    let since = Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;
    let took = since.elapsed();
    assert!(
        read.is_ok(),
        "a client that sent nothing is still connected after 5 s"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "client_login_timeout 1 s, but the connection closed after {}",
        secs(took)
    );
}

// ---------------------------------------------------------------------------------------------
// Statement mode
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refuses_transaction_blocks_with_pgbouncers_error() {
    let user = pg().fresh_user("stmt");
    let pgring = Pgring::start(&config_for("statement", 2, 2, ""));
    let admin = pg().admin("postgres").await;
    let params = [("user", user.as_str()), ("database", "app")];
    let (mut client, _) = Wire::login(pgring.port, &params).await;
    assert_eq!(client.query_value("SELECT 1").await.as_deref(), Some("1"));
    assert_eq!(client.query_value("SELECT 2").await.as_deref(), Some("2"));
    client.send(&wire::query("BEGIN")).await;
    let error = error_then_close(&mut client)
        .await
        .expect("BEGIN in statement mode: closed without an error");
    assert_eq!(
        error.message(),
        "transaction blocks not allowed in statement pooling mode",
        "{error}"
    );
    let next = common::connect(pgring.port, "app", &user, "").await;
    for i in 0..3 {
        assert_eq!(
            value(&next, &format!("SELECT {i}")).await,
            Some(i.to_string())
        );
    }
    let started = Instant::now();
    while idle_in_transaction(&admin, &user).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the refused BEGIN left a server in a transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
