//! Server connections over PostgreSQL's unix socket (`host` = a socket directory, as PgBouncer
//! reads it): transactions, a server handed between shards, a cancel request, SHOW SERVERS.
//! The fixture's PostgreSQL keeps its socket in its cluster directory; `inet_client_addr()` is
//! NULL on a unix-socket backend, which is how each test knows the path it went by.

use std::collections::HashMap;

use tokio_postgres::SimpleQueryMessage;

use super::*;

/// Backend pid and how the backend sees its client: "unix", or the client's IP over TCP.
const PID_AND_PATH: &str = "SELECT pg_backend_pid()::text || ' ' || \
     coalesce(host(inet_client_addr()), 'unix') FROM pg_sleep(0.3)";

/// pgring with `[databases.sock]` on the fixture's socket directory beside the TCP `app`.
fn start_with_socket_db(workers: u32) -> Pgring {
    let extra = "min_pool_size = 0\nreserve_pool_size = 0\nquery_wait_timeout = 5";
    let mut toml = config_for("transaction", 2, workers, extra);
    toml.push_str(&format!(
        "\n[databases.sock]\nhost = \"{}\"\nport = {}\ndbname = \"app\"\n",
        pg().dir.display(),
        pg().port
    ));
    Pgring::start(&toml)
}

/// Runs `PID_AND_PATH` on every client at once; the pids, each checked to have come by `path`.
async fn pids_by(clients: &mut [Wire], path: &str, what: &str) -> HashSet<String> {
    let answers = futures::future::join_all(clients.iter_mut().map(|c| async {
        let rows = within(Duration::from_secs(3), what, c.simple_query(PID_AND_PATH)).await;
        let rows = rows.unwrap_or_else(|e| panic!("{what}: {e}"));
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_else(|| panic!("{what}: no row"))
    }))
    .await;
    answers
        .iter()
        .map(|a| {
            let (pid, seen) = a.split_once(' ').expect("pid and path");
            assert_eq!(seen, path, "{what}: the backend saw its client as {seen}");
            pid.to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_directory_host_serves_transactions_over_the_unix_socket_on_every_shard() {
    let user = pg().fresh_user("unixsrv");
    let pgring = start_with_socket_db(2);
    // The TCP entry beside it, so that the unix check below is seen to tell the two apart.
    let mut tcp = wire_on_shard(pgring.port, 0, "app", &user).await;
    pids_by(std::slice::from_mut(&mut tcp), "127.0.0.1", "app over TCP").await;

    // Both servers of the pool opened on shard 0, then needed on shard 1: handed over with their
    // fds, they must still work as unix streams there (and back).
    let mut on0 = Vec::new();
    for _ in 0..2 {
        on0.push(wire_on_shard(pgring.port, 0, "sock", &user).await);
    }
    let pids = pids_by(&mut on0, "unix", "shard 0").await;
    assert_eq!(pids.len(), 2, "two clients at once on a pool of 2");
    let mut on1 = Vec::new();
    for _ in 0..2 {
        on1.push(wire_on_shard(pgring.port, 1, "sock", &user).await);
    }
    for round in 0..2 {
        for (shard, clients) in [(1, &mut on1), (0, &mut on0)] {
            let what = format!("round {round}, shard {shard}");
            let used = pids_by(clients, "unix", &what).await;
            assert!(
                used.is_subset(&pids),
                "{what}: servers {used:?}, not {pids:?}"
            );
        }
    }

    // Transactions and the extended protocol, as a driver sends them.
    let client = common::connect(pgring.port, "sock", &user, "").await;
    for i in 0..20_i32 {
        let tx = client.simple_query("BEGIN").await.map_err(|e| describe(&e));
        tx.unwrap_or_else(|e| panic!("BEGIN {i}: {e}"));
        let row = client
            .query_one("SELECT $1::int + 1", &[&i])
            .await
            .unwrap_or_else(|e| panic!("extended query {i}: {}", describe(&e)));
        assert_eq!(row.get::<_, i32>(0), i + 1);
        client
            .simple_query("COMMIT")
            .await
            .unwrap_or_else(|e| panic!("COMMIT {i}: {}", describe(&e)));
    }
    let backends = pg().backends_of(&pg().admin("postgres").await, &user).await;
    assert!(
        backends <= 3,
        "pool_size 2 (sock) + 1 (app), PostgreSQL has {backends}"
    );
}

/// A cancel request for a client of the socket entry reaches PostgreSQL over the same socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_reaches_a_unix_socket_server() {
    let user = pg().fresh_user("unixcancel");
    let pgring = start_with_socket_db(2);
    let client = common::connect(pgring.port, "sock", &user, "").await;
    assert_eq!(
        value(&client, "SELECT coalesce(host(inet_client_addr()), 'unix')")
            .await
            .as_deref(),
        Some("unix")
    );
    let took = common::cancel_a_sleep(client, "unix-socket server").await;
    assert!(took < Duration::from_secs(2), "cancel took {}", secs(took));
}

/// SHOW SERVERS / SHOW CLIENTS rows, by column name.
async fn show(console: &tokio_postgres::Client, sql: &str) -> Vec<HashMap<String, String>> {
    let messages = console
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// PgBouncer shows a unix-socket server as addr `unix` with the server's port, and our end as
/// `unix` with the listen port; a TCP server keeps its IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_servers_names_a_unix_socket_server_unix_with_its_port() {
    let user = pg().fresh_user("unixshow");
    let pgring = start_with_socket_db(2);
    let sock = common::connect(pgring.port, "sock", &user, "").await;
    let app = common::connect(pgring.port, "app", &user, "").await;
    // One server of each held (active, linked) while the console looks, one left idle.
    sock.batch_execute("BEGIN").await.expect("BEGIN on sock");
    app.batch_execute("BEGIN").await.expect("BEGIN on app");
    let idle = common::connect(pgring.port, "sock", &user, "").await;
    value(&idle, "SELECT 1").await;
    let console = common::connect(pgring.port, "pgbouncer", "postgres", "").await;
    let rows = show(&console, "SHOW SERVERS").await;
    let ours: Vec<_> = rows.iter().filter(|r| r["user"] == user).collect();
    let states = |db: &str| -> Vec<&str> {
        let mut s: Vec<&str> = ours
            .iter()
            .filter(|r| r["database"] == db)
            .map(|r| r["state"].as_str())
            .collect();
        s.sort_unstable();
        s
    };
    assert_eq!(states("sock"), ["active", "idle"], "{ours:?}");
    for r in ours.iter().filter(|r| r["database"] == "sock") {
        let shown = (
            &*r["addr"],
            &*r["port"],
            &*r["local_addr"],
            &*r["local_port"],
        );
        let (pg_port, listen) = (pg().port.to_string(), pgring.port.to_string());
        assert_eq!(shown, ("unix", &*pg_port, "unix", &*listen), "{r:?}");
    }
    let app_row = ours
        .iter()
        .find(|r| r["database"] == "app")
        .expect("app server row");
    assert_eq!(
        (&*app_row["addr"], &*app_row["port"]),
        ("127.0.0.1", &*pg().port.to_string())
    );
    sock.batch_execute("COMMIT").await.expect("COMMIT");
    app.batch_execute("COMMIT").await.expect("COMMIT");
}
