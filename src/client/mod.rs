//! Client sessions: one task per application connection.
//!
//! A session logs in (`login`), then loops: wait for the client's next
//! bytes holding no buffer, lease a server from its pool, make the server's
//! parameters match the client's, relay until the transaction ends, give the
//! server back. The relay itself lives in `relay`; pooling decisions in
//! `pool`. [`ClientInfo`] is the part of a session that the rest of the shard
//! may see (console rows, cancel routing, KILL).

pub mod auth_query;
pub mod cancel;
pub mod login;
pub mod span;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info};

use crate::config::{Config, PoolMode, Seconds};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::protocol::startup::CancelKey;
use crate::relay::{self, End, Link};
use crate::runtime::io::{self as rio, Buf};
use crate::runtime::recycle::Recycled;
use crate::runtime::{Shard, Stream};
use crate::server::{ClientParams, ServerAddr, ServerConn};
use span::ClientSpan;

/// A client's state, as SHOW CLIENTS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Logging in.
    Login,
    /// Logged in, no server (PgBouncer counts these as cl_active).
    Idle,
    /// Waiting for a server.
    Waiting,
    /// Linked to a server.
    Active,
}

/// The server a client is linked to, for cancel routing and the console.
#[derive(Debug, Clone)]
pub struct Linked {
    /// pgring's server id.
    pub server_id: u64,
    /// Server address (where a cancel request goes).
    pub addr: ServerAddr,
    /// The backend's real cancel key.
    pub backend_key: CancelKey,
    /// Our end of the server connection.
    pub local_addr: Option<SocketAddr>,
    /// When the server connection was opened.
    pub connect_time: SystemTime,
    /// Statements prepared on it (at link time).
    pub prepared: usize,
}

/// What the shard knows about one of its client sessions.
#[derive(Debug)]
pub struct ClientInfo {
    /// Unique id (SHOW CLIENTS `id`, KILL_CLIENT).
    pub id: u64,
    /// The cancel key pgring gave this client.
    pub key: CancelKey,
    /// Wall-clock connect time.
    pub connect_time: SystemTime,
    /// Database asked for; once logged in to a pool, the pool key's own
    /// string, shared by all its clients.
    pub db: RefCell<Arc<str>>,
    /// User logged in as (shared with the pool key like `db`, when the
    /// database forces no other user).
    pub user: RefCell<Arc<str>>,
    /// application_name.
    pub app_name: RefCell<Rc<str>>,
    /// Current state.
    pub state: Cell<ClientState>,
    /// Start of the current wait or request.
    pub request_time: Cell<Instant>,
    /// The linked server, if any. Boxed: it is only there during a
    /// transaction, and an idle client should not carry its ~100 bytes.
    pub linked: RefCell<Option<Box<Linked>>>,
    /// Is this an admin console session.
    pub is_admin: Cell<bool>,
    /// Prepared statements the client has (SHOW CLIENTS
    /// prepared_statements), updated after each transaction.
    pub prepared_statements: Cell<u32>,
    fd: RawFd,
    kill_reason: KillReason,
}

/// Why the session was killed, if it was: a `Cell` (16 bytes, a `RefCell` would take 24), so
/// it is read by taking it out and putting it back.
#[derive(Default)]
struct KillReason(Cell<Option<Box<str>>>);

impl std::fmt::Debug for KillReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reason = self.0.take();
        let result = reason.fmt(f);
        self.0.set(reason);
        result
    }
}

impl ClientInfo {
    /// Asks the session to end: its socket's read side is shut down so
    /// whatever it awaits returns end-of-stream; the session then sends the
    /// reason as a FATAL error and cleans up its server as usual.
    pub fn kill(&self, reason: &str) {
        self.kill_reason.0.set(Some(reason.into()));
        // SAFETY: shutdown on the session's fd, which is open for as long
        // as the session (and this info) is registered.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RD);
        }
    }

    /// Why the session was killed, if it was.
    pub fn kill_reason(&self) -> Option<String> {
        let reason = self.kill_reason.0.take();
        let copy = reason.as_deref().map(str::to_owned);
        self.kill_reason.0.set(reason);
        copy
    }

    /// Our address (SHOW CLIENTS `local_addr`), asked of the kernel: an idle client need not
    /// carry it. `None` on the unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.sock_addr(socket2::Socket::local_addr)
    }

    /// The client's address (SHOW CLIENTS `addr`, `port`), asked of the kernel like
    /// [`local_addr`](Self::local_addr): 32 bytes every idle client need not carry, for one
    /// `getpeername` per console row. `None` on the unix socket (and for a TCP peer that has
    /// already reset the connection, which the session is about to notice).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.sock_addr(socket2::Socket::peer_addr)
    }

    fn sock_addr(
        &self,
        ask: impl Fn(&socket2::Socket) -> std::io::Result<socket2::SockAddr>,
    ) -> Option<SocketAddr> {
        // SAFETY: the session's fd is open for as long as the session (and this info) is
        // registered, as in `kill`; the borrow ends with this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        ask(&socket2::SockRef::from(&fd)).ok()?.as_socket()
    }

    fn link(&self, server: &ServerConn) {
        *self.linked.borrow_mut() = Some(Box::new(Linked {
            server_id: server.meta.id,
            addr: server.meta.addr.clone(),
            backend_key: server.meta.backend_key,
            local_addr: server.meta.local_addr,
            connect_time: server.meta.connect_time,
            prepared: server.meta.prepared.len(),
        }));
        self.state.set(ClientState::Active);
    }

    fn unlink(&self) {
        self.linked.borrow_mut().take();
        self.state.set(ClientState::Idle);
    }
}

/// Serves one accepted connection to its end. The caller has already
/// counted it against `max_client_conn`.
///
/// Every byte of this future's state is paid by every idle client, so:
/// - it is an async block, not an `async fn`, which would keep a second,
///   dead copy of its by-value arguments (the 128-byte stream) for the
///   task's whole life (rust-lang/rust#62958);
/// - the login phase (and the console, and goodbyes) is boxed, and gone
///   once the client is in;
/// - the session is moved whole into the future that serves it, so no
///   login-time value stays in the state.
#[allow(clippy::manual_async_fn)] // deliberately not an async fn: see above
pub fn serve(shard: Rc<Shard>, mut stream: Stream) -> impl std::future::Future<Output = ()> {
    async move {
        let info = register(&shard, &stream);
        // Both halves made here, so that the block never borrows a span
        // (a borrowed local keeps its slot in the state for good).
        let (login_span, session_span) = client_span(&shard, &info);
        let login = boxed(login_phase(&shard, &info, &mut stream));
        let Some(session) = login_span.wrap(login).await else {
            return unregister(&shard, &info);
        };
        session_span.wrap(session.serve(&mut stream)).await;
        unregister(&shard, &info);
    }
}

/// The session's span, twice: for the login and for the session after it.
fn client_span(shard: &Shard, info: &ClientInfo) -> (ClientSpan, ClientSpan) {
    let span = ClientSpan::new(tracing::info_span!(
        "client",
        shard = shard.id,
        client = info.id
    ));
    (span.clone(), span)
}

/// The session is over: it leaves the shard's lists and the client count.
fn unregister(shard: &Shard, info: &ClientInfo) {
    shard.clients.borrow_mut().remove(&info.key);
    shard.shared.client_count.fetch_sub(1, Ordering::AcqRel);
}

/// Creates the session's [`ClientInfo`] and lists it in `shard.clients`.
fn register(shard: &Rc<Shard>, stream: &Stream) -> Rc<ClientInfo> {
    let id = shard.next_id();
    let mut clients = shard.clients.borrow_mut();
    // The key is the table's key: draw again in the (2^-55) case that a live client holds it.
    let key = loop {
        let key = cancel::new_key(shard.id);
        if !clients.contains_key(&key) {
            break key;
        }
    };
    let info = Rc::new(ClientInfo {
        id,
        key,
        connect_time: SystemTime::now(),
        db: RefCell::new("".into()),
        user: RefCell::new("".into()),
        app_name: RefCell::new("".into()),
        state: Cell::new(ClientState::Login),
        request_time: Cell::new(Instant::now()),
        linked: RefCell::new(None),
        is_admin: Cell::new(false),
        prepared_statements: Cell::new(0),
        fd: stream.as_raw_fd(),
        kill_reason: KillReason::default(),
    });
    clients.insert(key, info.clone());
    info
}

/// Logs the client in. A pool client comes back as its [`Session`]; an
/// admin console session is served here to its end, as is a failed login.
async fn login_phase(
    shard: &Rc<Shard>,
    info: &Rc<ClientInfo>,
    stream: &mut Stream,
) -> Option<Session> {
    let logged_in = match login::login(shard, info, stream).await {
        Ok(Some(l)) => l,
        Ok(None) => return None,
        Err(e) => {
            goodbye(shard, info, stream, e).await;
            return None;
        }
    };
    info.state.set(ClientState::Idle);
    match logged_in {
        login::LoggedIn::Admin { is_admin } => {
            // Boxed: its ~4 KB would otherwise be in every login's box.
            let console = crate::admin::console::serve(shard, info, stream, is_admin);
            let result = boxed(console).await;
            match result {
                Ok(()) => debug!("client closed"),
                Err(e) => goodbye(shard, info, stream, e).await,
            }
            None
        }
        login::LoggedIn::Pool {
            pool,
            params,
            slots,
        } => Some(Session::new(shard, info, pool, params, slots)),
    }
}

/// Moves a future to the heap (see `serve`): a plain function, so the caller's
/// state machine holds only the box, never the future's own storage.
fn boxed<'a, T>(
    fut: impl std::future::Future<Output = T> + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>> {
    Box::pin(fut)
}

/// Sends the client its final ErrorResponse, if it can still hear one.
/// Takes the error by value so that it lives in the (boxed) goodbye, not in
/// the session's state.
async fn goodbye(shard: &Rc<Shard>, info: &ClientInfo, stream: &mut Stream, e: Error) {
    let e = &e;
    let reason = info.kill_reason();
    let pg = match (&reason, e) {
        (Some(r), _) => Some(crate::error::PgError::fatal(
            crate::error::sqlstate::ADMIN_SHUTDOWN,
            r.clone(),
        )),
        (None, e) => e.to_client(),
    };
    let age = info.connect_time.elapsed().unwrap_or_default().as_secs();
    let why = reason.unwrap_or_else(|| log_reason(e));
    info!(error = %e, age, "closing because: {why} (age={age}s)");
    if let Some(pg) = &pg {
        if !matches!(e, Error::ClientClosed | Error::ClientIo(_)) {
            info!(code = %pg.code, "pooler error: {}", pg.message);
        }
    }
    if let Some(pg) = pg {
        let mut out = Vec::new();
        pg.encode(&mut out);
        let _ = rio::write_all(stream, &out).await;
    }
    let _ = shard;
}

/// The reason in PgBouncer's words where operators alert on them
/// (client.c): a failed login is "password authentication failed", not
/// the text sent to the client.
fn log_reason(e: &Error) -> String {
    match e {
        Error::Refused(pg) if pg.code == crate::error::sqlstate::INVALID_PASSWORD => {
            "password authentication failed".to_owned()
        }
        e => e.to_string(),
    }
}

/// The user's timeouts as configured when it logged in. Kept as whole
/// milliseconds in a `u32` (16 bytes for the four; `Seconds` took 32 and
/// `Duration`s 64, and every idle client carries them), and made `Duration`s
/// where they are used.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Timeouts {
    query: Millis,
    idle_in_transaction: Millis,
    transaction: Millis,
    client_idle: Millis,
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
struct Session {
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
    fn new(
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
                config.general.max_prepared_statements as usize,
            ),
        }
    }

    /// Serves the logged-in client to its end. It consumes the session so
    /// that the session lives in this future alone (an async block: no
    /// second copy of `self`, see `serve`), and is dropped, giving back its
    /// slots and pool, before the goodbye.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn: see above
    fn serve(mut self, stream: &mut Stream) -> impl std::future::Future<Output = ()> + '_ {
        async move {
            let result = self.run(stream).await;
            let (shard, info) = (self.shard.clone(), self.info.clone());
            drop(self);
            match result {
                Ok(()) => debug!("client closed"),
                // Boxed: an error path should not size the idle state.
                Err(e) => boxed(goodbye(&shard, &info, stream, *e)).await,
            }
        }
    }

    /// The request loop; it only ends with an error (a client that leaves
    /// is `ClientClosed`). The error comes boxed: `serve` reserves room for
    /// this future's output beside the future itself for the whole session
    /// (rustc does not overlap the two), 8 bytes instead of an inline Error.
    ///
    /// This loop is what an idle client's task holds, so it is kept to the idle wait and a
    /// box: a plain function returning an async block (an `async fn` keeps its arguments
    /// twice), and no buffer variable that lives across an await (rustc keeps a slot for it
    /// in every state).
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn: see above
    fn run<'a>(
        &'a mut self,
        stream: &'a mut Stream,
    ) -> impl std::future::Future<Output = std::result::Result<(), Box<Error>>> + 'a {
        async move {
            loop {
                let cbuf = self.next_request(stream).await?;
                // On the heap for the same reason as login: the lease machinery (wait,
                // parameter sync, relay, cleanup) is ~1.9 KB of future state that an
                // idle client should not carry. In a block the shard reuses, so a
                // transaction allocates nothing.
                Recycled::new(self.transactions(stream, cbuf)).await?;
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
                boxed(self.wait_while_paused()).await;
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
            if rio::read_into(stream, &mut buf)
                .await
                .map_err(Error::ClientIo)?
                == 0
            {
                self.shard.bufs.give(buf);
                return Err(self.closed());
            }
        }
        Ok(buf)
    }

    fn closed(&self) -> Error {
        match self.info.kill_reason() {
            Some(r) => Error::refuse(crate::error::sqlstate::ADMIN_SHUTDOWN, r),
            None => Error::ClientClosed,
        }
    }

    async fn wait_while_paused(&self) {
        while crate::admin::is_paused(&self.shard, &self.pool) {
            self.shard.state_changed.notified().await;
        }
    }

    /// One server lease: from the first byte of a request to the release.
    /// Returns bytes the client already sent for the next one, if any.
    async fn transaction(&mut self, stream: &mut Stream, cbuf: Buf) -> Result<Option<Buf>> {
        self.info.state.set(ClientState::Waiting);
        self.info.request_time.set(rio::now());
        let mut server = match self.pool.acquire(&self.shard).await {
            Ok(s) => s,
            Err(e) => {
                self.shard.bufs.give(cbuf);
                return Err(e);
            }
        };
        self.info.link(&server);
        if let Err(e) = server.sync_params(&mut self.params).await {
            self.shard.bufs.give(cbuf);
            self.info.unlink();
            match e {
                // PostgreSQL refused a value but finished with ReadyForQuery.
                Error::Server(_) => self.pool.release(&self.shard, server),
                _ => self
                    .pool
                    .close_leased(&self.shard, server, "parameter sync failed"),
            }
            return Err(e.into_fatal());
        }
        let started = rio::now();
        let mode = self.pool.mode();
        let mut link = Link::new(
            cbuf,
            self.shard.bufs.take(),
            mode,
            self.max_packet,
            self.timeouts.relay_limits(),
        );
        let end = relay::run(
            &mut link,
            stream,
            &mut server,
            &mut self.params,
            &mut self.prepared,
            &self.pool.stats,
        )
        .await;
        let prepared = u32::try_from(self.prepared.len()).unwrap_or(u32::MAX);
        self.info.prepared_statements.set(prepared);
        self.pool
            .stats
            .record_xact(rio::now().saturating_duration_since(started));
        let (cbuf, sbuf) = link.into_bufs();
        self.shard.bufs.give(sbuf);
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
        assert_eq!(std::mem::size_of::<Timeouts>(), 16);
    }
}
