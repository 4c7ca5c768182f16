//! The PostgreSQL wire protocol, sans-IO.
//!
//! This room owns the byte layout of every message pgring reads or writes: the
//! tag constants, the length-checked frame splitter, the untagged startup-phase
//! packets, the handful of messages the pooler inspects, and builders for the
//! messages it synthesises. It does no I/O and keeps no connection state; the
//! relay, client and server rooms call it with the bytes they already hold.
//!
//! Peek before parse: callers first ask [`frame_len`] whether a whole message is
//! buffered (a short buffer is the normal `Ok(None)`, not an error), and only
//! then decode the few tags that drive pooling. Lengths are checked against
//! `max_packet_size` before anything is allocated, so a peer can never make us
//! reserve memory by announcing a huge message.

pub mod backend;
pub mod build;
pub mod frontend;
pub mod startup;

use thiserror::Error;

/// Backend (server to client) message tags that pgring acts on or synthesises.
pub mod tag {
    /// Authentication request family ('R').
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData: the cancel key.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ParameterStatus: a GUC_REPORT setting changed.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ReadyForQuery: the only transaction boundary.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// ParameterDescription.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// NoData.
    pub const NO_DATA: u8 = b'n';
    /// PortalSuspended: an Execute stopped at its row limit.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyOutResponse.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// CopyBothResponse.
    pub const COPY_BOTH_RESPONSE: u8 = b'W';

    /// Frontend Query (simple protocol).
    pub const QUERY: u8 = b'Q';
    /// Frontend Parse.
    pub const PARSE: u8 = b'P';
    /// Frontend Bind.
    pub const BIND: u8 = b'B';
    /// Frontend Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Frontend Execute.
    pub const EXECUTE: u8 = b'E';
    /// Frontend Close.
    pub const CLOSE: u8 = b'C';
    /// Frontend Sync: asks for a ReadyForQuery.
    pub const SYNC: u8 = b'S';
    /// Frontend Flush: never a transaction boundary.
    pub const FLUSH: u8 = b'H';
    /// Frontend FunctionCall (answered with ReadyForQuery).
    pub const FUNCTION_CALL: u8 = b'F';
    /// Frontend Terminate.
    pub const TERMINATE: u8 = b'X';
    /// Frontend password / SASL response family ('p').
    pub const PASSWORD_MESSAGE: u8 = b'p';
    /// CopyData (both directions).
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone (both directions).
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail (frontend).
    pub const COPY_FAIL: u8 = b'f';
}

/// Size of a tagged message header: one tag byte and a 4-byte length.
pub const HEADER_LEN: usize = 5;

/// Wire input that breaks the protocol. Always the peer's fault; the
/// connection it came from is closed with SQLSTATE 08P01.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field smaller than the length field itself.
    #[error("invalid message length {0}")]
    BadLength(i64),
    /// A message longer than `max_packet_size`.
    #[error("message of {len} bytes exceeds max_packet_size {max}")]
    TooLong {
        /// Announced length.
        len: u64,
        /// The configured cap.
        max: u64,
    },
    /// A message body that does not decode.
    #[error("malformed {what} message")]
    Malformed {
        /// Which message.
        what: &'static str,
    },
    /// An unexpected message in the current phase.
    #[error("unexpected message type '{}'", char::from(*.0))]
    Unexpected(u8),
    /// A request where PostgreSQL wants COPY data (PostgreSQL's wording).
    #[error("unexpected message type 0x{0:02X} during COPY from stdin")]
    DuringCopy(u8),
}

/// Reads a big-endian `u32` at `at`, if the buffer holds it.
pub fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Reads a big-endian `i32` at `at`, if the buffer holds it.
pub fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    read_u32(buf, at).map(|v| v as i32)
}

/// Peeks at a tagged message header: the total frame length (tag + length
/// field + body) once the header is buffered, `Ok(None)` while it is not.
///
/// The length is checked here, before any caller buffers the body: a length
/// below 4 is malformed and one above `max` is refused.
pub fn frame_len(buf: &[u8], max: u32) -> Result<Option<usize>, ProtocolError> {
    let Some(len) = read_u32(buf, 1) else {
        return Ok(None);
    };
    check_len(len, max)?;
    Ok(Some(len as usize + 1))
}

/// The one length rule for every message, tagged or not.
fn check_len(len: u32, max: u32) -> Result<(), ProtocolError> {
    if len < 4 || len > i32::MAX as u32 {
        return Err(ProtocolError::BadLength(i64::from(len)));
    }
    if len > max {
        return Err(ProtocolError::TooLong {
            len: u64::from(len),
            max: u64::from(max),
        });
    }
    Ok(())
}

/// A complete tagged message borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The tag byte.
    pub tag: u8,
    /// The body, after the length field.
    pub body: &'a [u8],
}

/// Splits the first complete message off `buf`, if one is there.
pub fn next_frame(buf: &[u8], max: u32) -> Result<Option<(Frame<'_>, usize)>, ProtocolError> {
    let Some(total) = frame_len(buf, max)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((Frame { tag: buf[0], body }, total)))
}

/// A cursor over a message body: NUL-terminated strings and big-endian
/// integers, every read bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, naming `what` in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn malformed(&self) -> ProtocolError {
        ProtocolError::Malformed { what: self.what }
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let bytes = self.cbytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.malformed())
    }

    /// A NUL-terminated byte string.
    pub fn cbytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed())?;
        let (s, rest) = self.buf.split_at(nul);
        self.buf = &rest[1..];
        Ok(s)
    }

    /// A big-endian i32.
    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let v = read_i32(self.buf, 0).ok_or_else(|| self.malformed())?;
        self.buf = &self.buf[4..];
        Ok(v)
    }

    /// A big-endian i16.
    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.malformed());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Every decoder a peer's bytes reach, run on one message body (and the admin console's
/// grammar on Query text): for the fuzz target in `tests/fuzz` and its fixed-seed miniature in
/// this module's tests. Panics only where a decoder breaks its own contract.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub fn decode_every_body(body: &[u8]) {
    let _ = frontend::password(body);
    let _ = frontend::sasl_initial(body);
    if let Ok(sql) = frontend::query_text(body) {
        let _ = crate::admin::parse::parse(sql);
    }
    if let Ok(p) = frontend::parse(body) {
        assert_eq!(p.name.len() + 1 + p.rest.len(), body.len());
    }
    let _ = frontend::parse_name(body);
    if let Some((_, _, n)) = frontend::bind_names(body) {
        assert!(n <= body.len());
    }
    let _ = frontend::target(body, "Close");
    let _ = backend::AuthRequest::parse(body);
    let _ = backend::ErrorFields::parse(body);
    let _ = backend::parameter_status(body);
    let _ = backend::backend_key_data(body);
    let _ = backend::ready_status(body);
    let _ = backend::command_tag(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_header_needs_more() {
        assert_eq!(frame_len(b"Z\0\0", 100), Ok(None));
    }

    #[test]
    fn length_below_four_is_malformed() {
        assert_eq!(
            frame_len(b"Q\0\0\0\x03", 100),
            Err(ProtocolError::BadLength(3))
        );
    }

    #[test]
    fn length_above_max_is_refused() {
        let err = frame_len(b"Q\0\0\x10\0", 100).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::TooLong {
                len: 4096,
                max: 100
            }
        ));
    }

    #[test]
    fn next_frame_splits_one_message() {
        let buf = b"Z\0\0\0\x05Irest";
        let (frame, used) = next_frame(buf, 100).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame {
                tag: b'Z',
                body: b"I"
            }
        );
        assert_eq!(used, 6);
        assert_eq!(next_frame(&buf[..5], 100), Ok(None));
    }

    /// Startup-phase decoding, then frame by frame.
    fn decode_all(buf: &[u8], max: u32) {
        if let Ok(Some(len)) = startup::startup_len(buf) {
            let packet = buf.get(..len).unwrap_or(buf);
            if let Ok(startup::StartupPacket::Startup { params, .. }) =
                startup::parse_startup(packet)
            {
                params
                    .iter()
                    .for_each(|(_, v)| drop(startup::split_options(v)));
            }
        }
        let mut rest = buf;
        while let Ok(Some((frame, used))) = next_frame(rest, max) {
            assert!(used == HEADER_LEN + frame.body.len() && used <= rest.len());
            decode_every_body(frame.body);
            rest = &rest[used..];
        }
    }

    /// A fixed-seed miniature of the `frontend` fuzz target (tests/fuzz):
    /// valid messages, mutated, truncated and spliced, through the frame
    /// splitter and every decoder. Errors are fine; a panic fails.
    #[test]
    fn mutated_messages_never_panic() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut seeds = vec![Vec::new(); 8];
        build::startup(
            &mut seeds[0],
            &[("user", "u"), ("options", r"-c a=b\ c -c")],
        );
        build::parse(&mut seeds[1], "s1", b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        build::bind_head(&mut seeds[2], b"p", b"s1", 0);
        build::sasl_initial_response(&mut seeds[3], "SCRAM-SHA-256", b"n,,n=,r=abc");
        build::error_response(&mut seeds[4], build::Severity::Error, "26000", "x");
        build::describe(&mut seeds[5], b'S', b"s1");
        build::query(&mut seeds[6], "DEALLOCATE s1");
        build::cancel_request(&mut seeds[7], startup::CancelKey { pid: 1, secret: 2 });
        let mut rng = StdRng::seed_from_u64(0x7067_7269_6e67);
        for _ in 0..5000 {
            let mut buf = seeds[rng.gen_range(0..seeds.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..buf.len());
                match rng.gen_range(0..4) {
                    0 => buf[at] = rng.gen(),
                    1 => buf[at] = [0, 0xff, 0x7f, 0x80][rng.gen_range(0..4)],
                    2 => buf.truncate(at),
                    _ => buf.extend_from_within(at..),
                }
                if buf.is_empty() {
                    break;
                }
            }
            decode_all(&buf, [16, 1 << 20][rng.gen_range(0..2)]);
        }
    }

    #[test]
    fn reader_rejects_missing_nul_and_bad_utf8() {
        assert!(Reader::new(b"abc", "x").cstr().is_err());
        assert!(Reader::new(b"\xff\0", "x").cstr().is_err());
        let mut r = Reader::new(b"ab\0\0\0\0\x07", "x");
        assert_eq!(r.cstr().unwrap(), "ab");
        assert_eq!(r.i32().unwrap(), 7);
        assert!(r.is_empty());
    }
}
