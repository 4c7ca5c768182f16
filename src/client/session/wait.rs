//! The wait for a server, the session's one phase spent in a queue: the lease with
//! `query_wait_notify`'s notice, waiting out a PAUSE, the watch on the client meanwhile
//! (`until_or_gone`), and the answer to a request whose wait a cancel request ended.

use std::rc::Rc;

use super::{Millis, Session};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::runtime::io::{self as rio, Buf};
use crate::runtime::{Shard, Stream};

impl Session {
    /// Waits out a PAUSE with a request in hand, watching the client meanwhile.
    pub(super) async fn wait_while_paused(
        &self,
        stream: &mut Stream,
        cbuf: &mut Buf,
    ) -> Result<()> {
        let resumed = std::pin::pin!(async {
            while crate::admin::is_paused(&self.shard, &self.pool) {
                self.shard.state_changed.notified().await;
            }
        });
        until_or_gone(resumed, stream, cbuf).await
    }

    /// A request cancelled while it waited for a server (none of it reached PostgreSQL),
    /// answered as PostgreSQL answers a cancelled one: ErrorResponse 57014 at once, the
    /// request skipped (a simple Query or FunctionCall; extended messages up to their Sync,
    /// read as they arrive), then ReadyForQuery. Returns what the client sent after it.
    pub(super) async fn answer_canceled(
        &self,
        stream: &mut Stream,
        mut cbuf: Buf,
    ) -> Result<Option<Buf>> {
        use crate::protocol::{frame_len, tag};
        let mut out = Vec::with_capacity(128);
        crate::error::PgError::query_canceled().encode(&mut out);
        // Bytes of the current message still to drop; whether it ends the request.
        let (mut skip, mut ended, mut first) = (0usize, false, true);
        loop {
            if skip > 0 {
                let n = skip.min(cbuf.filled);
                cbuf.consume(n);
                skip -= n;
            }
            if skip == 0 && ended {
                break;
            }
            if skip == 0 {
                let next = match frame_len(cbuf.data(), self.max_packet) {
                    Ok(next) => next,
                    Err(p) => {
                        self.shard.bufs.give(cbuf);
                        return Err(Error::ClientProtocol(p));
                    }
                };
                if let Some(total) = next {
                    let t = cbuf.data()[0];
                    if t == tag::TERMINATE {
                        // Leaving: the session reads it next.
                        rio::write_all(stream, &out)
                            .await
                            .map_err(Error::ClientIo)?;
                        return Ok(Some(cbuf));
                    }
                    ended =
                        t == tag::SYNC || (first && matches!(t, tag::QUERY | tag::FUNCTION_CALL));
                    first = false;
                    skip = total;
                    continue;
                }
            }
            // More of the request is still to come: the error goes first, as PostgreSQL sends
            // it before skipping to Sync.
            if !out.is_empty() {
                rio::write_all(stream, &out)
                    .await
                    .map_err(Error::ClientIo)?;
                out.clear();
            }
            cbuf = self.read_more(stream, cbuf).await?;
        }
        crate::protocol::build::ready_for_query(&mut out, b'I');
        rio::write_all(stream, &out)
            .await
            .map_err(Error::ClientIo)?;
        if cbuf.filled > 0 {
            return Ok(Some(cbuf));
        }
        self.shard.bufs.give(cbuf);
        Ok(None)
    }
}

/// Leases a server for a transaction. A client still waiting after `query_wait_notify` is
/// told so once, keeping its place in the queue: PgBouncer 1.25's NOTICE, once per client.
/// Costs nothing when a server is at hand, and arms a timer only while a client waits.
pub(super) async fn lease<'a>(
    pool: &'a Rc<Pool>,
    shard: &'a Rc<Shard>,
    client: u64,
    stream: &mut Stream,
    cbuf: &mut Buf,
    notify: &mut Millis,
) -> Result<crate::pool::Held<'a>> {
    let mut acquire = std::pin::pin!(pool.acquire(shard, client));
    if let Some(done) = futures_lite::future::poll_once(acquire.as_mut()).await {
        return done;
    }
    if notify.0 == 0 {
        return until_or_gone(acquire, stream, cbuf).await?;
    }
    let waited = rio::timeout(
        notify.duration(),
        until_or_gone(acquire.as_mut(), stream, cbuf),
    );
    if let Some(done) = waited.await {
        return done?;
    }
    *notify = Millis(0);
    let mut notice = Vec::with_capacity(96);
    crate::protocol::build::error_response(
        &mut notice,
        crate::protocol::build::Severity::Notice,
        "00000",
        "No server connection available in postgres backend, client being queued",
    );
    // The wait goes on while the notice is written: a server granted meanwhile is taken up
    // at once, and the notice is whole before anything of the transaction follows it. A
    // client gone meanwhile leaves the queue at once (dropping the wait gives back whatever
    // it was granted).
    use std::future::Future;
    let mut leased = None;
    let written = {
        let mut write = std::pin::pin!(rio::write_all(stream, &notice));
        std::future::poll_fn(|cx| {
            if leased.is_none() {
                if let std::task::Poll::Ready(r) = acquire.as_mut().poll(cx) {
                    leased = Some(r);
                }
            }
            write.as_mut().poll(cx)
        })
        .await
    };
    match (written, leased) {
        (Ok(()), Some(leased)) => leased,
        (Ok(()), None) => until_or_gone(acquire, stream, cbuf).await?,
        (Err(e), Some(Ok(server))) => {
            // Untouched: it goes back as it came.
            pool.release(shard, server.take());
            Err(Error::ClientIo(e))
        }
        (Err(e), _) => Err(Error::ClientIo(e)),
    }
}

/// Waits for `wait` (a lease, the end of a PAUSE) while watching the client, as PgBouncer
/// watches a queued client's socket: what it sends meanwhile is kept in `cbuf`, after the
/// request (up to the buffer's room; a full buffer is not read, as a pipelining client is held
/// back anyway), and its end of stream or a socket error ends the wait at once
/// ([`Error::ClientClosed`], [`Error::ClientIo`]). Dropping the wait leaves the queue and gives
/// back whatever was granted, so a client that gave up never takes a server. The client's
/// read poll is already armed, so watching costs no syscall until something arrives.
async fn until_or_gone<T>(
    wait: std::pin::Pin<&mut impl std::future::Future<Output = T>>,
    stream: &mut Stream,
    cbuf: &mut Buf,
) -> Result<T> {
    use futures_lite::AsyncRead;
    use std::task::Poll;
    crate::client::watch::until_or(wait, |cx| {
        while cbuf.filled < cbuf.bytes.len() {
            let room = &mut cbuf.bytes[cbuf.filled..];
            match std::pin::Pin::new(&mut *stream).poll_read(cx, room) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Some(Error::ClientClosed)),
                Poll::Ready(Ok(n)) => cbuf.filled += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Error::ClientIo(e))),
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}
