//! Client TLS (`client_tls_sslmode`): libpq's psql and pgbench over TLS through pgring (login,
//! transaction pooling, large results, the console's SHOW CLIENTS `tls` column), `require`
//! refusing a plaintext TCP client but not the unix socket, `prefer` leaving the choice to the
//! client, `hostssl` rules matching TLS clients only, and client certificates (`verify-ca`,
//! `auth_type = cert`).

use std::path::Path;
use std::process::Command;

use crate::common::pgring::fresh_dir;
use crate::common::{config_for, pg, Pgring};

/// A self-signed certificate and key for 127.0.0.1, written to `dir`; returns the
/// `[general]` lines that use them with `mode`.
fn tls_general(dir: &Path, mode: &str) -> String {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("making a test certificate");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, made.cert.pem()).expect("writing server.crt");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("writing server.key");
    format!(
        "client_tls_sslmode = \"{mode}\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"",
        cert.display(),
        key.display()
    )
}

/// psql (libpq) as postgres with this `sslmode`: its output, or its error text.
fn psql(host: &str, port: u16, db: &str, sslmode: &str, sql: &str) -> Result<String, String> {
    crate::common::psql(host, port, db, "postgres", sslmode, sql)
}

fn tls_pgring(mode: &str, extra: &str) -> (Pgring, std::path::PathBuf) {
    let files = fresh_dir();
    let general = format!("{}\n{extra}", tls_general(&files, mode));
    (
        Pgring::start(&config_for("transaction", 4, 2, &general)),
        files,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_serves_libpq_over_tls_and_refuses_plain_tcp() {
    let ciphers = "client_tls13_ciphers = \"TLS_CHACHA20_POLY1305_SHA256\"";
    let (pgring, files) = tls_pgring("require", ciphers);
    let port = pgring.port;
    // A result of many TLS records, and the server really is PostgreSQL behind a pool.
    let big = psql(
        "127.0.0.1",
        port,
        "app",
        "require",
        "SELECT length(repeat('x', 200000))",
    );
    assert_eq!(big.as_deref(), Ok("200000"), "{}", pgring.log());
    let err = psql("127.0.0.1", port, "app", "disable", "SELECT 1").unwrap_err();
    assert!(err.contains("SSL required"), "{err}");
    // The unix socket is exempt, as in PgBouncer.
    let dir = pgring.dir.to_str().expect("UTF-8 dir");
    assert_eq!(
        psql(dir, port, "app", "disable", "SELECT 1").as_deref(),
        Ok("1")
    );

    // Transaction pooling over TLS: 20 pgbench clients on 4 servers.
    let out = Command::new(pg().bin.join("pgbench"))
        .args(["-n", "-c", "20", "-j", "2", "-t", "100", "-h", "127.0.0.1"])
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-b",
            "select-only",
        ])
        .arg("bench")
        .env("PGSSLMODE", "require")
        .output()
        .expect("running pgbench");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}\n{}", pgring.log());
    assert!(said.contains("number of failed transactions: 0"), "{said}");

    // The console shows each TLS client's version and cipher: the one client_tls13_ciphers
    // allows (libpq offers AES-GCM first).
    let sql = "SHOW CLIENTS";
    let rows = psql("127.0.0.1", port, "pgbouncer", "require", sql).expect("SHOW CLIENTS");
    assert!(
        rows.contains("|TLSv1.3/TLS13_CHACHA20_POLY1305_SHA256|"),
        "{rows}"
    );
    assert!(pgring.log().contains("tls=TLSv1.3/"), "{}", pgring.log());
    let _ = std::fs::remove_dir_all(files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_lets_the_client_choose_hostssl_rules_see_tls_and_protocols_are_honoured() {
    let rules_dir = fresh_dir();
    let rules = rules_dir.join("hba.conf");
    std::fs::write(
        &rules,
        "hostssl all all 127.0.0.1/32 trust\nhostnossl app all 127.0.0.1/32 trust\n",
    )
    .expect("writing hba.conf");
    let hba = format!(
        "auth_type = \"hba\"\nauth_hba_file = \"{}\"\nclient_tls_protocols = \"tlsv1.2\"\n\
         client_tls_ciphers = \"ECDHE-ECDSA-AES128-GCM-SHA256:AES256-SHA\"",
        rules.display()
    );
    let (pgring, files) = tls_pgring("prefer", &hba);
    let port = pgring.port;
    assert_eq!(
        psql("127.0.0.1", port, "bench", "require", "SELECT 1").as_deref(),
        Ok("1")
    );
    // client_tls_protocols is honoured: libpq would pick 1.3 if it were offered; so is
    // client_tls_ciphers, a suite neither side would pick first.
    let chosen = pgring
        .log()
        .contains("tls=TLSv1.2/TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
    assert!(chosen, "{}", pgring.log());
    assert_eq!(
        psql("127.0.0.1", port, "app", "disable", "SELECT 1").as_deref(),
        Ok("1")
    );
    // Without TLS only the hostnossl rule for app applies.
    let err = psql("127.0.0.1", port, "bench", "disable", "SELECT 1").unwrap_err();
    assert!(err.contains("login rejected"), "{err}");
    let _ = std::fs::remove_dir_all(files);
    let _ = std::fs::remove_dir_all(rules_dir);
}

/// Bad input around the handshake hurts only that client: bytes sent after SSLRequest before
/// the answer are refused with 08P01 (they would pass as encrypted, CVE-2021-23214), a client
/// that answers `S` with garbage instead of a ClientHello is dropped, and TLS clients carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_around_the_handshake_closes_only_that_client() {
    use crate::common::wire::{self, ErrorFields, Wire};
    let (pgring, files) = tls_pgring("require", "");
    let port = pgring.port;
    let mut ssl_request = 8u32.to_be_bytes().to_vec();
    ssl_request.extend_from_slice(&80_877_103u32.to_be_bytes());

    let mut early = Wire::connect(port).await;
    let mut both = ssl_request.clone();
    both.extend_from_slice(&wire::startup(&[("user", "postgres"), ("database", "app")]));
    early.send(&both).await;
    let reply = early.recv().await.expect("an ErrorResponse");
    assert_eq!(reply.tag, b'E');
    let fields = ErrorFields::parse(&reply.body);
    assert_eq!(fields.code(), "08P01", "{}", fields.message());
    assert!(fields
        .message()
        .contains("unencrypted data after SSL request"));

    let mut garbage = Wire::connect(port).await;
    garbage.send(&ssl_request).await;
    assert_eq!(garbage.recv_byte().await, Some(b'S'));
    garbage.send_lossy(&[0x47; 64]).await;
    // rustls answers with an alert record, then the connection closes.
    let mut rest = Vec::new();
    while let Some(b) = garbage.recv_byte().await {
        rest.push(b);
    }
    assert!(
        rest.first().is_none_or(|&b| b == 0x15),
        "not an alert: {rest:?}"
    );

    let ok = psql("127.0.0.1", port, "app", "require", "SELECT 1");
    assert_eq!(ok.as_deref(), Ok("1"), "{}", pgring.log());
    let _ = std::fs::remove_dir_all(files);
}

/// A CA and a certificate it signed for `common_name` (client auth), PEM: (ca, cert, key).
fn signed_client_cert(common_name: &str) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pgring test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("client key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
    client
        .distinguished_name
        .push(DnType::CommonName, common_name);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = client
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("client certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Writes a libpq client key: libpq refuses one that others may read.
fn write_private(path: &Path, pem: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).expect("writing a key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// `verify-ca` + `auth_type = cert`: a certificate from `client_tls_ca_file` whose CommonName is
/// the user logs in without a password; the wrong user, no certificate, or one from another CA
/// does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_and_cert_auth_take_the_user_from_the_client_certificate() {
    let files = fresh_dir();
    let (ca, cert, key) = signed_client_cert("postgres");
    std::fs::write(files.join("ca.crt"), ca).expect("writing ca.crt");
    std::fs::write(files.join("client.crt"), cert).expect("writing client.crt");
    write_private(&files.join("client.key"), &key);
    // Right CommonName, but signed by a CA pgring does not trust.
    let (_, rogue_cert, rogue_key) = signed_client_cert("postgres");
    std::fs::write(files.join("rogue.crt"), rogue_cert).expect("writing rogue.crt");
    write_private(&files.join("rogue.key"), &rogue_key);

    let general = format!(
        "{}\nclient_tls_ca_file = \"{}\"\nauth_type = \"cert\"",
        tls_general(&files, "verify-ca"),
        files.join("ca.crt").display()
    );
    let pgring = Pgring::start(&config_for("transaction", 2, 2, &general));
    let port = pgring.port;
    let with = |cert: &str, key: &str, user: &str| {
        let (cert, key) = (files.join(cert), files.join(key));
        let env = [
            ("PGSSLMODE", "require"),
            ("PGSSLCERT", cert.to_str().unwrap()),
            ("PGSSLKEY", key.to_str().unwrap()),
        ];
        crate::common::psql_env("127.0.0.1", port, "app", user, &env, "SELECT current_user")
    };
    let ok = with("client.crt", "client.key", "postgres");
    assert_eq!(ok.as_deref(), Ok("postgres"), "{}", pgring.log());
    let wrong_user = with("client.crt", "client.key", "md5_user").unwrap_err();
    assert!(
        wrong_user.contains("certificate authentication failed"),
        "{wrong_user}"
    );
    assert!(
        with("rogue.crt", "rogue.key", "postgres").is_err(),
        "a certificate from another CA"
    );
    assert!(
        with("none.crt", "none.key", "postgres").is_err(),
        "no client certificate"
    );
    let _ = std::fs::remove_dir_all(files);
}

/// `ssl` and `cipher` of the backend serving this query, as PostgreSQL sees them.
async fn backend_ssl(port: u16) -> Result<String, String> {
    let client = crate::common::try_connect(port, "app", "postgres", "")
        .await
        .map_err(|e| crate::common::describe(&e))?;
    let sql = "SELECT ssl::text || '/' || coalesce(cipher, '') FROM pg_stat_ssl \
               WHERE pid = pg_backend_pid()";
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| crate::common::describe(&e))?;
    Ok(row.get(0))
}

/// Server connections: `prefer` (the default) speaks TLS to a PostgreSQL that has it, including
/// servers handed between shards; `disable` does not; `verify-full` checks the certificate's
/// chain and address, and a server whose certificate does not chain to `server_tls_ca_file`
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_use_tls_as_server_tls_sslmode_says() {
    let prefer = Pgring::start(&config_for("transaction", 2, 2, ""));
    let ssl = backend_ssl(prefer.port).await;
    assert!(
        ssl.as_deref().is_ok_and(|s| s.starts_with("true/TLS_")),
        "{ssl:?}\n{}",
        prefer.log()
    );
    let disable = Pgring::start(&config_for(
        "transaction",
        2,
        2,
        "server_tls_sslmode = \"disable\"",
    ));
    assert_eq!(backend_ssl(disable.port).await.as_deref(), Ok("false/"));

    let ca = pg().ca_file();
    // server_tls13_ciphers narrows what pgring offers PostgreSQL.
    let full = format!(
        "server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"\n\
         server_tls13_ciphers = \"TLS_AES_128_GCM_SHA256\"",
        ca.display()
    );
    let full = Pgring::start(&config_for("transaction", 2, 2, &full));
    assert_eq!(
        backend_ssl(full.port).await.as_deref(),
        Ok("true/TLS_AES_128_GCM_SHA256"),
        "{}",
        full.log()
    );

    let files = fresh_dir();
    let (other_ca, _, _) = signed_client_cert("nobody");
    std::fs::write(files.join("other-ca.crt"), other_ca).expect("writing other-ca.crt");
    let wrong = format!(
        "server_tls_sslmode = \"verify-ca\"\nserver_tls_ca_file = \"{}\"",
        files.join("other-ca.crt").display()
    );
    let wrong = Pgring::start(&config_for("transaction", 2, 2, &wrong));
    let err = backend_ssl(wrong.port)
        .await
        .expect_err("a server with an untrusted certificate");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let _ = std::fs::remove_dir_all(files);
}

/// A TLS client queued for a server that goes away (killed: no close_notify, only the end of the
/// TCP stream) leaves the queue at once while the server is still held, as a plaintext one does
/// (`pool::waiting`): the watch reads through the TLS session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_tls_client_that_goes_away_leaves_the_queue() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let files = fresh_dir();
    let general = format!("{}\nreserve_pool_size = 0", tls_general(&files, "prefer"));
    let pgring = Pgring::start(&config_for("transaction", 1, 2, &general));
    let console = crate::admin::console(&pgring, "postgres").await;
    let holder = crate::common::connect(pgring.port, "app", "postgres", "").await;
    // psql over TLS, logged in and reading its commands from a pipe.
    let mut waiter = Command::new(pg().bin.join("psql"))
        .args(["-X", "-w", "-At", "-h", "127.0.0.1", "-p"])
        .arg(pgring.port.to_string())
        .args(["-U", "postgres", "-d", "app"])
        .env("PGSSLMODE", "require")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting psql");
    let pools = |column: &'static str| {
        let console = &console;
        async move {
            crate::admin::show(console, "SHOW POOLS")
                .await
                .num("database", "app", column)
        }
    };
    let until = |column: &'static str, want: u64, what: &'static str| {
        let pools = &pools;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while pools(column).await != want {
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until("cl_active", 2, "psql over TLS never logged in").await;
    holder.simple_query("BEGIN").await.expect("BEGIN");
    let mut stdin = waiter.stdin.take().expect("psql's stdin");
    stdin.write_all(b"SELECT 1;\n").expect("writing to psql");
    stdin.flush().expect("flushing psql's stdin");
    until("cl_waiting", 1, "psql over TLS never queued").await;
    waiter.kill().expect("killing psql");
    let _ = waiter.wait();
    until("cl_waiting", 0, "the killed TLS client is still queued").await;
    assert_eq!(pools("cl_active").await, 1, "only the holder is left");
    holder.simple_query("COMMIT").await.expect("COMMIT");
    assert_eq!(
        crate::common::value(&holder, "SELECT 1").await.as_deref(),
        Some("1")
    );
}

/// `client_tls_ecdhcurve` narrows the key exchange groups offered to clients: with `secp384r1`,
/// a client offering only X25519 cannot finish a handshake, one offering P-384 can, and libpq
/// (offering several) still logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_ecdhcurve_narrows_the_key_exchange_groups() {
    let (pgring, files) = tls_pgring("require", "client_tls_ecdhcurve = \"secp384r1\"");
    let handshake = |groups: &str| {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-starttls",
                "postgres",
                "-brief",
                "-groups",
                groups,
            ])
            .args(["-connect", &format!("127.0.0.1:{}", pgring.port)])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running openssl s_client (the openssl package)");
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (said.contains("CONNECTION ESTABLISHED"), said)
    };
    let (ok, said) = handshake("X25519");
    assert!(!ok, "X25519 alone was accepted: {said}");
    let (ok, said) = handshake("P-384");
    assert!(ok, "P-384: {said}");
    assert_eq!(
        psql("127.0.0.1", pgring.port, "app", "require", "SELECT 1").as_deref(),
        Ok("1")
    );
    let _ = std::fs::remove_dir_all(files);
}
