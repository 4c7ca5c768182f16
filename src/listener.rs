//! Listening sockets and the accept loop.
//!
//! Every shard binds its own socket on the same address with SO_REUSEPORT,
//! built with socket2 so that `listen_backlog` is honoured and address
//! errors are ours to report (glommio's own `bind` hard-codes the backlog).
//! The kernel then spreads new connections across shards with no accept
//! lock. The same option lets a new pgring start beside an old one.
//! Admission against `max_client_conn` happens here, before a session task
//! exists, so a refused client costs one write.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{sqlstate, PgError};
use crate::runtime::io::write_all;
use crate::runtime::{BootError, Shard, Stream};

/// Binds one shard's listener.
pub fn bind(config: &Config) -> Result<TcpListener, BootError> {
    let g = &config.general;
    let text = format!("{}:{}", g.listen_addr, g.listen_port);
    let err = |source| BootError::Listen {
        addr: text.clone(),
        source,
    };
    let addr: SocketAddr = match g.listen_addr.as_str() {
        "*" => SocketAddr::from(([0, 0, 0, 0], g.listen_port)),
        a => crate::pool::resolve_addrs(a, g.listen_port)
            .into_iter()
            .next()
            .ok_or_else(|| {
                err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "cannot resolve listen_addr",
                ))
            })?,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.set_nodelay(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(g.listen_backlog as i32).map_err(err)?;
    Ok(socket.into())
}

/// Accepts connections until the shard stops.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    // SAFETY: the fd is a bound, listening socket we own; glommio takes it.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    info!(shard = shard.id, "listening");
    loop {
        match listener.accept().await {
            Ok(stream) => admit(&shard, stream),
            Err(e) => {
                warn!(shard = shard.id, error = %e, "accept failed");
                crate::runtime::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn admit(shard: &Rc<Shard>, stream: Stream) {
    let _ = stream.set_nodelay(true);
    let max = shard.config().general.max_client_conn as usize;
    let count = &shard.shared.client_count;
    if count.fetch_add(1, Ordering::AcqRel) >= max {
        count.fetch_sub(1, Ordering::AcqRel);
        crate::runtime::spawn(refuse(stream));
        return;
    }
    crate::runtime::spawn(crate::client::serve(shard.clone(), stream));
}

/// PgBouncer's wording, so that people can tell our limit from PostgreSQL's.
async fn refuse(mut stream: Stream) {
    let mut out = Vec::new();
    PgError::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        "no more connections allowed (max_client_conn)",
    )
    .encode(&mut out);
    let _ = write_all(&mut stream, &out).await;
}
