//! Waiting for a server: the reserve pool after reserve_pool_timeout, query_wait_timeout.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_opens_only_after_reserve_pool_timeout() {
    let user = pg().fresh_user("reserve");
    let extra = "reserve_pool_size = 2\nreserve_pool_timeout = 1.0";
    let pgring = Pgring::start(&config_for("transaction", 2, 2, extra));
    let admin = pg().admin("postgres").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = common::connect(pgring.port, "app", &user, "").await;
        value(&c, "SELECT 1").await;
        clients.push(Arc::new(c));
    }
    let sleepers: Vec<_> = clients[..2]
        .iter()
        .map(|c| {
            let c = c.clone();
            tokio::spawn(async move { c.simple_query("SELECT pg_sleep(3)").await.map(drop) })
        })
        .collect();
    let (n, _) = wait_backends(&admin, &user, Duration::from_secs(2), |n| n == 2).await;
    assert_eq!(n, 2, "two sleepers should hold the two pool servers");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = clients[2].clone();
    let asked = Instant::now();
    let waiting = tokio::spawn(async move {
        third
            .simple_query("SELECT pg_backend_pid()")
            .await
            .map(drop)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !waiting.is_finished(),
        "the third client got a server {} after asking, before reserve_pool_timeout (1 s)",
        secs(asked.elapsed())
    );
    assert_eq!(
        backends(&admin, &user).await,
        2,
        "a server opened before reserve_pool_timeout"
    );
    let result = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the third client still waits 3.8 s after asking: the reserve pool never opened")
        .expect("task");
    let took = asked.elapsed();
    if let Err(e) = result {
        panic!(
            "the third client failed after {}: {}",
            secs(took),
            describe(&e)
        );
    }
    assert!(
        took < Duration::from_millis(2000),
        "the reserve pool opened {} after the client started waiting (reserve_pool_timeout 1 s)",
        secs(took)
    );
    assert_eq!(
        backends(&admin, &user).await,
        3,
        "pool 2 + one reserve server"
    );
    for s in sleepers {
        within(Duration::from_secs(5), "a sleeper's pg_sleep(3)", s)
            .await
            .expect("sleeper")
            .expect("pg_sleep(3)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_fails_a_waiting_client_with_pgbouncers_error() {
    let user = pg().fresh_user("qwait");
    let extra = "reserve_pool_size = 0\nquery_wait_timeout = 1";
    let pgring = Pgring::start(&config_for("transaction", 1, 2, extra));
    let holder = common::connect(pgring.port, "app", &user, "").await;
    let waiter = common::connect(pgring.port, "app", &user, "").await;
    value(&holder, "SELECT 1").await;
    value(&waiter, "SELECT 1").await;
    let holding =
        tokio::spawn(async move { holder.simple_query("SELECT pg_sleep(3)").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let error = within(
        Duration::from_secs(10),
        "a client waiting with query_wait_timeout 1",
        waiter.simple_query("SELECT 1"),
    )
    .await
    .expect_err("a client got the only server while it was busy");
    let took = asked.elapsed();
    assert_eq!(sqlstate(&error), "08P01", "{}", describe(&error));
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.message(), "query_wait_timeout");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "query_wait_timeout 1 s, but the error came after {}",
        secs(took)
    );
    within(Duration::from_secs(5), "the holder's pg_sleep(3)", holding)
        .await
        .expect("holder")
        .expect("the holder's pg_sleep(3)");
}

/// `query_wait_notify` (PgBouncer 1.25): a client that has waited that long for a server is
/// sent a NOTICE saying it is queued, keeps its place, and gets its answer once a server is
/// free; it is told once per connection, as PgBouncer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_queued_past_query_wait_notify_is_told_once() {
    let (_pgring, mut holder, mut waiter, _) = holder_and_waiter("query_wait_notify = 1").await;
    for round in 0..2 {
        // The holder's open transaction keeps the one server.
        holder.simple_query("BEGIN").await.expect("BEGIN");
        waiter.send(&wire::query("SELECT 7")).await;
        let asked = Instant::now();
        if round == 0 {
            let first = waiter.recv().await.expect("a message while queued");
            assert_eq!(first.tag, b'N', "the first message should be the notice");
            let notice = ErrorFields::parse(&first.body);
            assert_eq!(notice.severity(), "NOTICE");
            assert_eq!(notice.code(), "00000");
            assert_eq!(
                notice.message(),
                "No server connection available in postgres backend, client being queued"
            );
            let after = asked.elapsed();
            assert!(
                after >= Duration::from_millis(900) && after < Duration::from_secs(4),
                "the notice came {} after the query (query_wait_notify = 1 s)",
                secs(after)
            );
        } else {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        holder.simple_query("COMMIT").await.expect("COMMIT");
        // Nothing else came before the answer: the notice was whole, and sent only once.
        let mut tags = Vec::new();
        loop {
            let msg = waiter.recv().await.expect("the answer");
            tags.push(msg.tag);
            if msg.tag == b'Z' {
                break;
            }
        }
        assert_eq!(
            tags,
            b"TDCZ",
            "round {round}: {:?}",
            String::from_utf8_lossy(&tags)
        );
    }
}

/// A cancel request for a client waiting for a server (PgBouncer ignores it: pgbouncer#1222,
/// the client hangs until a server is free): its request leaves the queue and fails as
/// PostgreSQL fails a cancelled query, ERROR 57014 then ReadyForQuery, and the client goes on.
/// Simple protocol (a Query) and extended (Parse/Bind/Execute up to Sync, the error sent before
/// the Sync arrives, as PostgreSQL does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_takes_a_waiting_client_out_of_the_queue() {
    let (pgring, mut holder, mut waiter, key) = holder_and_waiter("query_wait_notify = 0").await;
    let (pid, secret) = key.key.expect("BackendKeyData");
    holder.simple_query("BEGIN").await.expect("BEGIN");
    let cancel = || async {
        let mut c = Wire::connect(pgring.port).await;
        c.send(&wire::cancel_request(pid, secret)).await;
        assert!(c.recv().await.is_none(), "the cancel connection is closed");
    };
    let expect_canceled = |msg: Option<wire::Msg>| {
        let msg = msg.expect("an answer");
        assert_eq!(msg.tag, b'E');
        let e = ErrorFields::parse(&msg.body);
        assert_eq!(
            (e.severity(), e.code(), e.message()),
            ("ERROR", "57014", "canceling statement due to user request")
        );
    };

    // Simple protocol.
    waiter.send(&wire::query("SELECT 7")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    cancel().await;
    expect_canceled(waiter.recv().await);
    assert_eq!(waiter.recv().await.map(|m| m.tag), Some(b'Z'));
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{}",
        secs(asked.elapsed())
    );

    // Extended: the messages before Sync first, then the cancel, then the Sync.
    let mut parse = b"\0SELECT 9\0".to_vec();
    parse.extend_from_slice(&0u16.to_be_bytes());
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut batch = wire::message(b'P', &parse);
    batch.extend(wire::message(b'B', &bind));
    batch.extend(wire::message(b'E', b"\0\0\0\0\0"));
    waiter.send(&batch).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel().await;
    expect_canceled(waiter.recv().await);
    waiter.send(&wire::message(b'S', b"")).await;
    assert_eq!(waiter.recv().await.map(|m| m.tag), Some(b'Z'));

    // Nothing reached PostgreSQL, and both clients go on.
    holder.simple_query("COMMIT").await.expect("COMMIT");
    assert_eq!(waiter.query_value("SELECT 8").await.as_deref(), Some("8"));
    assert_eq!(holder.query_value("SELECT 1").await.as_deref(), Some("1"));
}

/// pgring with one server (no reserve) and two raw clients logged in: one to hold the server,
/// one to wait for it.
async fn holder_and_waiter(extra: &str) -> (Pgring, Wire, Wire, wire::Login) {
    let extra = format!("reserve_pool_size = 0\n{extra}");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, &extra));
    let login = [("user", "trust_user"), ("database", "app")];
    let (holder, _) = Wire::login(pgring.port, &login).await;
    let (waiter, key) = Wire::login(pgring.port, &login).await;
    (pgring, holder, waiter, key)
}

/// Pool app's `cl_waiting`, and how many SHOW CLIENTS rows have `value` in `column`.
async fn waiting_and_clients(
    console: &tokio_postgres::Client,
    column: &str,
    value: &str,
) -> (u64, usize) {
    let pools = crate::admin::show(console, "SHOW POOLS").await;
    let clients = crate::admin::show(console, "SHOW CLIENTS").await;
    let rows = clients.rows_where(column, value);
    (pools.num("database", "app", "cl_waiting"), rows)
}

/// A login to app asking for `statement_timeout = ms` that has sent its startup packet and
/// reads nothing yet (it may have to wait for a server to try the value).
async fn start_login_with_timeout(port: u16, ms: &str) -> Wire {
    let params = [
        ("user", "trust_user"),
        ("database", "app"),
        ("statement_timeout", ms),
    ];
    let mut wire = Wire::connect(port).await;
    wire.send(&wire::startup(&params)).await;
    wire
}

/// Asks `probe` every 20 ms until its answer is `ok`; fails after 2 s with the last answer.
async fn until_seen<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    probe: &impl Fn() -> F,
    ok: impl Fn(&T) -> bool,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = probe().await;
        if ok(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: last seen {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that hangs up while it waits for a server leaves the queue at once, as in
/// PgBouncer, which watches a waiting client's socket: it is no longer counted in `cl_waiting`
/// or listed by SHOW CLIENTS while the server is still held, and never takes the server. The
/// same holds for a client waiting out a PAUSE. A queued client that sends more meanwhile
/// (pipelining) has it answered, in order, once a server is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_that_hangs_up_leaves_the_queue_at_once() {
    let (pgring, mut holder, mut waiter, _) = holder_and_waiter("query_wait_notify = 0").await;
    let console = crate::admin::console(&pgring, "postgres").await;
    let counts = || waiting_and_clients(&console, "database", "app");
    // (cl_waiting, clients of the pool); a PAUSE's waiting is not checked (PgBouncer counts
    // those clients as active).
    let until = |want: (Option<u64>, usize), what: &'static str| {
        let ok = move |now: &(u64, usize)| want.0.is_none_or(|w| w == now.0) && want.1 == now.1;
        until_seen(&counts, ok, what)
    };

    // Pipelined while queued: both answered in order.
    holder.simple_query("BEGIN").await.expect("BEGIN");
    waiter.send(&wire::query("SELECT 7")).await;
    until((Some(1), 2), "one client queued").await;
    waiter.send(&wire::query("SELECT 8")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.simple_query("COMMIT").await.expect("COMMIT");
    for want in ["7", "8"] {
        let rows = waiter.read_result().await.expect("a queued query");
        assert_eq!(rows[0][0].as_deref(), Some(want));
    }

    // Hanging up while queued.
    holder.simple_query("BEGIN").await.expect("BEGIN");
    waiter.send(&wire::query("SELECT 9")).await;
    until((Some(1), 2), "queued again").await;
    drop(waiter);
    until(
        (Some(0), 1),
        "the queued client hung up, the server still held",
    )
    .await;
    holder.simple_query("COMMIT").await.expect("COMMIT");

    // Hanging up while a PAUSE holds the request.
    console.simple_query("PAUSE app").await.expect("PAUSE");
    let login = [("user", "trust_user"), ("database", "app")];
    let (mut paused, _) = Wire::login(pgring.port, &login).await;
    paused.send(&wire::query("SELECT 10")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    until((None, 2), "a client waiting out the PAUSE").await;
    drop(paused);
    until((None, 1), "the paused client hung up").await;
    console.simple_query("RESUME app").await.expect("RESUME");
    assert_eq!(holder.query_value("SELECT 1").await.as_deref(), Some("1"));
}

/// A client that needs a server to log in (a startup parameter value no server of the pool has
/// accepted yet must be tried first) waits for one as PgBouncer's clients waiting at login do:
/// counted in `cl_waiting`, listed `waiting` by SHOW CLIENTS, and leaving the queue at once if
/// it hangs up. A client that needs nothing of a server logs in while every server is held, on
/// whichever shard accepts it: what the pool's first login learned (the greeting, accepted
/// values) is known to all shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_a_server_at_login_is_counted_and_watched() {
    let (pgring, mut holder, _, _) = holder_and_waiter("query_wait_notify = 0").await;
    let console = crate::admin::console(&pgring, "postgres").await;
    let counts = || waiting_and_clients(&console, "state", "waiting");
    // (cl_waiting, clients listed waiting)
    let until = |want: (u64, usize), what: &'static str| {
        until_seen(&counts, move |now: &(u64, usize)| *now == want, what)
    };
    // Accepted once, on whichever shard: no later login with it needs a server.
    let known = [
        ("user", "trust_user"),
        ("database", "app"),
        ("statement_timeout", "4321"),
    ];
    drop(Wire::login(pgring.port, &known).await);

    holder.simple_query("BEGIN").await.expect("BEGIN");
    for round in 0..8 {
        let plain = [("user", "trust_user"), ("database", "app")];
        let logins = async {
            let (mut a, _) = Wire::login(pgring.port, &plain).await;
            let (mut b, _) = Wire::login(pgring.port, &known).await;
            a.send(&wire::terminate()).await;
            b.send(&wire::terminate()).await;
        };
        tokio::time::timeout(Duration::from_secs(2), logins)
            .await
            .unwrap_or_else(|_| panic!("round {round}: a login waited for the held server"));
    }

    let gone = start_login_with_timeout(pgring.port, "5432").await;
    until((1, 1), "a login waiting for the held server").await;
    drop(gone);
    until((0, 0), "the waiting login hung up, the server still held").await;

    let mut patient = start_login_with_timeout(pgring.port, "5432").await;
    until((1, 1), "waiting again").await;
    holder.simple_query("COMMIT").await.expect("COMMIT");
    patient
        .finish_login()
        .await
        .expect("the login once the server is free");
    assert_eq!(
        patient
            .query_value("SHOW statement_timeout")
            .await
            .as_deref(),
        Some("5432ms")
    );
    until((0, 0), "nobody waits").await;
}

/// A login that needs a server (here a startup parameter value not yet accepted) under PAUSE
/// waits for RESUME, counted in `cl_waiting`, and opens no server meanwhile: PAUSE promises the
/// operator that the database has no connections from the pooler until RESUME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_needs_a_server_waits_out_a_pause() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, "query_wait_notify = 0"));
    let plain = [("user", "trust_user"), ("database", "app")];
    drop(Wire::login(pgring.port, &plain).await);
    let console = crate::admin::console(&pgring, "postgres").await;
    console.simple_query("PAUSE app").await.expect("PAUSE");
    let servers = || async {
        let servers = crate::admin::show(&console, "SHOW SERVERS").await;
        servers.rows_where("database", "app")
    };
    assert_eq!(servers().await, 0, "PAUSE closed the idle servers");

    let mut paused = start_login_with_timeout(pgring.port, "6543").await;
    let counts = || waiting_and_clients(&console, "state", "waiting");
    until_seen(
        &counts,
        |now| *now == (1, 1),
        "a login waiting out the PAUSE",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(servers().await, 0, "a server opened under PAUSE");
    assert_eq!(counts().await, (1, 1), "still waiting");

    console.simple_query("RESUME app").await.expect("RESUME");
    let login = tokio::time::timeout(Duration::from_secs(5), paused.finish_login())
        .await
        .expect("the login goes on after RESUME");
    login.expect("the login once resumed");
    assert_eq!(
        paused
            .query_value("SHOW statement_timeout")
            .await
            .as_deref(),
        Some("6543ms")
    );
}
