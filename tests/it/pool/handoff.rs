//! Handoff: a client never waits while an idle server of its pool sits on another shard.

use super::*;

/// Each client runs `sql` (one row, one value) at the same time; (value, time) per client.
async fn concurrently(
    clients: Vec<Wire>,
    sql: &str,
) -> (Vec<Wire>, Vec<(Result<String, String>, Duration)>) {
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let sql = sql.to_owned();
            tokio::spawn(async move {
                let r = c.simple_query(&sql).await;
                let took = started.elapsed();
                let r = match r {
                    Ok(rows) => Ok(rows
                        .first()
                        .and_then(|row| row.first().cloned().flatten())
                        .unwrap_or_default()),
                    Err(e) => Err(e.to_string()),
                };
                (c, r, took)
            })
        })
        .collect();
    let (mut clients, mut results) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, r, took) = t.await.expect("client task");
        clients.push(c);
        results.push((r, took));
    }
    (clients, results)
}

const HOLD_PID: &str = "SELECT pg_backend_pid() FROM pg_sleep(0.3)";

/// Two servers, both idle on shard `from`; two clients on shard `to` need them at once. Without
/// handoff the clients on `to` find no idle server and no budget, and wait out
/// query_wait_timeout (5 s): they must finish in well under that, on the same two servers.
async fn servers_move(to: Vec<Wire>, to_shard: u32, pids: &HashSet<String>) -> Vec<Wire> {
    let (to, results) = concurrently(to, HOLD_PID).await;
    for (r, took) in &results {
        let pid = r.as_ref().unwrap_or_else(|e| {
            panic!("a client on shard {to_shard} failed while the idle servers were on the other shard: {e}")
        });
        assert!(
            *took < Duration::from_millis(1500),
            "a client on shard {to_shard} waited {} for a server idle on the other shard",
            secs(*took)
        );
        assert!(
            pids.contains(pid),
            "shard {to_shard} used server {pid}, not one of {pids:?}"
        );
    }
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_gives_clients_the_servers_idle_on_the_other_shard() {
    let user = pg().fresh_user("handoff");
    let extra = "min_pool_size = 0\nreserve_pool_size = 0\nquery_wait_timeout = 5";
    let pgring = Pgring::start(&config_for("transaction", 2, 2, extra));
    let watch = BackendWatch::start(&user).await;
    // Both servers opened by two shard-0 clients at once: the pool's whole budget, idle on
    // shard 0, before shard 1 has seen this pool at all.
    let mut on0 = Vec::new();
    for _ in 0..2 {
        on0.push(wire_on_shard(pgring.port, 0, "app", &user).await);
    }
    let (on0, results) = concurrently(on0, HOLD_PID).await;
    let pids: HashSet<String> = results
        .iter()
        .map(|(r, _)| r.clone().unwrap_or_else(|e| panic!("on shard 0: {e}")))
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "two clients at once on an empty pool of 2 hold two servers"
    );
    // A first login on shard 1 needs a server too (for its ParameterStatus set).
    let mut on1 = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        on1.push(wire_on_shard(pgring.port, 1, "app", &user).await);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "a login on shard 1 took {} while both servers sat idle on shard 0",
            secs(started.elapsed())
        );
    }
    // Idle on shard 0 -> needed on shard 1 -> back to shard 0 -> shard 1 again.
    let on1 = servers_move(on1, 1, &pids).await;
    let on0 = servers_move(on0, 0, &pids).await;
    let on1 = servers_move(on1, 1, &pids).await;
    // Release path: both servers busy on shard 1; a shard-0 client waiting meanwhile must get one
    // as soon as it is released (not after query_wait_timeout).
    let busy = tokio::spawn(concurrently(
        on1,
        "SELECT pg_backend_pid() FROM pg_sleep(0.6)",
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_on0, results) =
        concurrently(on0.into_iter().take(1).collect(), "SELECT pg_backend_pid()").await;
    let (r, took) = &results[0];
    assert!(r.is_ok(), "the waiting shard-0 client failed: {r:?}");
    assert!(
        *took < Duration::from_millis(1500),
        "a shard-0 client waited {} for a server released on shard 1 (released after ~0.4 s)",
        secs(*took)
    );
    let (_, busy) = busy.await.expect("busy clients");
    assert!(busy.iter().all(|(r, _)| r.is_ok()), "{busy:?}");
    let max = watch.finish().await;
    assert!(max <= 2, "pool_size 2, but PostgreSQL saw {max} servers");
}
