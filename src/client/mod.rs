//! Client sessions: one task per application connection.
//!
//! A session logs in (`login`), then loops: wait for the client's next
//! bytes holding no buffer, lease a server from its pool, make the server's
//! parameters match the client's, relay until the transaction ends, give the
//! server back. The relay itself lives in `relay`; pooling decisions in
//! `pool`. [`ClientInfo`] is the part of a session that the rest of the shard
//! may see (console rows, cancel routing, KILL). Between transactions a session
//! may move to another shard ([`balance`]): [`arrive`] takes it up there.

pub mod auth_query;
mod authenticate;
pub mod balance;
pub mod cancel;
pub mod login;
pub mod peers;
mod session;
pub mod span;
mod startup;
mod watch;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{debug, info};

use crate::error::Error;
use crate::protocol::startup::CancelKey;
use crate::runtime::io as rio;
use crate::runtime::mesh::MeshMsg;
use crate::runtime::recycle::Recycled;
use crate::runtime::{Shard, Stream};
use crate::server::{ServerAddr, ServerConn};
use balance::Moving;
use session::Session;
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
    /// Its TLS session (SHOW SERVERS `tls`): a shared string, no formatting per link.
    pub tls: Option<std::sync::Arc<str>>,
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
    pub linked: RefCell<Option<Recycled<Linked>>>,
    /// Is this an admin console session.
    pub is_admin: Cell<bool>,
    /// A request of this client is on its server (set by the relay when it waits).
    pub busy: Cell<bool>,
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

impl KillReason {
    /// Is there a reason (without copying it)?
    fn is_set(&self) -> bool {
        let reason = self.0.take();
        let set = reason.is_some();
        self.0.set(reason);
        set
    }
}

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

    /// Has the session been asked to end?
    pub fn is_killed(&self) -> bool {
        self.kill_reason.is_set()
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
        rio::fd_inet_addr(fd, ask)
    }

    fn link(&self, server: &ServerConn) {
        // Recycled: a block from the shard's free list, so a transaction allocates nothing
        // (an idle client holds no link).
        *self.linked.borrow_mut() = Some(Recycled::new(Linked {
            server_id: server.meta.id,
            addr: server.meta.addr.clone(),
            backend_key: server.meta.backend_key,
            local_addr: server.meta.local_addr,
            connect_time: server.meta.connect_time,
            prepared: server.meta.prepared.len(),
            tls: server.meta.tls.clone(),
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
    // Listed now, not when the task first runs: a shard draining for SHUTDOWN WAIT_FOR_CLIENTS
    // right after its accept loop took the last queued connections must see them (it stopped
    // with one still unlisted, logging in, and that client hung until the process exited).
    let me = Registered::new(shard, &stream);
    async move {
        // Both halves made here, so that the block never borrows a span
        // (a borrowed local keeps its slot in the state for good).
        let (login_span, session_span) = client_span(&me.shard, &me.info);
        let login = boxed(login_phase(&me.shard, &me.info, &mut stream));
        let Some(session) = login_span.wrap(login).await else {
            return;
        };
        let moving = session_span.wrap(session.serve(&mut stream)).await;
        me.leave(moving, stream);
    }
}

/// A session's place on its shard: in the client table and counted against
/// `max_client_conn` from accept (or arrival from another shard) until it is dropped, however
/// the session ends: its last line, an error, or a panic (`runtime::isolate`).
struct Registered {
    shard: Rc<Shard>,
    info: Rc<ClientInfo>,
}

impl Registered {
    fn new(shard: Rc<Shard>, stream: &Stream) -> Self {
        let info = register(&shard, stream);
        Registered { shard, info }
    }

    /// The session is over here: it ends, or it moves to another shard with its socket.
    fn leave(self, moving: Option<Box<Moving>>, stream: Stream) {
        let Some(mut moving) = moving else {
            return; // dropped: unregistered
        };
        debug!(to = moving.to, "client moves to another shard");
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped; each field is read out exactly once.
        let (shard, info) = unsafe { (std::ptr::read(&me.shard), std::ptr::read(&me.info)) };
        shard.balance.moved_one_out();
        // It stays counted: the slot moves with it.
        shard.clients.borrow_mut().remove(&info.key);
        moving.unix = stream.is_unix();
        moving.fd = Some(stream.into_fd());
        shard.mesh.send(moving.to, MeshMsg::Client(moving));
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        unregister(&self.shard, &self.info);
    }
}

/// A client another shard sent here (see `balance`): its session goes on on this shard.
pub fn arrive(shard: &Rc<Shard>, mut moving: Box<Moving>) {
    let Some(fd) = moving.fd.take() else {
        return;
    };
    let stream = Stream::adopt(fd, moving.unix);
    let info = ClientInfo::new(moving.id, moving.key, moving.connect_time, &stream);
    *info.db.borrow_mut() = moving.db.clone();
    *info.user.borrow_mut() = moving.user.clone();
    *info.app_name.borrow_mut() = Rc::from(std::mem::take(&mut moving.app_name));
    info.state.set(ClientState::Idle);
    let prepared = u32::try_from(moving.prepared.len()).unwrap_or(u32::MAX);
    info.prepared_statements.set(prepared);
    let info = Rc::new(info);
    if shard.clients.borrow().contains_key(&info.key) {
        // Two live clients drew the same key on one shard (a 2^-55 chance per move): the
        // table cannot hold both, and cancel routing needs it to. The newcomer is closed.
        tracing::warn!(
            client = info.id,
            "a moved client's cancel key is taken here; closing it"
        );
        shard.shared.client_count.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    shard.clients.borrow_mut().insert(info.key, info.clone());
    // Guarded from here: whatever ends this session unregisters it.
    let me = Registered {
        shard: shard.clone(),
        info,
    };
    let (secret, keys) = (moving.server_secret.take(), moving.keys);
    auth_query::adopt(shard, &moving.pool, secret, keys);
    let pool = shard.pool(&moving.pool);
    let session = Session::arrived(shard, &me.info, pool, *moving);
    crate::runtime::spawn(crate::runtime::isolate::Isolated::new(async move {
        let mut stream = stream;
        let (_, span) = client_span(&me.shard, &me.info);
        let moving = span.wrap(session.serve(&mut stream)).await;
        me.leave(moving, stream);
    }));
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
    shard.tls_clients.borrow_mut().remove(&info.key);
    shard.shared.client_count.fetch_sub(1, Ordering::AcqRel);
}

thread_local! {
    /// The application_name of a client that has not sent one, shared by a shard's clients.
    static NO_APP_NAME: Rc<str> = Rc::from("");
}

/// Creates the session's [`ClientInfo`] and lists it in `shard.clients`.
fn register(shard: &Rc<Shard>, stream: &Stream) -> Rc<ClientInfo> {
    let id = shard.next_id();
    let peer_id = shard.config().general.peer_id;
    let mut clients = shard.clients.borrow_mut();
    // The key is the table's key: draw again in the rare case that a live client holds it.
    let key = loop {
        let key = cancel::new_key(shard.id, peer_id);
        if !clients.contains_key(&key) {
            break key;
        }
    };
    let info = Rc::new(ClientInfo::new(id, key, SystemTime::now(), stream));
    clients.insert(key, info.clone());
    info
}

impl ClientInfo {
    /// A client on `stream`, logging in: no names, no server, not killed. The names start
    /// empty without allocating: an empty `Arc<str>` is a shared static, and the empty
    /// `Rc<str>` is one per shard (login, or a move, sets all three moments later).
    fn new(id: u64, key: CancelKey, connect_time: SystemTime, stream: &Stream) -> ClientInfo {
        ClientInfo {
            id,
            key,
            connect_time,
            db: RefCell::default(),
            user: RefCell::default(),
            app_name: RefCell::new(NO_APP_NAME.with(Rc::clone)),
            state: Cell::new(ClientState::Login),
            request_time: Cell::new(rio::now()),
            linked: RefCell::new(None),
            is_admin: Cell::new(false),
            busy: Cell::new(false),
            prepared_statements: Cell::new(0),
            fd: stream.as_raw_fd(),
            kill_reason: KillReason::default(),
        }
    }
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
            goodbye(info, stream, e).await;
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
                Err(e) => goodbye(info, stream, e).await,
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
async fn goodbye(info: &ClientInfo, stream: &mut Stream, e: Error) {
    let e = &e;
    let reason = info.kill_reason();
    let pg = match (&reason, e) {
        (Some(r), _) => Some(crate::error::PgError::fatal(
            crate::error::sqlstate::ADMIN_SHUTDOWN,
            r.clone(),
        )),
        (None, e) => e.to_client(),
    };
    // The clock is read and the reason formatted only when the line is logged: every client
    // that leaves comes through here (a Terminate is `ClientClosed`).
    if crate::logs::disconnections() && tracing::enabled!(tracing::Level::INFO) {
        let age = info.connect_time.elapsed().unwrap_or_default().as_secs();
        let why = reason.unwrap_or_else(|| log_reason(e));
        info!(error = %e, age, "closing because: {why} (age={age}s)");
    }
    if let Some(pg) = &pg {
        if crate::logs::pooler_errors() && !matches!(e, Error::ClientClosed | Error::ClientIo(_)) {
            info!(code = %pg.code, "pooler error: {}", pg.message);
        }
    }
    if let Some(pg) = pg {
        let mut out = Vec::new();
        pg.encode(&mut out);
        let _ = rio::write_all(stream, &out).await;
    }
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
