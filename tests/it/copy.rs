//! COPY through transaction pooling: a server is in the middle of a COPY until its
//! ReadyForQuery, whatever the client sends meanwhile, and is handed back clean after every
//! ending (CopyDone, CopyFail, an error the server finds in the data). Simple protocol (psql's
//! `\copy`, pgbench -i) and extended protocol (tokio-postgres sends Bind/Execute/Sync before the
//! data and a second Sync after CopyDone: PostgreSQL ignores the first, so two Syncs get one
//! ReadyForQuery), with and without a named statement. Each test runs on a pool of one server,
//! so whatever a COPY leaves behind is met by the next query.

use std::time::Duration;

use crate::common::wire::{self, Wire};
use crate::common::{self, config_for, describe, pg, value, Pgring};
use futures::{SinkExt, TryStreamExt};

/// One server, two shards: every query of the test meets the server the COPY used.
fn pooler() -> Pgring {
    pooler_with("")
}

fn pooler_with(extra_general: &str) -> Pgring {
    Pgring::start(&config_for("transaction", 1, 2, extra_general))
}

const ROWS: usize = 100_000;

fn rows_text(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("{i}\tr{i}\n")).collect()
}

/// A table of the test's own (the suite runs twice against one cluster).
async fn table(user: &str) -> String {
    let name = format!("{user}_copy_{}", std::process::id());
    let admin = pg().admin("app").await;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY, t text); \
             GRANT ALL ON {name} TO {user}"
        ))
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {}", describe(&e)));
    name
}

/// The server is idle and out of any transaction, and it went back to the pool: a second
/// client of the one-server pool gets it.
async fn assert_released(
    client: &tokio_postgres::Client,
    bystander: &tokio_postgres::Client,
    what: &str,
) {
    let got = tokio::time::timeout(Duration::from_secs(10), value(bystander, "SELECT 'free'"))
        .await
        .unwrap_or_else(|_| panic!("{what}: the server was not given back to the pool"));
    assert_eq!(got.as_deref(), Some("free"), "{what}");
    assert_clean(client, what).await;
}

/// The server is idle and out of any transaction: a fresh transaction sees no leftover state.
async fn assert_clean(client: &tokio_postgres::Client, what: &str) {
    assert_eq!(
        value(client, "SELECT now() = statement_timestamp()")
            .await
            .as_deref(),
        Some("t"),
        "{what}: the server was handed back inside a transaction"
    );
    assert_eq!(
        value(client, "SELECT 41 + 1").await.as_deref(),
        Some("42"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_copy_in_and_out_keep_the_server_in_step() {
    extended_copy("copyext", "").await;
}

/// The same with prepared statements off: only the relay's count of owed ReadyForQuery
/// messages is at stake (before the fix the server stayed with its client after every COPY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_copy_releases_the_server_with_prepared_statements_off() {
    extended_copy("copyextoff", "max_prepared_statements = 0").await;
}

async fn extended_copy(name: &str, extra_general: &str) {
    let user = pg().fresh_user(name);
    let t = table(&user).await;
    let pgring = pooler_with(extra_general);
    let client = common::connect(pgring.port, "app", &user, "").await;
    let bystander = common::connect(pgring.port, "app", &user, "").await;

    // COPY FROM STDIN through an unnamed statement, then through a named (prepared) one.
    for (round, named) in [(0, false), (1, true)] {
        let sql = format!("COPY {t} FROM STDIN");
        let sink = if named {
            let stmt = client.prepare(&sql).await.expect("prepare COPY");
            client.copy_in(&stmt).await
        } else {
            client.copy_in(&sql).await
        }
        .unwrap_or_else(|e| panic!("copy_in: {}", describe(&e)));
        futures::pin_mut!(sink);
        for chunk in 0..10 {
            let data = rows_text(round * ROWS + chunk * ROWS / 10, ROWS / 10);
            sink.send(bytes::Bytes::from(data)).await.expect("CopyData");
        }
        let n = sink
            .finish()
            .await
            .unwrap_or_else(|e| panic!("CopyDone: {}", describe(&e)));
        assert_eq!(n, ROWS as u64, "round {round}");
        assert_released(&client, &bystander, "after COPY FROM STDIN").await;
    }
    assert_eq!(
        value(&client, &format!("SELECT count(*) FROM {t}"))
            .await
            .as_deref(),
        Some("200000")
    );

    // COPY TO STDOUT: every byte arrives, then the server is clean.
    let out = client
        .copy_out(&format!("COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT"))
        .await
        .unwrap_or_else(|e| panic!("copy_out: {}", describe(&e)));
    let chunks: Vec<bytes::Bytes> = out.try_collect().await.expect("CopyData out");
    let text: Vec<u8> = chunks.concat();
    assert_eq!(text, rows_text(0, 2 * ROWS).into_bytes());
    assert_released(&client, &bystander, "after COPY TO STDOUT").await;

    // The server finds bad data mid-COPY: the client gets 22P02, nothing is half-loaded, and
    // the server is handed back in step (the next queries get their own answers).
    let sink = client
        .copy_in(&format!("COPY {t} FROM STDIN"))
        .await
        .expect("copy_in");
    futures::pin_mut!(sink);
    let mut bad = rows_text(5 * ROWS, 1000);
    bad.push_str("not-a-number\tx\n");
    bad.push_str(&rows_text(6 * ROWS, 1000));
    let failed = async {
        sink.send(bytes::Bytes::from(bad)).await?;
        sink.finish().await
    }
    .await;
    let e = failed.expect_err("bad data must fail the COPY");
    assert_eq!(common::sqlstate(&e), "22P02", "{}", describe(&e));
    assert_released(&client, &bystander, "after a COPY the server refused").await;
    assert_eq!(
        value(&client, &format!("SELECT count(*) FROM {t}"))
            .await
            .as_deref(),
        Some("200000")
    );

    // A COPY the client abandons (the sink is dropped: tokio-postgres sends CopyFail).
    {
        let sink = client
            .copy_in(&format!("COPY {t} FROM STDIN"))
            .await
            .expect("copy_in");
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(rows_text(7 * ROWS, 1000)))
            .await
            .expect("CopyData");
    }
    assert_released(&client, &bystander, "after CopyFail").await;
    assert_eq!(
        value(&client, &format!("SELECT count(*) FROM {t}"))
            .await
            .as_deref(),
        Some("200000")
    );
}

/// A client that sends a whole extended-protocol COPY FROM STDIN without waiting for the
/// server to ask for data (Parse, Bind, Execute, the rows with a Sync amid them, CopyDone,
/// Sync): PostgreSQL ignores the Sync it reads in copy-in and answers the last one. Through
/// pgring the replies are the same, and the server goes back to the pool at that
/// ReadyForQuery (it used to stay with the client, its exchange taken for still open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_copy_sent_whole_before_copy_in_releases_the_server() {
    let user = pg().fresh_user("copywhole");
    let t = table(&user).await;
    let pgring = pooler_with("");
    let bystander = common::connect(pgring.port, "app", &user, "").await;
    let login = [("user", user.as_str()), ("database", "app")];
    let whole = |from: usize| {
        [
            wire::parse("", &format!("COPY {t} FROM STDIN")),
            wire::bind("", &[]),
            wire::execute(),
            wire::message(b'd', rows_text(from, 10).as_bytes()),
            wire::sync(),
            wire::message(b'd', rows_text(from + 10, 10).as_bytes()),
            wire::message(b'c', &[]),
            wire::sync(),
        ]
        .concat()
    };
    let mut seen = Vec::new();
    for (port, from) in [(pg().port, 0), (pgring.port, 100)] {
        let (mut w, _) = Wire::login(port, &login).await;
        w.send(&whole(from)).await;
        let mut tags = String::new();
        loop {
            let m = w.recv().await.expect("the connection closed mid-COPY");
            tags.push(m.tag as char);
            if m.tag == wire::READY_FOR_QUERY {
                break;
            }
        }
        seen.push(tags);
        if port == pgring.port {
            let got =
                tokio::time::timeout(Duration::from_secs(10), value(&bystander, "SELECT 'free'"))
                    .await
                    .expect("the server was not given back to the pool after the COPY");
            assert_eq!(got.as_deref(), Some("free"));
        }
        w.send(&wire::query("SELECT 1")).await;
        assert_eq!(replies(&mut w).await.tags, ["SELECT 1"]);
    }
    assert_eq!(seen[0], "12GCZ", "directly");
    assert_eq!(seen[1], seen[0], "through pgring");
    assert_eq!(
        value(&bystander, &format!("SELECT count(*) FROM {t}"))
            .await
            .as_deref(),
        Some("40")
    );
}

/// What a simple query brought, up to its ReadyForQuery.
#[derive(Debug)]
struct Replies {
    tags: Vec<String>,
    copied: Vec<u8>,
    error: Option<wire::ErrorFields>,
}

async fn replies(w: &mut Wire) -> Replies {
    let mut got = Replies {
        tags: Vec::new(),
        copied: Vec::new(),
        error: None,
    };
    loop {
        let m = w
            .recv()
            .await
            .expect("the connection closed before ReadyForQuery");
        match m.tag {
            b'd' => got.copied.extend_from_slice(&m.body),
            b'C' => got.tags.push(
                String::from_utf8_lossy(&m.body)
                    .trim_end_matches('\0')
                    .to_string(),
            ),
            b'E' => got.error = Some(wire::ErrorFields::parse(&m.body)),
            b'Z' => return got,
            _ => {}
        }
    }
}

/// Starts `COPY t FROM STDIN` as a simple query: CopyInResponse.
async fn copy_in(w: &mut Wire, t: &str) {
    w.send(&wire::query(&format!("COPY {t} FROM STDIN"))).await;
    let m = w.recv().await.expect("CopyInResponse");
    assert_eq!(m.tag, b'G', "{m:?}");
}

/// A simple-protocol COPY as psql and pgbench -i send it, on the raw wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_copy_ends_by_copydone_copyfail_or_a_server_error() {
    let user = pg().fresh_user("copysimple");
    let t = table(&user).await;
    let pgring = pooler();
    let (mut w, _) = Wire::login(pgring.port, &[("user", &user), ("database", "app")]).await;

    // CopyDone: CopyInResponse, data in pieces, CopyDone, CommandComplete "COPY n".
    copy_in(&mut w, &t).await;
    for chunk in 0..10 {
        let data = rows_text(chunk * 1000, 1000);
        w.send(&wire::message(b'd', data.as_bytes())).await;
    }
    w.send(&wire::message(b'c', &[])).await;
    let done = replies(&mut w).await;
    assert_eq!(done.tags, ["COPY 10000"], "{done:?}");
    assert_eq!(w.query_value("SELECT 7").await.as_deref(), Some("7"));

    // CopyFail: the server answers 57014 with the client's reason, then ReadyForQuery.
    copy_in(&mut w, &t).await;
    w.send(&wire::message(b'd', rows_text(50_000, 10).as_bytes()))
        .await;
    w.send(&wire::message(b'f', b"changed my mind\0")).await;
    let e = replies(&mut w).await.error.expect("CopyFail");
    assert_eq!(e.code(), "57014", "{e:?}");
    assert!(e.message().contains("changed my mind"), "{e:?}");
    assert_eq!(w.query_value("SELECT 8").await.as_deref(), Some("8"));

    // The server refuses a row: its error arrives while the client is still sending; the rest
    // of the data and the CopyDone are discarded by the server, and one ReadyForQuery ends it.
    copy_in(&mut w, &t).await;
    w.send(&wire::message(b'd', b"oops\tx\n")).await;
    for chunk in 0..20 {
        w.send_lossy(&wire::message(
            b'd',
            rows_text(60_000 + chunk * 1000, 1000).as_bytes(),
        ))
        .await;
    }
    w.send_lossy(&wire::message(b'c', &[])).await;
    let e = replies(&mut w).await.error.expect("bad row");
    assert_eq!(e.code(), "22P02", "{e:?}");
    assert_eq!(w.query_value("SELECT 9").await.as_deref(), Some("9"));

    // COPY TO STDOUT in one message with a query after it.
    w.send(&wire::query(&format!(
        "COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT; SELECT 10"
    )))
    .await;
    let Replies {
        tags,
        copied,
        error,
    } = replies(&mut w).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(copied, rows_text(0, 10_000).into_bytes());
    assert_eq!(tags, ["COPY 10000", "SELECT 1"]);

    // The same server, for a client of its own: nothing left over.
    let other = common::connect(pgring.port, "app", &user, "").await;
    assert_clean(&other, "another client after the COPYs").await;
}

/// `pgbench -i` loads its tables with COPY through the pooler (as operators do to set up a
/// load test against the pooled URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initialises_its_tables_through_the_pooler() {
    let user = pg().fresh_user("copyinit");
    let admin = pg().admin("app").await;
    let schema = format!("{user}_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema} AUTHORIZATION {user}; \
             ALTER ROLE {user} SET search_path = {schema}"
        ))
        .await
        .expect("schema");
    let pgring = pooler();
    let out = common::pgbench(pgring.port, &user, &["-i", "-s", "2", "app"]).await;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench -i through pgring:\n{text}");
    let n = admin
        .query_one(
            &format!("SELECT count(*) FROM {schema}.pgbench_accounts"),
            &[],
        )
        .await
        .expect("count");
    assert_eq!(n.get::<_, i64>(0), 200_000);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop schema");
}
