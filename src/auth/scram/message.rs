//! The four SCRAM messages as text: parsing every peer message totally, and the few
//! formatting helpers both roles share.
//!
//! Parsing follows PostgreSQL's `auth-scram.c` (server role) and `fe-auth-scram.c` (client
//! role): attributes in the RFC 5802 order, the proof last, optional extensions ignored,
//! mandatory ones (`m=`) refused. Nothing here holds state or touches keys; the exchange
//! logic lives in the parent module.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::{ScramError, KEY_LEN, MAX_CLIENT_ITERATIONS, MAX_MESSAGE_LEN};

/// The server-first-message, decoded.
pub(super) struct ServerFirst<'a> {
    pub(super) nonce: &'a str,
    pub(super) salt: Vec<u8>,
    pub(super) iterations: u32,
}

/// The client-first-message, decoded.
pub(super) struct ClientFirst<'a> {
    pub(super) gs2_header: &'static str,
    pub(super) bare: &'a str,
    pub(super) client_nonce: &'a str,
}

/// The client-final-message, decoded.
pub(super) struct ClientFinal<'a> {
    pub(super) channel_binding: &'a str,
    pub(super) nonce: &'a str,
    pub(super) without_proof: &'a str,
    pub(super) proof: [u8; KEY_LEN],
}

/// Parses `gs2-header client-first-message-bare`, following PostgreSQL's
/// `read_client_first_message()`.
pub(super) fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    let text = as_text(msg)?;
    let (gs2_header, bare) = split_gs2_header(text)?;
    if bare.starts_with("m=") {
        return Err(ScramError::Malformed("unsupported mandatory extension"));
    }
    let mut attrs = Attributes::new(bare);
    // The username is ignored: PostgreSQL takes it from the startup packet, and libpq
    // sends it empty. Clients that do send one are not penalised for it.
    attrs.take('n')?;
    let client_nonce = attrs.take('r')?;
    attrs.rest_are_extensions()?;
    check_nonce(client_nonce)?;
    Ok(ClientFirst {
        gs2_header,
        bare,
        client_nonce,
    })
}

/// Splits off the gs2 header, accepting only "no channel binding" without authzid.
fn split_gs2_header(text: &str) -> Result<(&'static str, &str), ScramError> {
    for header in ["n,,", "y,,"] {
        if let Some(bare) = text.strip_prefix(header) {
            return Ok((header, bare));
        }
    }
    if text.starts_with("p=") || text.starts_with("p,") {
        Err(ScramError::ChannelBindingUnsupported)
    } else if text.starts_with("n,a=") || text.starts_with("y,a=") {
        Err(ScramError::AuthzidUnsupported)
    } else {
        Err(ScramError::Malformed("invalid gs2 header"))
    }
}

/// Parses `c=...,r=...[,extensions],p=...`; the proof must come last (RFC 5802 §7).
pub(super) fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    let text = as_text(msg)?;
    let (without_proof, proof) = text
        .rsplit_once(',')
        .ok_or(ScramError::MissingAttribute('p'))?;
    let proof = proof
        .strip_prefix("p=")
        .ok_or(ScramError::MissingAttribute('p'))?;
    let mut attrs = Attributes::new(without_proof);
    let channel_binding = attrs.take('c')?;
    let nonce = attrs.take('r')?;
    attrs.rest_are_extensions()?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof: decode_key(proof).ok_or(ScramError::Malformed("invalid proof"))?,
    })
}

/// Parses `r=...,s=...,i=...`, ignoring trailing extensions as RFC 5802 allows.
pub(super) fn parse_server_first(msg: &[u8]) -> Result<ServerFirst<'_>, ScramError> {
    let text = as_text(msg)?;
    if text.starts_with("m=") {
        return Err(ScramError::Malformed("unsupported mandatory extension"));
    }
    let mut attrs = Attributes::new(text);
    let nonce = attrs.take('r')?;
    let salt = attrs.take('s')?;
    let iterations = attrs.take('i')?;
    attrs.rest_are_extensions()?;
    Ok(ServerFirst {
        nonce,
        salt: decode_salt(salt)?,
        iterations: check_client_iterations(iterations)?,
    })
}

/// Parses `v=<signature>` (or an `e=` server-error) into the raw signature.
pub(super) fn parse_server_final(msg: &[u8]) -> Result<[u8; KEY_LEN], ScramError> {
    let text = as_text(msg)?;
    if let Some(error) = text.strip_prefix("e=") {
        let reason = error.split(',').next().unwrap_or_default();
        return Err(ScramError::ServerError(reason.to_owned()));
    }
    let mut attrs = Attributes::new(text);
    let signature = attrs.take('v')?;
    attrs.rest_are_extensions()?;
    decode_key(signature).ok_or(ScramError::Malformed("invalid server signature"))
}

/// `c=` must be the base64 of the gs2 header the client opened with; this is how SCRAM
/// stops a man in the middle from stripping a channel-binding request.
pub(super) fn check_channel_binding(
    channel_binding: &str,
    gs2_header: &str,
) -> Result<(), ScramError> {
    match BASE64.decode(channel_binding) {
        Ok(decoded) if decoded == gs2_header.as_bytes() => Ok(()),
        _ => Err(ScramError::ChannelBindingMismatch),
    }
}

/// The server's nonce must be the client's followed by a non-empty server part.
pub(super) fn check_server_nonce(nonce: &str, client_nonce: &str) -> Result<(), ScramError> {
    check_nonce(nonce)?;
    match nonce.strip_prefix(client_nonce) {
        Some(server_part) if !server_part.is_empty() => Ok(()),
        _ => Err(ScramError::NonceMismatch),
    }
}

/// A nonce is one or more printable ASCII characters other than `,` (RFC 5802 §7).
fn check_nonce(nonce: &str) -> Result<(), ScramError> {
    let printable = |b: u8| (0x21..=0x7e).contains(&b) && b != b',';
    if !nonce.is_empty() && nonce.bytes().all(printable) {
        Ok(())
    } else {
        Err(ScramError::InvalidNonce)
    }
}

fn decode_salt(salt: &str) -> Result<Vec<u8>, ScramError> {
    match BASE64.decode(salt) {
        Ok(salt) if !salt.is_empty() => Ok(salt),
        _ => Err(ScramError::Malformed("invalid salt")),
    }
}

/// The server's iteration count, bounded because the client pays for it.
fn check_client_iterations(text: &str) -> Result<u32, ScramError> {
    let iterations =
        parse_decimal_u32(text).ok_or(ScramError::Malformed("invalid iteration count"))?;
    if iterations < 1 {
        Err(ScramError::IterationsTooSmall(iterations))
    } else if iterations > MAX_CLIENT_ITERATIONS {
        Err(ScramError::IterationsTooLarge {
            iterations,
            max: MAX_CLIENT_ITERATIONS,
        })
    } else {
        Ok(iterations)
    }
}

/// Plain decimal digits only: `str::parse` would also take a leading `+`.
pub(super) fn parse_decimal_u32(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Decodes base64 that must hold exactly one 32-byte key, signature or proof.
pub(super) fn decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    // 32 bytes encode to 44 characters; refusing longer input bounds the allocation.
    if text.len() != 44 {
        return None;
    }
    BASE64.decode(text).ok()?.try_into().ok()
}

/// Length-checks and UTF-8-decodes a peer message.
pub(super) fn as_text(msg: &[u8]) -> Result<&str, ScramError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::MessageTooLong {
            len: msg.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    std::str::from_utf8(msg).map_err(|_| ScramError::NotUtf8)
}

/// A walk over the comma-separated `x=value` attributes of a message, in order.
struct Attributes<'a> {
    parts: std::str::Split<'a, char>,
}

impl<'a> Attributes<'a> {
    fn new(text: &'a str) -> Attributes<'a> {
        Attributes {
            parts: text.split(','),
        }
    }

    /// The value of the next attribute, which must be `name`.
    fn take(&mut self, name: char) -> Result<&'a str, ScramError> {
        self.parts
            .next()
            .and_then(|part| part.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or(ScramError::MissingAttribute(name))
    }

    /// Anything left must be well-formed optional extensions, which are ignored.
    fn rest_are_extensions(self) -> Result<(), ScramError> {
        for part in self.parts {
            let mut bytes = part.bytes();
            let well_formed =
                bytes.next().is_some_and(|b| b.is_ascii_alphabetic()) && bytes.next() == Some(b'=');
            if !well_formed {
                return Err(ScramError::Malformed("invalid attribute"));
            }
        }
        Ok(())
    }
}

/// `AuthMessage = client-first-bare "," server-first "," client-final-without-proof`.
pub(super) fn auth_message(
    client_first_bare: &str,
    server_first: &str,
    without_proof: &str,
) -> String {
    format!("{client_first_bare},{server_first},{without_proof}")
}

pub(super) fn server_final(signature: &[u8; KEY_LEN]) -> Vec<u8> {
    format!("v={}", BASE64.encode(signature)).into_bytes()
}
