//! Rules that span keys, checked after parsing: every broken rule becomes one problem line,
//! and all of them are returned together.
//!
//! Only what can be judged from the configuration itself is checked here; whether files
//! exist or hosts resolve is found out by the rooms that open them (auth, server), so that
//! validating stays pure and a RELOAD can validate on every shard without I/O.

use super::entries::{Database, Peer, User};
use super::general::General;
use super::parse::entry_label;
use super::types::{AuthType, SslMode};
use super::Config;
use crate::server::addr::{is_unix_host, ServerAddr, MAX_UNIX_PATH};
use std::net::SocketAddr;

/// Every cross-key problem of `config`, each prefixed with its table and key.
pub(crate) fn problems(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    general(&config.general, &mut out);
    auth(config, &mut out);
    tls(&config.general, &mut out);
    for (name, db) in &config.databases {
        database(name, db, &config.general, &mut out);
    }
    for (name, user) in &config.users {
        self::user(name, user, &config.general, &mut out);
    }
    for (name, peer) in &config.peers {
        self::peer(name, peer, &config.general, &mut out);
    }
    out
}

/// The largest `peer_id`: a cancel key has 14 bits for it (PgBouncer's layout).
pub const MAX_PEER_ID: u16 = 16383;

fn peer(name: &str, peer: &Peer, g: &General, out: &mut Vec<String>) {
    let label = entry_label("peers", name);
    if !name
        .parse::<u16>()
        .is_ok_and(|id| (1..=MAX_PEER_ID).contains(&id))
    {
        out.push(format!(
            "{label}: the name is a peer_id, a number from 1 to {MAX_PEER_ID}"
        ));
    }
    if peer.port == 0 {
        out.push(format!("{label} port: must not be 0"));
    }
    if peer.host.is_none() && g.unix_socket_dir.is_empty() {
        out.push(format!(
            "{label} host: unset means the peer's unix socket in unix_socket_dir, which is empty"
        ));
    }
}

fn general(g: &General, out: &mut Vec<String>) {
    let mut fail = |key: &str, why: String| out.push(format!("[general] {key}: {why}"));
    if g.listen_port == 0 {
        fail("listen_port", "must not be 0".into());
    }
    if g.max_client_conn == 0 {
        fail("max_client_conn", "must be at least 1".into());
    }
    if g.min_pool_size > g.default_pool_size {
        fail(
            "min_pool_size",
            too_big(g.min_pool_size, "default_pool_size", g.default_pool_size),
        );
    }
    if g.listen_addr.trim().is_empty() && g.unix_socket_dir.is_empty() {
        fail(
            "listen_addr",
            "empty and unix_socket_dir is empty too: nowhere to listen".into(),
        );
    }
    if !(1..=crate::auth::scram::MAX_CLIENT_ITERATIONS).contains(&g.scram_iterations) {
        fail(
            "scram_iterations",
            format!(
                "{} is outside 1..={}: each login computes that many PBKDF2 rounds on its shard",
                g.scram_iterations,
                crate::auth::scram::MAX_CLIENT_ITERATIONS
            ),
        );
    }
    if g.peer_id > MAX_PEER_ID {
        fail(
            "peer_id",
            format!("{} is above the largest peer id, {MAX_PEER_ID}", g.peer_id),
        );
    }
    if g.ring_depth == 0 {
        fail("ring_depth", "must be at least 1".into());
    }
    if g.pkt_buf < 512 {
        fail(
            "pkt_buf",
            format!("{} is below the minimum of 512", g.pkt_buf),
        );
    }
    if let Some(addr) = g
        .stats_listen
        .as_deref()
        .filter(|a| a.parse::<SocketAddr>().is_err())
    {
        fail(
            "stats_listen",
            format!("{addr:?} is not an address:port such as \"127.0.0.1:9127\""),
        );
    }
}

fn auth(config: &Config, out: &mut Vec<String>) {
    let g = &config.general;
    let any_auth_user =
        g.auth_user.is_some() || config.databases.values().any(|d| d.auth_user.is_some());
    if g.auth_type.needs_secret() && g.auth_file.is_none() && !any_auth_user {
        out.push(format!(
            "[general] auth_type: \"{}\" needs passwords: set auth_file, or auth_user for auth_query",
            g.auth_type
        ));
    }
    if g.auth_type == AuthType::Hba && g.auth_hba_file.is_none() {
        out.push("[general] auth_type: \"hba\" needs auth_hba_file".into());
    }
}

fn tls(g: &General, out: &mut Vec<String>) {
    let mode = g.client_tls_sslmode;
    let files = g.client_tls_key_file.is_some() && g.client_tls_cert_file.is_some();
    if mode != SslMode::Disable && !files {
        out.push(format!(
            "[general] client_tls_sslmode: \"{}\" needs client_tls_key_file and client_tls_cert_file",
            mode.as_str()
        ));
    }
    let verifies = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    if verifies && g.client_tls_ca_file.is_none() {
        out.push(format!(
            "[general] client_tls_sslmode: \"{}\" needs client_tls_ca_file (the roots client certificates must chain to)",
            mode.as_str()
        ));
    }
    let server = g.server_tls_sslmode;
    if matches!(server, SslMode::VerifyCa | SslMode::VerifyFull) && g.server_tls_ca_file.is_none() {
        out.push(format!(
            "[general] server_tls_sslmode: \"{}\" needs server_tls_ca_file (the roots PostgreSQL's certificate must chain to)",
            server.as_str()
        ));
    }
    let cert_ready = mode != SslMode::Disable && g.client_tls_ca_file.is_some();
    if g.auth_type == AuthType::Cert && !cert_ready {
        out.push(
            "[general] auth_type: \"cert\" needs client TLS (client_tls_sslmode) and client_tls_ca_file"
                .into(),
        );
    }
}

fn database(name: &str, db: &Database, g: &General, out: &mut Vec<String>) {
    let label = entry_label("databases", name);
    if name == "pgbouncer" {
        out.push(format!(
            "{label}: the name `pgbouncer` is reserved for the admin console"
        ));
    }
    let mut fail = |key: &str, why: String| out.push(format!("{label} {key}: {why}"));
    if db.port == 0 {
        fail("port", "must not be 0".into());
    }
    if db.host.is_some() && db.hosts().iter().any(|h| h.is_empty()) {
        fail(
            "host",
            format!(
                "{:?} has an empty host in its list",
                db.host.as_deref().unwrap_or("")
            ),
        );
    }
    if let Some(why) = unix_host_problem(db, g) {
        fail("host", why);
    }
    if db.dbname.as_deref() == Some("") {
        fail(
            "dbname",
            "must not be empty (leave it out to use the entry's name)".into(),
        );
    }
    // Only judged when the entry sets one of the two; otherwise [general] already reported it.
    let pool = db.pool_size.unwrap_or(g.default_pool_size);
    let min = db.min_pool_size.unwrap_or(g.min_pool_size);
    let own = db.pool_size.is_some() || db.min_pool_size.is_some();
    if own && min > pool {
        fail("min_pool_size", too_big(min, "pool_size", pool));
    }
    if db.password.is_some() && db.user.is_none() {
        fail("password", "is only used together with user".into());
    }
}

/// A unix-socket host (`/dir`, `@name`, or unset: `unix_socket_dir`) must make a socket
/// address: PgBouncer would fail each connect ("unix socket dir not configured") or truncate
/// the path; pgring says so at load.
fn unix_host_problem(db: &Database, g: &General) -> Option<String> {
    let Some(host) = db.host.as_deref() else {
        return g.unix_socket_dir.is_empty().then(|| {
            "unset means the server's unix socket in unix_socket_dir, which is empty; \
             set host (a directory such as /var/run/postgresql, or an address)"
                .into()
        });
    };
    let too_long = host
        .split(',')
        .map(str::trim)
        .filter(|h| is_unix_host(h))
        .map(|h| ServerAddr::unix(h, db.port))
        .find(|a| a.sock_addr().is_err())?;
    Some(format!(
        "the socket path {too_long} is longer than a unix socket address holds ({MAX_UNIX_PATH} bytes)"
    ))
}

fn user(name: &str, user: &User, g: &General, out: &mut Vec<String>) {
    if user.pool_size == Some(0) && user.reserve_pool_size.unwrap_or(g.reserve_pool_size) == 0 {
        let label = entry_label("users", name);
        out.push(format!(
            "{label} pool_size: 0 leaves this user no server connection"
        ));
    }
}

/// What the configuration asks for that pgring does not do, for both file formats:
/// `(errors, warnings)`. An error when ignoring the setting would change what clients or
/// servers see (plaintext where TLS was required, logins refused); a warning otherwise.
/// Kept apart from [`problems`] so that parsing tests can still read every spelling.
pub(crate) fn unsupported(config: &Config) -> (Vec<String>, Vec<String>) {
    let g = &config.general;
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let not_implemented = |key: &str, value: &str, why: &str| {
        format!("[general] {key}: \"{value}\" is not implemented by pgring: {why}")
    };
    if matches!(g.auth_type, AuthType::Pam | AuthType::Ldap) {
        let why = "every login would be refused";
        errors.push(not_implemented("auth_type", g.auth_type.as_str(), why));
    }
    for (key, protocols, ciphers) in [
        ("client", &g.client_tls_protocols, &g.client_tls_ciphers),
        ("server", &g.server_tls_protocols, &g.server_tls_ciphers),
    ] {
        match super::TlsProtocols::parse(protocols) {
            Err(e) => errors.push(format!("[general] {key}_tls_protocols: {e}")),
            Ok(p) if p.dropped => warnings.push(format!(
                "[general] {key}_tls_protocols: \"{protocols}\": pgring speaks TLS 1.2 and 1.3 only"
            )),
            Ok(_) => {}
        }
        let c = super::Tls12Ciphers::parse(ciphers);
        let what = format!("[general] {key}_tls_ciphers: \"{ciphers}\"");
        let all = "every TLS 1.2 suite pgring has (AEAD with ECDHE) is offered";
        if c.rules {
            warnings.push(format!(
                "{what} uses OpenSSL's rule syntax, which pgring does not evaluate: {all}"
            ));
        } else if !c.skipped.is_empty() && c.names.is_empty() {
            warnings.push(format!("{what} names no suite pgring has: {all}"));
        } else if !c.skipped.is_empty() {
            warnings.push(format!(
                "{what}: pgring has no {}; the others are offered",
                c.skipped.join(", ")
            ));
        }
    }
    let groups = super::KxGroups::parse(&g.client_tls_ecdhcurve);
    if !groups.unknown.is_empty() {
        let also = if groups.names.is_empty() {
            "every key exchange group rustls has (X25519, P-256, P-384) is offered"
        } else {
            "the others are offered"
        };
        warnings.push(format!(
            "[general] client_tls_ecdhcurve: \"{}\": pgring has no {} ({also}; rustls has no finite-field or RSA key exchange, so not \"none\" either)",
            g.client_tls_ecdhcurve,
            groups.unknown.join(", ")
        ));
    }
    if crate::syslog::facility_code(&g.syslog_facility).is_none() {
        errors.push(format!(
            "[general] syslog_facility: \"{}\" is not one of {}",
            g.syslog_facility,
            crate::syslog::facility_names()
        ));
    }
    if !g.dns_zone_check_period.is_zero() {
        warnings
            .push("[general] dns_zone_check_period: ignored by pgring (no DNS zone checks)".into());
    }
    (errors, warnings)
}

fn too_big(value: u32, other: &str, limit: u32) -> String {
    format!("{value} is larger than {other} {limit}")
}
