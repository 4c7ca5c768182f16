//! The console session: simple-protocol queries answered by pgring.

use std::rc::Rc;

use crate::client::ClientInfo;
use crate::error::{sqlstate, Error, PgError, Result};
use crate::protocol::{build, frontend, tag};
use crate::runtime::io::write_all;
use crate::runtime::{Shard, Stream};
use crate::wire::{read_message, small_buf, ReadError};

/// Serves console queries until the client leaves.
pub async fn serve(
    shard: &Rc<Shard>,
    _info: &Rc<ClientInfo>,
    stream: &mut Stream,
    _is_admin: bool,
) -> Result<()> {
    let mut buf = small_buf();
    loop {
        let msg = match read_message(stream, &mut buf, 1 << 20).await {
            Ok(m) => m,
            Err(ReadError::Eof) => return Ok(()),
            Err(ReadError::Io(e)) => return Err(Error::ClientIo(e)),
            Err(ReadError::Protocol(p)) => return Err(Error::ClientProtocol(p)),
        };
        let mut out = Vec::new();
        match msg.tag {
            tag::TERMINATE => return Ok(()),
            tag::QUERY => {
                let sql = frontend::query_text(&msg.body).map_err(Error::ClientProtocol)?;
                answer(shard, sql, &mut out);
            }
            _ => PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "admin console supports only simple queries",
            )
            .encode(&mut out),
        }
        build::ready_for_query(&mut out, b'I');
        write_all(stream, &out).await.map_err(Error::ClientIo)?;
    }
}

fn answer(_shard: &Rc<Shard>, sql: &str, out: &mut Vec<u8>) {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["SHOW", "VERSION"] => {
            build::row_description(out, &[("version", 25)]);
            build::data_row(out, &[Some(super::SERVER_VERSION)]);
            build::command_complete(out, "SHOW");
        }
        _ => PgError::error(
            sqlstate::SYNTAX_ERROR,
            format!("invalid command '{sql}', use SHOW HELP;"),
        )
        .encode(out),
    }
}
