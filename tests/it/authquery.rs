//! auth_query: users missing from the auth file are looked up in PostgreSQL as `auth_user`
//! (PgBouncer's default query on pg_authid), and their stored secret is used like an auth-file
//! one. A SCRAM verifier logs into PostgreSQL by pass-through of the client's own SCRAM keys;
//! an md5 secret logs in with the hash. The auth file here holds only the auth_user.

use crate::common::{self, config_for, database_section, describe, sqlstate, value, Pgring};

/// The only auth-file entry: `postgres`, superuser and trust in the fixture, may read pg_authid.
const AUTH_USER_ONLY: &str = "\"postgres\" \"\"\n";

fn start(auth_type: &str, extra: &str) -> Pgring {
    let general = format!("auth_type = \"{auth_type}\"\nauth_user = \"postgres\"\n{extra}");
    Pgring::start_with_userlist(&config_for("transaction", 3, 2, &general), AUTH_USER_ONLY)
}

async fn assert_refused(port: u16, db: &str, user: &str, password: &str) {
    match common::try_connect(port, db, user, password).await {
        Ok(_) => panic!("{user} logged in to {db} with password {password:?}"),
        Err(e) => {
            assert_eq!(sqlstate(&e), "28P01", "{user}: {}", describe(&e));
            let msg = e.as_db_error().map(|d| d.message().to_owned());
            let want = format!("password authentication failed for user \"{user}\"");
            assert_eq!(msg.as_deref(), Some(want.as_str()));
        }
    }
}

/// Clients that each hold a transaction open at once, so that each needs a server login of its
/// own as `user`; every one must be running as `user` on PostgreSQL.
async fn assert_concurrent_server_logins(port: u16, db: &str, user: &str, password: &str) {
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = common::try_connect(port, db, user, password)
            .await
            .unwrap_or_else(|e| panic!("{user} refused: {}", describe(&e)));
        client.batch_execute("BEGIN").await.expect("BEGIN");
        clients.push(client);
    }
    for client in &clients {
        let who = value(client, "SELECT current_user || ' ' || pg_backend_pid()").await;
        assert!(
            who.as_deref()
                .unwrap_or("")
                .starts_with(&format!("{user} ")),
            "{who:?}"
        );
    }
    let mut pids: Vec<String> = Vec::new();
    for client in &clients {
        pids.push(
            value(client, "SELECT pg_backend_pid()::text")
                .await
                .unwrap_or_default(),
        );
        client.batch_execute("COMMIT").await.expect("COMMIT");
    }
    pids.sort();
    pids.dedup();
    assert_eq!(
        pids.len(),
        3,
        "three transactions at once need three servers: {pids:?}"
    );
}

/// scram_user is not in the auth file: its SCRAM verifier comes from pg_authid, the client
/// proves itself against it, and pgring logs into PostgreSQL (which asks scram_user for SCRAM)
/// with the keys from that exchange, having no password at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_scram_pass_through_end_to_end() {
    let pgring = start("scram-sha-256", "");
    assert_concurrent_server_logins(pgring.port, "app", "scram_user", "scrampass").await;
    // A later login (served from the cache) still checks the password.
    assert_refused(pgring.port, "app", "scram_user", "scrampas").await;
    let again = common::connect(pgring.port, "app", "scram_user", "scrampass").await;
    assert_eq!(
        value(&again, "SELECT current_user").await.as_deref(),
        Some("scram_user")
    );
}

/// A client moving between shards (here after every transaction) reaches a shard where no
/// client of its pool ever logged in, so nothing there knows the pool's SCRAM verifier or the
/// pass-through keys: its session brings them, and that shard opens a server of its own with
/// them (pool size 3, nothing idle there: a new server, not a handed-over one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_scram_pass_through_follows_a_client_to_another_shard() {
    let general = "auth_type = \"scram-sha-256\"\nauth_user = \"postgres\"\n";
    let pgring = Pgring::start_with(
        &config_for("transaction", 3, 2, general),
        AUTH_USER_ONLY,
        &[("PGRING_TEST_MOVE_CLIENTS", "1")],
    );
    let client = common::connect(pgring.port, "app", "scram_user", "scrampass").await;
    for request in 0..4 {
        let who = value(&client, "SELECT current_user").await;
        assert_eq!(who.as_deref(), Some("scram_user"), "request {request}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_refuses_a_wrong_password_and_unknown_users() {
    let pgring = start("scram-sha-256", "");
    assert_refused(pgring.port, "app", "scram_user", "wrong").await;
    assert_refused(pgring.port, "app", "nobody_at_all", "whatever").await;
    // The name is a bound parameter, not SQL text: quotes are just part of an unknown name.
    assert_refused(pgring.port, "app", "x' OR rolname='scram_user", "scrampass").await;
    // A role that cannot log in is no user either (`AND rolcanlogin`).
    assert_refused(pgring.port, "app", "pg_monitor", "whatever").await;
}

/// md5_user's md5 hash comes from pg_authid: the client's md5 answer is checked against it and
/// the server login (md5 in the fixture's pg_hba) uses the hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_md5_secret() {
    let pgring = start("md5", "");
    assert_concurrent_server_logins(pgring.port, "app", "md5_user", "md5pass").await;
    assert_refused(pgring.port, "app", "md5_user", "md5pas").await;
    assert_refused(pgring.port, "app", "nobody_at_all", "md5pass").await;
}

/// Per-database auth_user and auth_dbname: the lookup runs in another database entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_per_database_auth_user_and_dbname() {
    let mut toml = config_for("transaction", 3, 2, "auth_type = \"scram-sha-256\"");
    toml.push_str(&database_section(
        "app_aq",
        "app",
        "auth_user = \"postgres\"\nauth_dbname = \"bench\"",
    ));
    let pgring = Pgring::start_with_userlist(&toml, AUTH_USER_ONLY);
    let client = common::connect(pgring.port, "app_aq", "scram_user", "scrampass").await;
    assert_eq!(
        value(&client, "SELECT current_user || '@' || current_database()")
            .await
            .as_deref(),
        Some("scram_user@app")
    );
    // No auth_user on `app`: scram_user is unknown there.
    assert_refused(pgring.port, "app", "scram_user", "scrampass").await;
}
