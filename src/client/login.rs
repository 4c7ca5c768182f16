//! Login: from the first packet to the first ReadyForQuery.
//!
//! SSLRequest is answered `S` and TLS begins when `client_tls_sslmode` is on (else `N`), and
//! GSSENCRequest `N`; a
//! CancelRequest is routed and the connection closed; a StartupMessage names
//! the database and user. The client authenticates against pgring's auth
//! file or `auth_query` (trust, plain, md5 or SCRAM-SHA-256, or per connection by the rules of
//! `auth_hba_file`), then is greeted with its
//! pool's server parameters overlaid with its own, a cancel key that pgring
//! owns, and ReadyForQuery. The whole phase runs under `client_login_timeout`.

use std::rc::Rc;
use std::sync::Arc;

use tracing::{info, warn};

use super::ClientInfo;
use crate::auth::ident::IdentMap;
use crate::auth::scram::{PassThroughKeys, ScramServer, Verifier, SCRAM_SHA_256};
use crate::auth::userlist::Secret;
use crate::auth::{hba, md5, scram};
use crate::config::{AuthType, Config};
use crate::error::{sqlstate, Error, PgError, Result};
use crate::pool::{Counter, Pool, PoolKey};
use crate::protocol::startup::{self, parse_startup, startup_len, StartupPacket};
use crate::protocol::{build, frontend, tag};
use crate::runtime::io::Buf;
use crate::runtime::io::{self as rio, timeout};
use crate::runtime::shard::counter;
use crate::runtime::{Shard, Stream};
use crate::server::ClientParams;
use crate::wire::{read_message, small_buf, Message, ReadError};

/// Largest password / SASL message accepted (PostgreSQL's
/// PG_MAX_AUTH_TOKEN_LENGTH).
const MAX_AUTH_MESSAGE: u32 = 65_535;

/// Names under which the admin console is reachable.
pub const ADMIN_DBS: [&str; 2] = ["pgbouncer", "pgring"];

/// Parameters PostgreSQL reports that pgring keeps in step per client.
const TRACKED: [&str; 6] = [
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
    "IntervalStyle",
];

/// Startup keys that are not session parameters.
const PROTOCOL_KEYS: [&str; 3] = ["user", "database", "options"];

/// A logged-in client.
pub enum LoggedIn {
    /// The admin console.
    Admin {
        /// admin_users member (else stats_users: SHOW only).
        is_admin: bool,
    },
    /// A normal pool.
    Pool {
        /// This shard's slice of the pool.
        pool: Rc<Pool>,
        /// What the client's servers must look like.
        params: ClientParams,
        /// Its places under max_db/user_client_connections.
        slots: ClientSlots,
    },
}

/// A client's places under `max_db_client_connections` and
/// `max_user_client_connections` (in that order), returned when the session
/// ends.
pub struct ClientSlots([Arc<Counter>; 2]);

impl Drop for ClientSlots {
    fn drop(&mut self) {
        for c in &self.0 {
            c.give();
        }
    }
}

/// Takes the client's places, or refuses it with PgBouncer's wording
/// (client.c: "client connections exceeded (max_db_client_connections)").
fn take_client_slots(shard: &Shard, config: &Config, db: &str, user: &str) -> Result<ClientSlots> {
    let shared = &shard.shared;
    let db_slot = take_slot(
        counter(&shared.db_clients, db),
        config.max_db_client_connections(db),
        "max_db_client_connections",
    )?;
    let user_slot = take_slot(
        counter(&shared.user_clients, user),
        config.max_user_client_connections(user),
        "max_user_client_connections",
    );
    match user_slot {
        Ok(user_slot) => Ok(ClientSlots([db_slot, user_slot])),
        Err(e) => {
            db_slot.give();
            Err(e)
        }
    }
}

fn take_slot(c: Arc<Counter>, limit: u32, what: &str) -> Result<Arc<Counter>> {
    if c.try_take(limit) {
        Ok(c)
    } else {
        Err(Error::refuse(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("client connections exceeded ({what})"),
        ))
    }
}

/// The startup packet, decoded.
struct Startup {
    user: String,
    database: String,
    params: Vec<(String, String)>,
}

/// Runs the login phase. `Ok(None)`: nothing more to do (cancel request).
pub async fn login(
    shard: &Rc<Shard>,
    info: &Rc<ClientInfo>,
    stream: &mut Stream,
) -> Result<Option<LoggedIn>> {
    let config = shard.config();
    let limit = config.general.client_login_timeout.duration();
    // Room for AuthenticationOk and a typical greeting (~450 bytes), so neither grows it.
    let mut unsent = Vec::with_capacity(512);
    // The work is boxed: its ~3 KB state would otherwise be copied into
    // the timeout's combinators several times over (~10 KB per client
    // logging in, and 10,000 clients connecting at once leave the heap
    // that much larger for good).
    let work = Box::pin(login_inner(shard, info, stream, &config, &mut unsent));
    let result = if limit.is_zero() {
        work.await
    } else {
        timeout(limit, work).await.unwrap_or_else(|| {
            Err(Error::refuse(
                sqlstate::PROTOCOL_VIOLATION,
                "client_login_timeout",
            ))
        })
    };
    if result.is_err() && !unsent.is_empty() {
        // The client was authenticated but not greeted: it hears its AuthenticationOk
        // before the error, as it did when that was sent on its own.
        let _ = rio::write_all(stream, &unsent).await;
    }
    result
}

/// `unsent` holds what is owed to the client but not yet written: AuthenticationOk waits
/// there to go out in one write with the greeting (as PgBouncer's `welcome_client` sends
/// them), which saves a `send` per login; `login` flushes it if the login fails instead.
async fn login_inner(
    shard: &Rc<Shard>,
    info: &Rc<ClientInfo>,
    stream: &mut Stream,
    config: &Config,
    unsent: &mut Vec<u8>,
) -> Result<Option<LoggedIn>> {
    let Some(startup) = read_startup(shard, stream).await? else {
        return Ok(None);
    };
    *info.user.borrow_mut() = startup.user.as_str().into();
    *info.db.borrow_mut() = startup.database.as_str().into();
    if let Some((_, app)) = startup.params.iter().find(|(k, _)| k == "application_name") {
        *info.app_name.borrow_mut() = app.as_str().into();
    }
    check_tls_required(stream, config)?;
    crate::admin::check_login_allowed(shard, &startup.database)?;
    if ADMIN_DBS.contains(&startup.database.as_str()) {
        return admin_login(shard, info, stream, config, &startup, unsent)
            .await
            .map(Some);
    }
    let Some(db) = config.database(&startup.database) else {
        return Err(Error::refuse(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", startup.database),
        ));
    };
    let method = auth_method(shard, stream, config, &startup.database, &startup.user)?;
    let db_name = Some(startup.database.as_str());
    let keys = authenticate(shard, stream, method, &startup.user, db_name, unsent).await?;
    let slots = take_client_slots(shard, config, &startup.database, &startup.user)?;
    let key = pool_key(info, db.user.as_deref());
    if let Some(keys) = keys.filter(|_| *key.user == *startup.user) {
        super::auth_query::remember_keys(shard, &key, keys);
    }
    let pool = shard.pool(&key);
    share_names(info, &pool.key);
    let params = prepare_params(shard, &pool, config, &startup).await?;
    share_app_name(info, &pool);
    greet(stream, info, &pool, &params, unsent).await?;
    pool.stats.record_login();
    // PgBouncer 1.18's `log_connections` wording (client.c), which operators grep for.
    let tls = remember_tls(shard, info, stream);
    info!(db = %startup.database, user = %startup.user, %tls, "login attempt: db={} user={} tls={tls}", startup.database, startup.user);
    Ok(Some(LoggedIn::Pool {
        pool,
        params,
        slots,
    }))
}

/// The pool the client logs in to: its database, as the server user the entry forces or as
/// itself. Built from the client's own shared names, so it costs no copy of them.
fn pool_key(info: &ClientInfo, forced_user: Option<&str>) -> PoolKey {
    PoolKey {
        db: info.db.borrow().clone(),
        user: match forced_user {
            Some(user) => user.into(),
            None => info.user.borrow().clone(),
        },
    }
}

/// Points the client's db and user at its pool key's strings where they are
/// the same, so that the pool's clients hold one copy between them.
fn share_names(info: &ClientInfo, key: &PoolKey) {
    for (mine, shared) in [(&info.db, &key.db), (&info.user, &key.user)] {
        let mut mine = mine.borrow_mut();
        if *mine == *shared {
            *mine = shared.clone();
        }
    }
}

/// The client's application_name, as the pool's shared copy (the one its
/// parameters hold too).
fn share_app_name(info: &ClientInfo, pool: &Pool) {
    let mut app = info.app_name.borrow_mut();
    if !app.is_empty() {
        *app = pool.intern(&app);
    }
}

/// Reads packets until a StartupMessage, answering SSL/GSS requests `N`.
async fn read_startup(shard: &Rc<Shard>, stream: &mut Stream) -> Result<Option<Startup>> {
    let mut buf = small_buf();
    loop {
        // Parsed where it lies: the parse copies out what it keeps, so the packet itself
        // needs no copy of its own.
        let packet = loop {
            if let Some(n) = startup_len(buf.data()).map_err(Error::ClientProtocol)? {
                if let Some(packet) = buf.data().get(..n) {
                    let parsed = parse_startup(packet).map_err(Error::ClientProtocol)?;
                    buf.consume(n);
                    break parsed;
                }
            }
            if rio::read_into(stream, &mut buf)
                .await
                .map_err(Error::ClientIo)?
                == 0
            {
                return Err(Error::ClientClosed);
            }
        };
        match packet {
            StartupPacket::SslRequest => answer_ssl_request(shard, stream, &buf).await?,
            StartupPacket::GssEncRequest => {
                rio::write_all(stream, b"N")
                    .await
                    .map_err(Error::ClientIo)?;
            }
            StartupPacket::Cancel(key) => {
                super::cancel::route(shard, key);
                return Ok(None);
            }
            StartupPacket::Startup { params, .. } => return decode_startup(params).map(Some),
        }
    }
}

/// SSLRequest: `S` and the TLS handshake when `client_tls_sslmode` is on and this is a TCP
/// client not yet in TLS, else `N` (PostgreSQL does not offer TLS on its unix socket either).
/// Bytes the client sent after its SSLRequest, before our answer, would be plaintext that
/// looks as if it came through TLS (CVE-2021-23214): refused.
async fn answer_ssl_request(shard: &Shard, stream: &mut Stream, after: &Buf) -> Result<()> {
    let files = shard.files();
    let tls = files
        .client_tls
        .as_ref()
        .filter(|_| !stream.is_unix() && !stream.is_tls());
    let Some(config) = tls else {
        return rio::write_all(stream, b"N").await.map_err(Error::ClientIo);
    };
    if !after.data().is_empty() {
        return Err(Error::refuse(
            sqlstate::PROTOCOL_VIOLATION,
            "received unencrypted data after SSL request",
        ));
    }
    rio::write_all(stream, b"S")
        .await
        .map_err(Error::ClientIo)?;
    stream.start_tls(config.clone()).map_err(Error::ClientIo)
}

/// Notes a TLS client's version and cipher for SHOW CLIENTS; returns it for the login line
/// (`no` without TLS, as PgBouncer logs it).
fn remember_tls(shard: &Shard, info: &ClientInfo, stream: &Stream) -> String {
    let Some(tls) = stream.tls_info() else {
        return "no".into();
    };
    let shown = tls.as_str().into();
    shard.tls_clients.borrow_mut().insert(info.key, shown);
    tls
}

/// `client_tls_sslmode = require`: a TCP client that did not ask for TLS is refused, with
/// PgBouncer's wording (the unix socket is exempt, as in PgBouncer).
fn check_tls_required(stream: &Stream, config: &Config) -> Result<()> {
    if config.general.client_tls_sslmode.requires_tls() && !stream.is_unix() && !stream.is_tls() {
        return Err(Error::refuse(
            sqlstate::INVALID_AUTHORIZATION,
            "SSL required",
        ));
    }
    Ok(())
}

/// Splits the startup parameters into user, database and settings, moving the strings
/// parsed from the packet rather than copying them.
fn decode_startup(mut params: Vec<(String, String)>) -> Result<Startup> {
    let user = take_param(&mut params, "user").filter(|u| !u.is_empty());
    let user = user.ok_or_else(|| {
        Error::refuse(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    if params.iter().any(|(k, _)| k == "replication") {
        return Err(Error::refuse(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by pgring",
        ));
    }
    let database = take_param(&mut params, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let options = take_param(&mut params, "options");
    // Every copy of a protocol key goes, not only the first one taken above.
    params.retain(|(k, _)| !PROTOCOL_KEYS.contains(&k.as_str()));
    if let Some(opts) = options {
        params.extend(startup::split_options(&opts));
    }
    Ok(Startup {
        user,
        database,
        params,
    })
}

/// The value of the first `key` (PostgreSQL takes the first too), moved out.
fn take_param(params: &mut [(String, String)], key: &str) -> Option<String> {
    let (_, value) = params.iter_mut().find(|(k, _)| k == key)?;
    Some(std::mem::take(value))
}

/// Authenticates the client as `user` according to `auth_type`, against the auth file or,
/// for a user missing there, `auth_query` on database entry `db`. Returns the pass-through
/// keys when the client proved itself with SCRAM against a verifier.
async fn authenticate(
    shard: &Rc<Shard>,
    stream: &mut Stream,
    method: AuthType,
    user: &str,
    db: Option<&str>,
    unsent: &mut Vec<u8>,
) -> Result<Option<PassThroughKeys>> {
    let config = shard.config();
    let found = match (shard.files().users.get(user), db) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(db)) if method.needs_secret() => {
            super::auth_query::lookup(shard, &config, db, user).await?
        }
        (None, _) => None,
    };
    let secret = found.as_ref();
    let mut keys = None;
    // Before authentication a client gets no more room than PostgreSQL
    // gives an auth message (PG_MAX_AUTH_TOKEN_LENGTH), whatever
    // max_packet_size allows once it is in.
    let max = config.general.max_packet_size.min(MAX_AUTH_MESSAGE);
    let ok = match (method, secret) {
        (AuthType::Trust | AuthType::Any, _) => true,
        (_, None) => {
            // Unknown user: still ask for a password so that probing cannot
            // tell a missing user from a wrong password. The log says which (as PgBouncer's
            // `no such user: %s` does); the client never learns it.
            info!(user, "no such user: {user}");
            ask_cleartext(stream, max).await?;
            false
        }
        (AuthType::Plain, Some(s)) => check_plain(s, user, &ask_cleartext(stream, max).await?),
        (AuthType::Md5, Some(Secret::Scram(v)))
        | (AuthType::ScramSha256, Some(Secret::Scram(v))) => {
            let client_key = scram_exchange(stream, v.clone(), max).await?;
            keys = client_key.map(|client_key| PassThroughKeys {
                client_key,
                server_key: v.server_key,
            });
            client_key.is_some()
        }
        (AuthType::Md5, Some(s)) => md5_exchange(stream, s, user, max).await?,
        (AuthType::ScramSha256, Some(Secret::Plain(p))) => {
            let salt: [u8; 16] = rand::random();
            let verifier = Verifier::from_password(p, &salt, 4096);
            scram_exchange(stream, verifier, max).await?.is_some()
        }
        (AuthType::ScramSha256, Some(Secret::Md5(_))) => false,
        (other, _) => {
            return Err(Error::refuse(
                sqlstate::INVALID_AUTHORIZATION,
                format!("auth_type {other:?} is not supported by pgring"),
            ))
        }
    };
    if !ok {
        warn!(user, "password authentication failed");
        return Err(Error::refuse(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        ));
    }
    build::auth_ok(unsent);
    Ok(keys)
}

/// How this connection authenticates: `auth_type`, or with `hba` the method of the first
/// `auth_hba_file` rule matching it (PgBouncer's `hba_eval`, after the database is known and
/// before any password is asked). A `reject` rule, or no matching rule, refuses the login with
/// PgBouncer's "login rejected"; `peer` is settled here, from the unix socket's credentials.
fn auth_method(
    shard: &Shard,
    stream: &Stream,
    config: &Config,
    db: &str,
    user: &str,
) -> Result<AuthType> {
    match config.general.auth_type {
        AuthType::Hba => hba_method(shard, stream, db, user),
        AuthType::Cert => {
            check_cert(stream, user, None)?;
            Ok(AuthType::Trust)
        }
        other => Ok(other),
    }
}

/// The method of the first `auth_hba_file` rule matching this connection (see
/// [`auth_method`]); `peer` and `cert` are settled here, through the rule's ident map if it
/// names one.
fn hba_method(shard: &Shard, stream: &Stream, db: &str, user: &str) -> Result<AuthType> {
    let peer = match rio::peer_addr(stream) {
        Some(addr) => hba::Peer::Host {
            addr: addr.ip(),
            tls: stream.is_tls(),
        },
        None if stream.is_unix() => hba::Peer::Local,
        // A TCP peer already gone: nothing to authenticate.
        None => return Err(Error::ClientClosed),
    };
    let files = shard.files();
    let rule = files.hba.as_ref().and_then(|h| h.method(peer, db, user));
    let Some(rule) = rule else {
        info!(
            db,
            user,
            ?peer,
            "login rejected: no auth_hba_file rule matches"
        );
        return Err(login_rejected());
    };
    let map = rule.map.zip(files.ident.as_ref());
    Ok(match rule.method {
        hba::Method::Trust => AuthType::Trust,
        hba::Method::Md5 => AuthType::Md5,
        hba::Method::Password => AuthType::Plain,
        hba::Method::Scram => AuthType::ScramSha256,
        hba::Method::Cert => {
            check_cert(stream, user, map)?;
            AuthType::Trust
        }
        hba::Method::Peer => {
            check_peer(stream, user, map)?;
            AuthType::Trust
        }
        hba::Method::Reject => {
            let line = rule.line;
            info!(
                db,
                user,
                ?peer,
                line,
                "login rejected by auth_hba_file line {line}"
            );
            return Err(login_rejected());
        }
    })
}

/// PgBouncer's wording; PostgreSQL's SQLSTATE for an hba refusal.
fn login_rejected() -> Error {
    Error::refuse(sqlstate::INVALID_AUTHORIZATION, "login rejected")
}

/// Whether `system` (an OS user, a certificate name) may log in as `user`: the same name, or
/// through the rule's ident map when it names one.
fn admits(system: Option<&str>, user: &str, map: Option<(&str, &IdentMap)>) -> bool {
    match (system, map) {
        (None, _) => false,
        (Some(system), Some((name, ident))) => ident.allows(name, system, user),
        (Some(system), None) => system == user,
    }
}

/// `cert`: the client logged in over TLS with a certificate that chains to
/// `client_tls_ca_file` (checked in the handshake) and whose CommonName is the login user name
/// (as PgBouncer takes it) or maps to it.
fn check_cert(stream: &Stream, user: &str, map: Option<(&str, &IdentMap)>) -> Result<()> {
    let common_name = stream.tls_peer_common_name();
    if admits(common_name.as_deref(), user, map) {
        return Ok(());
    }
    warn!(user, common_name = ?common_name, tls = stream.is_tls(), "certificate authentication failed");
    Err(Error::refuse(
        sqlstate::INVALID_AUTHORIZATION,
        format!("certificate authentication failed for user \"{user}\""),
    ))
}

/// `peer`: the unix socket's peer runs as the OS user named like the login user, or one the
/// rule's ident map lets in as it.
fn check_peer(stream: &Stream, user: &str, map: Option<(&str, &IdentMap)>) -> Result<()> {
    let os_user = stream.peer_uid().and_then(crate::process::user_name);
    if admits(os_user.as_deref(), user, map) {
        return Ok(());
    }
    warn!(user, os_user = ?os_user, "peer authentication failed");
    Err(Error::refuse(
        sqlstate::INVALID_AUTHORIZATION,
        format!("peer authentication failed for user \"{user}\""),
    ))
}

async fn read_password_message(stream: &mut Stream, max: u32) -> Result<Message> {
    let mut buf = small_buf();
    let msg = read_message(stream, &mut buf, max)
        .await
        .map_err(|e| match e {
            ReadError::Io(e) => Error::ClientIo(e),
            ReadError::Eof => Error::ClientClosed,
            ReadError::Protocol(p) => Error::ClientProtocol(p),
        })?;
    if msg.tag != tag::PASSWORD_MESSAGE {
        return Err(Error::ClientProtocol(
            crate::protocol::ProtocolError::Unexpected(msg.tag),
        ));
    }
    Ok(msg)
}

async fn ask_cleartext(stream: &mut Stream, max: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    build::auth_cleartext(&mut out);
    rio::write_all(stream, &out)
        .await
        .map_err(Error::ClientIo)?;
    let msg = read_password_message(stream, max).await?;
    Ok(frontend::password(&msg.body)
        .map_err(Error::ClientProtocol)?
        .to_vec())
}

fn check_plain(secret: &Secret, user: &str, given: &[u8]) -> bool {
    let Ok(given) = std::str::from_utf8(given) else {
        return false;
    };
    match secret {
        Secret::Plain(p) => p == given,
        Secret::Md5(h) => &md5::md5_secret(user, given) == h,
        Secret::Scram(v) => {
            Verifier::from_password(given, &v.salt, v.iterations).stored_key == v.stored_key
        }
    }
}

async fn md5_exchange(stream: &mut Stream, secret: &Secret, user: &str, max: u32) -> Result<bool> {
    let salt: [u8; 4] = rand::random();
    let mut out = Vec::new();
    build::auth_md5(&mut out, salt);
    rio::write_all(stream, &out)
        .await
        .map_err(Error::ClientIo)?;
    let msg = read_password_message(stream, max).await?;
    let response = frontend::password(&msg.body).map_err(Error::ClientProtocol)?;
    Ok(md5::verify_md5_response(secret, user, salt, response))
}

/// `Some(ClientKey)` when the client's proof was good, `None` when it was wrong.
async fn scram_exchange(
    stream: &mut Stream,
    verifier: Verifier,
    max: u32,
) -> Result<Option<[u8; 32]>> {
    let mut out = Vec::new();
    build::auth_sasl(&mut out, SCRAM_SHA_256);
    rio::write_all(stream, &out)
        .await
        .map_err(Error::ClientIo)?;
    let first = read_password_message(stream, max).await?;
    let initial = frontend::sasl_initial(&first.body).map_err(Error::ClientProtocol)?;
    if initial.mechanism != SCRAM_SHA_256 {
        return Err(Error::refuse(
            sqlstate::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let mut server = ScramServer::new(verifier);
    let server_first = server
        .handle_client_first(initial.data)
        .map_err(sasl_error)?;
    out.clear();
    build::auth_sasl_continue(&mut out, &server_first);
    rio::write_all(stream, &out)
        .await
        .map_err(Error::ClientIo)?;
    let fin = read_password_message(stream, max).await?;
    match server.handle_client_final(&fin.body) {
        Ok(server_final) => {
            out.clear();
            build::auth_sasl_final(&mut out, &server_final);
            rio::write_all(stream, &out)
                .await
                .map_err(Error::ClientIo)?;
            Ok(server.client_key())
        }
        Err(scram::ScramError::BadProof) => Ok(None),
        Err(e) => Err(sasl_error(e)),
    }
}

fn sasl_error(e: scram::ScramError) -> Error {
    Error::refuse(
        sqlstate::PROTOCOL_VIOLATION,
        format!("malformed SCRAM message: {e}"),
    )
}

/// Builds the client's wanted parameters and, when they differ from what
/// this pool's servers were already seen to accept, tries them on a server
/// so a value PostgreSQL rejects fails the login as it would without us.
/// The parameters a client's server must match: PgBouncer's tracked ones and
/// `track_extra_parameters`.
pub(super) fn tracked(config: &Config) -> impl Iterator<Item = &str> + Clone + '_ {
    let extra = config.general.track_extra_parameters.iter();
    TRACKED.iter().copied().chain(extra.map(String::as_str))
}

async fn prepare_params(
    shard: &Rc<Shard>,
    pool: &Rc<Pool>,
    config: &Config,
    startup: &Startup,
) -> Result<ClientParams> {
    let ignored = &config.general.ignore_startup_parameters;
    let requested = || {
        let params = startup.params.iter();
        params.filter(|(k, _)| !ignored.iter().any(|i| i.eq_ignore_ascii_case(k)))
    };
    let fresh = pool.welcome().is_none();
    if fresh {
        // First client of this pool on this shard: a server tells us
        // what to greet clients with.
        let server = pool.acquire(shard).await?;
        pool.release(shard, server);
    }
    let mut params = ClientParams::new(pool.client_base(tracked(config)));
    let mut novel = fresh && requested().next().is_some();
    for (k, v) in requested() {
        params.set_with(k, v, |s| pool.intern(s));
        novel |= pool.note_param(k, v);
    }
    if novel {
        let mut server = pool.acquire(shard).await?;
        let result = server.sync_params(&mut params).await;
        match &result {
            Err(Error::Server(_)) | Ok(()) => pool.release(shard, server),
            Err(_) => pool.close_leased(shard, server, "parameter check failed"),
        }
        result.map_err(Error::into_fatal)?;
    }
    Ok(params)
}

/// Greets the client: ParameterStatus, BackendKeyData, ReadyForQuery, after the
/// AuthenticationOk already in `unsent`, all in one write.
async fn greet(
    stream: &mut Stream,
    info: &ClientInfo,
    pool: &Pool,
    params: &ClientParams,
    unsent: &mut Vec<u8>,
) -> Result<()> {
    // Taken: once the write is tried, nothing is owed (a failed write ends the client).
    let mut out = std::mem::take(unsent);
    // The pool's defaults are the welcome's own values (its tracked part, shared), so only
    // the client's overrides need looking up.
    for (name, value) in pool.welcome().unwrap_or_default().iter() {
        let value = params.overridden(name).unwrap_or(value);
        build::parameter_status(&mut out, name, value);
    }
    build::backend_key_data(&mut out, info.key);
    build::ready_for_query(&mut out, b'I');
    rio::write_all(stream, &out).await.map_err(Error::ClientIo)
}

/// The admin console: same authentication, then admin_users/stats_users.
async fn admin_login(
    shard: &Rc<Shard>,
    info: &Rc<ClientInfo>,
    stream: &mut Stream,
    config: &Config,
    startup: &Startup,
    unsent: &mut Vec<u8>,
) -> Result<LoggedIn> {
    let user = &startup.user;
    let own_user = is_own_user(stream, user);
    if own_user {
        build::auth_ok(unsent);
    } else {
        let method = auth_method(shard, stream, config, &startup.database, user)?;
        authenticate(shard, stream, method, user, None, unsent).await?;
    }
    let is_admin = own_user || config.general.admin_users.iter().any(|u| u == user);
    let is_stats = config.general.stats_users.iter().any(|u| u == user);
    if !is_admin && !is_stats {
        return Err(Error::Refused(PgError::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("not allowed: user \"{user}\" is not in admin_users or stats_users"),
        )));
    }
    info.is_admin.set(true);
    remember_tls(shard, info, stream);
    let mut out = std::mem::take(unsent);
    for (k, v) in [
        ("server_version", crate::admin::SERVER_VERSION),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
        ("application_name", "pgring"),
    ] {
        build::parameter_status(&mut out, k, v);
    }
    build::backend_key_data(&mut out, info.key);
    build::ready_for_query(&mut out, b'I');
    rio::write_all(stream, &out)
        .await
        .map_err(Error::ClientIo)?;
    Ok(LoggedIn::Admin { is_admin })
}

/// PgBouncer's `admin_pre_login`: user `pgbouncer` on the unix socket, whose peer (SO_PEERCRED)
/// runs as pgring's own uid, is the operator (health checks, exporters): a full admin with no
/// password. Over TCP the peer cannot be known, so it never applies there.
fn is_own_user(stream: &Stream, user: &str) -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::getuid() };
    user == "pgbouncer" && stream.peer_uid() == Some(own_uid)
}
