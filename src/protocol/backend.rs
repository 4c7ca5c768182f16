//! The backend messages pgring decodes: authentication requests, errors,
//! ParameterStatus, BackendKeyData, ReadyForQuery and CommandComplete tags.
//! Everything else the server says is relayed without being decoded.

use super::startup::CancelKey;
use super::{ProtocolError, Reader};

/// An Authentication ('R') request from PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// AuthenticationOk.
    Ok,
    /// AuthenticationCleartextPassword.
    Cleartext,
    /// AuthenticationMD5Password.
    Md5([u8; 4]),
    /// AuthenticationSASL with the offered mechanisms (NUL-separated list).
    Sasl(&'a [u8]),
    /// AuthenticationSASLContinue data.
    SaslContinue(&'a [u8]),
    /// AuthenticationSASLFinal data.
    SaslFinal(&'a [u8]),
    /// Something pgring cannot do (Kerberos, GSS, SSPI...).
    Unsupported(i32),
}

impl<'a> AuthRequest<'a> {
    /// Decodes an 'R' body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, "authentication");
        Ok(match r.i32()? {
            0 => AuthRequest::Ok,
            3 => AuthRequest::Cleartext,
            5 => {
                let s = r.take(4)?;
                AuthRequest::Md5([s[0], s[1], s[2], s[3]])
            }
            10 => AuthRequest::Sasl(r.rest()),
            11 => AuthRequest::SaslContinue(r.rest()),
            12 => AuthRequest::SaslFinal(r.rest()),
            other => AuthRequest::Unsupported(other),
        })
    }

    /// True if a SASL offer includes `mechanism`.
    pub fn offers(mechanisms: &[u8], mechanism: &str) -> bool {
        mechanisms
            .split(|&b| b == 0)
            .any(|m| m == mechanism.as_bytes())
    }
}

/// The fields of an ErrorResponse / NoticeResponse that pgring looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// Severity ('S').
    pub severity: String,
    /// SQLSTATE ('C').
    pub code: String,
    /// Primary message ('M').
    pub message: String,
}

impl ErrorFields {
    /// Decodes an ErrorResponse body.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, "error");
        let mut e = ErrorFields::default();
        loop {
            let field = r.u8()?;
            if field == 0 {
                return Ok(e);
            }
            let value = String::from_utf8_lossy(r.cbytes()?).into_owned();
            match field {
                b'S' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                _ => {}
            }
        }
    }
}

/// Decodes a ParameterStatus body into (name, value).
pub fn parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut r = Reader::new(body, "ParameterStatus");
    Ok((r.cstr()?, r.cstr()?))
}

/// Decodes a BackendKeyData body.
pub fn backend_key_data(body: &[u8]) -> Result<CancelKey, ProtocolError> {
    let mut r = Reader::new(body, "BackendKeyData");
    let pid = r.i32()? as u32;
    let secret = r.i32()? as u32;
    Ok(CancelKey { pid, secret })
}

/// The status byte of a ReadyForQuery body.
pub fn ready_status(body: &[u8]) -> Result<u8, ProtocolError> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(ProtocolError::Malformed {
            what: "ReadyForQuery",
        }),
    }
}

/// The command tag of a CommandComplete body.
pub fn command_tag(body: &[u8]) -> Result<&str, ProtocolError> {
    Reader::new(body, "CommandComplete").cstr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_requests() {
        assert_eq!(AuthRequest::parse(&[0, 0, 0, 0]), Ok(AuthRequest::Ok));
        assert_eq!(
            AuthRequest::parse(&[0, 0, 0, 5, 1, 2, 3, 4]),
            Ok(AuthRequest::Md5([1, 2, 3, 4]))
        );
        assert!(AuthRequest::parse(&[0, 0, 0, 5, 1]).is_err());
        assert!(AuthRequest::offers(
            b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
            "SCRAM-SHA-256"
        ));
    }

    #[test]
    fn ready_status_checks_byte() {
        assert_eq!(ready_status(b"T"), Ok(b'T'));
        assert!(ready_status(b"X").is_err());
        assert!(ready_status(b"").is_err());
    }
}
