//! The frontend messages pgring decodes during login: the password family
//! ('p', whose meaning depends on what was asked) and the Query text the
//! admin console executes. The relay only peeks at frontend tags.

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

#[cfg(test)]
mod tests {
    use super::*;

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
