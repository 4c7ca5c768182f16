//! The frontend messages pgring decodes: during login the password family
//! ('p', whose meaning depends on what was asked), the Query text the admin
//! console executes, and in the relay the statement names of the
//! extended-protocol messages that prepared-statement support renames
//! (Parse, Bind, Describe, Close). Everything else is only peeked at.

use super::{ProtocolError, Reader};

/// Decodes a PasswordMessage body (cleartext or md5 response): the bytes
/// before the terminating NUL.
pub fn password(body: &[u8]) -> Result<&[u8], ProtocolError> {
    Reader::new(body, "password").cbytes()
}

/// A SASLInitialResponse: the chosen mechanism and its first data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitial<'a> {
    /// Mechanism name.
    pub mechanism: &'a str,
    /// client-first-message (absent when the length is -1).
    pub data: &'a [u8],
}

/// Decodes a SASLInitialResponse body.
pub fn sasl_initial(body: &[u8]) -> Result<SaslInitial<'_>, ProtocolError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    let len = r.i32()?;
    let data = if len < 0 {
        &[][..]
    } else {
        r.take(len as usize)?
    };
    Ok(SaslInitial { mechanism, data })
}

/// The SQL text of a Query body.
pub fn query_text(body: &[u8]) -> Result<&str, ProtocolError> {
    Reader::new(body, "Query").cstr()
}

/// A Parse body split at its statement name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseMsg<'a> {
    /// Statement name ("" = the unnamed statement).
    pub name: &'a [u8],
    /// Everything after the name: query text, its NUL, the parameter type
    /// count and oids. This is what identifies the statement, and what a
    /// re-prepare sends again.
    pub rest: &'a [u8],
}

/// Decodes a Parse body (checking the query and type list are well formed).
pub fn parse(body: &[u8]) -> Result<ParseMsg<'_>, ProtocolError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cbytes()?;
    let rest = body.get(name.len() + 1..).unwrap_or_default();
    r.cbytes()?;
    let count = r.i16()?;
    r.take(usize::try_from(count).map_err(|_| malformed("Parse"))? * 4)?;
    if !r.is_empty() {
        return Err(malformed("Parse"));
    }
    Ok(ParseMsg { name, rest })
}

/// The statement name of a Parse, from the first bytes of its body; `None`
/// while the name's NUL is not buffered yet.
pub fn parse_name(body_prefix: &[u8]) -> Option<&[u8]> {
    let nul = body_prefix.iter().position(|&b| b == 0)?;
    Some(&body_prefix[..nul])
}

/// The portal and statement names at the start of a Bind body, and how many
/// body bytes they take; `None` while both NULs are not buffered yet (the
/// parameter values after them may be large and are never needed).
pub fn bind_names(body_prefix: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let p = body_prefix.iter().position(|&b| b == 0)?;
    let rest = &body_prefix[p + 1..];
    let s = rest.iter().position(|&b| b == 0)?;
    Some((&body_prefix[..p], &rest[..s], p + s + 2))
}

/// A Describe or Close body: kind (`S` statement, `P` portal) and name.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8]), ProtocolError> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    let name = r.cbytes()?;
    if !matches!(kind, b'S' | b'P') || !r.is_empty() {
        return Err(malformed(what));
    }
    Ok((kind, name))
}

fn malformed(what: &'static str) -> ProtocolError {
    ProtocolError::Malformed { what }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_splits_name_and_checks_types() {
        let body = b"s1\0SELECT $1\0\0\x01\0\0\0\x17";
        let p = parse(body).unwrap();
        assert_eq!((p.name, p.rest), (&b"s1"[..], &body[3..]));
        assert!(parse(&body[..body.len() - 1]).is_err(), "short oid list");
        assert!(parse(b"s1\0SELECT 1\0\xff\xff").is_err(), "negative count");
        assert!(parse(b"s1\0SELECT 1\0\0\0junk").is_err(), "trailing bytes");
        assert_eq!(parse_name(b"abc"), None);
        assert_eq!(parse_name(b"abc\0SEL"), Some(&b"abc"[..]));
    }

    #[test]
    fn bind_names_need_both_nuls() {
        assert_eq!(bind_names(b"\0s1"), None);
        assert_eq!(bind_names(b"p\0s1\0\0\0"), Some((&b"p"[..], &b"s1"[..], 5)));
        assert_eq!(bind_names(b"\0\0"), Some((&b""[..], &b""[..], 2)));
    }

    #[test]
    fn describe_close_targets() {
        assert_eq!(target(b"Ss1\0", "Close"), Ok((b'S', &b"s1"[..])));
        assert!(target(b"Xs1\0", "Close").is_err());
        assert!(target(b"Ss1", "Close").is_err());
        assert!(target(b"S\0x", "Close").is_err());
    }

    #[test]
    fn sasl_initial_checks_lengths() {
        let mut b = b"SCRAM-SHA-256\0".to_vec();
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"abc");
        let s = sasl_initial(&b).unwrap();
        assert_eq!((s.mechanism, s.data), ("SCRAM-SHA-256", &b"abc"[..]));
        b.truncate(b.len() - 1);
        assert!(sasl_initial(&b).is_err());
    }
}
