//! A logged-in client of a normal pool, from its first request to its end: the idle wait
//! (holding no buffer), one lease per transaction (wait, parameter sync, relay, release),
//! and returning the server clean when the client leaves mid-transaction. `mod.rs` keeps
//! what every client has (its registry entry, the login phase, the goodbye).

use std::rc::Rc;
use std::time::Duration;

use super::balance::Moving;
use super::{boxed, goodbye, login, ClientInfo, ClientState};
use crate::config::{Config, PoolMode, Seconds};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::relay::{self, End, Link};
use crate::runtime::io::{self as rio, Buf};
use crate::runtime::recycle::Recycled;
use crate::runtime::{Shard, Stream};
use crate::server::{ClientParams, ServerConn};

mod wait;
use wait::lease;

/// The user's timeouts as configured when it logged in, and `disable_pqexec`. Kept as whole
/// milliseconds in a `u32` (24 bytes for the five and the flag; `Seconds` took 40 and
/// `Duration`s 80, and every idle client carries them), and made `Duration`s where they are
/// used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Timeouts {
    query: Millis,
    idle_in_transaction: Millis,
    transaction: Millis,
    client_idle: Millis,
    /// `query_wait_notify`; zero once the client has been told (PgBouncer tells it once).
    wait_notify: Millis,
    /// `disable_pqexec`: a simple Query ends the client.
    pqexec_disabled: bool,
}

/// A timeout in milliseconds: a non-zero timeout under 1 ms rounds up to 1 ms (it must not
/// become "disabled"), one over ~49 days saturates at that.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Millis(u32);

impl Millis {
    fn from_config(s: Seconds) -> Millis {
        let d = s.duration();
        if d.is_zero() {
            return Millis(0);
        }
        Millis(u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1))
    }

    fn duration(self) -> Duration {
        Duration::from_millis(self.0.into())
    }
}

impl Timeouts {
    fn for_user(config: &Config, user: &str) -> Timeouts {
        Timeouts {
            query: Millis::from_config(config.query_timeout(user)),
            idle_in_transaction: Millis::from_config(config.idle_transaction_timeout(user)),
            transaction: Millis::from_config(config.transaction_timeout(user)),
            client_idle: Millis::from_config(config.client_idle_timeout(user)),
            wait_notify: Millis::from_config(config.general.query_wait_notify),
            pqexec_disabled: config.general.disable_pqexec,
        }
    }

    fn relay_limits(self) -> relay::Limits {
        relay::Limits {
            query: self.query.duration(),
            idle_in_transaction: self.idle_in_transaction.duration(),
            transaction: self.transaction.duration(),
        }
    }
}

/// A logged-in client of a normal pool.
pub(super) struct Session {
    shard: Rc<Shard>,
    info: Rc<ClientInfo>,
    pool: Rc<Pool>,
    params: ClientParams,
    max_packet: u32,
    timeouts: Timeouts,
    _slots: login::ClientSlots,
    /// The client's prepared statement names (transaction pooling).
    prepared: crate::prepared::ClientStatements,
}

impl Session {
    pub(super) fn new(
        shard: &Rc<Shard>,
        info: &Rc<ClientInfo>,
        pool: Rc<Pool>,
        params: ClientParams,
        slots: login::ClientSlots,
    ) -> Session {
        let config = shard.config();
        let user = info.user.borrow();
        Session {
            shard: shard.clone(),
            info: info.clone(),
            pool,
            params,
            max_packet: config.general.max_packet_size,
            timeouts: Timeouts::for_user(&config, &user),
            _slots: slots,
            prepared: crate::prepared::ClientStatements::new(
                config.general.max_prepared_statements,
                config.general.max_client_prepared_memory,
            ),
        }
    }

    /// The session of a client that another shard sent here (see `balance`), on this shard's
    /// slice of its pool, wanting the same parameter values and knowing the same statements.
    pub(super) fn arrived(
        shard: &Rc<Shard>,
        info: &Rc<ClientInfo>,
        pool: Rc<Pool>,
        m: Moving,
    ) -> Session {
        let config = shard.config();
        let mut params = ClientParams::new(pool.client_base(login::tracked(&config)));
        for (k, v) in &m.params {
            params.set_with(k, v, |s| pool.intern(s));
        }
        Session {
            shard: shard.clone(),
            info: info.clone(),
            pool,
            params,
            max_packet: m.max_packet,
            timeouts: m.timeouts,
            _slots: m.slots,
            prepared: crate::prepared::ClientStatements::from_portable(m.prepared),
        }
    }

    /// Everything the session needs on shard `to` (the socket is added by the caller).
    fn into_moving(self, to: usize) -> Moving {
        let info = &self.info;
        Moving {
            to,
            fd: None,
            unix: false,
            id: info.id,
            key: info.key,
            connect_time: info.connect_time,
            db: info.db.borrow().clone(),
            user: info.user.borrow().clone(),
            app_name: Box::from(&**info.app_name.borrow()),
            pool: self.pool.key.clone(),
            params: self
                .params
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            prepared: self.prepared.to_portable(),
            server_secret: self.shard.auth_cache.server_secret(&self.pool.key),
            keys: self.shard.auth_cache.keys(&self.pool.key),
            slots: self._slots,
            max_packet: self.max_packet,
            timeouts: self.timeouts,
        }
    }

    /// Should this client, between transactions, go to another shard now? Only a pooled
    /// (transaction or statement mode) client of a shard that is not stopping, and not one
    /// being killed.
    fn move_to(&self, stream: &Stream) -> Option<usize> {
        // Per transaction: the one-cell test first, so that nothing else is read while no
        // shard asks for moves (the default).
        let hook = test_hook_moves_every_client();
        if !hook && !self.shard.balance.shedding() {
            return None;
        }
        // A TLS session's state lives in this shard's memory with the socket: it stays.
        if self.pool.mode() == PoolMode::Session
            || stream.is_tls()
            || self.shard.is_stopping()
            || self.info.is_killed()
        {
            return None;
        }
        if hook {
            let workers = self.shard.shared.workers;
            return (workers > 1).then(|| (self.shard.id + 1) % workers);
        }
        self.shard.balance.take_move()
    }

    /// Serves the logged-in client to its end, or until it is to move to another shard
    /// (then it comes back as a [`Moving`]). It consumes the session so that the session
    /// lives in this future alone (an async block: no second copy of `self`, see `serve`),
    /// and is dropped, giving back its slots and pool, before the goodbye.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn: see above
    pub(super) fn serve(
        mut self,
        stream: &mut Stream,
    ) -> impl std::future::Future<Output = Option<Box<Moving>>> + '_ {
        async move {
            let result = self.run(stream).await;
            let e = match result {
                Ok(to) => return Some(Box::new(self.into_moving(to))),
                Err(e) => e,
            };
            let info = self.info.clone();
            drop(self);
            // Boxed: an error path should not size the idle state.
            boxed(goodbye(&info, stream, *e)).await;
            None
        }
    }

    /// The request loop; it ends with the shard the client is to move to, or with an error
    /// (a client that leaves is `ClientClosed`). The error comes boxed: `serve` reserves
    /// room for this future's output beside the future itself for the whole session (rustc
    /// does not overlap the two), 8 bytes instead of an inline Error.
    ///
    /// This loop is what an idle client's task holds, so it is kept to the idle wait and a
    /// box: a plain function returning an async block (an `async fn` keeps its arguments
    /// twice), and no buffer variable that lives across an await (rustc keeps a slot for it
    /// in every state).
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn: see above
    fn run<'a>(
        &'a mut self,
        stream: &'a mut Stream,
    ) -> impl std::future::Future<Output = std::result::Result<usize, Box<Error>>> + 'a {
        async move {
            loop {
                let cbuf = self.next_request(stream).await?;
                // On the heap for the same reason as login: the lease machinery (wait,
                // parameter sync, relay, cleanup) is ~1 KB of future state that an
                // idle client should not carry. In a block the shard reuses (and built
                // there: `with`, not `new`, copies no unstarted state), so a
                // transaction allocates nothing.
                Recycled::with(|| self.transactions(stream, cbuf)).await?;
                // Between transactions, nothing buffered: the moment a client can move.
                if let Some(to) = self.move_to(stream) {
                    return Ok(to);
                }
            }
        }
    }

    /// Serves transactions back to back while the client has already sent the next request's
    /// bytes; returns once the client is between transactions with nothing pending.
    async fn transactions(&mut self, stream: &mut Stream, mut cbuf: Buf) -> Result<()> {
        loop {
            // Boxed: a pause is rare, and its wait would otherwise size every transaction's
            // box.
            if crate::admin::is_paused(&self.shard, &self.pool) {
                if let Err(e) = boxed(self.wait_while_paused(stream, &mut cbuf)).await {
                    self.shard.bufs.give(cbuf);
                    return Err(self.gone_or(e));
                }
            }
            match self.transaction(stream, cbuf).await? {
                Some(next) => cbuf = next,
                None => return Ok(()),
            }
        }
    }

    /// Waits for the client's next bytes, holding no buffer meanwhile. A plain function
    /// returning an async block, as `run`, for the same reason: an idle client waits in it.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn: see `run`
    fn next_request<'a>(
        &'a self,
        stream: &'a mut Stream,
    ) -> impl std::future::Future<Output = Result<Buf>> + 'a {
        async move {
            self.info.state.set(ClientState::Idle);
            // The timeout is read twice rather than kept in a local, which would
            // stay in the idle wait's state.
            let read = if self.timeouts.client_idle.duration().is_zero() {
                self.shard.bufs.read(stream).await
            } else {
                // Boxed: the timer is most of this wait's state, and without
                // client_idle_timeout (the default) no idle client should hold it.
                let read = self.shard.bufs.read(stream);
                boxed(rio::timeout(self.timeouts.client_idle.duration(), read))
                    .await
                    .ok_or_else(|| {
                        Error::refuse(
                            crate::error::sqlstate::PROTOCOL_VIOLATION,
                            "client_idle_timeout",
                        )
                    })?
            };
            let mut buf = read.map_err(Error::ClientIo)?;
            if buf.filled == 0 {
                self.shard.bufs.give(buf);
                return Err(self.closed());
            }
            // Lease only once a whole header is here, so a server is never
            // linked to a client that has not started a message. Boxed: a header
            // split over reads is rare, and its wait (a buffer and a read) would
            // otherwise size the idle wait.
            if buf.filled < crate::protocol::HEADER_LEN {
                buf = boxed(self.read_header(stream, buf)).await?;
            }
            // A Terminate between transactions needs no server (PgBouncer does
            // not lease one either): the session simply ends.
            if buf.bytes[0] == crate::protocol::tag::TERMINATE {
                self.shard.bufs.give(buf);
                return Err(self.closed());
            }
            Ok(buf)
        }
    }

    /// Reads until `buf` holds a whole message header.
    async fn read_header(&self, stream: &mut Stream, mut buf: Buf) -> Result<Buf> {
        while buf.filled < crate::protocol::HEADER_LEN {
            buf = self.read_more(stream, buf).await?;
        }
        Ok(buf)
    }

    /// Reads more of the client's bytes into `buf`; at its end, gives `buf` back and says why
    /// the client is gone.
    async fn read_more(&self, stream: &mut Stream, mut buf: Buf) -> Result<Buf> {
        if rio::read_into(stream, &mut buf)
            .await
            .map_err(Error::ClientIo)?
            == 0
        {
            self.shard.bufs.give(buf);
            return Err(self.closed());
        }
        Ok(buf)
    }

    fn closed(&self) -> Error {
        match self.info.kill_reason() {
            Some(r) => Error::refuse(crate::error::sqlstate::ADMIN_SHUTDOWN, r),
            None => Error::ClientClosed,
        }
    }

    /// `e`, unless it says the client closed: then why it is gone ([`Self::closed`]).
    fn gone_or(&self, e: Error) -> Error {
        match e {
            Error::ClientClosed => self.closed(),
            e => e,
        }
    }

    /// One server lease: from the first byte of a request to the release.
    /// Returns bytes the client already sent for the next one, if any.
    async fn transaction(&mut self, stream: &mut Stream, mut cbuf: Buf) -> Result<Option<Buf>> {
        if self.timeouts.pqexec_disabled
            && cbuf.data().first() == Some(&crate::protocol::tag::QUERY)
        {
            // Refused before it takes a server or a place in the queue.
            self.shard.bufs.give(cbuf);
            return Err(Error::Refused(relay::pqexec_disallowed()));
        }
        self.info.state.set(ClientState::Waiting);
        self.info.request_time.set(rio::now());
        let acquire = lease(
            &self.pool,
            &self.shard,
            self.info.id,
            stream,
            &mut cbuf,
            &mut self.timeouts.wait_notify,
        );
        let mut server = match acquire.await {
            Ok(s) => s,
            Err(Error::WaitCanceled) => {
                self.info.state.set(ClientState::Idle);
                return boxed(self.answer_canceled(stream, cbuf)).await;
            }
            Err(e) => {
                self.shard.bufs.give(cbuf);
                return Err(self.gone_or(e));
            }
        };
        self.info.link(&server);
        if let Err(e) = server.sync_params(&mut self.params).await {
            self.shard.bufs.give(cbuf);
            self.info.unlink();
            match e {
                // PostgreSQL refused a value but finished with ReadyForQuery.
                Error::Server(_) => self.pool.release(&self.shard, server.take()),
                _ => self
                    .pool
                    .close_leased(&self.shard, server.take(), "parameter sync failed"),
            }
            return Err(e.into_fatal());
        }
        #[cfg(debug_assertions)]
        test_hook_panic(&cbuf);
        let started = rio::now();
        let mode = self.pool.mode();
        let mut link = Link::new(
            cbuf,
            self.shard.bufs.take(),
            mode,
            self.max_packet,
            self.timeouts.relay_limits(),
        );
        if self.timeouts.pqexec_disabled {
            link.refuse_simple_queries();
        }
        let end = relay::run(
            &mut link,
            stream,
            &mut server,
            &mut self.params,
            &mut self.prepared,
            &self.pool.stats,
            &self.info.busy,
        )
        .await;
        self.info.busy.set(false);
        let prepared = u32::try_from(self.prepared.len()).unwrap_or(u32::MAX);
        self.info.prepared_statements.set(prepared);
        let held = rio::now().saturating_duration_since(started);
        self.pool.stats.record_xact(held);
        self.shard.balance.request_done(held);
        let (cbuf, sbuf) = link.into_bufs();
        self.shard.bufs.give(sbuf);
        let server = server.take();
        match end {
            Ok(End::Released) => {
                self.release(server).await;
                if cbuf.filled > 0 {
                    return Ok(Some(cbuf));
                }
                self.shard.bufs.give(cbuf);
                Ok(None)
            }
            Ok(End::ClientGone(state)) => {
                self.shard.bufs.give(cbuf);
                boxed(self.finish_server(server, state)).await;
                Err(self.closed())
            }
            Ok(End::Abort(e, state)) => {
                self.shard.bufs.give(cbuf);
                boxed(self.finish_server(server, state)).await;
                Err(Error::Refused(e))
            }
            Err(e) => {
                self.shard.bufs.give(cbuf);
                match e.side() {
                    crate::error::Side::Server => {
                        self.pool
                            .close_leased(&self.shard, server, "server conn crashed?")
                    }
                    _ => boxed(self.finish_server(server, relay::LinkState::busy())).await,
                }
                Err(e)
            }
        }
    }

    /// Normal release at a transaction boundary.
    async fn release(&self, mut server: ServerConn) {
        self.info.unlink();
        if let Some(query) = self.pool.reset_always_query() {
            // Boxed: rare (session-mode reset), and it would size every transaction's lease.
            if let Err(e) = boxed(server.simple_query(&query)).await {
                self.pool
                    .close_leased(&self.shard, server, &format!("reset query failed: {e}"));
                return;
            }
        }
        self.pool.release(&self.shard, server);
    }

    /// The client is gone (or failed) while linked: return the server only
    /// if it is clean, after rolling back an open transaction and running
    /// the reset query in session mode; otherwise cancel and close it.
    async fn finish_server(&self, mut server: ServerConn, state: relay::LinkState) {
        self.info.unlink();
        let s = self.pool.settings();
        let clean = match state.boundary() {
            relay::Boundary::Idle => true,
            relay::Boundary::InTransaction => server.simple_query("ROLLBACK").await.is_ok(),
            relay::Boundary::Busy => false,
        };
        if !clean {
            let (addr, key) = (server.meta.addr.clone(), server.meta.backend_key);
            crate::runtime::spawn(async move {
                let _ =
                    crate::server::send_cancel(addr, key, std::time::Duration::from_secs(5)).await;
            });
            self.pool.close_leased(
                &self.shard,
                server,
                "client disconnect while server was not ready",
            );
            return;
        }
        let needs_reset = s.mode == PoolMode::Session || s.reset_always;
        if needs_reset && !s.reset_query.is_empty() {
            if let Err(e) = server.simple_query(&s.reset_query).await {
                self.pool
                    .close_leased(&self.shard, server, &format!("reset query failed: {e}"));
                return;
            }
        }
        self.pool.release(&self.shard, server);
    }
}

/// Test hook (debug builds only): with `PGRING_TEST_PANIC=1` in the environment, a request
/// whose first message contains `pgring_test_panic` panics while its session holds a server,
/// so that the black-box tests can see a panicking session end alone (`runtime::isolate`).
#[cfg(debug_assertions)]
fn test_hook_panic(cbuf: &Buf) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var_os("PGRING_TEST_PANIC").is_some_and(|v| v == "1"));
    const ASK: &[u8] = b"pgring_test_panic";
    if on && cbuf.data().windows(ASK.len()).any(|w| w == ASK) {
        panic!("PGRING_TEST_PANIC: a request asked for it");
    }
}

/// Test hook: with `PGRING_TEST_MOVE_CLIENTS=1` in the environment, every pooled client moves
/// to the next shard after every transaction, so that the black-box tests run the move path
/// (parameters, prepared statements, cancel keys, console rows) on every request.
fn test_hook_moves_every_client() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PGRING_TEST_MOVE_CLIENTS").is_some_and(|v| v == "1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_keep_milliseconds_and_never_turn_a_timeout_off() {
        assert_eq!(Millis::from_config(Seconds::ZERO), Millis(0));
        assert_eq!(Millis::from_config(Seconds(0.0001)), Millis(1));
        assert_eq!(
            Millis::from_config(Seconds(2.5)).duration(),
            Duration::from_millis(2500)
        );
        assert_eq!(Millis::from_config(Seconds(1e12)), Millis(u32::MAX));
        assert_eq!(std::mem::size_of::<Timeouts>(), 24);
    }
}
