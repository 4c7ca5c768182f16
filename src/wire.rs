//! Whole-message reads for the slow paths (login, parameter sync, reset,
//! admin): read until one complete message is buffered, return it owned.
//! The relay never uses this; it streams frames without copying them.

use std::io;

use crate::protocol::{frame_len, ProtocolError, HEADER_LEN};
use crate::runtime::io::{read_into, Buf};
use crate::runtime::Stream;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("connection closed")]
    Eof,
    /// The bytes are not a valid message.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
}

/// One message: its tag and body.
#[derive(Debug, Clone)]
pub struct Message {
    /// Tag byte.
    pub tag: u8,
    /// Body (after the length field).
    pub body: Vec<u8>,
}

/// Reads the next tagged message from `stream`, buffering in `buf` (which
/// may hold bytes of later messages on return).
pub async fn read_message(
    stream: &mut Stream,
    buf: &mut Buf,
    max: u32,
) -> Result<Message, ReadError> {
    loop {
        if let Some(total) = frame_len(buf.data(), max)? {
            if buf.filled >= total {
                let msg = Message {
                    tag: buf.bytes[0],
                    body: buf.bytes[HEADER_LEN..total].to_vec(),
                };
                buf.consume(total);
                return Ok(msg);
            }
            buf.reserve_total(total);
        }
        if read_into(stream, buf).await? == 0 {
            return Err(ReadError::Eof);
        }
    }
}

/// A small buffer for slow-path reads. It grows on demand ([`read_message`]
/// reserves a whole frame, `read_into` doubles a full buffer), so it only
/// needs to fit the usual startup packet or login message: every client
/// logging in holds one, and with thousands connecting at once the heap
/// keeps their high-water mark.
pub fn small_buf() -> Buf {
    Buf {
        bytes: vec![0; 1024],
        filled: 0,
    }
}
