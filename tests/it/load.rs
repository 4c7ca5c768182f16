//! pgbench through pgring: 1000 clients, select-only, over a pool of 20, for 20 seconds, with no
//! failed transaction and never more than 20 server connections.

use crate::common::{self, config_for, pg, BackendWatch, Pgring};

const CLIENTS: &str = "1000";
const SECONDS: &str = "20";
const POOL_SIZE: u32 = 20;

/// What pgbench's summary says.
#[derive(Debug)]
struct PgbenchSummary {
    processed: u64,
    failed: u64,
    tps: String,
}

fn parse_summary(out: &str) -> Option<PgbenchSummary> {
    let number_after = |prefix: &str| {
        let line = out
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))?;
        line.trim()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<u64>()
            .ok()
    };
    let tps = out
        .lines()
        .find(|line| line.starts_with("tps "))
        .unwrap_or("tps: none")
        .to_owned();
    Some(PgbenchSummary {
        processed: number_after("number of transactions actually processed:")?,
        failed: number_after("number of failed transactions:")?,
        tps,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_1000_clients_through_pool_of_20() {
    let _heavy = common::heavy().await;
    let user = pg().fresh_user("pgbench");
    let pgring = Pgring::start(&config_for("transaction", POOL_SIZE, 2, ""));
    let watch = BackendWatch::start(&user).await;
    let output = common::pgbench(
        pgring.port,
        &user,
        &["-S", "-c", CLIENTS, "-j", "2", "-T", SECONDS, "bench"],
    )
    .await;
    let max_servers = watch.finish().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "pgbench {}:\n{stdout}\n{}",
        output.status,
        tail(&stderr, 40)
    );
    println!("{report}");
    assert!(output.status.success(), "{report}");
    let summary =
        parse_summary(&stdout).unwrap_or_else(|| panic!("no pgbench summary in:\n{report}"));
    println!("pgring pgbench -S -c {CLIENTS} -j 2 -T {SECONDS}, pool {POOL_SIZE}: {summary:?}; max server connections {max_servers}");
    assert_eq!(summary.failed, 0, "{report}");
    assert!(summary.processed > 0, "{report}");
    assert!(
        max_servers >= 1,
        "the watch never saw pgbench's server connections"
    );
    assert!(
        max_servers <= i64::from(POOL_SIZE),
        "pool of {POOL_SIZE}, but PostgreSQL had {max_servers} connections"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn pgbench_summary_parses() {
    let out = "transaction type: <builtin: select only>\nnumber of transactions actually processed: 123456\n\
               number of failed transactions: 0 (0.000%)\nlatency average = 1.2 ms\n\
               tps = 6172.8 (without initial connection time)\n";
    let summary = parse_summary(out).expect("summary");
    assert_eq!((summary.processed, summary.failed), (123_456, 0));
    assert!(summary.tps.starts_with("tps = 6172.8"));
    assert!(parse_summary("pgbench: error: connection to server failed").is_none());
}
