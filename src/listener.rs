//! Listening sockets and the accept loops.
//!
//! Every shard binds its own TCP socket on each listen address with SO_REUSEPORT, built with
//! socket2 so that `listen_backlog` is honoured and address errors are ours to report.
//! The kernel then spreads new connections
//! across shards with no accept lock. The same option lets a new pgring start beside an old
//! one.
//!
//! The unix socket (`<unix_socket_dir>/.s.PGSQL.<listen_port>`, PgBouncer's and libpq's name)
//! is bound once and accepted on shard 0 only: a socket path names exactly one listening
//! socket and SO_REUSEPORT does not spread AF_UNIX connections. Accepting is the same
//! `accept4` for both families (one accept loop); [`Stream::is_unix`] tells them apart. Unix
//! clients start on shard 0; the pool's handoff serves them from any shard's servers. A stale
//! socket file (nobody accepting) is removed at start, a live one refuses the start, and the
//! file is removed again at exit.
//!
//! Admission against `max_client_conn` happens here, before a session task exists, so a
//! refused client costs one write.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{error, info, warn};

use crate::config::{Config, TcpTuning};
use crate::error::{sqlstate, PgError};
use crate::runtime::io::{write_all, Listener};
use crate::runtime::{BootError, Shard, Stream};

/// Binds one shard's TCP listeners: every address of every `listen_addr` entry (`*` = all
/// IPv4). None when `listen_addr` is empty (unix socket only, PgBouncer's default).
pub fn bind(config: &Config) -> Result<Vec<TcpListener>, BootError> {
    let g = &config.general;
    let mut out = Vec::new();
    for entry in g.listen_addrs() {
        let text = format!("{entry}:{}", g.listen_port);
        let err = |source| BootError::Listen {
            addr: text.clone(),
            source,
        };
        let mut addrs = match entry {
            "*" => vec![SocketAddr::from(([0, 0, 0, 0], g.listen_port))],
            a => crate::pool::resolve_addrs(a, g.listen_port),
        };
        addrs.dedup();
        if addrs.is_empty() {
            let why = io::Error::new(io::ErrorKind::InvalidInput, "cannot resolve listen_addr");
            return Err(err(why));
        }
        let before = out.len();
        let mut last = None;
        for addr in addrs {
            match bind_tcp(addr, g.listen_backlog, &g.tcp_tuning()) {
                Ok(l) => out.push(l),
                // `localhost` may name ::1 on a host without IPv6: one usable address is enough.
                Err(e) if unavailable(&e) => last = Some(e),
                Err(e) => return Err(err(e)),
            }
        }
        if out.len() == before {
            return Err(err(
                last.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into())
            ));
        }
    }
    Ok(out)
}

fn unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
    )
}

/// The TCP options (`tcp_keepalive`...) are set on the listening socket, and Linux copies them
/// to every socket it accepts, as it does TCP_NODELAY: no `setsockopt` per connection.
fn bind_tcp(addr: SocketAddr, backlog: u32, tuning: &TcpTuning) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // So that `::` and `0.0.0.0` can both be listed without clashing.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    crate::runtime::io::tune_listener(&socket, tuning, true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// The unix socket's path for `config`, or `None` when `unix_socket_dir` is empty.
pub fn unix_socket_path(config: &Config) -> Option<PathBuf> {
    let g = &config.general;
    (!g.unix_socket_dir.is_empty())
        .then(|| Path::new(&g.unix_socket_dir).join(format!(".s.PGSQL.{}", g.listen_port)))
}

/// The bound unix socket and its path (removed at exit with [`remove_unix`]).
#[derive(Debug)]
pub struct UnixSocket {
    /// The listening socket (non-blocking), handed to shard 0.
    pub listener: UnixListener,
    /// Its file.
    pub path: PathBuf,
}

/// Binds the unix socket, if configured, with `unix_socket_mode` and `unix_socket_group`.
pub fn bind_unix(config: &Config) -> Result<Option<UnixSocket>, BootError> {
    let Some(path) = unix_socket_path(config) else {
        return Ok(None);
    };
    let g = &config.general;
    let err = |source| BootError::Listen {
        addr: path.display().to_string(),
        source,
    };
    remove_stale(&path).map_err(err)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket
        .bind(&socket2::SockAddr::unix(&path).map_err(err)?)
        .map_err(err)?;
    let mode = std::fs::Permissions::from_mode(g.unix_socket_mode.0);
    std::fs::set_permissions(&path, mode).map_err(err)?;
    if let Some(group) = g.unix_socket_group.as_deref().filter(|g| !g.is_empty()) {
        chgrp(&path, group).map_err(err)?;
    }
    socket
        .listen(g.listen_backlog.min(i32::MAX as u32) as i32)
        .map_err(err)?;
    let listener = UnixListener::from(std::os::fd::OwnedFd::from(socket));
    Ok(Some(UnixSocket { listener, path }))
}

/// Removes a socket file nobody accepts on (left by a crash); refuses a live one, or a path
/// that is not a socket.
fn remove_stale(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a socket",
        ));
    }
    // A process that just died can leave its listening socket alive for a
    // few milliseconds (io_uring tears its rings down asynchronously, and the
    // backlog still takes connections meanwhile), so only a socket that keeps
    // accepting for a while counts as live.
    for attempt in 0..STALE_CHECKS {
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            warn!(path = %path.display(), "removing stale unix socket");
            return std::fs::remove_file(path);
        }
        if attempt + 1 < STALE_CHECKS {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "another process is accepting on this unix socket",
    ))
}

/// Connection attempts (100 ms apart) before a unix socket counts as live.
const STALE_CHECKS: u32 = 5;

fn chgrp(path: &Path, group: &str) -> io::Result<()> {
    let gid = crate::process::group_id(group)?;
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// Removes the unix socket file at exit (best effort: after `-u` it may not be ours to remove).
pub fn remove_unix(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        warn!(path = %path.display(), error = %e, "could not remove the unix socket");
    }
}

type AcceptLoop = Pin<Box<dyn Future<Output = ()>>>;

/// Accepts on every listener of this shard until the shard stops; then takes what is already
/// queued on each listener and closes it (see `accept_loop`).
pub async fn serve(shard: Rc<Shard>, tcp: Vec<TcpListener>, unix: Option<UnixListener>) {
    info!(
        shard = shard.id,
        tcp = tcp.len(),
        unix = unix.is_some(),
        "listening"
    );
    let mut loops: Vec<AcceptLoop> = tcp
        .into_iter()
        .map(|l| (OwnedFd::from(l), true))
        .chain(unix.map(|l| (OwnedFd::from(l), false)))
        .map(|(fd, tcp)| Box::pin(accept_loop(shard.clone(), fd, tcp)) as AcceptLoop)
        .collect();
    // A shard with no listener (unix-only config, shards 1..) still serves handoffs and the
    // mesh: it waits for the stop like the others.
    if loops.is_empty() {
        while !shard.is_stopping() {
            crate::runtime::sleep(crate::runtime::shard::TICK).await;
        }
        return;
    }
    std::future::poll_fn(|cx| {
        loops.retain_mut(|l| l.as_mut().poll(cx).is_pending());
        if loops.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

async fn accept_loop(shard: Rc<Shard>, fd: OwnedFd, tcp: bool) {
    let listener = match Listener::new(fd) {
        Ok(l) => l,
        Err(e) => {
            error!(shard = shard.id, error = %e, "cannot serve a listener");
            return;
        }
    };
    // The TCP options the listening socket carries (set at bind, passed on to accepted
    // sockets); a RELOAD that changes them re-tunes it at the next connection.
    let mut tuned = tcp.then(|| shard.config().general.tcp_tuning());
    let tick = crate::runtime::shard::TICK;
    // One timer for many accepts: the stop flag is looked at after every accept and at least
    // once a tick, and a fresh timer per accept would cost a timer-map insert and removal per
    // connection.
    let mut next_look = crate::runtime::sleep(tick);
    loop {
        if shard.is_stopping() {
            // Connections the kernel already queued on this listener would be reset when it
            // closes (unless net.ipv4.tcp_migrate_req moves them to a sibling listener, such
            // as a new pgring's during an online restart): take them and serve them first.
            loop {
                match listener.try_accept() {
                    Ok(Some(stream)) => admit(&shard, stream),
                    Ok(None) => return,
                    Err(e) => {
                        warn!(shard = shard.id, error = %e, "accept failed while closing");
                        return;
                    }
                }
            }
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            (&mut next_look).await;
            None
        });
        match accepted.await {
            None => next_look = crate::runtime::sleep(tick), // look at the stop flag again
            Some(Ok(stream)) => {
                if let Some(applied) = tuned.as_mut() {
                    retune(&shard, &listener, &stream, applied);
                }
                admit(&shard, stream)
            }
            Some(Err(e)) => accept_failed(&shard, &e).await,
        }
    }
}

/// After a RELOAD changed the TCP options: sets them on the listening socket, for the
/// connections it accepts from now on, and on `stream`, accepted before.
fn retune(shard: &Shard, listener: &Listener, stream: &Stream, applied: &mut TcpTuning) {
    let want = shard.config().general.tcp_tuning();
    if want == *applied {
        return;
    }
    *applied = want;
    for r in [
        crate::runtime::io::tune_listener(listener, &want, false),
        crate::runtime::io::tune_tcp(stream, &want, false),
    ] {
        if let Err(e) = r {
            warn!(shard = shard.id, error = %e, "could not apply the TCP settings");
        }
    }
}

async fn accept_failed(shard: &Shard, e: &io::Error) {
    warn!(shard = shard.id, error = %e, "accept failed");
    crate::runtime::sleep(std::time::Duration::from_millis(10)).await;
}

/// Starts a session for `stream`, or refuses it over `max_client_conn`. No TCP_NODELAY here:
/// `bind_tcp` set it on the listening socket and Linux copies it to every accepted one, which
/// saves a `setsockopt` per connection.
fn admit(shard: &Rc<Shard>, stream: Stream) {
    let max = shard.config().general.max_client_conn as usize;
    let count = &shard.shared.client_count;
    if count.fetch_add(1, Ordering::AcqRel) >= max {
        count.fetch_sub(1, Ordering::AcqRel);
        crate::runtime::spawn(refuse(stream));
        return;
    }
    crate::runtime::spawn(crate::runtime::isolate::Isolated::new(
        crate::client::serve(shard.clone(), stream),
    ));
}

/// PgBouncer's wording, so that people can tell our limit from PostgreSQL's; the log line is
/// PgBouncer's `pooler error: %s` (objects.c), which operators alert on.
async fn refuse(mut stream: Stream) {
    const WHY: &str = "no more connections allowed (max_client_conn)";
    if crate::logs::pooler_errors() {
        warn!(reason = WHY, "pooler error: {WHY}");
    }
    let mut out = Vec::new();
    PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, WHY).encode(&mut out);
    let _ = write_all(&mut stream, &out).await;
}
