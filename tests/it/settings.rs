//! PgBouncer settings that change what an operator sees or what the network does, honoured as
//! PgBouncer honours them: `log_connections` / `log_disconnections` / `log_pooler_errors`,
//! `application_name_add_host`, `server_round_robin`, the TCP options (`tcp_keepalive`,
//! `tcp_keepidle`...) on client and server sockets, host names looked up as servers open, and
//! `load_balance_hosts` over a host list.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::wire::Wire;
use crate::common::{self, config_for, pg, Pgring};

/// With the three log switches off, a login, a server connection, a disconnect and a pooler
/// error leave no line; `SET log_connections = 1` on the console brings the login line back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_switches_silence_their_lines_and_set_turns_them_back_on() {
    let pgring = Pgring::start(&config_for(
        "transaction",
        2,
        2,
        "log_connections = false\nlog_disconnections = false\nlog_pooler_errors = false",
    ));
    let (mut client, _) =
        Wire::login(pgring.port, &[("user", "trust_user"), ("database", "app")]).await;
    assert_eq!(client.query_value("SELECT 1").await.as_deref(), Some("1"));
    drop(client);
    let refused = Wire::try_login(
        pgring.port,
        &[("user", "trust_user"), ("database", "nosuchdb")],
    )
    .await;
    assert!(refused.is_err(), "a database that does not exist");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = pgring.log();
    for line in [
        "login attempt",
        "new connection to server",
        "closing because",
        "pooler error",
    ] {
        assert!(
            !log.contains(line),
            "{line:?} logged with its switch off:\n{log}"
        );
    }

    console_set(pgring.port, "log_connections = 1").await;
    let (_client, _) =
        Wire::login(pgring.port, &[("user", "trust_user"), ("database", "app")]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = pgring.log();
    assert!(
        log.contains("login attempt"),
        "SET log_connections = 1 had no effect:\n{log}"
    );
    assert!(
        !log.contains("closing because"),
        "log_disconnections is still off:\n{log}"
    );
}

/// `application_name_add_host`: the client's address goes after its application_name (`app`
/// when it sent none), both in what the client is told and on the server, as PgBouncer's
/// `set_appname` writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_add_host_appends_the_clients_address() {
    let pgring = Pgring::start(&config_for(
        "transaction",
        2,
        2,
        "application_name_add_host = true",
    ));
    for (sent, name) in [(Some("psql"), "psql"), (None, "app")] {
        let mut params = vec![("user", "trust_user"), ("database", "app")];
        params.extend(sent.map(|a| ("application_name", a)));
        let (mut client, login) = Wire::login(pgring.port, &params).await;
        let want = format!("{name} - 127.0.0.1:{}", client.local_port());
        assert_eq!(
            login.params.get("application_name"),
            Some(&want),
            "ParameterStatus"
        );
        assert_eq!(
            client
                .query_value(
                    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                )
                .await,
            Some(want),
            "the server's application_name"
        );
    }
}

/// `server_round_robin`: consecutive transactions of one client take the pool's idle servers
/// in turn instead of the most recently used one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_round_robin_takes_the_idle_servers_in_turn() {
    for (round_robin, want) in [(false, 1), (true, 3)] {
        let pgring = Pgring::start(&config_for(
            "transaction",
            3,
            1,
            &format!("server_round_robin = {round_robin}"),
        ));
        // Three servers, opened by three clients at once.
        let errors = crate::pool::run_clients(
            pgring.port,
            "app",
            "trust_user",
            3,
            1,
            "SELECT pg_sleep(0.2)",
        )
        .await;
        assert!(errors.is_empty(), "{errors:?}");
        let (mut client, _) =
            Wire::login(pgring.port, &[("user", "trust_user"), ("database", "app")]).await;
        let mut pids = HashSet::new();
        for _ in 0..6 {
            pids.insert(client.query_value("SELECT pg_backend_pid()").await);
        }
        assert_eq!(
            pids.len(),
            want,
            "server_round_robin = {round_robin}: six transactions used {pids:?}"
        );
    }
}

/// The TCP options reach the sockets: with `tcp_keepidle = 7`, a client socket pgring accepted
/// and the server socket it opened both carry a keepalive timer due within 7 s (the kernel's
/// default idle time is 2 hours). Read from /proc/net/tcp: `tr` 2 is the keepalive timer,
/// `tm->when` its time left in clock ticks (USER_HZ: 100 a second on Linux).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepidle_reaches_client_and_server_sockets() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, "tcp_keepidle = 7"));
    let (mut client, _) =
        Wire::login(pgring.port, &[("user", "trust_user"), ("database", "app")]).await;
    // The server connection's port on pgring's side, as PostgreSQL sees it.
    let server_port: u16 = client
        .query_value("SELECT inet_client_port()")
        .await
        .and_then(|p| p.parse().ok())
        .expect("inet_client_port() over TCP");
    // Right after traffic a socket may show its retransmit timer instead (data not yet
    // acknowledged): look again for a while.
    let (mut accepted, mut opened) = (None, None);
    for _ in 0..50 {
        accepted = keepalive_due(pgring.port, client.local_port());
        // The remote port too: another test's socket may share the ephemeral port.
        opened = keepalive_due(server_port, pg().port);
        if accepted.is_some() && opened.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        accepted.is_some_and(|j| j > 0 && j <= 700),
        "the accepted client socket's keepalive timer: {accepted:?} jiffies"
    );
    assert!(
        opened.is_some_and(|j| j > 0 && j <= 700),
        "the server socket's keepalive timer: {opened:?} jiffies"
    );

    // A changed setting reaches the next client accepted (the listener is tuned again).
    console_set(pgring.port, "tcp_keepidle = 2").await;
    let (next, _) = Wire::login(pgring.port, &[("user", "trust_user"), ("database", "app")]).await;
    let mut due = None;
    for _ in 0..50 {
        due = keepalive_due(pgring.port, next.local_port());
        if due.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        due.is_some_and(|j| j > 0 && j <= 200),
        "after SET tcp_keepidle = 2, the next client's keepalive timer: {due:?} ticks"
    );
}

/// The keepalive timer of the IPv4 socket from local port `local` to remote port `remote`
/// (both: concurrent tests share the ephemeral ports): jiffies left, or None when no
/// keepalive timer runs.
fn keepalive_due(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(l), Some(r)) = (f.get(1), f.get(2)) else {
            continue;
        };
        if port_of(l) != Some(local) || port_of(r) != Some(remote) {
            continue;
        }
        let (tr, when) = f.get(5)?.split_once(':')?;
        return (tr == "02")
            .then(|| u64::from_str_radix(when, 16).ok())
            .flatten();
    }
    None
}

/// A database `host` given by name is looked up when servers open (off the shard's thread,
/// cached for `dns_max_ttl`), and `load_balance_hosts` spreads new server connections over a
/// host list: here the fixture's unix socket and its TCP address, told apart by
/// pg_stat_activity's `client_addr` (NULL over the socket). `round-robin` (PgBouncer's default) alternates,
/// `disable` stays on the first that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_resolve_at_connect_and_load_balance_hosts_spreads_the_list() {
    for mode in ["round-robin", "disable"] {
        // A role per round: the first round's servers may still be leaving.
        let user = pg().fresh_user(&format!("lb_{}", mode.replace('-', "_")));
        let mut toml = config_for("transaction", 4, 1, "");
        toml.push_str(&format!(
            "\n[databases.spread]\nhost = \"{}, localhost\"\nport = {}\ndbname = \"app\"\n\
             load_balance_hosts = \"{mode}\"\n",
            pg().dir.display(),
            pg().port
        ));
        let pgring = Pgring::start(&toml);
        let errors =
            crate::pool::run_clients(pgring.port, "spread", &user, 4, 1, "SELECT pg_sleep(0.3)")
                .await;
        assert!(errors.is_empty(), "{mode}: {errors:?}");
        let admin = pg().admin("postgres").await;
        let rows = admin
            .query(
                "SELECT client_addr IS NULL FROM pg_stat_activity WHERE usename = $1",
                &[&user],
            )
            .await
            .expect("pg_stat_activity");
        let unix = rows.iter().filter(|r| r.get::<_, bool>(0)).count();
        let split = [unix, rows.len() - unix];
        // (`localhost` may also name ::1, where PostgreSQL does not listen: a round-robin
        // start there moves on to the next address, so only "both are used" is certain.)
        let spread = match mode {
            "round-robin" => split[0] > 0 && split[1] > 0 && rows.len() == 4,
            _ => split == [4, 0],
        };
        assert!(spread, "{mode}: [unix, tcp] servers {split:?}");

        // The console lists the name it looked up (SHOW DNS_HOSTS), due again within
        // dns_max_ttl (15 s), and counts it in SHOW LISTS.
        let console = crate::admin::console(&pgring, "postgres").await;
        let hosts = crate::admin::show(&console, "SHOW DNS_HOSTS").await;
        let localhost = hosts.row("hostname", "localhost");
        assert!(
            localhost["addrs"].split(',').any(|a| a == "127.0.0.1"),
            "{localhost:?}"
        );
        assert!(
            hosts.num("hostname", "localhost", "ttl") <= 15,
            "{localhost:?}"
        );
        let lists = crate::admin::show(&console, "SHOW LISTS").await;
        assert_eq!(lists.num("list", "dns_names", "items"), 1);
    }
}

/// `SET <assignment>` on pgring's console, as an admin.
async fn console_set(port: u16, assignment: &str) {
    let console = common::connect(port, "pgbouncer", "postgres", "").await;
    console
        .simple_query(&format!("SET {assignment}"))
        .await
        .unwrap_or_else(|e| panic!("SET {assignment}: {}", common::describe(&e)));
}

/// `disable_pqexec = 1`: extended-protocol clients work as before; a simple Query ends its
/// client with PgBouncer's FATAL "PQexec disallowed" (08P01), and the server goes back to the
/// pool clean: as it was when the Query opened a transaction, rolled back when the client had
/// one open. The console still takes simple queries (psql speaks nothing else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_pqexec_refuses_simple_queries_and_keeps_the_server() {
    let pgring = Pgring::start(&config_for("transaction", 1, 2, "disable_pqexec = 1"));
    let backend = |c: tokio_postgres::Client| async move {
        let row = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap_or_else(|e| panic!("extended query: {}", common::describe(&e)));
        row.get::<_, i32>(0)
    };
    let first = backend(common::connect(pgring.port, "app", "trust_user", "").await).await;

    for (label, open_transaction) in [("between transactions", false), ("in a transaction", true)] {
        let client = common::connect(pgring.port, "app", "trust_user", "").await;
        if open_transaction {
            client.execute("BEGIN", &[]).await.expect("BEGIN");
        }
        let refused = client
            .simple_query("SELECT 1")
            .await
            .expect_err("a simple query under disable_pqexec");
        let db = refused
            .as_db_error()
            .unwrap_or_else(|| panic!("{label}: no ErrorResponse: {}", common::describe(&refused)));
        assert_eq!(db.code().code(), "08P01", "{label}");
        assert_eq!(db.message(), "PQexec disallowed", "{label}");
        assert_eq!(db.severity(), "FATAL", "{label}");
        assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
        // The one server is the same backend, idle and outside any transaction.
        let next = common::connect(pgring.port, "app", "trust_user", "").await;
        let pid = next
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap_or_else(|e| panic!("{label}: {}", common::describe(&e)));
        assert_eq!(
            pid.get::<_, i32>(0),
            first,
            "{label}: the server was closed"
        );
        // SAVEPOINT outside a transaction block fails with 25P01.
        let outside = next
            .execute("SAVEPOINT s", &[])
            .await
            .expect_err("no transaction");
        assert_eq!(
            common::sqlstate(&outside),
            "25P01",
            "{label}: left inside a transaction"
        );
    }

    let console = common::connect(pgring.port, "pgbouncer", "postgres", "").await;
    console
        .simple_query("SHOW POOLS")
        .await
        .expect("the console takes simple queries");
}

/// `tcp_defer_accept` (on by default, as in PgBouncer on Linux): the kernel hands pgring a
/// connection once its first bytes arrive, so a silent connection is not yet a login client;
/// turned off, it is one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_defer_accept_hands_over_a_connection_once_it_speaks() {
    use tokio::io::AsyncWriteExt;
    for (defer, extra) in [(true, ""), (false, "tcp_defer_accept = 0")] {
        let pgring = Pgring::start(&config_for("transaction", 2, 2, extra));
        let console = crate::admin::console(&pgring, "postgres").await;
        let logging_in = || async {
            let lists = crate::admin::show(&console, "SHOW LISTS").await;
            lists.num("list", "login_clients", "items")
        };
        let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", pgring.port))
            .await
            .expect("connect");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            logging_in().await,
            u64::from(!defer),
            "defer {defer}: silent"
        );
        // The startup packet's length word: now it is pgring's.
        silent.write_all(&[0, 0, 0, 8]).await.expect("write");
        let started = std::time::Instant::now();
        while logging_in().await != 1 {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "defer {defer}: a connection that spoke was not handed over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `syslog = 1`: every log line also reaches the system logger as one datagram,
/// `<PRI>ident[pid]: line`, PRI being `syslog_facility` and the line's severity (local3 =
/// 19, info = 6: 158), without the time, which the logger stamps. The socket is /dev/log;
/// here a test socket stands in for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_sends_each_line_with_ident_pid_facility_and_severity() {
    let dir = common::pgring::fresh_dir();
    let path = dir.join("log.sock");
    let logger = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the test logger");
    logger
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let socket = path.to_str().expect("UTF-8 path");
    let extra = "syslog = 1\nsyslog_ident = \"pgtest\"\nsyslog_facility = \"local3\"";
    let pgring = Pgring::start_with_env(
        &config_for("transaction", 2, 2, extra),
        &[("PGRING_SYSLOG_SOCKET", socket)],
    );
    let (mut client, _) =
        Wire::login(pgring.port, &[("user", "trust_user"), ("database", "app")]).await;
    assert_eq!(client.query_value("SELECT 1").await.as_deref(), Some("1"));
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let mut buf = vec![0u8; 8192];
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(n) = logger.recv(&mut buf) {
                let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = line.contains("login attempt");
                lines.push(line);
                if done {
                    break;
                }
            }
        }
        lines
    })
    .await
    .expect("logger task");
    let login = lines
        .iter()
        .find(|l| l.contains("login attempt"))
        .unwrap_or_else(|| panic!("no login line among {lines:#?}"));
    let prefix = format!("<158>pgtest[{}]: ", pgring.pid());
    assert!(login.starts_with(&prefix), "{login}");
    assert!(
        !login.contains('\n') && !login.contains('\u{1b}'),
        "{login:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
