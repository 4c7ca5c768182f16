//! Logins: clients authenticate to pgring (trust, plain, md5, scram-sha-256 against the auth
//! file's plain, md5 and SCRAM secrets), pgring logs into PostgreSQL (trust, md5, SCRAM), and a
//! database that does not exist is refused as PostgreSQL refuses it.

use crate::common::wire::Wire;
use crate::common::{self, config_for, database_section, describe, pg, sqlstate, value, Pgring};

/// pg_authid's secret for a role: the md5 hash or SCRAM verifier, as PgBouncer users put them in
/// userlist.txt.
fn stored_secret(user: &str) -> String {
    let sql = format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'");
    pg().psql("postgres", &sql)
        .expect("reading pg_authid")
        .trim()
        .to_owned()
}

async fn assert_logs_in(port: u16, db: &str, user: &str, password: &str) {
    let client = common::try_connect(port, db, user, password)
        .await
        .unwrap_or_else(|e| panic!("{user}/{password:?} on {db} was refused: {}", describe(&e)));
    assert_eq!(
        value(&client, "SELECT current_user").await.as_deref(),
        Some(user)
    );
}

async fn assert_refused(port: u16, db: &str, user: &str, password: &str) {
    match common::try_connect(port, db, user, password).await {
        Ok(_) => panic!("{user} logged in to {db} with the wrong password {password:?}"),
        Err(e) => assert_eq!(
            sqlstate(&e),
            "28P01",
            "{user}/{password:?}: {}",
            describe(&e)
        ),
    }
}

/// trust: no password asked; pgring still logs into PostgreSQL with each user's own method,
/// using the plain secret from the auth file (server-side md5 and SCRAM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_trust_and_server_logins_with_md5_and_scram() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, ""));
    assert_logs_in(pgring.port, "app", "trust_user", "").await;
    assert_logs_in(pgring.port, "app", "md5_user", "").await;
    assert_logs_in(pgring.port, "app", "scram_user", "").await;
    assert_logs_in(pgring.port, "app", "postgres", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_checks_the_cleartext_password() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, "auth_type = \"plain\""));
    assert_logs_in(pgring.port, "app", "md5_user", "md5pass").await;
    assert_refused(pgring.port, "app", "md5_user", "md5passX").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_md5_against_plain_secrets() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, "auth_type = \"md5\""));
    assert_logs_in(pgring.port, "app", "md5_user", "md5pass").await;
    assert_logs_in(pgring.port, "app", "scram_user", "scrampass").await;
    assert_refused(pgring.port, "app", "md5_user", "wrong").await;
    assert_refused(pgring.port, "app", "nobody_at_all", "whatever").await;
}

/// An md5 secret in the auth file; the server login uses the database entry's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_md5_against_an_md5_secret() {
    let mut toml = config_for("transaction", 2, 2, "auth_type = \"md5\"");
    toml.push_str(&database_section(
        "app_md5",
        "app",
        "user = \"md5_user\"\npassword = \"md5pass\"",
    ));
    let userlist = format!("\"md5_user\" \"{}\"\n", stored_secret("md5_user"));
    assert!(userlist.contains("\"md5"), "{userlist}");
    let pgring = Pgring::start_with_userlist(&toml, &userlist);
    assert_logs_in(pgring.port, "app_md5", "md5_user", "md5pass").await;
    assert_refused(pgring.port, "app_md5", "md5_user", "md5pas").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_scram_against_plain_secrets() {
    let pgring = Pgring::start(&config_for(
        "transaction",
        2,
        2,
        "auth_type = \"scram-sha-256\"",
    ));
    assert_logs_in(pgring.port, "app", "scram_user", "scrampass").await;
    assert_logs_in(pgring.port, "app", "md5_user", "md5pass").await;
    assert_refused(pgring.port, "app", "scram_user", "scrampas").await;
    assert_refused(pgring.port, "app", "nobody_at_all", "whatever").await;
}

/// A SCRAM verifier (as pg_authid stores it) in the auth file; the server login uses the
/// database entry's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_scram_against_a_scram_verifier() {
    let mut toml = config_for("transaction", 2, 2, "auth_type = \"scram-sha-256\"");
    toml.push_str(&database_section(
        "app_scram",
        "app",
        "user = \"scram_user\"\npassword = \"scrampass\"",
    ));
    let userlist = format!("\"scram_user\" \"{}\"\n", stored_secret("scram_user"));
    assert!(userlist.contains("SCRAM-SHA-256$4096:"), "{userlist}");
    let pgring = Pgring::start_with_userlist(&toml, &userlist);
    assert_logs_in(pgring.port, "app_scram", "scram_user", "scrampass").await;
    assert_refused(pgring.port, "app_scram", "scram_user", "wrong").await;
}

/// A database entry's `user` is who pgring logs in as, whoever the client is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_database_user_overrides_the_server_login() {
    let mut toml = config_for("transaction", 2, 2, "");
    toml.push_str(&database_section(
        "app_as_scram",
        "app",
        "user = \"scram_user\"\npassword = \"scrampass\"",
    ));
    let pgring = Pgring::start(&toml);
    let client = common::connect(pgring.port, "app_as_scram", "trust_user", "").await;
    assert_eq!(
        value(&client, "SELECT current_user").await.as_deref(),
        Some("scram_user")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_fatal_3d000() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, ""));
    let err = common::try_connect(pgring.port, "no_such_db", "trust_user", "")
        .await
        .err();
    let err = err.expect("logged in to a database that is not configured");
    assert_eq!(sqlstate(&err), "3D000", "{}", describe(&err));
    let params = [("user", "trust_user"), ("database", "no_such_db")];
    let error = Wire::try_login(pgring.port, &params)
        .await
        .err()
        .expect("raw login to an unknown database");
    assert_eq!(
        (error.severity(), error.code()),
        ("FATAL", "3D000"),
        "{error}"
    );
    assert!(
        error.message().contains("no_such_db"),
        "the message names the database: {error}"
    );
}
