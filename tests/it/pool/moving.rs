//! Clients moving between shards (`client::balance`). With the test hook
//! `PGRING_TEST_MOVE_CLIENTS=1`, every pooled client moves to the next shard after every
//! transaction, so each request below runs on another shard than the one before: whatever a
//! session carries (parameters, prepared statements, cancel key, client slots, its console row)
//! must come along.

use tokio_postgres::SimpleQueryMessage;

use super::*;

const MOVED: &str = "client moves to another shard";

/// A pgring on 2 shards whose pooled clients move after every transaction; it logs each move.
fn moving_pgring(mode: &str, extra_general: &str) -> Pgring {
    Pgring::start_with_env(
        &config_for(mode, 2, 2, extra_general),
        &[
            ("PGRING_TEST_MOVE_CLIENTS", "1"),
            ("RUST_LOG", "info,pgring::client=debug"),
        ],
    )
}

/// Rows of SHOW CLIENTS for `user`.
async fn client_rows(port: u16, user: &str) -> usize {
    let admin = common::connect(port, "pgbouncer", "postgres", "").await;
    let messages = admin
        .simple_query("SHOW CLIENTS")
        .await
        .unwrap_or_else(|e| panic!("SHOW CLIENTS: {}", describe(&e)));
    let mut user_col = None;
    let mut rows = 0;
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                user_col = cols.iter().position(|c| c.name() == "user");
            }
            SimpleQueryMessage::Row(row) => {
                let col = user_col.expect("SHOW CLIENTS has a user column");
                rows += usize::from(row.get(col) == Some(user));
            }
            _ => {}
        }
    }
    rows
}

/// Waits (up to 5 s) until SHOW CLIENTS lists nobody as `user`.
async fn no_rows_left(port: u16, user: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while client_rows(port, user).await != 0 {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_moving_client_keeps_its_parameters_and_prepared_statements() {
    let pgring = moving_pgring("transaction", "");
    let user = pg().fresh_user("moving_state");
    let mut config = client_config(pgring.port, "app", &user, "");
    config.application_name("mover");
    let client = common::try_connect_with(&config)
        .await
        .unwrap_or_else(|e| panic!("connect: {}", describe(&e)));
    client
        .simple_query("SET DateStyle = 'German'")
        .await
        .unwrap_or_else(|e| panic!("SET: {}", describe(&e)));
    // A named statement, prepared once (on whichever shard the client is on then) and
    // executed on both shards afterwards.
    let plus_one = client
        .prepare("SELECT $1::int4 + 1")
        .await
        .unwrap_or_else(|e| panic!("prepare: {}", describe(&e)));
    for i in 0..6_i32 {
        assert_eq!(
            value(&client, "SHOW DateStyle").await.as_deref(),
            Some("German, DMY"),
            "request {i}: the client's SET must follow it to every shard"
        );
        assert_eq!(
            value(&client, "SHOW application_name").await.as_deref(),
            Some("mover"),
            "request {i}"
        );
        let row = client
            .query_one(&plus_one, &[&i])
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "request {i}: execute the prepared statement: {}",
                    describe(&e)
                )
            });
        assert_eq!(row.get::<_, i32>(0), i + 1, "request {i}");
    }
    assert_eq!(
        client_rows(pgring.port, &user).await,
        1,
        "one console row, wherever it is"
    );
    let moves = pgring.log().matches(MOVED).count();
    assert!(
        moves >= 18,
        "the client moved only {moves} times; log:\n{}",
        pgring.log()
    );
    drop(client);
    no_rows_left(pgring.port, &user, "a moved client's row outlived it").await;
}

/// A CancelRequest names the shard that gave the key; a client that has moved away from it is
/// found on the shard it is on now.
#[tokio::test]
async fn a_cancel_reaches_a_client_that_moved_away_from_its_keys_shard() {
    let pgring = moving_pgring("transaction", "");
    let user = pg().fresh_user("moving_cancel");
    // Its first request runs on the shard that gave the key.
    let home = common::connect(pgring.port, "app", &user, "").await;
    let took = common::cancel_a_sleep(home, "on the key's shard").await;
    assert!(
        took < Duration::from_secs(1),
        "cancel on the key's shard took {took:?}"
    );
    // One request first: the sleep then runs on the other shard.
    let moved = common::connect(pgring.port, "app", &user, "").await;
    assert_eq!(value(&moved, "SELECT 1").await.as_deref(), Some("1"));
    let took = common::cancel_a_sleep(moved, "moved away").await;
    assert!(
        took < Duration::from_secs(1),
        "cancel of a moved client took {took:?}"
    );
}

/// Many clients moving all the time (each with two named statements, 40 rounds): every answer
/// right, no error, and what they hold (client slots under max_client_conn and
/// max_user_client_connections) given back when they leave.
#[tokio::test]
async fn clients_moving_under_load_lose_nothing_and_give_their_slots_back() {
    let _heavy = common::heavy().await;
    let pgring = moving_pgring(
        "transaction",
        "max_client_conn = 30\nmax_user_client_connections = 20",
    );
    let user = pg().fresh_user("moving_load");
    for round in 0..2 {
        let tasks: Vec<_> = (0..20_i64)
            .map(|id| {
                let client = crate::prepared::tokio_postgres_client(pgring.port, user.clone(), id);
                tokio::spawn(client)
            })
            .collect();
        for t in tasks {
            if let Err(e) = t.await.expect("client task") {
                panic!("round {round}: {e}; log:\n{}", pgring.log());
            }
        }
        // The next round needs all 20 user slots again.
        no_rows_left(
            pgring.port,
            &user,
            &format!("round {round}: clients still listed"),
        )
        .await;
    }
    assert!(pgring.log().matches(MOVED).count() >= 1000);
}

/// A session-mode client holds its server between transactions: it never moves.
#[tokio::test]
async fn a_session_mode_client_stays_on_its_shard() {
    let pgring = moving_pgring("session", "");
    let user = pg().fresh_user("moving_session");
    let client = common::connect(pgring.port, "app", &user, "").await;
    let pid = value(&client, "SELECT pg_backend_pid()").await;
    for _ in 0..5 {
        assert_eq!(value(&client, "SELECT pg_backend_pid()").await, pid);
    }
    assert_eq!(pgring.log().matches(MOVED).count(), 0);
}
