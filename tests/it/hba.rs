//! `auth_type = hba`: the first `auth_hba_file` rule matching a connection (type, database,
//! user, address) picks its method; `reject` and no matching rule refuse it with PgBouncer's
//! "login rejected" (SQLSTATE 28000); `peer` checks the unix socket's OS user (through an
//! `auth_ident_file` map); RELOAD re-reads
//! the file.

use crate::common::pgring::fresh_dir;
use crate::common::{self, config_for, database_section, describe, sqlstate, value, Pgring};

async fn assert_in(port: u16, db: &str, user: &str, password: &str) {
    let client = common::try_connect(port, db, user, password)
        .await
        .unwrap_or_else(|e| panic!("{user} on {db} was refused: {}", describe(&e)));
    assert_eq!(value(&client, "SELECT 1").await.as_deref(), Some("1"));
}

async fn assert_out(port: u16, db: &str, user: &str, password: &str, code: &str, text: &str) {
    match common::try_connect(port, db, user, password).await {
        Ok(_) => panic!("{user} logged in to {db}"),
        Err(e) => {
            let said = describe(&e);
            assert_eq!(sqlstate(&e), code, "{user} on {db}: {said}");
            assert!(said.contains(text), "{user} on {db}: {said}");
        }
    }
}

const RULES: &str = "\
# TYPE     DATABASE   USER                   ADDRESS        METHOD
local      all        all                                   peer map=local
host       app        trust_user             127.0.0.1/32   reject
host       app        md5_user               127.0.0.1/32   md5
hostssl    app        all                    all            trust
host       app        scram_user             127.0.0.0/8    scram-sha-256
host       bench      all                    127.0.0.1 255.255.255.255 trust
host       pgbouncer  postgres               127.0.0.1/32   trust
host       all        all                    10.0.0.0/8     trust
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_rules_choose_the_method_per_connection() {
    let rules_dir = fresh_dir();
    let rules = rules_dir.join("hba.conf");
    std::fs::write(&rules, RULES).expect("writing hba.conf");
    // SAFETY: getuid has no preconditions.
    let me = pgring::process::user_name(unsafe { libc::getuid() }).expect("own user name");
    // The OS user may log in as itself and, through the map, as trust_user.
    let ident = rules_dir.join("ident.conf");
    std::fs::write(
        &ident,
        format!("# MAP  SYSTEM  USER\nlocal {me} {me}\nlocal {me} trust_user\n"),
    )
    .expect("writing ident.conf");
    let general = format!(
        "auth_type = \"hba\"\nauth_hba_file = \"{}\"\nauth_ident_file = \"{}\"",
        rules.display(),
        ident.display()
    );
    let mut toml = config_for("transaction", 2, 2, &general);
    // Logging in as the OS user over the socket: the pool's servers log in as postgres.
    toml.push_str(&database_section("peer", "app", "user = \"postgres\""));
    let pgring = Pgring::start(&toml);
    let port = pgring.port;

    assert_out(port, "app", "trust_user", "", "28000", "login rejected").await;
    assert_in(port, "app", "md5_user", "md5pass").await;
    assert_out(
        port,
        "app",
        "md5_user",
        "wrong",
        "28P01",
        "password authentication failed",
    )
    .await;
    assert_in(port, "app", "scram_user", "scrampass").await;
    // hostssl never matches a connection without TLS, and no later rule takes this one.
    assert_out(port, "app", "postgres", "", "28000", "login rejected").await;
    assert_in(port, "bench", "trust_user", "").await;
    // The admin console is judged like any database.
    let admin = common::try_connect(port, "pgbouncer", "postgres", "")
        .await
        .unwrap_or_else(|e| panic!("admin console: {}", describe(&e)));
    assert_out(
        port,
        "pgbouncer",
        "md5_user",
        "md5pass",
        "28000",
        "login rejected",
    )
    .await;

    // peer: the socket's OS user must be the login user, or map to it.
    let ok = common::unix_connect(&pgring.dir, port, "peer", &me).await;
    let client = ok.unwrap_or_else(|e| panic!("peer login as {me}: {}", describe(&e)));
    assert_eq!(
        value(&client, "SELECT current_user").await.as_deref(),
        Some("postgres")
    );
    let mapped = common::unix_connect(&pgring.dir, port, "peer", "trust_user").await;
    mapped.unwrap_or_else(|e| panic!("peer login as trust_user through the map: {}", describe(&e)));
    if me != "md5_user" {
        match common::unix_connect(&pgring.dir, port, "peer", "md5_user").await {
            Ok(_) => panic!("peer login as md5_user from OS user {me}"),
            Err(e) => {
                assert_eq!(sqlstate(&e), "28000", "{}", describe(&e));
                assert!(describe(&e).contains("peer authentication failed"));
            }
        }
    }

    // RELOAD re-reads the file: trust_user is let in once its reject rule is gone.
    std::fs::write(&rules, RULES.replace("reject", "trust")).expect("rewriting hba.conf");
    admin.simple_query("RELOAD").await.expect("RELOAD");
    assert_in(port, "app", "trust_user", "").await;
    let _ = std::fs::remove_dir_all(&rules_dir);
}

/// A rule pgring cannot honour stops the start, naming its line, rather than being skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hba_rule_pgring_cannot_honour_stops_the_start() {
    let rules_dir = fresh_dir();
    let rules = rules_dir.join("hba.conf");
    std::fs::write(
        &rules,
        "host all all 127.0.0.1/32 trust\nhost all +staff all md5\n",
    )
    .expect("writing hba.conf");
    let general = format!(
        "auth_type = \"hba\"\nauth_hba_file = \"{}\"",
        rules.display()
    );
    let dir = fresh_dir();
    let config = dir.join("pgring.toml");
    let toml = config_for("transaction", 2, 1, &general).replace("@DIR@", dir.to_str().unwrap());
    std::fs::write(&config, toml).expect("writing pgring.toml");
    std::fs::write(dir.join("users.txt"), "").expect("writing users.txt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgring"))
        .arg("-c")
        .arg(&config)
        .output()
        .expect("running pgring");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pgring started: {stderr}");
    assert!(
        stderr.contains("line 2: group membership \"+staff\" is not supported"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&rules_dir);
    let _ = std::fs::remove_dir_all(&dir);
}
