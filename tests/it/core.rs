//! The pooling core (issue 2): many clients over few servers, pool modes, what must never leak
//! from one client to the next, parameters, cancel, a server that is down.

use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use crate::common::wire::Wire;
use crate::common::{
    self, config_for, database_section_on, describe, pg, sqlstate, value, BackendWatch, Pgring,
};

/// One client's share of the 200-client run: every answer is checked, and a transaction must
/// stay on one server from BEGIN to COMMIT.
async fn busy_client(port: u16, user: String, id: i64) -> Result<(), String> {
    let client = common::try_connect(port, "app", &user, "")
        .await
        .map_err(|e| format!("client {id} connect: {}", describe(&e)))?;
    for i in 0..30_i64 {
        let want = id * 1000 + i;
        let row = plus_one(&client, want)
            .await
            .map_err(|e| format!("client {id} query {i}: {}", describe(&e)))?;
        if row != want + 1 {
            return Err(format!(
                "client {id} query {i}: got {row}, want {}",
                want + 1
            ));
        }
        let got = simple_values(&client, &format!("SELECT {want}, 'c{id}'")).await?;
        if got != [want.to_string(), format!("c{id}")] {
            return Err(format!("client {id} simple query {i}: got {got:?}"));
        }
        if i % 10 == 0 {
            transaction_stays_on_one_server(&client, id).await?;
        }
    }
    Ok(())
}

/// BEGIN ... COMMIT as separate round trips (ReadyForQuery 'T' between them): one server throughout.
async fn transaction_stays_on_one_server(
    client: &tokio_postgres::Client,
    id: i64,
) -> Result<(), String> {
    simple_values(client, "BEGIN").await?;
    let first = simple_values(client, "SELECT pg_backend_pid()").await?;
    simple_values(client, "SELECT pg_sleep(0.002)").await?;
    let second = simple_values(client, "SELECT pg_backend_pid()").await?;
    simple_values(client, "COMMIT").await?;
    if first != second {
        return Err(format!(
            "client {id}: a transaction moved from server {first:?} to {second:?}"
        ));
    }
    Ok(())
}

/// Every value of every row of a simple query, in order.
async fn simple_values(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {}", describe(&e)))?;
    let mut values = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            values.extend((0..row.len()).map(|i| row.get(i).unwrap_or("").to_owned()));
        }
    }
    Ok(values)
}

/// `SELECT $1::int8 + 1` through the extended protocol with an unnamed statement (one round
/// trip, no named prepared statement that could be missing on the next server).
async fn plus_one(client: &tokio_postgres::Client, n: i64) -> Result<i64, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT $1::int8 + 1",
            &[(&n, tokio_postgres::types::Type::INT8)],
        )
        .await?;
    Ok(rows[0].get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_200_clients_share_5_servers() {
    let _heavy = common::heavy().await;
    let user = pg().fresh_user("load200");
    let pgring = Pgring::start(&config_for("transaction", 5, 2, ""));
    let watch = BackendWatch::start(&user).await;
    let clients: Vec<_> = (0..200)
        .map(|id| tokio::spawn(busy_client(pgring.port, user.clone(), id)))
        .collect();
    let mut errors = Vec::new();
    for client in clients {
        if let Err(e) = client.await.expect("client task") {
            errors.push(e);
        }
    }
    let max_servers = watch.finish().await;
    assert!(
        errors.is_empty(),
        "{} of 200 clients failed, e.g.:\n{}",
        errors.len(),
        errors[..errors.len().min(10)].join("\n")
    );
    assert!(
        max_servers >= 1,
        "the watch never saw a server connection of {user}"
    );
    assert!(
        max_servers <= 5,
        "pool_size 5, but PostgreSQL had {max_servers} connections of {user}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_clients_do_not_see_each_others_session_state() {
    let pgring = Pgring::start(&config_for("session", 2, 2, ""));
    let a = common::connect(pgring.port, "app", "trust_user", "").await;
    let b = common::connect(pgring.port, "app", "trust_user", "").await;
    a.batch_execute(
        "SET work_mem = '7MB'; CREATE TEMP TABLE only_a (x int); INSERT INTO only_a VALUES (1)",
    )
    .await
    .expect("client a sets up its session");
    assert_ne!(
        value(&a, "SELECT pg_backend_pid()").await,
        value(&b, "SELECT pg_backend_pid()").await
    );
    assert_eq!(value(&b, "SHOW work_mem").await.as_deref(), Some("4MB"));
    let err = b
        .simple_query("SELECT * FROM only_a")
        .await
        .expect_err("b must not see a's temp table");
    assert_eq!(sqlstate(&err), "42P01", "{}", describe(&err));
    assert_eq!(
        value(&a, "SHOW work_mem").await.as_deref(),
        Some("7MB"),
        "a keeps its session"
    );
    assert_eq!(
        value(&a, "SELECT count(*) FROM only_a").await.as_deref(),
        Some("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_a_server_before_the_next_client() {
    let pgring = Pgring::start(&config_for("session", 1, 2, ""));
    let a = common::connect(pgring.port, "app", "trust_user", "").await;
    a.batch_execute("SET work_mem = '7MB'; CREATE TEMP TABLE left_behind (x int); PREPARE left_stmt AS SELECT 1")
        .await
        .expect("client a sets up its session");
    let a_pid = value(&a, "SELECT pg_backend_pid()").await;
    drop(a);
    let b = common::connect(pgring.port, "app", "trust_user", "").await;
    assert_eq!(
        value(&b, "SELECT pg_backend_pid()").await,
        a_pid,
        "pool_size 1: b reuses a's server"
    );
    assert_eq!(
        value(&b, "SHOW work_mem").await.as_deref(),
        Some("4MB"),
        "SET survived the reset"
    );
    assert_eq!(
        value(&b, "SELECT count(*) FROM pg_prepared_statements")
            .await
            .as_deref(),
        Some("0")
    );
    let err = b
        .simple_query("SELECT * FROM left_behind")
        .await
        .expect_err("temp table survived the reset");
    assert_eq!(sqlstate(&err), "42P01", "{}", describe(&err));
}

/// A client that vanishes after BEGIN + INSERT must not hand its open transaction to the next
/// client of the only server; checked for a reset socket and for a polite Terminate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_client_killed_mid_transaction_leaks_nothing() {
    let user = pg().fresh_user("killed");
    let table = "killed_mid_tx";
    pg().psql(
        "app",
        &format!("CREATE TABLE {table} (x int); GRANT ALL ON {table} TO PUBLIC"),
    )
    .expect("create table");
    let pgring = Pgring::start(&config_for("transaction", 1, 2, ""));
    for (round, polite) in [(1, false), (2, true)] {
        let (mut dying, _) =
            Wire::login(pgring.port, &[("user", &user), ("database", "app")]).await;
        dying.simple_query("BEGIN").await.expect("BEGIN");
        dying
            .simple_query(&format!("INSERT INTO {table} VALUES ({round})"))
            .await
            .expect("INSERT");
        if polite {
            dying.send(&common::wire::terminate()).await;
            drop(dying);
        } else {
            dying.abort();
        }
        let next = common::connect(pgring.port, "app", &user, "").await;
        let fresh = value(
            &next,
            "SELECT txid_current_if_assigned() IS NULL AND now() = statement_timestamp()",
        )
        .await;
        assert_eq!(
            fresh.as_deref(),
            Some("t"),
            "round {round}: the next client runs inside the dead client's transaction"
        );
        let rows = value(&next, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(
            rows.as_deref(),
            Some("0"),
            "round {round}: the uncommitted insert became visible"
        );
    }
    let admin = pg().admin("app").await;
    assert_eq!(
        value(&admin, &format!("SELECT count(*) FROM {table}"))
            .await
            .as_deref(),
        Some("0")
    );
}

/// Two clients with different TimeZone share the one server; each must see its own, on every
/// query, with the queries interleaved. One asks with `options=-c TimeZone=...` (through the
/// driver), the other with the TimeZone startup parameter itself (raw startup packet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_clients_see_their_own_timezone_on_a_shared_server() {
    let pgring = Pgring::start(&config_for("transaction", 1, 2, ""));
    let mut config = common::client_config(pgring.port, "app", "trust_user", "");
    config.options("-c TimeZone=America/New_York");
    let ny = common::try_connect_with(&config)
        .await
        .unwrap_or_else(|e| panic!("options=-c TimeZone: {}", describe(&e)));
    let params = [
        ("user", "trust_user"),
        ("database", "app"),
        ("TimeZone", "Asia/Tokyo"),
    ];
    let (mut tokyo, login) = Wire::login(pgring.port, &params).await;
    assert_eq!(
        login.params.get("TimeZone").map(String::as_str),
        Some("Asia/Tokyo"),
        "ParameterStatus at login"
    );
    let plain = common::connect(pgring.port, "app", "trust_user", "").await;
    let server_default = common::value(&pg().admin("app").await, "SHOW TimeZone").await;
    let mut pids = Vec::new();
    for round in 0..10 {
        assert_eq!(
            value(&ny, "SHOW TimeZone").await.as_deref(),
            Some("America/New_York"),
            "round {round}"
        );
        assert_eq!(
            tokyo.query_value("SHOW TimeZone").await.as_deref(),
            Some("Asia/Tokyo"),
            "round {round}"
        );
        assert_eq!(
            value(&plain, "SHOW TimeZone").await,
            server_default,
            "round {round}: a client that asked for nothing"
        );
        pids.push(value(&ny, "SELECT pg_backend_pid()").await);
        pids.push(tokyo.query_value("SELECT pg_backend_pid()").await);
    }
    pids.dedup();
    assert_eq!(
        pids.len(),
        1,
        "pool_size 1: all clients share one server, saw {pids:?}"
    );
}

/// JDBC sends extra_float_digits=3; others send search_path, statement_timeout... pgring accepts
/// them (unlike PgBouncer) and applies them to whichever server the client gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_applies_extra_startup_parameters() {
    let pgring = Pgring::start(&config_for("transaction", 1, 2, ""));
    let params = [
        ("user", "trust_user"),
        ("database", "app"),
        ("extra_float_digits", "3"),
        ("search_path", "pg_catalog, public"),
        ("statement_timeout", "1234"),
        ("application_name", "it-extra-params"),
    ];
    let (mut jdbc, login) = Wire::login(pgring.port, &params).await;
    assert_eq!(
        login.params.get("application_name").map(String::as_str),
        Some("it-extra-params")
    );
    let other = common::connect(pgring.port, "app", "trust_user", "").await;
    for round in 0..3 {
        assert_eq!(
            jdbc.query_value("SHOW extra_float_digits").await.as_deref(),
            Some("3"),
            "round {round}"
        );
        assert_eq!(
            jdbc.query_value("SHOW search_path").await.as_deref(),
            Some("pg_catalog, public")
        );
        assert_eq!(
            jdbc.query_value("SHOW statement_timeout").await.as_deref(),
            Some("1234ms")
        );
        assert_eq!(
            jdbc.query_value("SELECT current_setting('application_name')")
                .await
                .as_deref(),
            Some("it-extra-params")
        );
        // The same server, between two of jdbc's queries, must not carry jdbc's settings.
        assert_eq!(
            value(&other, "SHOW statement_timeout").await.as_deref(),
            Some("0"),
            "round {round}: leaked"
        );
        assert_eq!(
            value(&other, "SHOW extra_float_digits").await.as_deref(),
            Some("1"),
            "round {round}: leaked"
        );
    }
}

/// A startup parameter PostgreSQL rejects fails that client's login as PostgreSQL fails it
/// (22023), every time it is asked for (a refused value is not remembered as accepted), and the
/// pool keeps serving everyone else. One shard, so that each login after the first meets what
/// the first one left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_reports_a_bad_startup_parameter_like_postgres() {
    let pgring = Pgring::start(&config_for("transaction", 1, 1, ""));
    let params = [
        ("user", "trust_user"),
        ("database", "app"),
        ("statement_timeout", "banana"),
    ];
    for attempt in 0..3 {
        let error = match Wire::try_login(pgring.port, &params).await {
            Err(error) => error,
            Ok(_) => panic!("attempt {attempt}: statement_timeout=banana was accepted at login"),
        };
        assert_eq!(error.code(), "22023", "attempt {attempt}: {error}");
        assert!(
            error.message().contains("statement_timeout"),
            "attempt {attempt}: {error}"
        );
    }
    let good = common::connect(pgring.port, "app", "trust_user", "").await;
    assert_eq!(value(&good, "SELECT 1").await.as_deref(), Some("1"));
    assert_eq!(
        value(&good, "SHOW statement_timeout").await.as_deref(),
        Some("0")
    );
}

/// CancelRequest through pgring stops `pg_sleep(30)` within a second. Eight cancels on fresh
/// connections, so that both shards own some clients and receive some cancels; half sent the way
/// tokio-postgres sends them (write, then close at once), half the way libpq does (write, then
/// wait for the server to close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_query_within_a_second_on_every_shard() {
    let _heavy = common::heavy().await;
    let pgring = Pgring::start(&config_for("transaction", 4, 2, ""));
    for round in 0..8 {
        let took = if round % 2 == 0 {
            cancel_like_tokio_postgres(pgring.port, round).await
        } else {
            cancel_like_libpq(pgring.port, round).await
        };
        assert!(
            took < Duration::from_secs(1),
            "round {round}: cancel took {took:?}"
        );
    }
}

/// Cancels through the driver's CancelToken; how long the cancel took to end the query.
async fn cancel_like_tokio_postgres(port: u16, round: u32) -> Duration {
    let client = common::connect(port, "app", "trust_user", "").await;
    common::cancel_a_sleep(client, &format!("round {round}")).await
}

/// Cancels with a raw CancelRequest carrying the BackendKeyData pgring gave at login, then waits
/// for pgring to close that connection, as libpq's PQcancel does.
async fn cancel_like_libpq(port: u16, round: u32) -> Duration {
    let (mut client, login) =
        Wire::login(port, &[("user", "trust_user"), ("database", "app")]).await;
    let (pid, secret) = login.key.expect("BackendKeyData at login");
    cancel_a_sleep_through(&mut client, port, (pid, secret), &format!("round {round}")).await
}

/// Starts `SELECT pg_sleep(30)` on `client`, sends a CancelRequest for `key` to `port` after
/// 300 ms the way libpq does, and checks that the query ends with 57014 within 5 s and that
/// the connection is usable afterwards. Returns how long the cancel took.
async fn cancel_a_sleep_through(
    client: &mut Wire,
    port: u16,
    key: (u32, u32),
    label: &str,
) -> Duration {
    client
        .send(&common::wire::query("SELECT pg_sleep(30)"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    send_cancel(port, key, label).await;
    let err = tokio::time::timeout(Duration::from_secs(5), client.read_result())
        .await
        .unwrap_or_else(|_| panic!("{label}: pg_sleep(30) still running 5 s after the cancel"))
        .expect_err("pg_sleep(30) finished without being cancelled");
    let took = asked.elapsed();
    assert_eq!(err.code(), "57014", "{label}: {err}");
    assert_eq!(
        client.query_value("SELECT 1").await.as_deref(),
        Some("1"),
        "{label}: usable after cancel"
    );
    took
}

/// Sends a CancelRequest for `key` to `port` and waits for pgring to close the connection
/// without an answer, as libpq's PQcancel does.
async fn send_cancel(port: u16, (pid, secret): (u32, u32), label: &str) {
    let mut canceller = Wire::connect(port).await;
    canceller
        .send(&common::wire::cancel_request(pid, secret))
        .await;
    assert!(
        canceller.recv().await.is_none(),
        "{label}: pgring answered a CancelRequest"
    );
}

/// A cancel request still on its way to PostgreSQL when its query ends by itself must hit neither
/// the next query on that server nor the client that asked (PgBouncer 1.18+): here a relay holds
/// cancel requests for a second before PostgreSQL sees them, and the pool has one server.
/// - pgring keeps the canceller's connection open until PostgreSQL has taken the request (as
///   PostgreSQL does, and as libpq's PQcancel waits for), so a client that goes on after its
///   cancel returned cannot have its next query cancelled;
/// - the server, free again, is held back ("being canceled") until the request has landed; the
///   next client waits for it and its query runs to the end;
/// - SHOW POOLS counts both while it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_request_hits_no_later_query() {
    const HELD: Duration = Duration::from_millis(1000);
    let relay = common::slow_cancel_relay(HELD).await;
    let mut toml = config_for("transaction", 1, 1, "");
    toml.push_str(&database_section_on("slow", relay, "app", ""));
    let pgring = Pgring::start(&toml);
    let params = [("user", "trust_user"), ("database", "slow")];
    let (mut first, login) = Wire::login(pgring.port, &params).await;
    let key = login.key.expect("BackendKeyData at login");
    let (mut next, _) = Wire::login(pgring.port, &params).await;
    let console = crate::admin::console(&pgring, "postgres").await;

    first
        .send(&common::wire::query("SELECT pg_sleep(0.3)"))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let port = pgring.port;
    let canceller = tokio::spawn(async move {
        let asked = Instant::now();
        send_cancel(port, key, "late cancel").await;
        asked.elapsed()
    });
    // The query ends by itself, long before its cancel reaches PostgreSQL.
    first
        .read_result()
        .await
        .expect("the first query ends by itself");

    next.send(&common::wire::query("SELECT pg_sleep(1)")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pools = crate::admin::show(&console, "SHOW POOLS").await;
    for (column, want) in [
        ("cl_active_cancel_req", 1),
        ("sv_active_cancel", 1),
        ("sv_being_canceled", 1),
        ("sv_active", 0),
        ("cl_waiting", 1),
    ] {
        assert_eq!(
            pools.num("database", "slow", column),
            want,
            "SHOW POOLS {column} while the cancel is in flight"
        );
    }

    next.read_result().await.unwrap_or_else(|e| {
        panic!("the next client's query was hit by the earlier client's cancel: {e}")
    });
    let held = canceller.await.expect("canceller task");
    assert!(
        held >= HELD - Duration::from_millis(100),
        "pgring closed the cancel connection after {held:?}, before PostgreSQL had the request"
    );
    // And the first client's own next query runs too.
    assert_eq!(first.query_value("SELECT 1").await.as_deref(), Some("1"));
    let pools = crate::admin::show(&console, "SHOW POOLS").await;
    assert_eq!(pools.num("database", "slow", "sv_being_canceled"), 0);
    assert_eq!(pools.num("database", "slow", "cl_active_cancel_req"), 0);
}

/// PgBouncer's peering (1.19+): processes behind one address (a load balancer, or SO_REUSEPORT
/// while a new pgring takes over from an old one) each forward a cancel request that carries
/// another's `peer_id` to that `[peers]` entry. Two pgring processes on their own ports list
/// both, and a third id that points back at the first (a misconfiguration):
/// - a client's key carries its process's peer id where PgBouncer reads it (bytes 1-2);
/// - a client of the first is cancelled by a request sent to the second;
/// - a request for the looping id is forwarded three times at most (the key's TTL), then
///   dropped, and both processes go on serving. (Each hop holds one of the first process's
///   slots for peer 3 until the next hop is done, so the loop needs `pool_size = 3`; with
///   fewer, the last hop waits out `cancel_wait_timeout`, as it would in PgBouncer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_reaching_the_wrong_peer_is_forwarded_to_its_own() {
    let (first, second) = (
        config_for("transaction", 2, 2, "peer_id = 1"),
        config_for("transaction", 2, 2, "peer_id = 2"),
    );
    let port_of = |text: &str| -> u16 {
        let line = text
            .lines()
            .find(|l| l.starts_with("listen_port = "))
            .expect("listen_port");
        line["listen_port = ".len()..].parse().expect("a port")
    };
    let (port1, port2) = (port_of(&first), port_of(&second));
    let peers = format!(
        "\n[peers.1]\nhost = \"127.0.0.1\"\nport = {port1}\n\
         \n[peers.2]\nhost = \"127.0.0.1\"\nport = {port2}\n\
         \n[peers.3]\nhost = \"127.0.0.1\"\nport = {port1}\npool_size = 3\n"
    );
    let mut one = Pgring::start(&(first + &peers));
    let mut two = Pgring::start(&(second + &peers));

    let (mut client, login) =
        Wire::login(port1, &[("user", "trust_user"), ("database", "app")]).await;
    let (pid, secret) = login.key.expect("BackendKeyData at login");
    let peer_id = ((pid >> 16) & 0xff) | (((pid >> 8) & 0xff) << 8);
    assert_eq!(
        peer_id, 1,
        "the key {pid:#010x} should carry peer id 1 in bytes 1-2"
    );
    assert_eq!(
        secret & 3,
        3,
        "a new key carries a full TTL in its low bits"
    );

    let took = cancel_a_sleep_through(&mut client, port2, (pid, secret), "through the peer").await;
    println!("cancelled through the peer in {took:?}");

    // Peer id 3 leads back to the first process: 3 forwards, then the TTL is spent.
    let looping = (pid & 0x7f00_00ff) | (3 << 16);
    send_cancel(port1, (looping, secret), "a looping peer id").await;
    let started = Instant::now();
    while !one.log().contains("TTL is spent") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a request for a peer id that loops was not dropped:\n{}",
            one.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        one.log()
            .matches("forwarding cancel request to peer")
            .count(),
        0,
        "debug lines are off"
    );
    one.assert_running();
    two.assert_running();
    assert_eq!(client.query_value("SELECT 2").await.as_deref(), Some("2"));

    // SHOW PEERS: PgBouncer's columns, one row per entry, pool_size defaulting to the pool's.
    let console = common::connect(port1, "pgbouncer", "postgres", "").await;
    let rows: Vec<Vec<String>> = console
        .simple_query("SHOW PEERS")
        .await
        .unwrap_or_else(|e| panic!("SHOW PEERS: {}", describe(&e)))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..4).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
            }
            _ => None,
        })
        .collect();
    let want: Vec<Vec<String>> = [(1, port1, 2), (2, port2, 2), (3, port1, 3)]
        .iter()
        .map(|(id, port, size)| {
            vec![
                id.to_string(),
                "127.0.0.1".into(),
                port.to_string(),
                size.to_string(),
            ]
        })
        .collect();
    assert_eq!(rows, want);
}

/// A peer's `pool_size` caps the cancel requests travelling to it at once, as PgBouncer caps its
/// connections to the peer: with pool_size 1 and a peer that takes the request but never closes,
/// a second request waits its turn, and SHOW PEER_POOLS counts one travelling and one waiting;
/// both end within their `cancel_wait_timeout`s and the counts go back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_pool_size_caps_the_cancel_requests_travelling_to_it() {
    // The kernel completes the handshake and takes the request; nothing ever answers or closes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the silent peer");
    let silent_port = silent.local_addr().expect("addr").port();
    let mut toml = config_for("transaction", 2, 2, "peer_id = 1\ncancel_wait_timeout = 2");
    toml.push_str(&format!(
        "\n[peers.5]\nhost = \"127.0.0.1\"\nport = {silent_port}\npool_size = 1\n"
    ));
    let pgring = Pgring::start(&toml);
    // A key of peer 5 (bytes 1-2), with a full hop count in the secret's low bits.
    let key = (5u32 << 16 | 0x2a, 0x5eed_0003u32);
    let mut cancellers = Vec::new();
    for _ in 0..2 {
        let mut c = Wire::connect(pgring.port).await;
        c.send(&common::wire::cancel_request(key.0, key.1)).await;
        cancellers.push(c);
    }
    let console = crate::admin::console(&pgring, "postgres").await;
    let counts = |t: &crate::admin::Table| {
        [
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active_cancel",
            "sv_login",
        ]
        .map(|c| t.num("peer_id", "5", c))
    };
    let started = Instant::now();
    loop {
        let seen = counts(&crate::admin::show(&console, "SHOW PEER_POOLS").await);
        if seen == [1, 1, 1, 0] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "one request should travel and one wait: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each request gives up on the silent peer after cancel_wait_timeout (2 s), the second after
    // its wait for the slot: then pgring closes both cancellers' connections.
    for mut c in cancellers {
        let closed = tokio::time::timeout(Duration::from_secs(8), c.recv()).await;
        assert!(
            matches!(closed, Ok(None)),
            "the canceller's connection should close"
        );
    }
    let seen = counts(&crate::admin::show(&console, "SHOW PEER_POOLS").await);
    assert_eq!(seen, [0, 0, 0, 0]);
    drop(silent);
}

/// A database whose server refuses connections: the client gets an 08 error quickly, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refusing_connections_gives_an_08_error_within_the_connect_timeout() {
    let closed_port = common::free_port();
    let mut toml = config_for("transaction", 2, 2, "server_connect_timeout = 3");
    toml.push_str(&database_section_on("down", closed_port, "app", ""));
    let pgring = Pgring::start(&toml);
    assert_server_down_error(pgring.port, Duration::from_secs(3)).await;
}

/// A server that accepts TCP but never answers the login: server_connect_timeout must still end
/// the wait with an 08 error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_never_answering_gives_an_08_error_within_the_connect_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind silent server");
    let silent_port = silent.local_addr().expect("addr").port();
    let mut toml = config_for("transaction", 2, 2, "server_connect_timeout = 2");
    toml.push_str(&database_section_on("down", silent_port, "app", ""));
    let pgring = Pgring::start(&toml);
    assert_server_down_error(pgring.port, Duration::from_secs(2)).await;
    drop(silent);
}

/// Connects to database `down` and runs a query; whichever fails must fail with an 08xxx
/// ErrorResponse within `timeout` plus some slack.
async fn assert_server_down_error(port: u16, timeout: Duration) {
    let started = Instant::now();
    let error = match common::try_connect(port, "down", "trust_user", "").await {
        Err(e) => e,
        Ok(client) => client
            .simple_query("SELECT 1")
            .await
            .expect_err("a query on a dead server succeeded"),
    };
    let took = started.elapsed();
    assert!(
        sqlstate(&error).starts_with("08"),
        "want an 08xxx ErrorResponse, got {}",
        describe(&error)
    );
    assert!(
        took < timeout + Duration::from_secs(3),
        "the error took {took:?} (server_connect_timeout {timeout:?})"
    );
}

/// Extended protocol up to a Flush is not a transaction boundary: with one server, a second
/// client must wait for the first one's Sync, and both get their own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_flush_does_not_release_the_server() {
    let pgring = Pgring::start(&config_for("transaction", 1, 2, ""));
    let (mut first, _) =
        Wire::login(pgring.port, &[("user", "trust_user"), ("database", "app")]).await;
    // Logged in before the first client takes the server, in case login itself needs one.
    let second = common::connect(pgring.port, "app", "trust_user", "").await;
    let mut batch = common::wire::message(b'P', b"\0SELECT pg_backend_pid()\0\0\0");
    batch.extend(common::wire::message(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(common::wire::message(b'E', b"\0\0\0\0\0"));
    batch.extend(common::wire::message(b'H', b""));
    first.send(&batch).await;
    let mut tags = Vec::new();
    while tags.last() != Some(&b'C') {
        let msg = first
            .recv()
            .await
            .expect("reply to Parse/Bind/Execute/Flush");
        assert_ne!(
            msg.tag,
            b'E',
            "error: {}",
            common::wire::ErrorFields::parse(&msg.body)
        );
        tags.push(msg.tag);
    }
    assert_eq!(
        tags, b"12DC",
        "ParseComplete, BindComplete, DataRow, CommandComplete"
    );
    let waiting = tokio::spawn(async move { value(&second, "SELECT 'second'").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "the second client got the server while the first was between Flush and Sync"
    );
    first.send(&common::wire::message(b'S', b"")).await;
    let rfq = first.recv().await.expect("ReadyForQuery after Sync");
    assert_eq!((rfq.tag, rfq.body.as_slice()), (b'Z', &b"I"[..]));
    let second = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("second client still waiting");
    assert_eq!(
        second.expect("second client task").as_deref(),
        Some("second")
    );
}
