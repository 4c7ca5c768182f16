//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) exactly as PostgreSQL speaks it, in both roles.
//!
//! [`ScramServer`] is pgring authenticating a client against a stored [`Verifier`];
//! [`ScramClient`] is pgring logging into PostgreSQL, either with a password or with a
//! ClientKey/ServerKey pair recovered from an earlier client exchange (pass-through, the
//! trick PgBouncer uses so a userlist.txt holding only verifiers can still reach servers).
//!
//! PostgreSQL's dialect, which is all this module implements (see `auth-scram.c` and
//! `fe-auth-scram.c`): the only mechanism is `SCRAM-SHA-256`; no channel binding, so the
//! gs2 header is `n,,` or `y,,` and `p=...` is refused (pgring never advertises `-PLUS`);
//! no authorization identity; the username attribute is sent empty (`n=,`) and ignored on
//! receipt, because the startup packet already named the user; nonces are the base64 of
//! 18 random bytes.
//!
//! Every message is peer input: parsing is total, lengths are capped before decoding, and
//! proofs are compared in constant time. Errors from [`ScramServer`] are the client's
//! fault; errors from [`ScramClient`] are the server's. This module does not frame the
//! `SASLInitialResponse` / `SASLResponse` / `AuthenticationSASL*` messages around them.

mod client;
mod crypto;
mod message;
mod server;
#[cfg(test)]
mod tests;

pub use client::ScramClient;
pub use server::ScramServer;

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use self::crypto::{hmac_sha256, random_nonce, salted_password, sha256, xor};
use self::message::{
    as_text, auth_message, check_channel_binding, check_server_nonce, decode_key,
    parse_client_final, parse_client_first, parse_decimal_u32, parse_server_final,
    parse_server_first, server_final,
};
use crate::auth::constant_time_eq;

/// The only SASL mechanism pgring offers and accepts.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Upper bound on a server's iteration count that [`ScramClient`] will honour.
///
/// A server chooses how much PBKDF2 work the client does, and that work runs on a shard's
/// only thread. PostgreSQL's default is 4096 (a millisecond or two); one million is already
/// a fraction of a second of stalled shard, so anything above is treated as hostile.
pub const MAX_CLIENT_ITERATIONS: u32 = 1_000_000;

/// Largest SCRAM message accepted from a peer, checked before any decoding.
///
/// Real messages are under 200 bytes; the slack covers long usernames from clients that
/// send them and imported verifiers with long salts.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Length of SHA-256 output, and so of every SCRAM key, signature and proof.
const KEY_LEN: usize = 32;

/// Random bytes in a nonce, matching PostgreSQL's `SCRAM_RAW_NONCE_LEN`.
const NONCE_BYTES: usize = 18;

/// Prefix of the stored verifier form in `pg_authid.rolpassword` and userlist.txt.
const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";

/// Why a SCRAM exchange failed.
///
/// From [`ScramServer`] every variant means the client misbehaved or gave the wrong
/// password; from [`ScramClient`] it means the server did.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// The message exceeds [`MAX_MESSAGE_LEN`].
    #[error("SCRAM message of {len} bytes exceeds the limit of {max}")]
    MessageTooLong {
        /// Length of the offending message.
        len: usize,
        /// The limit it exceeded.
        max: usize,
    },
    /// The message is not valid UTF-8.
    #[error("malformed SCRAM message (not valid UTF-8)")]
    NotUtf8,
    /// The message does not follow the RFC 5802 grammar.
    #[error("malformed SCRAM message ({0})")]
    Malformed(&'static str),
    /// A required attribute is absent or out of order.
    #[error("malformed SCRAM message (expected attribute \"{0}\")")]
    MissingAttribute(char),
    /// The client asked for channel binding (`p=...`), which pgring does not offer.
    #[error("channel binding is not supported")]
    ChannelBindingUnsupported,
    /// The client sent an authorization identity (`a=...`), which PostgreSQL refuses too.
    #[error("client uses authorization identity, but it is not supported")]
    AuthzidUnsupported,
    /// The `c=` attribute does not repeat the gs2 header of the first message.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// A nonce is empty or contains characters outside the printable set.
    #[error("malformed SCRAM message (invalid nonce)")]
    InvalidNonce,
    /// The peer's nonce does not extend or repeat the one agreed so far.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof is wrong: in practice, the wrong password.
    #[error("password authentication failed (SCRAM proof mismatch)")]
    BadProof,
    /// The server's signature is wrong: it does not know the password's keys.
    #[error("incorrect server signature")]
    ServerSignatureMismatch,
    /// The server sent an iteration count below 1.
    #[error("SCRAM iteration count {0} is too small")]
    IterationsTooSmall(u32),
    /// The server sent an iteration count above [`MAX_CLIENT_ITERATIONS`].
    #[error("SCRAM iteration count {iterations} exceeds the limit of {max}")]
    IterationsTooLarge {
        /// The count the server asked for.
        iterations: u32,
        /// The limit it exceeded.
        max: u32,
    },
    /// The server ended the exchange with an RFC 5802 `e=` server-error.
    #[error("SCRAM server error: {0}")]
    ServerError(String),
    /// A step was called out of order, or after the exchange had already failed.
    #[error("SCRAM message received in the wrong state")]
    OutOfOrder,
}

/// A stored SCRAM-SHA-256 secret: what PostgreSQL keeps instead of the password.
///
/// The keys let a server check a proof (StoredKey) and prove itself (ServerKey), but do
/// not let anyone log in as the client; that needs the ClientKey, which only a completed
/// exchange reveals (see [`ScramServer::client_key`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iteration count used to derive the keys.
    pub iterations: u32,
    /// The salt, raw bytes.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl Verifier {
    /// Parses `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
    ///
    /// Returns `None` for anything else, as PostgreSQL's `parse_scram_secret()` does; the
    /// caller decides whether that is a plaintext password or an error. An iteration count
    /// of 0, an empty salt, or keys that are not exactly 32 bytes are rejected.
    pub fn parse(text: &str) -> Option<Verifier> {
        let rest = text.strip_prefix(VERIFIER_PREFIX)?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations = parse_decimal_u32(iterations).filter(|&i| i >= 1)?;
        let salt = BASE64.decode(salt).ok().filter(|s| !s.is_empty())?;
        Some(Verifier {
            iterations,
            salt,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }

    /// Derives the verifier PostgreSQL would store for `password` with this salt and count.
    ///
    /// SaltedPassword is PBKDF2-HMAC-SHA-256. SASLprep is applied only as far as PostgreSQL's
    /// own fast path goes: ASCII passwords pass through unchanged, exactly as in
    /// `pg_saslprep()`. Non-ASCII passwords are also used as raw UTF-8 bytes; we skip the
    /// RFC 4013 mapping (non-ASCII spaces to U+0020, removal of "mapped to nothing"
    /// characters) and NFKC normalisation, so a non-ASCII password that is not already in
    /// that normal form derives a different verifier than PostgreSQL's. An `iterations` of
    /// 0 is raised to 1, the smallest count PostgreSQL accepts.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let iterations = iterations.max(1);
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// The text form [`Verifier::parse`] reads, as found in `pg_authid.rolpassword`.
    pub fn encode(&self) -> String {
        format!(
            "{VERIFIER_PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

// Keys are credentials: never print them, even in logs of a Debug dump.
impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

/// What SCRAM pass-through logs into PostgreSQL with: the ClientKey a client's proof revealed
/// and the ServerKey of the verifier it was checked against (see [`ScramClient::with_keys`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PassThroughKeys {
    /// ClientKey, from [`ScramServer::client_key`].
    pub client_key: [u8; 32],
    /// The verifier's ServerKey.
    pub server_key: [u8; 32],
}

// Keys are credentials: never print them.
impl fmt::Debug for PassThroughKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PassThroughKeys(<redacted>)")
    }
}
