//! The I/O vocabulary the rest of pgring uses: the stream type, task spawn,
//! timers, outbound connect, accept; shard buffer recycling and the two-way read (in `buf`,
//! re-exported here) that the relay waits on.
//!
//! A [`Stream`] is a non-blocking socket plus its readiness state in the shard's reactor. Reads
//! and writes are plain `recv`/`send` into the caller's slice; only when the kernel has nothing
//! (or no room) does the stream arm a poll and park the task. Two consequences we build on:
//! a read future can be dropped without losing data, so [`read_either`] can race the client and
//! the server; and the buffer is only needed at the moment data is there, so an idle client
//! waits with no buffer at all ([`BufPool::read`]).
//!
//! A client may come over TCP or the unix socket, and so may a server ([`connect`] takes either
//! family); [`Stream`] serves both (the relay never knows which), only `set_nodelay` and the
//! peer credentials differ.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};

use super::executor::current;
use super::reactor::{Dir, IoState};

pub use super::buf::{read_either, read_into, write_all, Buf, BufPool, Either, BUF_SIZE};
pub use super::executor::{now, sleep, spawn, wake_next};
pub use super::tls::Tls;
use super::tls::{self, Socket as _};

/// A connection, client or server side: TCP or a unix socket.
#[derive(Debug)]
pub struct Stream {
    fd: OwnedFd,
    io: Rc<IoState>,
    unix: bool,
    /// A client's TLS session, once it asked for one (boxed: 8 bytes for every other stream).
    tls: Option<Box<Tls>>,
}

/// The socket part of a [`Stream`], as [`Tls`] drives it.
struct RawSocket<'a> {
    io: &'a Rc<IoState>,
    fd: RawFd,
}

impl<'a> RawSocket<'a> {
    fn of(io: &'a Rc<IoState>, fd: &OwnedFd) -> Self {
        RawSocket {
            io,
            fd: fd.as_raw_fd(),
        }
    }
}

impl tls::Socket for RawSocket<'_> {
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let (fd, want) = (self.fd, buf.len());
        let r = poll_io(self.io, Dir::Read, cx, || {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) }
        });
        if let Poll::Ready(Ok(n)) = r {
            // A short read almost always emptied the socket: next time wait for a poll instead
            // of paying a recv that says EAGAIN (if more came meanwhile, the poll fires at
            // once). Plain reads and TLS's ciphertext reads alike.
            if n > 0 && n < want {
                self.io.clear_ready(Dir::Read);
            }
        }
        r
    }

    fn poll_send(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let fd = self.fd;
        poll_io(self.io, Dir::Write, cx, || {
            // SAFETY: send reads at most buf.len() bytes from buf.
            unsafe {
                libc::send(
                    fd,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }
        })
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an open fd with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn is_unix_socket(fd: RawFd) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into `domain`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && domain == libc::AF_UNIX
}

/// Runs `op` (a non-blocking syscall returning a count or -1) once the direction is worth
/// trying, re-arming on EAGAIN.
fn poll_io(
    io: &Rc<IoState>,
    dir: Dir,
    cx: &mut Context<'_>,
    mut op: impl FnMut() -> isize,
) -> Poll<io::Result<usize>> {
    loop {
        if current().reactor.poll_ready(io, dir, cx).is_pending() {
            return Poll::Pending;
        }
        let n = op();
        if n >= 0 {
            return Poll::Ready(Ok(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => io.clear_ready(dir),
            Some(libc::EINTR) => {}
            _ => return Poll::Ready(Err(e)),
        }
    }
}

impl Stream {
    /// Adopts a connected socket of either family (the family is asked of the kernel).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Stream> {
        set_nonblocking(fd.as_raw_fd())?;
        let unix = is_unix_socket(fd.as_raw_fd());
        Ok(Stream {
            io: IoState::new(fd.as_raw_fd()),
            fd,
            unix,
            tls: None,
        })
    }

    /// Sets TCP_NODELAY; a no-op on the unix socket, which has no Nagle delay.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        if self.unix {
            return Ok(());
        }
        socket2::SockRef::from(&self.fd).set_nodelay(on)
    }

    /// Whether this is a unix-socket connection.
    pub fn is_unix(&self) -> bool {
        self.unix
    }

    /// The peer's uid, from SO_PEERCRED; `None` for TCP (or if the kernel will not say).
    pub fn peer_uid(&self) -> Option<u32> {
        self.peer_cred().map(|c| c.uid)
    }

    /// The peer process's id on a unix socket (SO_PEERCRED); `None` over TCP.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_cred().and_then(|c| u32::try_from(c.pid).ok())
    }

    fn peer_cred(&self) -> Option<libc::ucred> {
        if !self.unix {
            return None;
        }
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own; fd is open.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(cred)
    }

    /// Starts watching for input with no task waiting (a server going idle), so that
    /// [`Stream::known_quiet`] can later vouch for it without a syscall.
    pub fn watch_input(&self) {
        current().reactor.arm(&self.io, Dir::Read);
    }

    /// True when a watch armed by [`Stream::watch_input`] (or a pending read) has seen nothing
    /// arrive: no data, no end of stream. False means "unknown", not "closed".
    pub fn known_quiet(&self) -> bool {
        self.io.is_quiet(Dir::Read)
    }

    /// Watches the peer without reading from it: `Ready(true)` once it has hung up (end of
    /// stream, or the socket failed), `Ready(false)` when it has sent something instead (left
    /// in the socket for whoever reads next; the watch can tell no more, and polling again
    /// would only say so again), `Pending` while nothing has arrived. A peek at the raw socket:
    /// over TLS, a close_notify counts as something sent, and only TCP's end as a hang-up.
    pub fn poll_hangup(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let fd = self.fd.as_raw_fd();
        let mut byte = 0u8;
        let peeked = poll_io(&self.io, Dir::Read, cx, || {
            // SAFETY: recv writes at most one byte into `byte`.
            unsafe {
                libc::recv(
                    fd,
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            }
        });
        match peeked {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(true),
            Poll::Ready(Ok(_)) => Poll::Ready(false),
        }
    }

    /// Adopts a socket that came out of [`Stream::into_fd`] on another shard: already
    /// non-blocking, family known, so no syscall is needed.
    pub fn adopt(fd: OwnedFd, unix: bool) -> Stream {
        Self::adopt_with(fd, unix, None)
    }

    /// [`adopt`](Stream::adopt) with the TLS session that came out of
    /// [`into_parts`](Stream::into_parts).
    pub fn adopt_with(fd: OwnedFd, unix: bool, tls: Option<Box<Tls>>) -> Stream {
        Stream {
            io: IoState::new(fd.as_raw_fd()),
            fd,
            unix,
            tls,
        }
    }

    /// Switches to TLS (the client was just answered `S`): from now on reads and writes go
    /// through the session, starting with its handshake.
    pub fn start_tls(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        self.tls = Some(Box::new(Tls::server(config)?));
        Ok(())
    }

    /// Switches a server connection to TLS (PostgreSQL answered our SSLRequest with `S`) and
    /// completes the handshake, so that a refused certificate shows here, not in the login.
    pub async fn start_tls_client(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let tls = self.tls.insert(Box::new(Tls::client(config, name)?));
        let (io, fd) = (&self.io, &self.fd);
        std::future::poll_fn(|cx| tls.poll_handshake(&RawSocket::of(io, fd), cx)).await
    }

    /// Whether this stream speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The CommonName of the client's verified certificate, if it sent one.
    pub fn tls_peer_common_name(&self) -> Option<String> {
        self.tls.as_deref().and_then(Tls::peer_common_name)
    }

    /// The TLS version and cipher, as PgBouncer's logs and SHOW CLIENTS `tls` show them.
    pub fn tls_info(&self) -> Option<String> {
        self.tls.as_deref().map(Tls::describe)
    }

    /// Ends our side (TLS close_notify when the socket takes it, then FIN) and reads until the
    /// peer's end of stream, discarding what comes (a TLS alert, a late reply): the peer has
    /// let go of the connection when this returns. Bound it with [`timeout`].
    pub async fn shut_and_drain(&mut self) {
        let _ = futures_lite::AsyncWriteExt::close(self).await;
        let (io, fd) = (&self.io, &self.fd);
        let sock = RawSocket::of(io, fd);
        let mut scratch = [0u8; 512];
        // Raw reads past any TLS session: the bytes are thrown away.
        while let Ok(n) = std::future::poll_fn(|cx| sock.poll_recv(cx, &mut scratch)).await {
            if n == 0 {
                break;
            }
        }
    }

    /// Leaves this shard's reactor and gives the socket back (to move a client to another
    /// shard). Only a plain stream: a client's TLS session stays (sessions check [`is_tls`]).
    ///
    /// [`is_tls`]: Stream::is_tls
    pub fn into_fd(self) -> OwnedFd {
        debug_assert!(self.tls.is_none(), "a TLS client cannot move");
        self.into_parts().0
    }

    /// Leaves this shard's reactor with its TLS session, if any (a server connection handed to
    /// another shard: the session is plain memory and moves with the socket).
    pub fn into_parts(self) -> (OwnedFd, Option<Box<Tls>>) {
        let this = std::mem::ManuallyDrop::new(self);
        current().reactor.forget(&this.io);
        // SAFETY: `this` is never dropped; each field is read out exactly once.
        let (fd, io, tls) = unsafe {
            (
                std::ptr::read(&this.fd),
                std::ptr::read(&this.io),
                std::ptr::read(&this.tls),
            )
        };
        drop(io);
        (fd, tls)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A stream may outlive its shard's executor only at thread exit; then there is nothing
        // in flight worth cancelling.
        if let Some(ex) = super::executor::try_current() {
            ex.reactor.forget(&self.io);
        }
    }
}

impl std::os::fd::AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let sock = RawSocket::of(&this.io, &this.fd);
        if let Some(tls) = this.tls.as_deref_mut() {
            return tls.poll_read(&sock, cx, buf);
        }
        sock.poll_recv(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let sock = RawSocket::of(&this.io, &this.fd);
        match this.tls.as_deref_mut() {
            Some(tls) => tls.poll_write(&sock, cx, buf),
            None => sock.poll_send(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(tls) = this.tls.as_deref_mut() {
            // close_notify, if the socket takes it now; the shutdown follows regardless.
            let _ = tls.poll_close(&RawSocket::of(&this.io, &this.fd), cx);
        }
        // SAFETY: shutdown on our open socket.
        unsafe { libc::shutdown(this.fd.as_raw_fd(), libc::SHUT_WR) };
        Poll::Ready(Ok(()))
    }
}

/// A listening socket (TCP or unix) on this shard's reactor.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    io: Rc<IoState>,
    /// The listening socket's family, which every accepted socket shares: asked once here
    /// rather than with a `getsockopt` per connection.
    unix: bool,
}

impl Listener {
    /// Adopts a bound, listening socket.
    pub fn new(fd: OwnedFd) -> io::Result<Listener> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Listener {
            io: IoState::new(fd.as_raw_fd()),
            unix: is_unix_socket(fd.as_raw_fd()),
            fd,
        })
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<Stream> {
        std::future::poll_fn(|cx| loop {
            if current()
                .reactor
                .poll_ready(&self.io, Dir::Read, cx)
                .is_pending()
            {
                return Poll::Pending;
            }
            match self.try_accept() {
                Ok(Some(stream)) => return Poll::Ready(Ok(stream)),
                Ok(None) => self.io.clear_ready(Dir::Read),
                Err(e) => return Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// A connection already waiting, without waiting for one (`None`: the queue is empty).
    pub fn try_accept(&self) -> io::Result<Option<Stream>> {
        loop {
            // SAFETY: accept4 with null address pointers returns a new fd or -1.
            let fd = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: a fresh, connected socket owned by nobody else.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                return Ok(Some(Stream::adopt(fd, self.unix)));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// The bound address (TCP).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket2::SockRef::from(&self.fd)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an inet socket"))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(ex) = super::executor::try_current() {
            ex.reactor.forget(&self.io);
        }
    }
}

/// Runs `fut`, giving up after `d` (`None`).
pub async fn timeout<T>(d: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        sleep(d).await;
        None
    })
    .await
}

/// Sets the TCP options `t` asks for on a TCP socket. On a socket fresh from `socket()`
/// (`fresh`), options at the kernel's default are not set again, which saves the system calls;
/// otherwise (a listening socket re-tuned by RELOAD) every option is set, so a setting turned
/// back to its default takes effect. The buffer sizes are the exception: once set, the
/// kernel's auto-tuning cannot be given back to a socket.
pub fn tune_tcp(
    fd: &impl std::os::fd::AsFd,
    t: &crate::config::TcpTuning,
    fresh: bool,
) -> io::Result<()> {
    let s = socket2::SockRef::from(fd);
    if t.keepalive || !fresh {
        s.set_keepalive(t.keepalive)?;
    }
    if t.keepalive && (t.keepidle | t.keepintvl | t.keepcnt) != 0 {
        let mut ka = socket2::TcpKeepalive::new();
        if t.keepidle != 0 {
            ka = ka.with_time(Duration::from_secs(t.keepidle.into()));
        }
        if t.keepintvl != 0 {
            ka = ka.with_interval(Duration::from_secs(t.keepintvl.into()));
        }
        if t.keepcnt != 0 {
            ka = ka.with_retries(t.keepcnt);
        }
        s.set_tcp_keepalive(&ka)?;
    }
    if t.user_timeout != 0 || !fresh {
        let timeout = (t.user_timeout != 0).then(|| Duration::from_millis(t.user_timeout.into()));
        s.set_tcp_user_timeout(timeout)?;
    }
    if t.buffer != 0 {
        s.set_send_buffer_size(t.buffer as usize)?;
        s.set_recv_buffer_size(t.buffer as usize)?;
    }
    Ok(())
}

/// [`tune_tcp`] for a listening socket (Linux copies its options to every socket it accepts),
/// plus the one option only a listener has: `defer_accept`.
pub fn tune_listener(
    fd: &impl std::os::fd::AsFd,
    t: &crate::config::TcpTuning,
    fresh: bool,
) -> io::Result<()> {
    tune_tcp(fd, t, fresh)?;
    if t.defer_accept || !fresh {
        set_defer_accept(fd, t.defer_accept)?;
    }
    Ok(())
}

/// TCP_DEFER_ACCEPT on a listening socket: with `on`, the kernel hands over a connection once
/// its first bytes have arrived (or after 45 s, PgBouncer's fixed value), so accepting it and
/// reading its startup packet take one wake-up, not two.
fn set_defer_accept(fd: &impl std::os::fd::AsFd, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = if on { 45 } else { 0 };
    // SAFETY: setsockopt on an open socket with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a connection (TCP, or a unix socket, by the address's family) with a deadline.
///
/// The socket is non-blocking from the start. TCP gets TCP_NODELAY (pgring writes whole
/// messages and waits for replies) and the options of `tuning`, before it connects (the buffer
/// sizes must be known for the handshake's window scale); a unix socket has no Nagle delay to
/// turn off.
pub async fn connect(
    addr: &socket2::SockAddr,
    deadline: Duration,
    tuning: Option<&crate::config::TcpTuning>,
) -> io::Result<Stream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let unix = addr.domain() == Domain::UNIX;
    let protocol = (!unix).then_some(Protocol::TCP);
    let socket = Socket::new(
        addr.domain(),
        Type::STREAM.nonblocking().cloexec(),
        protocol,
    )?;
    if !unix {
        socket.set_nodelay(true)?;
        if let Some(t) = tuning {
            tune_tcp(&socket, t, true)?;
        }
    }
    let started = now();
    let in_progress = loop {
        match socket.connect(addr) {
            Ok(()) => break false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => break true,
            // A unix socket whose listen queue is full says EAGAIN and cannot be polled for
            // completion: try again shortly, within the same deadline.
            Err(e) if unix && e.raw_os_error() == Some(libc::EAGAIN) => {
                if now().duration_since(started) >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
                }
                sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let stream = Stream {
        io: IoState::new(socket.as_raw_fd()),
        fd: OwnedFd::from(socket),
        unix,
        tls: None,
    };
    if in_progress {
        wait_connected(&stream, deadline).await?;
    }
    Ok(stream)
}

/// Waits for a connect in progress to finish, and says how it ended.
async fn wait_connected(stream: &Stream, deadline: Duration) -> io::Result<()> {
    let writable =
        std::future::poll_fn(|cx| current().reactor.poll_ready(&stream.io, Dir::Write, cx));
    // A fresh stream starts "ready" to skip a poll for the common case; a connect in progress
    // must really wait for POLLOUT.
    stream.io.clear_ready(Dir::Write);
    if timeout(deadline, writable).await.is_none() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
    }
    match socket2::SockRef::from(&stream.fd).take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The peer's address of a TCP stream; `None` on the unix socket.
pub fn peer_addr(stream: &Stream) -> Option<SocketAddr> {
    inet_addr(stream, socket2::Socket::peer_addr)
}

/// The local address of a TCP stream; `None` on the unix socket.
pub fn local_addr(stream: &Stream) -> Option<SocketAddr> {
    inet_addr(stream, socket2::Socket::local_addr)
}

fn inet_addr(
    stream: &Stream,
    ask: impl Fn(&socket2::Socket) -> io::Result<socket2::SockAddr>,
) -> Option<SocketAddr> {
    if stream.unix {
        return None;
    }
    fd_inet_addr(stream.fd.as_fd(), ask)
}

/// What `ask` (`getsockname`, `getpeername`) says of the socket `fd`, if it is an IP address
/// (`None` on a unix socket or if the kernel refuses).
pub fn fd_inet_addr(
    fd: std::os::fd::BorrowedFd<'_>,
    ask: impl Fn(&socket2::Socket) -> io::Result<socket2::SockAddr>,
) -> Option<SocketAddr> {
    ask(&socket2::SockRef::from(&fd)).ok()?.as_socket()
}
