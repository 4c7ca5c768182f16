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
//!
//! A server is released only when every request was answered, the last
//! status was `I`, both directions sit at a message boundary and nothing is
//! buffered: the transaction is over and the connection is clean.
//!
//! COPY FROM STDIN bends the count: in copy-in mode PostgreSQL ignores Sync
//! (and Flush), for drivers that send a Sync after every Execute without
//! knowing it starts a COPY (tokio-postgres, pgx...). So the server's
//! CopyInResponse takes back the Syncs sent since that Execute, and a COPY
//! started by Execute owes a Sync after its end before the server is at rest
//! (the COPY commits at that Sync). A Sync sent in the middle of the data is
//! ignored if the COPY ends well; after a server error mid-COPY nobody can
//! tell whether the server read it before or after the error, so it stays
//! owed: the link then never comes to rest and the server is closed when its
//! client leaves, never handed on with a ReadyForQuery in flight.
//!
//! In transaction and statement modes the relay also hands every message
//! header to the [`prepared`](crate::prepared) rewriter, whose queue follows
//! each request's reply (what PostgreSQL skips after an error, which request
//! started a COPY) and which, with prepared statements on
//! (`max_prepared_statements` > 0), may rename, inject, swallow or answer
//! messages. A batch it does not touch is still written straight from the
//! read buffer; one it touches is rebuilt into the linked server's scratch
//! buffer and still goes out in one write.

use std::time::{Duration, Instant};

mod state;

pub use state::{Boundary, LinkState};

use crate::config::PoolMode;
use crate::error::{sqlstate, Error, PgError, Result};
use crate::prepared::{Action, ClientStatements, Reply, Rewriter, ServerStatements, Splice};
use crate::protocol::{backend, frame_len, tag, ProtocolError, HEADER_LEN};
use crate::runtime::io::{self as rio, read_either, Buf, Either};
use crate::runtime::Stream;
use crate::server::{ClientParams, ServerConn, ServerParams};
use crate::stats::PoolStats;

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
    /// `disable_pqexec`: a simple Query ends the client.
    refuse_simple_query: bool,
    query_start: Option<Instant>,
    limits: Limits,
    started: Instant,
    last_ready: Instant,
}

impl Link {
    /// Starts a link with the client's first bytes in `cbuf`.
    pub fn new(cbuf: Buf, sbuf: Buf, mode: PoolMode, max_packet: u32, limits: Limits) -> Self {
        let now = rio::now();
        Link {
            cbuf,
            sbuf,
            state: LinkState::default(),
            mode,
            max_packet,
            refuse_simple_query: false,
            query_start: None,
            limits,
            started: now,
            last_ready: now,
        }
    }

    /// Refuses simple-protocol queries (`disable_pqexec`): one ends the client.
    pub fn refuse_simple_queries(&mut self) {
        self.refuse_simple_query = true;
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

    /// Walks the client's buffered bytes, asking the rewriter (if any)
    /// about each message, until a Terminate or bytes it cannot decide on
    /// yet. Replies the rewriter answers itself land in `to_client`.
    fn scan_client(
        &mut self,
        mut rw: Option<&mut Rewriter<'_>>,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<ClientStep, ProtocolError> {
        let data = self.cbuf.data();
        let mut splice = Splice::new(data, to_server);
        let mut pos = 0;
        let mut terminate = false;
        let mut refused = false;
        // Mid-way through a server message, the client must not get a
        // local reply: it would land inside that message.
        let held = self.state.sskip > 0;
        loop {
            if self.state.cskip > 0 {
                let n = self.state.cskip.min(data.len() - pos);
                pos += n;
                self.state.cskip -= n;
                if self.state.cskip > 0 {
                    break;
                }
            }
            let Some(total) = frame_len(&data[pos..], self.max_packet)? else {
                break;
            };
            let t = data[pos];
            if t == tag::TERMINATE {
                terminate = true;
                break;
            }
            if self.refuse_simple_query && t == tag::QUERY {
                // What came before it goes first; the client ends at the Query, with the
                // server in whatever state those left it.
                refused = pos == 0;
                break;
            }
            let action = match rw.as_deref_mut() {
                Some(rw) => {
                    let out = (!held).then_some(&mut *to_client);
                    rw.client_message(&mut splice, pos, total, out)?
                }
                None => Action::Pass,
            };
            let took = match action {
                Action::NeedMore => break,
                Action::Answered => {
                    self.state.on_answered();
                    pos += total;
                    continue;
                }
                Action::Pass | Action::Skipped => 0,
                Action::Took(n) => n,
            };
            // A skipped message goes on (maybe in pieces), but PostgreSQL reads past it: it
            // owes nothing for it.
            if action != Action::Skipped && self.state.on_request(t)? {
                self.query_start.get_or_insert_with(rio::now);
            }
            pos += took;
            self.state.cskip = total - took;
        }
        Ok(ClientStep {
            consumed: pos,
            direct: splice.finish(pos),
            terminate,
            refused,
        })
    }

    /// Walks the server's buffered bytes, asking the rewriter (if any)
    /// about each message; returns how many bytes were dealt with and
    /// whether they can be forwarded as they are (`Some(n)`) or were
    /// rebuilt into `to_client` (`None`). ReadyForQuery and ParameterStatus
    /// are decoded whole.
    fn scan_server(
        &mut self,
        params: &mut ClientParams,
        server_params: &mut ServerParams,
        mut rw: Option<&mut Rewriter<'_>>,
        to_client: &mut Vec<u8>,
        stats: &PoolStats,
    ) -> Result<(usize, Option<usize>)> {
        let data = self.sbuf.data();
        let mut splice = Splice::new(data, to_client);
        let mut pos = 0;
        loop {
            if self.state.sskip > 0 {
                let n = self.state.sskip.min(data.len() - pos);
                pos += n;
                self.state.sskip -= n;
                if self.state.sskip > 0 {
                    break;
                }
                if let Some(rw) = rw.as_deref_mut() {
                    rw.release_held(&mut splice, pos);
                }
            }
            let Some(total) =
                frame_len(&data[pos..], u32::MAX >> 1).map_err(Error::ServerProtocol)?
            else {
                break;
            };
            let t = data[pos];
            let own = t == tag::READY_FOR_QUERY || t == tag::PARAMETER_STATUS;
            let body = data.get(pos + HEADER_LEN..pos + total);
            let status = match (t, body) {
                (_, None) if own => break, // wait for the whole (small) message
                (tag::READY_FOR_QUERY, Some(b)) => {
                    backend::ready_status(b).map_err(Error::ServerProtocol)?
                }
                _ => self.state.status,
            };
            let reply = match rw.as_deref_mut() {
                Some(rw) => rw
                    .server_message(&mut splice, pos, total)
                    .map_err(Error::ServerProtocol)?,
                None => Reply::Stream,
            };
            if reply != Reply::NeedMore {
                if let (Some(rw), tag::ERROR_RESPONSE) = (rw.as_deref_mut(), t) {
                    self.state.on_skipped(rw.take_unanswered(), rw.skipping());
                }
                // The rewriter's queue knows which request started the COPY.
                let queued = (t == tag::COPY_IN_RESPONSE)
                    .then(|| rw.as_deref().map(Rewriter::copy_in))
                    .flatten();
                let ignored = self
                    .state
                    .on_server_copy(t, queued)
                    .map_err(Error::ClientProtocol)?;
                if let (Some(rw), 1..) = (rw.as_deref_mut(), ignored) {
                    rw.forget_syncs(ignored);
                    // What the dropped Syncs held back (pgring's own replies, where the
                    // client's COPY messages went) is due now.
                    if reply == Reply::Handled {
                        rw.release_held(&mut splice, pos + total);
                    }
                }
            }
            match (reply, body) {
                (Reply::NeedMore, _) => break,
                (Reply::Stream, _) if !own => {
                    self.state.sskip = total;
                    continue;
                }
                (_, Some(_)) if t == tag::READY_FOR_QUERY => {
                    self.state.status = status;
                    self.state.pending = self.state.pending.saturating_sub(1);
                    self.last_ready = rio::now();
                    if self.state.pending == 0 {
                        if let Some(start) = self.query_start.take() {
                            stats.record_query(self.last_ready.saturating_duration_since(start));
                        }
                    }
                }
                (_, Some(body)) if own => {
                    let (k, v) = backend::parameter_status(body).map_err(Error::ServerProtocol)?;
                    server_params.on_status(k, v);
                    params.on_status(k, v);
                }
                _ => {}
            }
            pos += total;
        }
        self.state.sheld = data.len() - pos;
        Ok((pos, splice.finish(pos)))
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

/// What one pass over the client's bytes produced.
struct ClientStep {
    /// Bytes of the client buffer dealt with.
    consumed: usize,
    /// `Some(n)`: send the first `n` as they are; `None`: the batch was
    /// rebuilt into the server's `to_server` scratch.
    direct: Option<usize>,
    /// A Terminate follows.
    terminate: bool,
    /// A simple Query is next, and `disable_pqexec` refuses it.
    refused: bool,
}

/// Relays until the transaction ends (transaction and statement modes) or
/// the client leaves. `prepared` is the client's statement names; they are
/// rewritten unless the pool is in session mode or the feature is off. `busy` says, for the
/// console and `server_fast_close`, whether a request is on the server (the link not at rest).
pub async fn run(
    link: &mut Link,
    client: &mut Stream,
    server: &mut ServerConn,
    params: &mut ClientParams,
    prepared: &mut ClientStatements,
    stats: &PoolStats,
    busy: &std::cell::Cell<bool>,
) -> Result<End> {
    // Per-transaction pooling follows every request's reply in the rewriter's queue (with
    // prepared statements off too: it knows what PostgreSQL skips after an error); session
    // pooling passes everything through.
    let rewrite = link.mode != PoolMode::Session;
    server.meta.prepared.begin_lease();
    loop {
        if link.cbuf.filled > 0 {
            let step = client_step(link, &mut server.meta.prepared, prepared, rewrite, stats)?;
            if let Some(end) = forward_client(link, client, server, step, stats).await? {
                return Ok(end);
            }
        }
        busy.set(!link.state.at_rest());
        let deadline = link.deadline();
        let read = read_either(client, &mut link.cbuf, &mut server.stream, &mut link.sbuf);
        let ready = match deadline {
            None => read.await,
            Some((at, what)) => {
                match rio::timeout(at.saturating_duration_since(rio::now()), read).await {
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
                if !forward_server(link, client, server, params, prepared, rewrite, stats).await? {
                    return Ok(End::ClientGone(link.state));
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

/// Scans the client's bytes (rewriting them if `rewrite`); sans-IO.
fn client_step(
    link: &mut Link,
    server: &mut ServerStatements,
    prepared: &mut ClientStatements,
    rewrite: bool,
    stats: &PoolStats,
) -> Result<ClientStep> {
    let (mut rw, to_server, to_client) = server.split(prepared, rewrite, stats);
    link.scan_client(rw.as_mut(), to_server, to_client)
        .map_err(Error::ClientProtocol)
}

/// The error that ends a client sending a simple Query under `disable_pqexec` (PgBouncer's).
pub fn pqexec_disallowed() -> PgError {
    PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "PQexec disallowed")
}

/// Sends what the client step produced: the batch to the server, local
/// replies to the client. Returns how the relay ends, if it does.
async fn forward_client(
    link: &mut Link,
    client: &mut Stream,
    server: &mut ServerConn,
    step: ClientStep,
    stats: &PoolStats,
) -> Result<Option<End>> {
    let scratch = &mut server.meta.prepared;
    let out = match step.direct {
        Some(n) => &link.cbuf.bytes[..n],
        None => &scratch.to_server[..],
    };
    if !out.is_empty() {
        stats.add_received(out.len());
        rio::write_all(&mut server.stream, out)
            .await
            .map_err(Error::ServerIo)?;
    }
    scratch.to_server.clear();
    link.cbuf.consume(step.consumed);
    if step.terminate {
        link.cbuf.filled = 0;
        return Ok(Some(End::ClientGone(link.state)));
    }
    if step.refused {
        link.cbuf.filled = 0;
        return Ok(Some(End::Abort(pqexec_disallowed(), link.state)));
    }
    if scratch.to_client.is_empty() {
        return Ok(None);
    }
    stats.add_sent(scratch.to_client.len());
    let written = rio::write_all(client, &scratch.to_client).await;
    scratch.to_client.clear();
    if written.is_err() {
        return Ok(Some(End::ClientGone(link.state)));
    }
    // Answered without the server (a Parse or Close): maybe the end.
    Ok(link.may_release().then_some(End::Released))
}

/// Scans what the server sent (rewriting replies if `rewrite`) and
/// forwards it; false if the client is gone.
async fn forward_server(
    link: &mut Link,
    client: &mut Stream,
    server: &mut ServerConn,
    params: &mut ClientParams,
    prepared: &mut ClientStatements,
    rewrite: bool,
    stats: &PoolStats,
) -> Result<bool> {
    let meta = &mut server.meta;
    let (consumed, direct) = server_step(
        link,
        params,
        &mut meta.params,
        &mut meta.prepared,
        prepared,
        rewrite,
        stats,
    )?;
    let scratch = &mut server.meta.prepared.to_client;
    let out = match direct {
        Some(n) => &link.sbuf.bytes[..n],
        None => &scratch[..],
    };
    let written = if out.is_empty() {
        Ok(())
    } else {
        stats.add_sent(out.len());
        rio::write_all(client, out).await
    };
    scratch.clear();
    link.sbuf.consume(consumed);
    Ok(written.is_ok())
}

/// Scans the server's bytes (rewriting replies if `rewrite`); sans-IO.
fn server_step(
    link: &mut Link,
    params: &mut ClientParams,
    server_params: &mut ServerParams,
    server: &mut ServerStatements,
    prepared: &mut ClientStatements,
    rewrite: bool,
    stats: &PoolStats,
) -> Result<(usize, Option<usize>)> {
    let (mut rw, _, to_client) = server.split(prepared, rewrite, stats);
    link.scan_server(params, server_params, rw.as_mut(), to_client, stats)
}

/// The relay's sans-IO steps with bytes in and bytes out, for unit tests
/// and, behind the `fuzzing` feature, for the harness in `tests/fuzz`.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod testing;
