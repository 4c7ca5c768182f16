//! The I/O vocabulary the rest of pgring uses: the stream type, task spawn,
//! timers, outbound connect, shard buffer recycling, and the two-way read
//! that the relay waits on.
//!
//! glommio 0.9's unbuffered `TcpStream` reads by readiness (an io_uring
//! poll, then a non-blocking `recv` into the caller's slice at poll time), and
//! keeps its pending poll inside the stream. Two consequences we build on:
//! a read future can be dropped without losing data, so [`read_either`] can
//! race the client and the server; and the buffer is only needed at the
//! moment data is there, so an idle client waits with no buffer at all
//! ([`BufPool::read`]).
//!
//! A client may come over TCP or the unix socket, so [`Stream`] is an enum over glommio's two
//! stream types, delegating the `AsyncRead`/`AsyncWrite` polls; the relay never knows which.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpStream, UnixStream};

/// A connection, client or server side: TCP, or a client on the unix socket.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix-socket connection. glommio's `UnixStream` does not expose its fd, so the fd is
    /// kept beside it (valid as long as the stream lives) for `AsRawFd`: kill, SO_PEERCRED.
    Unix(UnixStream, RawFd),
}

impl Stream {
    /// Sets TCP_NODELAY; a no-op on the unix socket, which has no Nagle delay.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(on).map_err(io::Error::from),
            Stream::Unix(..) => Ok(()),
        }
    }

    /// Whether this is a unix-socket connection.
    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(..))
    }

    /// The peer's uid, from SO_PEERCRED; `None` for TCP (or if the kernel will not say).
    pub fn peer_uid(&self) -> Option<u32> {
        let Stream::Unix(_, fd) = self else {
            return None;
        };
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own; fd is open.
        let rc = unsafe {
            libc::getsockopt(
                *fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(cred.uid)
    }

    fn pin_tcp_or_unix(self: Pin<&mut Self>) -> Result<Pin<&mut TcpStream>, Pin<&mut UnixStream>> {
        // Both glommio streams are Unpin, so is Stream.
        match self.get_mut() {
            Stream::Tcp(s) => Ok(Pin::new(s)),
            Stream::Unix(s, _) => Err(Pin::new(s)),
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(_, fd) => *fd,
        }
    }
}

/// Adopts a connected socket of either family (a server moved between shards, a freshly
/// accepted unix client); the family is asked of the kernel (SO_DOMAIN).
impl FromRawFd for Stream {
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        let mut domain: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes one c_int into `domain`; the caller vouches for fd.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut domain as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        // SAFETY (both arms): the caller hands over ownership of an open, connected socket.
        if rc == 0 && domain == libc::AF_UNIX {
            Stream::Unix(unsafe { UnixStream::from_raw_fd(fd) }, fd)
        } else {
            Stream::Tcp(unsafe { TcpStream::from_raw_fd(fd) })
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.pin_tcp_or_unix() {
            Ok(s) => s.poll_read(cx, buf),
            Err(s) => s.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.pin_tcp_or_unix() {
            Ok(s) => s.poll_write(cx, buf),
            Err(s) => s.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.pin_tcp_or_unix() {
            Ok(s) => s.poll_flush(cx),
            Err(s) => s.poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.pin_tcp_or_unix() {
            Ok(s) => s.poll_close(cx),
            Err(s) => s.poll_close(cx),
        }
    }
}

/// Runs a task on this shard, detached.
pub fn spawn(fut: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(fut).detach();
}

/// Sleeps on this shard's timer wheel.
pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// Runs `fut`, giving up after `d` (`None`).
pub async fn timeout<T>(d: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        sleep(d).await;
        None
    })
    .await
}

/// Opens a TCP connection with a deadline.
pub async fn connect(addr: SocketAddr, deadline: Duration) -> io::Result<Stream> {
    let stream = TcpStream::connect_timeout(addr, deadline)
        .await
        .map_err(io::Error::from)?;
    stream.set_nodelay(true).map_err(io::Error::from)?;
    Ok(Stream::Tcp(stream))
}

/// Relay buffer size: large enough to move a whole pgbench transaction
/// (and most result sets) in one read and one write.
pub const BUF_SIZE: usize = 32 * 1024;

/// A byte buffer with a fill mark; `bytes.len()` is its capacity.
#[derive(Debug)]
pub struct Buf {
    /// Storage (zero-initialised once, reused).
    pub bytes: Vec<u8>,
    /// Bytes of valid data at the front.
    pub filled: usize,
}

impl Buf {
    /// The valid data.
    pub fn data(&self) -> &[u8] {
        &self.bytes[..self.filled]
    }

    /// Drops the first `n` bytes, moving the rest to the front.
    pub fn consume(&mut self, n: usize) {
        self.bytes.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Makes room for at least `n` bytes of data in total.
    pub fn reserve_total(&mut self, n: usize) {
        if self.bytes.len() < n {
            self.bytes.resize(n, 0);
        }
    }
}

/// The shard's free list of relay buffers, so a connection holds a buffer
/// only while it has data in flight.
#[derive(Debug, Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
}

/// Free buffers kept per shard; the rest are returned to the allocator.
const MAX_FREE: usize = 4096;

impl BufPool {
    /// Takes a buffer (empty of data).
    pub fn take(&self) -> Buf {
        let bytes = self
            .free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; BUF_SIZE]);
        Buf { bytes, filled: 0 }
    }

    /// Returns a buffer. Oversized ones (grown for a large message) are
    /// dropped so the pool stays at `BUF_SIZE` buffers.
    pub fn give(&self, buf: Buf) {
        let mut free = self.free.borrow_mut();
        if buf.bytes.len() == BUF_SIZE && free.len() < MAX_FREE {
            free.push(buf.bytes);
        }
    }

    /// Waits for data on `stream` holding no buffer, then returns a buffer
    /// with what was read (`filled == 0` means end of stream).
    pub async fn read(&self, stream: &mut Stream) -> io::Result<Buf> {
        std::future::poll_fn(|cx| {
            let mut buf = self.take();
            match Pin::new(&mut *stream).poll_read(cx, &mut buf.bytes) {
                Poll::Ready(Ok(n)) => {
                    buf.filled = n;
                    Poll::Ready(Ok(buf))
                }
                Poll::Ready(Err(e)) => {
                    self.give(buf);
                    Poll::Ready(Err(e))
                }
                Poll::Pending => {
                    self.give(buf);
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// Reads into the unfilled tail of `buf`; returns the byte count (0 = EOF).
pub async fn read_into(stream: &mut Stream, buf: &mut Buf) -> io::Result<usize> {
    if buf.filled == buf.bytes.len() {
        let n = buf.bytes.len() * 2;
        buf.reserve_total(n);
    }
    let n = futures_lite::AsyncReadExt::read(stream, &mut buf.bytes[buf.filled..]).await?;
    buf.filled += n;
    Ok(n)
}

/// Writes all of `data`.
pub async fn write_all(stream: &mut Stream, data: &[u8]) -> io::Result<()> {
    futures_lite::AsyncWriteExt::write_all(stream, data).await
}

/// Which side had data first in [`read_either`].
#[derive(Debug)]
pub enum Either {
    /// The first stream read this many bytes (0 = EOF).
    First(io::Result<usize>),
    /// The second stream read this many bytes (0 = EOF).
    Second(io::Result<usize>),
}

/// Waits for whichever of two streams has data first and reads it into that
/// stream's buffer tail. The second stream is polled first: in the relay it
/// is the server, whose replies should drain before more requests pile up.
pub async fn read_either(a: &mut Stream, abuf: &mut Buf, b: &mut Stream, bbuf: &mut Buf) -> Either {
    for buf in [&mut *abuf, &mut *bbuf] {
        if buf.filled == buf.bytes.len() {
            let n = buf.bytes.len() * 2;
            buf.reserve_total(n);
        }
    }
    std::future::poll_fn(|cx| {
        let (bf, af) = (bbuf.filled, abuf.filled);
        if let Poll::Ready(r) = Pin::new(&mut *b).poll_read(cx, &mut bbuf.bytes[bf..]) {
            if let Ok(n) = r {
                bbuf.filled += n;
            }
            return Poll::Ready(Either::Second(r));
        }
        if let Poll::Ready(r) = Pin::new(&mut *a).poll_read(cx, &mut abuf.bytes[af..]) {
            if let Ok(n) = r {
                abuf.filled += n;
            }
            return Poll::Ready(Either::First(r));
        }
        Poll::Pending
    })
    .await
}

/// The peer address of a TCP stream; `None` on the unix socket, which SHOW CLIENTS prints as
/// PgBouncer does: addr `unix`, port = `listen_port` (see [`Stream::is_unix`]).
pub fn peer_addr(stream: &Stream) -> Option<SocketAddr> {
    match stream {
        Stream::Tcp(s) => s.peer_addr().ok(),
        Stream::Unix(..) => None,
    }
}

/// The local address of a TCP stream; `None` on the unix socket.
pub fn local_addr(stream: &Stream) -> Option<SocketAddr> {
    match stream {
        Stream::Tcp(s) => s.local_addr().ok(),
        Stream::Unix(..) => None,
    }
}
