//! Prepared statements in transaction mode (issue 5; the real drivers that prepare named
//! statements by default are in `drivers`): the Prisma `?pgbouncer=true` sequence, SQL DEALLOCATE, a reused name and a Flush mid-exchange
//! as raw protocol bytes; pgbench -M prepared with 1000 clients.

use std::time::Duration;

use crate::common::wire::{self, bind, describe_statement, execute, flush, parse, sync, Msg, Wire};
use crate::common::{self, config_for, describe, pg, value, BackendWatch, Pgring};

const LOGIN: [(&str, &str); 2] = [("user", "trust_user"), ("database", "app")];

/// Messages up to and including ReadyForQuery.
async fn until_ready(w: &mut Wire) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        let m = w
            .recv()
            .await
            .expect("connection closed before ReadyForQuery");
        let done = m.tag == wire::READY_FOR_QUERY;
        out.push(m);
        if done {
            return out;
        }
    }
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// The first value of the first DataRow.
fn first_value(msgs: &[Msg]) -> Option<String> {
    let row = msgs.iter().find(|m| m.tag == wire::DATA_ROW)?;
    let len = i32::from_be_bytes(row.body.get(2..6)?.try_into().ok()?);
    let v = row.body.get(6..6 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(v).into_owned())
}

fn error_of(msgs: &[Msg]) -> Option<wire::ErrorFields> {
    msgs.iter()
        .find(|m| m.tag == wire::ERROR_RESPONSE)
        .map(|m| wire::ErrorFields::parse(&m.body))
}

/// Prepares `sql` as `name` (Parse, Sync) and checks that it was accepted.
async fn prepare_ok(w: &mut Wire, name: &str, sql: &str) {
    w.send(&[parse(name, sql), sync()].concat()).await;
    assert_eq!(tags(&until_ready(w).await), "1Z", "Parse {name}");
}

/// Binds and executes `stmt` with one parameter; the value it returns.
async fn run_named(w: &mut Wire, stmt: &str, param: &str) -> Result<Option<String>, String> {
    w.send(&[bind(stmt, &[param]), execute(), sync()].concat())
        .await;
    let msgs = until_ready(w).await;
    match error_of(&msgs) {
        Some(e) => Err(e.to_string()),
        None => Ok(first_value(&msgs)),
    }
}

// ---- drivers ------------------------------------------------------------------------------------

/// One tokio-postgres client: two named statements, 40 rounds, every answer checked.
pub(crate) async fn tokio_postgres_client(port: u16, user: String, id: i64) -> Result<(), String> {
    let client = common::try_connect(port, "app", &user, "")
        .await
        .map_err(|e| format!("client {id} connect: {}", describe(&e)))?;
    let plus = client
        .prepare("SELECT $1::int8 + 1")
        .await
        .map_err(|e| format!("client {id} prepare: {}", describe(&e)))?;
    let concat = client
        .prepare("SELECT $1::text || '-' || $2::int8")
        .await
        .map_err(|e| format!("client {id} prepare: {}", describe(&e)))?;
    for i in 0..40_i64 {
        let n = id * 1000 + i;
        let row = client
            .query_one(&plus, &[&n])
            .await
            .map_err(|e| format!("client {id} iteration {i}: {}", describe(&e)))?;
        if row.get::<_, i64>(0) != n + 1 {
            return Err(format!("client {id} iteration {i}: wrong sum"));
        }
        let label = format!("c{id}");
        let row = client
            .query_one(&concat, &[&label, &i])
            .await
            .map_err(|e| format!("client {id} iteration {i}: {}", describe(&e)))?;
        if row.get::<_, String>(0) != format!("c{id}-{i}") {
            return Err(format!("client {id} iteration {i}: wrong text"));
        }
        if i % 10 == 0 {
            // A statement prepared and dropped (Close) while others stay in use.
            let once = client
                .prepare(&format!("SELECT {id} + $1::int8"))
                .await
                .map_err(|e| format!("client {id} prepare once: {}", describe(&e)))?;
            let row = client
                .query_one(&once, &[&i])
                .await
                .map_err(|e| format!("client {id} once: {}", describe(&e)))?;
            if row.get::<_, i64>(0) != id + i {
                return Err(format!("client {id} iteration {i}: wrong once"));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_named_statements_50_clients_over_4_servers() {
    let _heavy = common::heavy().await;
    let user = pg().fresh_user("prep50");
    let pgring = Pgring::start(&config_for("transaction", 4, 2, ""));
    let watch = BackendWatch::start(&user).await;
    let tasks: Vec<_> = (0..50)
        .map(|id| tokio::spawn(tokio_postgres_client(pgring.port, user.clone(), id)))
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.expect("client task") {
            errors.push(e);
        }
    }
    let max_servers = watch.finish().await;
    assert!(
        errors.is_empty(),
        "{} of 50 clients failed, e.g.:\n{}",
        errors.len(),
        errors[..errors.len().min(10)].join("\n")
    );
    assert!((1..=4).contains(&max_servers), "{max_servers} servers");
}

// ---- raw protocol -------------------------------------------------------------------------------

/// Prisma with `?pgbouncer=true`: every transaction is BEGIN; DEALLOCATE ALL; then s0, s1...
/// prepared again. A second client holds one of the two servers in turn, so consecutive
/// transactions run on different servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prisma_pgbouncer_true_sequence_across_server_switches() {
    let pgring = Pgring::start(&config_for("transaction", 2, 1, ""));
    let (mut prisma, _) = Wire::login(pgring.port, &LOGIN).await;
    let (mut holder, _) = Wire::login(pgring.port, &LOGIN).await;
    let mut pids = std::collections::HashSet::new();
    for round in 0..8_i64 {
        let holding = round % 2 == 0;
        if holding {
            holder.simple_query("BEGIN").await.expect("holder BEGIN");
            holder.simple_query("SELECT 1").await.expect("holder");
        }
        prisma.simple_query("BEGIN").await.expect("BEGIN");
        prisma
            .simple_query("DEALLOCATE ALL")
            .await
            .expect("DEALLOCATE ALL");
        // s0 and s1 mean different queries in every round.
        for (name, sql) in [
            ("s0", format!("SELECT $1::int8 + {round}")),
            (
                "s1",
                format!("SELECT pg_backend_pid() + 0 * $1::int8 + 0 * {round}"),
            ),
        ] {
            prisma
                .send(&[parse(name, &sql), describe_statement(name), sync()].concat())
                .await;
            let msgs = until_ready(&mut prisma).await;
            assert_eq!(
                tags(&msgs),
                "1tTZ",
                "round {round} parse {name}: {:?}",
                error_of(&msgs)
            );
        }
        let sum = run_named(&mut prisma, "s0", "40").await;
        assert_eq!(sum, Ok(Some((40 + round).to_string())), "round {round}");
        let pid = run_named(&mut prisma, "s1", "1").await.expect("s1");
        pids.insert(pid);
        prisma.simple_query("COMMIT").await.expect("COMMIT");
        if holding {
            holder.simple_query("COMMIT").await.expect("holder COMMIT");
        }
    }
    assert!(pids.len() >= 2, "Prisma never changed server: {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_name_and_reuse_of_a_live_name() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, ""));
    let (mut w, _) = Wire::login(pgring.port, &LOGIN).await;
    prepare_ok(&mut w, "pdo_stmt_1", "SELECT $1::int8 * 2").await;
    assert_eq!(
        run_named(&mut w, "pdo_stmt_1", "21").await,
        Ok(Some("42".into()))
    );

    // Reusing a live name: 42P05 as PostgreSQL says it, and the pipeline behind it is skipped.
    w.send(
        &[
            parse("pdo_stmt_1", "SELECT 'other'"),
            bind("pdo_stmt_1", &["1"]),
            execute(),
            sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = until_ready(&mut w).await;
    assert_eq!(tags(&msgs), "EZ");
    let e = error_of(&msgs).expect("error");
    assert_eq!(
        (e.code(), e.message()),
        ("42P05", "prepared statement \"pdo_stmt_1\" already exists")
    );
    assert_eq!(
        run_named(&mut w, "pdo_stmt_1", "5").await,
        Ok(Some("10".into())),
        "still usable"
    );

    // PHP PDO / Rails: SQL DEALLOCATE of the name, answered without PostgreSQL knowing the name.
    let rows = w.simple_query("DEALLOCATE pdo_stmt_1").await;
    assert!(rows.is_ok(), "{rows:?}");
    let gone = run_named(&mut w, "pdo_stmt_1", "5")
        .await
        .expect_err("deallocated");
    assert!(gone.contains("26000"), "{gone}");
    let e = w
        .simple_query("DEALLOCATE pdo_stmt_1")
        .await
        .expect_err("twice");
    assert_eq!(e.code(), "26000", "{e}");
    // The name is free again, also inside a transaction block.
    w.simple_query("BEGIN").await.expect("BEGIN");
    prepare_ok(&mut w, "pdo_stmt_1", "SELECT $1::int8 * 3").await;
    assert_eq!(
        run_named(&mut w, "pdo_stmt_1", "3").await,
        Ok(Some("9".into()))
    );
    w.simple_query("DEALLOCATE PREPARE pdo_stmt_1;")
        .await
        .expect("in a block");
    w.simple_query("COMMIT").await.expect("COMMIT");
    assert_eq!(
        w.query_value("SELECT 'alive'").await.as_deref(),
        Some("alive")
    );
}

/// A client that prepares named statements and never closes them (a driver bug, names made
/// from a counter) is refused at `max_client_prepared_memory` with 53400, keeps what it has and
/// stays connected; another client on the same pool prepares as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaking_statements_is_refused_at_its_memory_cap_alone() {
    let pgring = Pgring::start(&config_for(
        "transaction",
        2,
        2,
        "max_client_prepared_memory = 8192\n",
    ));
    let (mut leaky, _) = Wire::login(pgring.port, &LOGIN).await;
    let (mut other, _) = Wire::login(pgring.port, &LOGIN).await;
    let pad = "x".repeat(900);
    let mut refused_at = None;
    for i in 0..20 {
        let sql = format!("SELECT $1::int8 + {i} -- {pad}");
        leaky
            .send(&[parse(&format!("leak_{i}"), &sql), sync()].concat())
            .await;
        let msgs = until_ready(&mut leaky).await;
        if tags(&msgs) == "EZ" {
            let e = error_of(&msgs).expect("error");
            assert_eq!(e.code(), "53400", "{e}");
            assert!(e.message().contains("max_client_prepared_memory"), "{e}");
            refused_at = Some(i);
            break;
        }
        assert_eq!(tags(&msgs), "1Z", "leak_{i}");
    }
    // About 1 KiB per statement against 8 KiB.
    let refused_at = refused_at.expect("never refused");
    assert!((6..=8).contains(&refused_at), "refused at {refused_at}");
    assert_eq!(
        run_named(&mut leaky, "leak_0", "1").await,
        Ok(Some("1".into())),
        "what it has still works"
    );
    prepare_ok(&mut other, "mine", "SELECT $1::int8 * 2").await;
    assert_eq!(
        run_named(&mut other, "mine", "4").await,
        Ok(Some("8".into()))
    );
    // Closing makes room.
    leaky
        .simple_query("DEALLOCATE leak_0")
        .await
        .expect("DEALLOCATE");
    prepare_ok(&mut leaky, "again", "SELECT $1::int8 - 1").await;
    assert_eq!(
        run_named(&mut leaky, "again", "1").await,
        Ok(Some("0".into()))
    );
}

/// asyncpg style: Parse/Describe/Flush, read the replies, then Bind/Execute/Sync. The Flush is
/// no transaction boundary: with a pool of one, another client must wait until the Sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_inside_an_extended_exchange_keeps_the_server() {
    let pgring = Pgring::start(&config_for("transaction", 1, 1, ""));
    let (mut a, _) = Wire::login(pgring.port, &LOGIN).await;
    let (mut b, _) = Wire::login(pgring.port, &LOGIN).await;
    a.send(
        &[
            parse("__asyncpg_stmt_1__", "SELECT $1::int8 + 1"),
            describe_statement("__asyncpg_stmt_1__"),
            flush(),
        ]
        .concat(),
    )
    .await;
    let mut got = String::new();
    while got.len() < 3 {
        got.push(a.recv().await.expect("reply").tag as char);
    }
    assert_eq!(got, "1tT", "replies before any Sync");
    b.send(&wire::query("SELECT pg_backend_pid()")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        run_named(&mut a, "__asyncpg_stmt_1__", "41").await,
        Ok(Some("42".into()))
    );
    let b_rows = b.read_result().await.expect("b's query");
    assert_eq!(b_rows.len(), 1);
}

/// Three exchanges in one write, the first and last failing at their first message. After
/// an error PostgreSQL skips the rest of the exchange: the first one's eviction (one statement
/// per server) never runs, so the second finds "one" still there, and the third one's simple
/// Query gets no ReadyForQuery, so the server comes to rest at its Sync and goes to the next
/// client (a pool of one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_exchanges_after_an_error_stay_in_step_with_postgres() {
    let pgring = Pgring::start(&config_for(
        "transaction",
        1,
        1,
        "max_prepared_statements = 1",
    ));
    let (mut a, _) = Wire::login(pgring.port, &LOGIN).await;
    let (mut b, _) = Wire::login(pgring.port, &LOGIN).await;
    prepare_ok(&mut a, "one", "SELECT $1::int8 + 1").await;
    a.send(
        &[
            bind("nope", &[]),
            parse("two", "SELECT $1::int8 + 2"),
            sync(),
            bind("one", &["41"]),
            execute(),
            sync(),
            bind("nope", &[]),
            wire::query("SELECT 1"),
            sync(),
        ]
        .concat(),
    )
    .await;
    let first = until_ready(&mut a).await;
    assert_eq!(
        error_of(&first).map(|e| e.code().to_string()).as_deref(),
        Some("26000")
    );
    let second = until_ready(&mut a).await;
    assert_eq!(tags(&second), "2DCZ", "{:?}", error_of(&second));
    assert_eq!(first_value(&second).as_deref(), Some("42"));
    let third = until_ready(&mut a).await;
    assert_eq!(
        tags(&third),
        "EZ",
        "the Query was skipped, as PostgreSQL does"
    );
    // The server is back in the pool: the other client gets it.
    let rows = tokio::time::timeout(Duration::from_secs(5), b.simple_query("SELECT 7"))
        .await
        .expect("the server was released after the third exchange")
        .expect("b's query");
    assert_eq!(rows, vec![vec![Some("7".to_string())]]);
    assert_eq!(run_named(&mut a, "one", "1").await, Ok(Some("2".into())));
    assert!(
        run_named(&mut a, "two", "1").await.is_err(),
        "two was never prepared: its Parse was skipped"
    );
}

/// In a failed transaction block PostgreSQL refuses every Parse but a COMMIT's or ROLLBACK's
/// (25P02), a Parse of a statement the server already has included (pgring used to answer
/// ParseComplete): at rest in the failed block, and pipelined behind the queries that fail
/// it, the replies through pgring are PostgreSQL's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_failed_block_a_parse_is_refused_as_postgres_refuses_it() {
    let pgring = Pgring::start(&config_for("transaction", 1, 1, ""));
    let (mut pooled, _) = Wire::login(pgring.port, &LOGIN).await;
    let (mut direct, _) = Wire::login(pg().port, &LOGIN).await;
    // Each exchange's replies: message tags, and the error's SQLSTATE.
    let mut replies = Vec::new();
    for w in [&mut direct, &mut pooled] {
        prepare_ok(w, "one", "SELECT 1").await;
        prepare_ok(w, "rb", "ROLLBACK").await;
        let mut got = Vec::new();
        let exchanges: [(Vec<u8>, usize); 6] = [
            // Into a failed block.
            (
                [wire::query("BEGIN"), wire::query("SELECT 1/0")].concat(),
                2,
            ),
            // The server has "SELECT 1": refused all the same. A ROLLBACK's text is let through.
            ([parse("two", "SELECT 1"), sync()].concat(), 1),
            ([parse("back", "ROLLBACK"), sync()].concat(), 1),
            ([bind("back", &[]), execute(), sync()].concat(), 1),
            // Pipelined: the block opens and fails before the Parse, out of pgring's sight.
            (
                [
                    wire::query("BEGIN"),
                    wire::query("SELECT 1/0"),
                    parse("three", "SELECT 1"),
                    sync(),
                    wire::query("ROLLBACK"),
                ]
                .concat(),
                4,
            ),
            // "two" and "three" were never prepared, "back" was: it ran the ROLLBACK above.
            (
                [
                    bind("two", &[]),
                    sync(),
                    bind("three", &[]),
                    sync(),
                    bind("one", &[]),
                    execute(),
                    sync(),
                ]
                .concat(),
                3,
            ),
        ];
        for (msgs, readies) in exchanges {
            w.send(&msgs).await;
            for _ in 0..readies {
                let reply = until_ready(w).await;
                got.push((tags(&reply), error_of(&reply).map(|e| e.code().to_string())));
            }
        }
        replies.push(got);
    }
    assert_eq!(
        replies[0][2].1.as_deref(),
        Some("25P02"),
        "{:?}",
        replies[0]
    );
    assert_eq!(replies[0][3].0, "1Z", "{:?}", replies[0]);
    assert_eq!(
        replies[0][7].1.as_deref(),
        Some("25P02"),
        "{:?}",
        replies[0]
    );
    assert_eq!(replies[1], replies[0], "through pgring, then directly");
}

/// Prepares and runs one named statement through a fresh pgring in `mode`; the names
/// PostgreSQL then lists in pg_prepared_statements for that server session.
async fn server_statement_names(mode: &str, pool: u32, workers: u32) -> Option<String> {
    let pgring = Pgring::start(&config_for(mode, pool, workers, ""));
    let client = common::connect(pgring.port, "app", "trust_user", "").await;
    let stmt = client.prepare("SELECT $1::int8").await.expect("prepare");
    assert_eq!(
        client
            .query_one(&stmt, &[&7_i64])
            .await
            .expect("query")
            .get::<_, i64>(0),
        7
    );
    value(
        &client,
        "SELECT string_agg(name, ',') FROM pg_prepared_statements",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_passes_statement_names_through() {
    let names = server_statement_names("session", 2, 2).await;
    assert!(
        names.as_deref().is_some_and(|n| !n.contains("PGRING_")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_names_statements_by_content() {
    let names = server_statement_names("transaction", 1, 1).await;
    assert!(
        names.as_deref().is_some_and(|n| n.starts_with("PGRING_")),
        "{names:?}"
    );
}

// ---- pgbench -M prepared ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_1000_clients_through_pool_of_20() {
    let _heavy = common::heavy().await;
    let user = pg().fresh_user("pgbprep");
    let pgring = Pgring::start(&config_for("transaction", 20, 2, ""));
    let output = common::pgbench(
        pgring.port,
        &user,
        &[
            "-M", "prepared", "-S", "-c", "1000", "-j", "2", "-T", "20", "bench",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<_> = stderr.lines().rev().take(20).collect();
    let report = format!("pgbench {}:\n{stdout}\n{}", output.status, tail.join("\n"));
    println!("{report}");
    assert!(output.status.success(), "{report}");
    let number = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no '{prefix}' in:\n{report}"))
    };
    assert_eq!(number("number of failed transactions:"), 0, "{report}");
    assert!(
        number("number of transactions actually processed:") > 0,
        "{report}"
    );
}
