//! The untagged packets of the startup phase: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest.
//!
//! They share one layout (a 4-byte length, then a 4-byte code) and are only
//! valid as a connection's first packet (SSL/GSS requests may precede the
//! startup). PostgreSQL caps them at 10,000 bytes (`MAX_STARTUP_PACKET_LENGTH`);
//! so do we, whatever `max_packet_size` says.

use super::{read_u32, ProtocolError, Reader};

/// PostgreSQL's own cap on a startup packet.
pub const MAX_STARTUP_LEN: u32 = 10_000;
/// Protocol 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;
/// SSLRequest code.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// StartupMessage with its parameters in the order sent.
    Startup {
        /// Protocol version (major << 16 | minor).
        version: u32,
        /// name/value pairs (`user`, `database`, `options`, GUCs...).
        params: Vec<(String, String)>,
    },
    /// SSLRequest.
    SslRequest,
    /// GSSENCRequest.
    GssEncRequest,
    /// CancelRequest with the 8-byte key.
    Cancel(CancelKey),
}

/// The 8-byte cancel key a backend (or pgring) hands a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// The process id half.
    pub pid: u32,
    /// The secret half.
    pub secret: u32,
}

/// Total length of the startup packet at the front of `buf`, once its length
/// field is buffered.
pub fn startup_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(len) = read_u32(buf, 0) else {
        return Ok(None);
    };
    if len < 8 {
        return Err(ProtocolError::BadLength(i64::from(len)));
    }
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::TooLong {
            len: u64::from(len),
            max: u64::from(MAX_STARTUP_LEN),
        });
    }
    Ok(Some(len as usize))
}

/// Decodes one whole startup packet (length field included).
pub fn parse_startup(packet: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let malformed = ProtocolError::Malformed { what: "startup" };
    let code = read_u32(packet, 4).ok_or(malformed.clone())?;
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let pid = read_u32(packet, 8).ok_or(malformed.clone())?;
            let secret = read_u32(packet, 12).ok_or(malformed)?;
            Ok(StartupPacket::Cancel(CancelKey { pid, secret }))
        }
        v if v >> 16 == 3 => Ok(StartupPacket::Startup {
            version: v,
            params: parse_params(packet.get(8..).unwrap_or_default())?,
        }),
        _ => Err(malformed),
    }
}

fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut r = Reader::new(body, "startup");
    let mut params = Vec::new();
    loop {
        let name = r.cstr()?;
        if name.is_empty() {
            return Ok(params);
        }
        let value = r.cstr()?;
        params.push((name.to_owned(), value.to_owned()));
    }
}

/// Splits a libpq `options` value (`-c name=value --name=value ...`) into
/// settings. Backslash escapes a space, as in PostgreSQL's `pg_split_opts`.
pub fn split_options(options: &str) -> Vec<(String, String)> {
    let words = split_words(options);
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let setting = if w == "-c" {
            i += 1;
            words.get(i).map(String::as_str)
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest)
        } else {
            w.strip_prefix("-c")
        };
        if let Some((name, value)) = setting.and_then(|s| s.split_once('=')) {
            out.push((name.replace('-', "_"), value.to_owned()));
        }
        i += 1;
    }
    out
}

fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::build;

    #[test]
    fn startup_round_trip() {
        let mut buf = Vec::new();
        build::startup(&mut buf, &[("user", "u"), ("database", "d")]);
        assert_eq!(startup_len(&buf), Ok(Some(buf.len())));
        let StartupPacket::Startup { version, params } = parse_startup(&buf).unwrap() else {
            panic!("not a startup");
        };
        assert_eq!(version, PROTOCOL_3_0);
        assert_eq!(
            params,
            vec![("user".into(), "u".into()), ("database".into(), "d".into())]
        );
    }

    #[test]
    fn ssl_and_cancel() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse_startup(&ssl), Ok(StartupPacket::SslRequest));
        let mut c = Vec::new();
        build::cancel_request(&mut c, CancelKey { pid: 7, secret: 9 });
        assert_eq!(
            parse_startup(&c),
            Ok(StartupPacket::Cancel(CancelKey { pid: 7, secret: 9 }))
        );
    }

    #[test]
    fn garbage_is_malformed_not_panic() {
        assert!(startup_len(&[0, 0, 0, 2]).is_err());
        assert!(startup_len(&[0, 1, 0, 0]).is_err());
        assert!(parse_startup(&[0, 0, 0, 9, 0, 3, 0, 0, b'x']).is_err());
        assert!(parse_startup(&[0, 0, 0, 8, 1, 2, 3, 4]).is_err());
    }

    #[test]
    fn options_are_split() {
        let got =
            split_options(r"-c search_path=a,b --statement-timeout=5 -cDateStyle=ISO\ ,\ MDY");
        assert_eq!(
            got,
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5".into()),
                ("DateStyle".into(), "ISO , MDY".into()),
            ]
        );
    }
}
