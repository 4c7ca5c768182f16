//! Builders for the messages pgring synthesises, appended to a caller's
//! buffer (no allocation of their own): the login sequence it plays to
//! clients, errors, admin result sets, and the frontend messages it sends as
//! a client of PostgreSQL.

use super::startup::{CancelKey, CANCEL_REQUEST_CODE, PROTOCOL_3_0};
use super::tag;

/// Starts a tagged message; returns the offset of its length field.
fn begin(buf: &mut Vec<u8>, tag: u8) -> usize {
    buf.push(tag);
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    at
}

/// Patches the length field written by [`begin`].
fn finish(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

/// Severity of an ErrorResponse / NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Ends the session.
    Fatal,
    /// Ends the statement.
    Error,
    /// A notice.
    Notice,
}

impl Severity {
    /// The severity word as PostgreSQL spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Notice => "NOTICE",
        }
    }
}

/// ErrorResponse (or NoticeResponse for [`Severity::Notice`]).
pub fn error_response(buf: &mut Vec<u8>, severity: Severity, code: &str, message: &str) {
    let t = if severity == Severity::Notice {
        tag::NOTICE_RESPONSE
    } else {
        tag::ERROR_RESPONSE
    };
    let at = begin(buf, t);
    for (field, value) in [
        (b'S', severity.as_str()),
        (b'V', severity.as_str()),
        (b'C', code),
        (b'M', message),
    ] {
        buf.push(field);
        cstr(buf, value);
    }
    buf.push(0);
    finish(buf, at);
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut Vec<u8>) {
    auth_code(buf, 0, &[]);
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext(buf: &mut Vec<u8>) {
    auth_code(buf, 3, &[]);
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(buf: &mut Vec<u8>, salt: [u8; 4]) {
    auth_code(buf, 5, &salt);
}

/// AuthenticationSASL offering SCRAM-SHA-256.
pub fn auth_sasl(buf: &mut Vec<u8>, mechanism: &str) {
    let mut body = Vec::with_capacity(mechanism.len() + 2);
    cstr(&mut body, mechanism);
    body.push(0);
    auth_code(buf, 10, &body);
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(buf: &mut Vec<u8>, data: &[u8]) {
    auth_code(buf, 11, data);
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(buf: &mut Vec<u8>, data: &[u8]) {
    auth_code(buf, 12, data);
}

fn auth_code(buf: &mut Vec<u8>, code: i32, data: &[u8]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.extend_from_slice(&code.to_be_bytes());
    buf.extend_from_slice(data);
    finish(buf, at);
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut Vec<u8>, name: &str, value: &str) {
    let at = begin(buf, tag::PARAMETER_STATUS);
    cstr(buf, name);
    cstr(buf, value);
    finish(buf, at);
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut Vec<u8>, key: CancelKey) {
    let at = begin(buf, tag::BACKEND_KEY_DATA);
    buf.extend_from_slice(&key.pid.to_be_bytes());
    buf.extend_from_slice(&key.secret.to_be_bytes());
    finish(buf, at);
}

/// ReadyForQuery with a transaction status byte (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut Vec<u8>, status: u8) {
    let at = begin(buf, tag::READY_FOR_QUERY);
    buf.push(status);
    finish(buf, at);
}

/// RowDescription for text columns: (name, type oid).
pub fn row_description(buf: &mut Vec<u8>, columns: &[(&str, u32)]) {
    let at = begin(buf, tag::ROW_DESCRIPTION);
    buf.extend_from_slice(&(columns.len() as i16).to_be_bytes());
    for (name, oid) in columns {
        cstr(buf, name);
        buf.extend_from_slice(&0i32.to_be_bytes()); // table oid
        buf.extend_from_slice(&0i16.to_be_bytes()); // column number
        buf.extend_from_slice(&oid.to_be_bytes());
        buf.extend_from_slice(&(-1i16).to_be_bytes()); // type size
        buf.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
        buf.extend_from_slice(&0i16.to_be_bytes()); // text format
    }
    finish(buf, at);
}

/// DataRow of text values (`None` is SQL NULL).
pub fn data_row(buf: &mut Vec<u8>, values: &[Option<&str>]) {
    let at = begin(buf, tag::DATA_ROW);
    buf.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            Some(s) => {
                buf.extend_from_slice(&(s.len() as i32).to_be_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    finish(buf, at);
}

/// CommandComplete.
pub fn command_complete(buf: &mut Vec<u8>, command_tag: &str) {
    let at = begin(buf, tag::COMMAND_COMPLETE);
    cstr(buf, command_tag);
    finish(buf, at);
}

/// EmptyQueryResponse.
pub fn empty_query_response(buf: &mut Vec<u8>) {
    let at = begin(buf, tag::EMPTY_QUERY_RESPONSE);
    finish(buf, at);
}

/// A simple-protocol Query.
pub fn query(buf: &mut Vec<u8>, sql: &str) {
    let at = begin(buf, tag::QUERY);
    cstr(buf, sql);
    finish(buf, at);
}

/// StartupMessage, protocol 3.0.
pub fn startup(buf: &mut Vec<u8>, params: &[(&str, &str)]) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        cstr(buf, k);
        cstr(buf, v);
    }
    buf.push(0);
    finish(buf, at);
}

/// SSLRequest: asks the server for TLS (it answers one byte, `S` or `N`).
pub fn ssl_request(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&8u32.to_be_bytes());
    buf.extend_from_slice(&super::startup::SSL_REQUEST_CODE.to_be_bytes());
}

/// CancelRequest.
pub fn cancel_request(buf: &mut Vec<u8>, key: CancelKey) {
    buf.extend_from_slice(&16u32.to_be_bytes());
    buf.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    buf.extend_from_slice(&key.pid.to_be_bytes());
    buf.extend_from_slice(&key.secret.to_be_bytes());
}

/// PasswordMessage (cleartext or md5 response).
pub fn password_message(buf: &mut Vec<u8>, password: &str) {
    let at = begin(buf, tag::PASSWORD_MESSAGE);
    cstr(buf, password);
    finish(buf, at);
}

/// SASLInitialResponse.
pub fn sasl_initial_response(buf: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    let at = begin(buf, tag::PASSWORD_MESSAGE);
    cstr(buf, mechanism);
    buf.extend_from_slice(&(data.len() as i32).to_be_bytes());
    buf.extend_from_slice(data);
    finish(buf, at);
}

/// SASLResponse.
pub fn sasl_response(buf: &mut Vec<u8>, data: &[u8]) {
    let at = begin(buf, tag::PASSWORD_MESSAGE);
    buf.extend_from_slice(data);
    finish(buf, at);
}

/// Terminate.
pub fn terminate(buf: &mut Vec<u8>) {
    let at = begin(buf, tag::TERMINATE);
    finish(buf, at);
}

/// ParseComplete / BindComplete / CloseComplete / NoData and other
/// body-less backend messages.
pub fn empty_message(buf: &mut Vec<u8>, t: u8) {
    let at = begin(buf, t);
    finish(buf, at);
}

/// A frontend Close of a named prepared statement ('S') or portal ('P').
pub fn close(buf: &mut Vec<u8>, kind: u8, name: &[u8]) {
    let at = begin(buf, tag::CLOSE);
    buf.push(kind);
    buf.extend_from_slice(name);
    buf.push(0);
    finish(buf, at);
}

/// A frontend Describe of a statement ('S') or portal ('P').
pub fn describe(buf: &mut Vec<u8>, kind: u8, name: &[u8]) {
    let at = begin(buf, tag::DESCRIBE);
    buf.push(kind);
    buf.extend_from_slice(name);
    buf.push(0);
    finish(buf, at);
}

/// A frontend Parse from a name and the rest of a Parse body as a client
/// sent it (query text, NUL, parameter types): how a statement is
/// re-prepared under another name without re-encoding it.
pub fn parse_raw(buf: &mut Vec<u8>, name: &[u8], rest: &[u8]) {
    let at = begin(buf, tag::PARSE);
    buf.extend_from_slice(name);
    buf.push(0);
    buf.extend_from_slice(rest);
    finish(buf, at);
}

/// The head of a Bind whose statement name is replaced: tag, length, portal
/// and statement names. The caller streams the `tail_len` bytes of the
/// original body that followed the names (formats and parameter values)
/// straight after it, so they are never copied into a message of their own.
pub fn bind_head(buf: &mut Vec<u8>, portal: &[u8], statement: &[u8], tail_len: usize) {
    let len = 4 + portal.len() + 1 + statement.len() + 1 + tail_len;
    buf.push(tag::BIND);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.extend_from_slice(portal);
    buf.push(0);
    buf.extend_from_slice(statement);
    buf.push(0);
}

/// A frontend Sync.
pub fn sync(buf: &mut Vec<u8>) {
    let at = begin(buf, tag::SYNC);
    finish(buf, at);
}

/// A frontend Parse: statement name, query text, parameter type oids.
pub fn parse(buf: &mut Vec<u8>, name: &str, query: &[u8], param_types: &[u8]) {
    let at = begin(buf, tag::PARSE);
    cstr(buf, name);
    buf.extend_from_slice(query);
    buf.push(0);
    buf.extend_from_slice(param_types);
    finish(buf, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::next_frame;

    #[test]
    fn ready_for_query_bytes() {
        let mut b = Vec::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(b, b"Z\0\0\0\x05I");
    }

    #[test]
    fn error_response_is_one_frame() {
        let mut b = Vec::new();
        error_response(
            &mut b,
            Severity::Fatal,
            "3D000",
            "database \"x\" does not exist",
        );
        let (f, used) = next_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!(used, b.len());
        assert_eq!(f.tag, b'E');
        let e = crate::protocol::backend::ErrorFields::parse(f.body).unwrap();
        assert_eq!(e.code, "3D000");
        assert_eq!(e.severity, "FATAL");
    }
}
