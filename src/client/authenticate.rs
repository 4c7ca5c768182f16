//! How a client proves who it is: the method (`auth_type`, or the matching `auth_hba_file`
//! rule, with `peer` and `cert` settled from the socket or the TLS certificate) and the
//! password exchanges (cleartext, md5, SCRAM-SHA-256) against the auth file or `auth_query`.

use std::rc::Rc;

use tracing::{info, warn};

use crate::auth::ident::IdentMap;
use crate::auth::scram::{PassThroughKeys, ScramServer, Verifier, SCRAM_SHA_256};
use crate::auth::userlist::Secret;
use crate::auth::{hba, md5, scram};
use crate::config::{AuthType, Config};
use crate::error::{sqlstate, Error, Result};
use crate::protocol::{build, frontend, tag};
use crate::runtime::io as rio;
use crate::runtime::{Shard, Stream};
use crate::wire::{read_message, small_buf, Message, ReadError};

/// Largest password / SASL message accepted (PostgreSQL's
/// PG_MAX_AUTH_TOKEN_LENGTH).
const MAX_AUTH_MESSAGE: u32 = 65_535;

/// Authenticates the client as `user` according to `auth_type`, against the auth file or,
/// for a user missing there, `auth_query` on database entry `db`. Returns the pass-through
/// keys when the client proved itself with SCRAM against a verifier.
pub(super) async fn authenticate(
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
            super::auth_query::lookup(shard, stream, &config, db, user).await?
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
            let verifier = Verifier::from_password(p, &salt, config.general.scram_iterations);
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
pub(super) fn auth_method(
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

/// `cert`: the client logged in over TLS with a certificate that chains to
/// `client_tls_ca_file` (checked in the handshake) and whose CommonName is the login user name
/// (as PgBouncer takes it) or maps to it.
fn check_cert(stream: &Stream, user: &str, map: Option<(&str, &IdentMap)>) -> Result<()> {
    admit("certificate", stream.tls_peer_common_name(), user, map)
}

/// `peer`: the unix socket's peer runs as the OS user named like the login user, or one the
/// rule's ident map lets in as it.
fn check_peer(stream: &Stream, user: &str, map: Option<(&str, &IdentMap)>) -> Result<()> {
    let os_user = stream.peer_uid().and_then(crate::process::user_name);
    admit("peer", os_user, user, map)
}

/// Lets `system` (an OS user, a certificate name; `None`: none known) log in as `user` if it
/// is the same name or the rule's ident map lists the pair; else PostgreSQL's
/// `<method> authentication failed` refusal.
fn admit(
    method: &str,
    system: Option<String>,
    user: &str,
    map: Option<(&str, &IdentMap)>,
) -> Result<()> {
    let admitted = match (&system, map) {
        (None, _) => false,
        (Some(system), Some((name, ident))) => ident.allows(name, system, user),
        (Some(system), None) => system == user,
    };
    if admitted {
        return Ok(());
    }
    warn!(user, system = ?system, "{method} authentication failed");
    Err(Error::refuse(
        sqlstate::INVALID_AUTHORIZATION,
        format!("{method} authentication failed for user \"{user}\""),
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
