//! The hot path: bytes between a client and its linked server.
//!
//! Both directions stream in large runs: what one read brings is forwarded
//! with one write, and a message body is never copied into its own buffer.
//! The relay only peeks at message headers and acts on a few tags:
//! - client `Q`, `S` (Sync), `F` each ask for one ReadyForQuery; any other
//!   extended-protocol message leaves the exchange "unsynced" until a Sync;
//!   `H` (Flush) changes nothing, so it is never a boundary; `X` ends the
//!   session and is not forwarded.
//! - server `Z` (ReadyForQuery) answers one request and carries the
//!   transaction status; `S` (ParameterStatus) updates both the server's
//!   parameter cache and the client's wanted values.
//! A server is released only when every request was answered, the last
//! status was `I`, both directions sit at a message boundary and nothing is
//! buffered: the transaction is over and the connection is clean.

use std::time::{Duration, Instant};

use crate::config::PoolMode;
use crate::error::{sqlstate, Error, PgError, Result};
use crate::protocol::{backend, frame_len, tag, ProtocolError, HEADER_LEN};
use crate::runtime::io::{self as rio, read_either, Buf, Either};
use crate::runtime::Stream;
use crate::server::{ClientParams, ServerConn};
use crate::stats::PoolStats;

/// Where a linked pair stands in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// ReadyForQuery messages still owed to the client.
    pub pending: u32,
    /// Extended-protocol messages sent since the last Sync.
    pub unsynced: bool,
    /// Status byte of the last ReadyForQuery.
    pub status: u8,
    /// Bytes of the current client message not yet seen.
    cskip: usize,
    /// Bytes of the current server message not yet seen.
    sskip: usize,
    /// Buffered server bytes not yet forwarded.
    sheld: usize,
}

impl Default for LinkState {
    fn default() -> Self {
        LinkState {
            pending: 0,
            unsynced: false,
            status: b'I',
            cskip: 0,
            sskip: 0,
            sheld: 0,
        }
    }
}

/// What can be done with a server whose client went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// Idle, clean: reusable.
    Idle,
    /// Between statements inside a transaction: ROLLBACK makes it clean.
    InTransaction,
    /// Mid-message or mid-request: only closing is safe.
    Busy,
}

impl LinkState {
    /// A state that forbids reuse.
    pub fn busy() -> Self {
        LinkState {
            pending: 1,
            ..Default::default()
        }
    }

    fn at_rest(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.cskip == 0 && self.sskip == 0 && self.sheld == 0
    }

    /// Is the server idle and clean right now?
    pub fn is_clean(&self) -> bool {
        self.at_rest() && self.status == b'I'
    }

    /// Classifies the server for a client that went away.
    pub fn boundary(&self) -> Boundary {
        match (self.at_rest(), self.status) {
            (true, b'I') => Boundary::Idle,
            (true, _) => Boundary::InTransaction,
            (false, _) => Boundary::Busy,
        }
    }
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Transaction over, server clean: release it.
    Released,
    /// The client closed (or sent Terminate); the server is in this state.
    ClientGone(LinkState),
    /// pgring ends the client (a timeout, or statement mode refusing a
    /// transaction block): tell it this, then treat the server by its state.
    Abort(PgError, LinkState),
}

/// Per-client time limits enforced while linked (zero = off), PgBouncer's
/// `query_timeout`, `idle_transaction_timeout` and `transaction_timeout`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// A query running longer is cancelled and the client closed.
    pub query: Duration,
    /// A client idle inside a transaction longer is closed (the server is
    /// rolled back and kept).
    pub idle_in_transaction: Duration,
    /// A lease (transaction) longer is ended.
    pub transaction: Duration,
}

/// A client/server pair for the length of one lease.
pub struct Link {
    cbuf: Buf,
    sbuf: Buf,
    state: LinkState,
    mode: PoolMode,
    max_packet: u32,
    query_start: Option<Instant>,
    limits: Limits,
    started: Instant,
    last_ready: Instant,
}

impl Link {
    /// Starts a link with the client's first bytes in `cbuf`.
    pub fn new(cbuf: Buf, sbuf: Buf, mode: PoolMode, max_packet: u32, limits: Limits) -> Self {
        let now = Instant::now();
        Link {
            cbuf,
            sbuf,
            state: LinkState::default(),
            mode,
            max_packet,
            query_start: None,
            limits,
            started: now,
            last_ready: now,
        }
    }

    /// The earliest limit that applies now, with the error it raises.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        let mut best: Option<(Instant, &'static str)> = None;
        let mut consider = |limit: Duration, from: Instant, what: &'static str| {
            if !limit.is_zero() && best.is_none_or(|(at, _)| from + limit < at) {
                best = Some((from + limit, what));
            }
        };
        consider(self.limits.transaction, self.started, "transaction timeout");
        match (self.state.pending, self.query_start) {
            (0, _) if self.state.status != b'I' => consider(
                self.limits.idle_in_transaction,
                self.last_ready,
                "idle transaction timeout",
            ),
            (_, Some(q)) => consider(self.limits.query, q, "query timeout"),
            _ => {}
        }
        best
    }

    /// Gives the buffers back (client bytes may remain for the next lease).
    pub fn into_bufs(self) -> (Buf, Buf) {
        (self.cbuf, self.sbuf)
    }

    /// Walks the client's buffered bytes; returns how many can be sent and
    /// whether a Terminate was seen (it and what follows are not sent).
    fn scan_client(&mut self) -> Result<(usize, bool), ProtocolError> {
        let data = self.cbuf.data();
        let mut pos = 0;
        loop {
            if self.state.cskip > 0 {
                let n = self.state.cskip.min(data.len() - pos);
                pos += n;
                self.state.cskip -= n;
                if self.state.cskip > 0 {
                    return Ok((pos, false));
                }
            }
            let Some(total) = frame_len(&data[pos..], self.max_packet)? else {
                return Ok((pos, false));
            };
            match data[pos] {
                tag::TERMINATE => return Ok((pos, true)),
                tag::QUERY | tag::SYNC | tag::FUNCTION_CALL => {
                    self.state.pending += 1;
                    self.state.unsynced = false;
                    self.query_start.get_or_insert_with(Instant::now);
                }
                tag::FLUSH | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {}
                _ => self.state.unsynced = true,
            }
            self.state.cskip = total;
        }
    }

    /// Walks the server's buffered bytes; returns how many can be sent to
    /// the client. ReadyForQuery and ParameterStatus are decoded whole.
    fn scan_server(
        &mut self,
        params: &mut ClientParams,
        server: &mut ServerConn,
        stats: &PoolStats,
    ) -> Result<usize> {
        let data = self.sbuf.data();
        let mut pos = 0;
        loop {
            if self.state.sskip > 0 {
                let n = self.state.sskip.min(data.len() - pos);
                pos += n;
                self.state.sskip -= n;
                if self.state.sskip > 0 {
                    break;
                }
            }
            let Some(total) =
                frame_len(&data[pos..], u32::MAX >> 1).map_err(Error::ServerProtocol)?
            else {
                break;
            };
            let t = data[pos];
            if t != tag::READY_FOR_QUERY && t != tag::PARAMETER_STATUS {
                self.state.sskip = total;
                continue;
            }
            let Some(body) = data.get(pos + HEADER_LEN..pos + total) else {
                break; // wait for the whole (small) message
            };
            if t == tag::READY_FOR_QUERY {
                self.state.status = backend::ready_status(body).map_err(Error::ServerProtocol)?;
                self.state.pending = self.state.pending.saturating_sub(1);
                self.last_ready = Instant::now();
                if self.state.pending == 0 {
                    if let Some(start) = self.query_start.take() {
                        stats.record_query(start.elapsed());
                    }
                }
            } else {
                let (k, v) = backend::parameter_status(body).map_err(Error::ServerProtocol)?;
                server.meta.params.on_status(k, v);
                params.on_status(k, v);
            }
            pos += total;
        }
        self.state.sheld = data.len() - pos;
        Ok(pos)
    }

    fn may_release(&self) -> bool {
        self.mode != PoolMode::Session && self.state.is_clean()
    }

    /// Statement pooling refuses transaction blocks (PgBouncer's wording).
    fn statement_mode_violation(&self) -> Option<PgError> {
        (self.mode == PoolMode::Statement && self.state.pending == 0 && self.state.status != b'I')
            .then(|| {
                PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "transaction blocks not allowed in statement pooling mode",
                )
            })
    }
}

/// Relays until the transaction ends (transaction and statement modes) or
/// the client leaves.
pub async fn run(
    link: &mut Link,
    client: &mut Stream,
    server: &mut ServerConn,
    params: &mut ClientParams,
    stats: &PoolStats,
) -> Result<End> {
    loop {
        if link.cbuf.filled > 0 {
            let (n, terminate) = link.scan_client().map_err(Error::ClientProtocol)?;
            if n > 0 {
                stats.add_received(n);
                rio::write_all(&mut server.stream, &link.cbuf.bytes[..n])
                    .await
                    .map_err(Error::ServerIo)?;
                link.cbuf.consume(n);
            }
            if terminate {
                link.cbuf.filled = 0;
                return Ok(End::ClientGone(link.state));
            }
        }
        let deadline = link.deadline();
        let read = read_either(client, &mut link.cbuf, &mut server.stream, &mut link.sbuf);
        let ready = match deadline {
            None => read.await,
            Some((at, what)) => {
                match rio::timeout(at.saturating_duration_since(Instant::now()), read).await {
                    Some(r) => r,
                    None => {
                        return Ok(End::Abort(
                            PgError::fatal(sqlstate::PROTOCOL_VIOLATION, what),
                            link.state,
                        ))
                    }
                }
            }
        };
        match ready {
            Either::First(Ok(0)) | Either::First(Err(_)) => return Ok(End::ClientGone(link.state)),
            Either::First(Ok(_)) => {}
            Either::Second(Ok(0)) => {
                return Err(Error::ServerIo(std::io::ErrorKind::UnexpectedEof.into()))
            }
            Either::Second(Err(e)) => return Err(Error::ServerIo(e)),
            Either::Second(Ok(_)) => {
                let n = link.scan_server(params, server, stats)?;
                if n > 0 {
                    stats.add_sent(n);
                    if rio::write_all(client, &link.sbuf.bytes[..n]).await.is_err() {
                        link.sbuf.consume(n);
                        return Ok(End::ClientGone(link.state));
                    }
                    link.sbuf.consume(n);
                }
                if link.may_release() {
                    return Ok(End::Released);
                }
                if let Some(e) = link.statement_mode_violation() {
                    return Ok(End::Abort(e, link.state));
                }
            }
        }
    }
}
