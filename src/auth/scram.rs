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

mod crypto;
mod message;

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

/// Server side of the exchange (pgring authenticating a client).
///
/// Call [`handle_client_first`](Self::handle_client_first) with the
/// `SASLInitialResponse` data, send the result in `AuthenticationSASLContinue`, then call
/// [`handle_client_final`](Self::handle_client_final) with the `SASLResponse` data and send
/// the result in `AuthenticationSASLFinal`. Any error ends the exchange for good.
pub struct ScramServer {
    verifier: Verifier,
    server_nonce: String,
    state: ServerState,
}

/// Where a [`ScramServer`] is in the exchange.
enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal(ServerExchange),
    Succeeded { client_key: [u8; KEY_LEN] },
    Failed,
}

/// What the server remembers between the first and final client messages.
struct ServerExchange {
    gs2_header: &'static str,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ScramServer {
    /// Starts an exchange against `verifier`, with a fresh random server nonce.
    pub fn new(verifier: Verifier) -> ScramServer {
        ScramServer::with_nonce(verifier, random_nonce())
    }

    /// Starts an exchange with a chosen server nonce, for golden-vector tests.
    pub(crate) fn with_nonce(verifier: Verifier, server_nonce: String) -> ScramServer {
        ScramServer {
            verifier,
            server_nonce,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Takes the client-first-message bytes (the `SASLInitialResponse` data), returns the
    /// server-first-message bytes.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ServerState::AwaitingClientFirst = self.state else {
            return Err(self.fail(ScramError::OutOfOrder));
        };
        let first = parse_client_first(msg).map_err(|e| self.fail(e))?;
        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = ServerState::AwaitingClientFinal(ServerExchange {
            gs2_header: first.gs2_header,
            nonce,
            client_first_bare: first.bare.to_owned(),
            server_first,
        });
        Ok(reply)
    }

    /// Takes the client-final-message, verifies the proof, and returns the
    /// server-final-message (`v=...`) bytes. A wrong password is [`ScramError::BadProof`].
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        match std::mem::replace(&mut self.state, ServerState::Failed) {
            ServerState::AwaitingClientFinal(exchange) => {
                let (client_key, reply) = self.finish(&exchange, msg)?;
                self.state = ServerState::Succeeded { client_key };
                Ok(reply)
            }
            _ => Err(ScramError::OutOfOrder),
        }
    }

    /// After a successful exchange: the ClientKey recovered from the proof, which together
    /// with the verifier's ServerKey lets [`ScramClient::with_keys`] log into PostgreSQL.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Succeeded { client_key } => Some(client_key),
            _ => None,
        }
    }

    /// Checks the client-final-message against the exchange so far.
    fn finish(
        &self,
        exchange: &ServerExchange,
        msg: &[u8],
    ) -> Result<([u8; KEY_LEN], Vec<u8>), ScramError> {
        let last = parse_client_final(msg)?;
        check_channel_binding(last.channel_binding, exchange.gs2_header)?;
        if last.nonce != exchange.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let auth_message = auth_message(
            &exchange.client_first_bare,
            &exchange.server_first,
            last.without_proof,
        );
        let client_key = self.recover_client_key(&auth_message, &last.proof)?;
        let signature = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok((client_key, server_final(&signature)))
    }

    /// ClientKey = proof XOR HMAC(StoredKey, AuthMessage), accepted iff H(ClientKey) is the
    /// StoredKey (RFC 5802 section 3).
    fn recover_client_key(
        &self,
        auth_message: &str,
        proof: &[u8; KEY_LEN],
    ) -> Result<[u8; KEY_LEN], ScramError> {
        let signature = hmac_sha256(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(proof, &signature);
        if constant_time_eq(&sha256(&client_key), &self.verifier.stored_key) {
            Ok(client_key)
        } else {
            Err(ScramError::BadProof)
        }
    }

    /// Marks the exchange failed and passes the error through.
    fn fail(&mut self, error: ScramError) -> ScramError {
        self.state = ServerState::Failed;
        error
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::AwaitingClientFirst => "AwaitingClientFirst",
            ServerState::AwaitingClientFinal(_) => "AwaitingClientFinal",
            ServerState::Succeeded { .. } => "Succeeded",
            ServerState::Failed => "Failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// Client side of the exchange (pgring logging into PostgreSQL).
///
/// Send [`client_first`](Self::client_first) in `SASLInitialResponse`, feed the
/// `AuthenticationSASLContinue` data to
/// [`handle_server_first`](Self::handle_server_first) and send its result in
/// `SASLResponse`, then check the `AuthenticationSASLFinal` data with
/// [`verify_server_final`](Self::verify_server_final). Never treat the login as good
/// before that last check passes: it is what proves the server knew the password.
pub struct ScramClient {
    credentials: Credentials,
    username: String,
    client_nonce: String,
    state: ClientState,
}

/// What the client proves knowledge of.
enum Credentials {
    Password(String),
    Keys {
        client_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
    },
}

/// Where a [`ScramClient`] is in the exchange.
enum ClientState {
    Initial,
    SentFirst,
    SentFinal { server_signature: [u8; KEY_LEN] },
    Failed,
}

impl ScramClient {
    /// A client that proves knowledge of `password` (see [`Verifier::from_password`] for
    /// how much SASLprep is applied).
    pub fn new(password: &str) -> ScramClient {
        ScramClient::build(Credentials::Password(password.to_owned()), random_nonce())
    }

    /// Pass-through: log in with keys instead of a password (ClientKey + ServerKey known).
    ///
    /// The keys must come from the same verifier PostgreSQL holds for the user; the salt
    /// and iteration count the server sends are then irrelevant and no PBKDF2 work is done.
    pub fn with_keys(client_key: [u8; 32], server_key: [u8; 32]) -> ScramClient {
        let credentials = Credentials::Keys {
            client_key,
            server_key,
        };
        ScramClient::build(credentials, random_nonce())
    }

    fn build(credentials: Credentials, client_nonce: String) -> ScramClient {
        ScramClient {
            credentials,
            username: String::new(),
            client_nonce,
            state: ClientState::Initial,
        }
    }

    /// A password client with a chosen username and nonce, for golden-vector tests. The
    /// username is used verbatim (no `=2C`/`=3D` escaping), so keep it plain.
    #[cfg(test)]
    pub(crate) fn with_nonce(password: &str, username: &str, nonce: &str) -> ScramClient {
        let mut client =
            ScramClient::build(Credentials::Password(password.to_owned()), nonce.to_owned());
        client.username = username.to_owned();
        client
    }

    /// The client-first-message: `n,,n=,r=<nonce>`. Calling it again returns the same bytes.
    pub fn client_first(&mut self) -> Vec<u8> {
        self.state = ClientState::SentFirst;
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    /// Takes the server-first-message and returns the client-final-message.
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ClientState::SentFirst = self.state else {
            return Err(self.fail(ScramError::OutOfOrder));
        };
        match self.answer(msg) {
            Ok((reply, server_signature)) => {
                self.state = ClientState::SentFinal { server_signature };
                Ok(reply)
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Checks the server-final-message; `Ok` means the server proved it holds the keys.
    pub fn verify_server_final(&self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::SentFinal { server_signature } = &self.state else {
            return Err(ScramError::OutOfOrder);
        };
        let received = parse_server_final(msg)?;
        if constant_time_eq(&received, server_signature) {
            Ok(())
        } else {
            Err(ScramError::ServerSignatureMismatch)
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.username, self.client_nonce)
    }

    /// Builds the client-final-message and the server signature to expect.
    fn answer(&self, msg: &[u8]) -> Result<(Vec<u8>, [u8; KEY_LEN]), ScramError> {
        let first = parse_server_first(msg)?;
        check_server_nonce(first.nonce, &self.client_nonce)?;
        let (client_key, server_key) = self.keys(&first.salt, first.iterations);
        let without_proof = format!("c=biws,r={}", first.nonce);
        let server_first = as_text(msg)?;
        let auth_message = auth_message(&self.client_first_bare(), server_first, &without_proof);
        let stored_key = sha256(&client_key);
        let client_signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
        let proof = BASE64.encode(xor(&client_key, &client_signature));
        let server_signature = hmac_sha256(&server_key, &[auth_message.as_bytes()]);
        Ok((
            format!("{without_proof},p={proof}").into_bytes(),
            server_signature,
        ))
    }

    /// ClientKey and ServerKey, derived from the password or given directly.
    fn keys(&self, salt: &[u8], iterations: u32) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
        match &self.credentials {
            Credentials::Password(password) => {
                let salted = salted_password(password, salt, iterations);
                (
                    hmac_sha256(&salted, &[b"Client Key"]),
                    hmac_sha256(&salted, &[b"Server Key"]),
                )
            }
            Credentials::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        }
    }

    fn fail(&mut self, error: ScramError) -> ScramError {
        self.state = ClientState::Failed;
        error
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::Initial => "Initial",
            ClientState::SentFirst => "SentFirst",
            ClientState::SentFinal { .. } => "SentFinal",
            ClientState::Failed => "Failed",
        };
        f.debug_struct("ScramClient")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// RFC 7677 section 3, the SCRAM-SHA-256 example exchange.
    mod rfc7677 {
        pub const PASSWORD: &str = "pencil";
        pub const USER: &str = "user";
        pub const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
        pub const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        pub const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
        pub const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        pub const SERVER_FIRST: &[u8] =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        pub const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        pub const SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    }

    /// Verifiers produced by PostgreSQL 15 (`CREATE ROLE ... PASSWORD` with
    /// `password_encryption = 'scram-sha-256'`), read back from `pg_authid`.
    const PG_ALICE_PENCIL: &str = "SCRAM-SHA-256$4096:8HA+cfqaJxBptOk0/T+2NA==$z3uUF1fCLGDlN3wU0gJVzmngMzc88RvUWEGLMMlGzOc=:vGGpFsGCpZkCRP0YCc+lsc1rfTM61sVrbA5IrgkJB/k=";
    const PG_BOB_CORRECT_HORSE: &str = "SCRAM-SHA-256$4096:1w3h7Sll/gZQmLcdi1g3oA==$wrfZjjTU90yWF5ogI515DI33eVrv/jcxZnlLHCCssDk=:jlixKQLO5ACbLR+HRnFVGWfwgVNn6Igz5vsXDMcnQhU=";

    /// Whether an error is the one a malformed-message case expects.
    type Expect = fn(&ScramError) -> bool;

    /// Cheap verifier for tests that are not about key derivation.
    fn quick_verifier(password: &str) -> Verifier {
        Verifier::from_password(password, b"0123456789abcdef", 16)
    }

    fn rfc_verifier() -> Verifier {
        let salt = BASE64.decode(rfc7677::SALT).expect("RFC salt is base64");
        Verifier::from_password(rfc7677::PASSWORD, &salt, 4096)
    }

    /// A server that has accepted a libpq-style client-first-message with `nonce`.
    fn server_after_first(verifier: Verifier, nonce: &str) -> ScramServer {
        let mut server = ScramServer::with_nonce(verifier, "SERVERNONCE".to_owned());
        let first = format!("n,,n=,r={nonce}");
        server
            .handle_client_first(first.as_bytes())
            .expect("valid first");
        server
    }

    /// Runs a whole exchange and returns the server, whichever way it ended.
    fn exchange(client: &mut ScramClient, server: &mut ScramServer) -> Result<(), ScramError> {
        let server_first = server.handle_client_first(&client.client_first())?;
        let client_final = client.handle_server_first(&server_first)?;
        let server_final = server.handle_client_final(&client_final)?;
        client.verify_server_final(&server_final)
    }

    fn random_password(rng: &mut StdRng) -> String {
        (0..24)
            .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
            .collect()
    }

    #[test]
    fn rfc7677_vector_client_side() {
        let mut client =
            ScramClient::with_nonce(rfc7677::PASSWORD, rfc7677::USER, rfc7677::CLIENT_NONCE);
        assert_eq!(client.client_first(), rfc7677::CLIENT_FIRST);
        let client_final = client.handle_server_first(rfc7677::SERVER_FIRST);
        assert_eq!(
            client_final.expect("valid server-first"),
            rfc7677::CLIENT_FINAL
        );
        client
            .verify_server_final(rfc7677::SERVER_FINAL)
            .expect("RFC server signature verifies");
    }

    #[test]
    fn rfc7677_vector_server_side() {
        let mut server = ScramServer::with_nonce(rfc_verifier(), rfc7677::SERVER_NONCE.into());
        let server_first = server.handle_client_first(rfc7677::CLIENT_FIRST);
        assert_eq!(
            server_first.expect("valid client-first"),
            rfc7677::SERVER_FIRST
        );
        let server_final = server.handle_client_final(rfc7677::CLIENT_FINAL);
        assert_eq!(
            server_final.expect("RFC proof verifies"),
            rfc7677::SERVER_FINAL
        );
        let salt = BASE64.decode(rfc7677::SALT).expect("base64");
        let salted = salted_password(rfc7677::PASSWORD, &salt, 4096);
        let expected_client_key = hmac_sha256(&salted, &[b"Client Key"]);
        assert_eq!(server.client_key(), Some(expected_client_key));
    }

    #[test]
    fn verifier_parses_real_postgresql_secrets_and_matches_derivation() {
        for (text, password) in [
            (PG_ALICE_PENCIL, "pencil"),
            (PG_BOB_CORRECT_HORSE, "correct horse"),
        ] {
            let parsed = Verifier::parse(text).expect("PostgreSQL verifier parses");
            assert_eq!(parsed.iterations, 4096);
            assert_eq!(parsed.salt.len(), 16);
            let derived = Verifier::from_password(password, &parsed.salt, parsed.iterations);
            assert_eq!(derived, parsed);
            assert_eq!(parsed.encode(), text);
        }
        let alice = Verifier::parse(PG_ALICE_PENCIL).expect("parses");
        assert_ne!(Verifier::from_password("pencil!", &alice.salt, 4096), alice);
    }

    #[test]
    fn verifier_parse_rejects_malformed_text() {
        let good = PG_ALICE_PENCIL;
        let key = "z3uUF1fCLGDlN3wU0gJVzmngMzc88RvUWEGLMMlGzOc=";
        let cases = [
            String::new(),
            "pencil".to_owned(),
            good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1),
            good.replacen("4096", "0", 1),
            good.replacen("4096", "-1", 1),
            good.replacen("4096", "+4096", 1),
            good.replacen("4096", "99999999999", 1),
            good.replacen("8HA+cfqaJxBptOk0/T+2NA==", "", 1),
            good.replacen("8HA+cfqaJxBptOk0/T+2NA==", "not base64!", 1),
            good.replacen(key, "c2hvcnQ=", 1),
            good.replacen(key, &format!("{key}AAAA"), 1),
            format!("SCRAM-SHA-256$4096:8HA+cfqaJxBptOk0/T+2NA==${key}"),
            good.get(..good.len() - 1).unwrap_or_default().to_owned(),
            "SCRAM-SHA-256$".to_owned(),
            "SCRAM-SHA-256$é:é$é:é".to_owned(),
        ];
        for case in cases {
            assert_eq!(Verifier::parse(&case), None, "{case:?}");
        }
    }

    #[test]
    fn from_password_raises_zero_iterations_to_one() {
        assert_eq!(Verifier::from_password("pw", b"salt", 0).iterations, 1);
    }

    #[test]
    fn client_and_server_agree_on_random_passwords() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for _ in 0..4 {
            let password = random_password(&mut rng);
            let mut salt = [0u8; 16];
            rng.fill(&mut salt);
            let verifier = Verifier::from_password(&password, &salt, 64);
            let mut server = ScramServer::new(verifier);
            let mut client = ScramClient::new(&password);
            exchange(&mut client, &mut server).expect("same password authenticates");
            assert!(server.client_key().is_some());
        }
    }

    #[test]
    fn libpq_style_first_message_and_fresh_nonces() {
        let mut a = ScramClient::new("pw");
        let mut b = ScramClient::new("pw");
        let first = String::from_utf8(a.client_first()).expect("ASCII");
        let nonce = first.strip_prefix("n,,n=,r=").expect("libpq shape");
        assert_eq!(nonce.len(), 24, "base64 of 18 bytes");
        assert!(check_nonce_for_test(nonce));
        assert_ne!(a.client_first(), b.client_first());
        assert_eq!(a.client_first(), first.as_bytes(), "idempotent");
    }

    fn check_nonce_for_test(nonce: &str) -> bool {
        nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    }

    #[test]
    fn wrong_password_is_bad_proof_and_ends_the_exchange() {
        let mut server = ScramServer::new(quick_verifier("right"));
        let mut client = ScramClient::new("wrong");
        let server_first = server.handle_client_first(&client.client_first());
        let client_final = client.handle_server_first(&server_first.expect("first"));
        let result = server.handle_client_final(&client_final.expect("final"));
        assert!(matches!(result, Err(ScramError::BadProof)), "{result:?}");
        assert_eq!(server.client_key(), None);
        let again = server.handle_client_final(b"c=biws,r=x,p=y");
        assert!(matches!(again, Err(ScramError::OutOfOrder)));
    }

    #[test]
    fn pass_through_logs_in_with_recovered_client_key() {
        let verifier = Verifier::parse(PG_ALICE_PENCIL).expect("parses");
        let mut front = ScramServer::new(verifier.clone());
        exchange(&mut ScramClient::new("pencil"), &mut front).expect("client login");
        let client_key = front.client_key().expect("recovered");
        // pgring now logs into "PostgreSQL" holding only keys, never the password.
        let mut client = ScramClient::with_keys(client_key, verifier.server_key);
        let mut postgres = ScramServer::new(verifier);
        exchange(&mut client, &mut postgres).expect("pass-through login");
    }

    #[test]
    fn pass_through_with_wrong_client_key_is_rejected() {
        let verifier = quick_verifier("pw");
        let mut client = ScramClient::with_keys([7; 32], verifier.server_key);
        let result = exchange(&mut client, &mut ScramServer::new(verifier));
        assert!(matches!(result, Err(ScramError::BadProof)), "{result:?}");
    }

    #[test]
    fn client_rejects_forged_or_failed_server_final() {
        let mut client =
            ScramClient::with_nonce(rfc7677::PASSWORD, rfc7677::USER, rfc7677::CLIENT_NONCE);
        client.client_first();
        client
            .handle_server_first(rfc7677::SERVER_FIRST)
            .expect("ok");
        let forged = b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(matches!(
            client.verify_server_final(forged),
            Err(ScramError::ServerSignatureMismatch)
        ));
        match client.verify_server_final(b"e=invalid-proof") {
            Err(ScramError::ServerError(reason)) => assert_eq!(reason, "invalid-proof"),
            other => panic!("expected a server error, got {other:?}"),
        }
        for bad in [&b""[..], b"v=", b"v=short", b"x=1", b"v=\xff"] {
            assert!(client.verify_server_final(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn client_rejects_bad_server_first() {
        let cases: &[(&[u8], Expect)] = &[
            (b"r=OTHER123,s=c2FsdA==,i=4096", |e| {
                matches!(e, ScramError::NonceMismatch)
            }),
            (b"r=CLIENTNONCE,s=c2FsdA==,i=4096", |e| {
                matches!(e, ScramError::NonceMismatch)
            }),
            (b"r=CLIENTNONCEx,s=c2FsdA==,i=0", |e| {
                matches!(e, ScramError::IterationsTooSmall(0))
            }),
            (b"r=CLIENTNONCEx,s=c2FsdA==,i=1000001", |e| {
                matches!(
                    e,
                    ScramError::IterationsTooLarge {
                        iterations: 1_000_001,
                        ..
                    }
                )
            }),
            (b"r=CLIENTNONCEx,s=c2FsdA==,i=+5", |e| {
                matches!(e, ScramError::Malformed(_))
            }),
            (b"r=CLIENTNONCEx,s=c2FsdA==,i=99999999999", |e| {
                matches!(e, ScramError::Malformed(_))
            }),
            (b"r=CLIENTNONCEx,s=,i=4096", |e| {
                matches!(e, ScramError::Malformed(_))
            }),
            (b"r=CLIENTNONCEx,s=!!!!,i=4096", |e| {
                matches!(e, ScramError::Malformed(_))
            }),
            (b"r=CLIENTNONCEx,s=c2FsdA==", |e| {
                matches!(e, ScramError::MissingAttribute('i'))
            }),
            (b"s=c2FsdA==,r=CLIENTNONCEx,i=1", |e| {
                matches!(e, ScramError::MissingAttribute('r'))
            }),
            (b"m=ext,r=CLIENTNONCEx,s=c2FsdA==,i=1", |e| {
                matches!(e, ScramError::Malformed(_))
            }),
            (b"r=CLIENTNONCE\xff,s=c2FsdA==,i=1", |e| {
                matches!(e, ScramError::NotUtf8)
            }),
            (b"r=CLIENTNONCE x,s=c2FsdA==,i=1", |e| {
                matches!(e, ScramError::InvalidNonce)
            }),
        ];
        for (msg, expected) in cases {
            let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
            client.client_first();
            match client.handle_server_first(msg) {
                Err(error) => assert!(expected(&error), "{msg:?} gave {error:?}"),
                Ok(_) => panic!("{msg:?} was accepted"),
            }
        }
    }

    #[test]
    fn client_accepts_server_extensions_and_enforces_order() {
        let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
        let early = client.handle_server_first(b"r=CLIENTNONCEx,s=c2FsdA==,i=1");
        assert!(matches!(early, Err(ScramError::OutOfOrder)));
        let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
        client.client_first();
        let reply = client.handle_server_first(b"r=CLIENTNONCEx,s=c2FsdA==,i=1,x=future");
        assert!(reply.is_ok(), "{reply:?}");
        let fresh = ScramClient::new("pw");
        assert!(matches!(
            fresh.verify_server_final(b"v=x"),
            Err(ScramError::OutOfOrder)
        ));
    }

    #[test]
    fn server_rejects_bad_client_first() {
        let too_long = vec![b'a'; MAX_MESSAGE_LEN + 1];
        let cases: &[(&[u8], Expect)] = &[
            (b"p=tls-server-end-point,,n=,r=abc", |e| {
                matches!(e, ScramError::ChannelBindingUnsupported)
            }),
            (b"n,a=bob,n=,r=abc", |e| {
                matches!(e, ScramError::AuthzidUnsupported)
            }),
            (b"x,,n=,r=abc", |e| matches!(e, ScramError::Malformed(_))),
            (b"n,,m=ext,n=,r=abc", |e| {
                matches!(e, ScramError::Malformed(_))
            }),
            (b"n,,n=", |e| matches!(e, ScramError::MissingAttribute('r'))),
            (b"n,,r=abc", |e| {
                matches!(e, ScramError::MissingAttribute('n'))
            }),
            (b"n,,n=,r=", |e| matches!(e, ScramError::InvalidNonce)),
            (b"n,,n=,r=ab\x7fc", |e| {
                matches!(e, ScramError::InvalidNonce)
            }),
            (b"n,,n=\xff,r=abc", |e| matches!(e, ScramError::NotUtf8)),
            (b"n,,n=,r=abc,junk", |e| {
                matches!(e, ScramError::Malformed(_))
            }),
            (b"", |e| matches!(e, ScramError::Malformed(_))),
            (&too_long, |e| {
                matches!(e, ScramError::MessageTooLong { .. })
            }),
        ];
        for (msg, expected) in cases {
            let mut server = ScramServer::new(quick_verifier("pw"));
            match server.handle_client_first(msg) {
                Err(error) => assert!(expected(&error), "{msg:?} gave {error:?}"),
                Ok(_) => panic!("{msg:?} was accepted"),
            }
            // A failed exchange stays failed.
            let retry = server.handle_client_first(b"n,,n=,r=abc");
            assert!(matches!(retry, Err(ScramError::OutOfOrder)));
        }
    }

    #[test]
    fn server_accepts_y_flag_named_user_and_extensions() {
        let verifier = quick_verifier("pw");
        let mut server = ScramServer::with_nonce(verifier.clone(), "S".into());
        let reply = server.handle_client_first(b"y,,n=alice,r=abc,x=ext");
        assert_eq!(
            reply.expect("accepted"),
            b"r=abcS,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=16"
        );
        // With "y,," the channel-binding attribute must echo "y,," (base64 "eSws").
        let mut server = ScramServer::with_nonce(verifier, "S".into());
        server
            .handle_client_first(b"y,,n=,r=abc")
            .expect("accepted");
        let biws = server.handle_client_final(&valid_final_without_key("biws", "abcS"));
        assert!(
            matches!(biws, Err(ScramError::ChannelBindingMismatch)),
            "{biws:?}"
        );
    }

    fn valid_final_without_key(channel_binding: &str, nonce: &str) -> Vec<u8> {
        let proof = BASE64.encode([0u8; 32]);
        format!("c={channel_binding},r={nonce},p={proof}").into_bytes()
    }

    #[test]
    fn server_rejects_bad_client_final() {
        let proof = BASE64.encode([0u8; 32]);
        let cases: Vec<(Vec<u8>, Expect)> = vec![
            (
                format!("c=eSws,r=abcSERVERNONCE,p={proof}").into_bytes(),
                |e| matches!(e, ScramError::ChannelBindingMismatch),
            ),
            (
                format!("c=!!,r=abcSERVERNONCE,p={proof}").into_bytes(),
                |e| matches!(e, ScramError::ChannelBindingMismatch),
            ),
            (format!("c=biws,r=abcOTHER,p={proof}").into_bytes(), |e| {
                matches!(e, ScramError::NonceMismatch)
            }),
            (format!("c=biws,r=abc,p={proof}").into_bytes(), |e| {
                matches!(e, ScramError::NonceMismatch)
            }),
            (b"c=biws,r=abcSERVERNONCE,p=c2hvcnQ=".to_vec(), |e| {
                matches!(e, ScramError::Malformed(_))
            }),
            (b"c=biws,r=abcSERVERNONCE".to_vec(), |e| {
                matches!(e, ScramError::MissingAttribute('p'))
            }),
            (
                format!("r=abcSERVERNONCE,c=biws,p={proof}").into_bytes(),
                |e| matches!(e, ScramError::MissingAttribute('c')),
            ),
            (format!("c=biws,p={proof}").into_bytes(), |e| {
                matches!(e, ScramError::MissingAttribute('r'))
            }),
            (
                format!("c=biws,r=abcSERVERNONCE,p={proof},x=late").into_bytes(),
                |e| matches!(e, ScramError::MissingAttribute('p')),
            ),
            (
                format!("c=biws,r=abcSERVERNONCE,p={proof}").into_bytes(),
                |e| matches!(e, ScramError::BadProof),
            ),
            (b"c=biws,r=\xff,p=x".to_vec(), |e| {
                matches!(e, ScramError::NotUtf8)
            }),
        ];
        for (msg, expected) in cases {
            let mut server = server_after_first(quick_verifier("pw"), "abc");
            match server.handle_client_final(&msg) {
                Err(error) => assert!(expected(&error), "{msg:?} gave {error:?}"),
                Ok(_) => panic!("{msg:?} was accepted"),
            }
            assert_eq!(server.client_key(), None);
        }
    }

    #[test]
    fn server_rejects_final_before_first() {
        let mut server = ScramServer::new(quick_verifier("pw"));
        let result = server.handle_client_final(rfc7677::CLIENT_FINAL);
        assert!(matches!(result, Err(ScramError::OutOfOrder)));
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
        let mut server = ScramServer::with_nonce(quick_verifier("pw"), "SERVER".into());
        let client_first = client.client_first();
        let server_first = server.handle_client_first(&client_first).expect("first");
        let client_final = client.handle_server_first(&server_first).expect("final");
        for len in 0..client_final.len() {
            let mut server = server_after_first(quick_verifier("pw"), "CLIENTNONCE");
            let truncated = client_final.get(..len).unwrap_or_default();
            assert!(server.handle_client_final(truncated).is_err(), "len {len}");
        }
        for len in 0..server_first.len() {
            let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
            client.client_first();
            let truncated = server_first.get(..len).unwrap_or_default();
            // A prefix can still be valid (a shorter salt); it just must not panic.
            let _ = client.handle_server_first(truncated);
        }
    }

    #[test]
    fn mutated_messages_never_panic() {
        let mut rng = StdRng::seed_from_u64(42);
        let first = b"n,,n=,r=CLIENTNONCE".to_vec();
        let final_msg = {
            let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
            let mut server = ScramServer::with_nonce(quick_verifier("pw"), "S".into());
            let server_first = server.handle_client_first(&client.client_first());
            client
                .handle_server_first(&server_first.expect("first"))
                .expect("final")
        };
        for _ in 0..2000 {
            let mut server = ScramServer::with_nonce(quick_verifier("pw"), "S".into());
            if server
                .handle_client_first(&mutate(&first, &mut rng))
                .is_ok()
            {
                let _ = server.handle_client_final(&mutate(&final_msg, &mut rng));
            }
        }
    }

    /// Flips, inserts or drops a few random bytes.
    fn mutate(msg: &[u8], rng: &mut StdRng) -> Vec<u8> {
        let mut out = msg.to_vec();
        for _ in 0..rng.gen_range(0..3) {
            let at = rng.gen_range(0..=out.len());
            match rng.gen_range(0..3) {
                0 if at < out.len() => out[at] = rng.gen(),
                1 => out.insert(at, rng.gen()),
                _ if at < out.len() => {
                    out.remove(at);
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn debug_output_hides_keys() {
        let verifier = Verifier::parse(PG_ALICE_PENCIL).expect("parses");
        let shown = format!("{verifier:?} {:?}", ScramServer::new(verifier.clone()));
        assert!(!shown.contains("z3uUF1fC"), "{shown}");
        assert!(!format!("{:?}", ScramClient::new("pencil")).contains("pencil"));
    }
}
