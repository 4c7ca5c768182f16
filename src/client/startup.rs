//! The first packets of a connection: SSLRequest (answered `S` with a TLS handshake when
//! `client_tls_sslmode` is on, else `N`), GSSENCRequest (`N`), CancelRequest (routed), and the
//! StartupMessage, decoded into user, database and settings.

use std::rc::Rc;

use crate::config::Config;
use crate::error::{sqlstate, Error, Result};
use crate::protocol::startup::{self, parse_startup, startup_len, StartupPacket};
use crate::runtime::io::{self as rio, Buf};
use crate::runtime::{Shard, Stream};
use crate::wire::small_buf;

/// Startup keys that are not session parameters.
const PROTOCOL_KEYS: [&str; 3] = ["user", "database", "options"];

/// The startup packet, decoded.
pub(super) struct Startup {
    pub(super) user: String,
    pub(super) database: String,
    pub(super) params: Vec<(String, String)>,
}

/// Reads packets until a StartupMessage, answering SSLRequest (see [`answer_ssl_request`]) and
/// GSSENCRequest (`N`), and routing a CancelRequest.
pub(super) async fn read_startup(
    shard: &Rc<Shard>,
    stream: &mut Stream,
) -> Result<Option<Startup>> {
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
                // Answered, as PostgreSQL answers, by closing the connection once the request
                // is delivered: PQcancel waits for that, so a client that goes on after its
                // cancel returned cannot have its next query cancelled by it.
                let landed = super::cancel::route(shard, key);
                let limit = super::cancel::answer_limit(shard);
                let _ = crate::runtime::io::timeout(limit, landed).await;
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

/// `client_tls_sslmode = require`: a TCP client that did not ask for TLS is refused, with
/// PgBouncer's wording (the unix socket is exempt, as in PgBouncer).
pub(super) fn check_tls_required(stream: &Stream, config: &Config) -> Result<()> {
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
