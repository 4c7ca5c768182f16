//! A plain TCP listener for side services on a shard (the Prometheus
//! `/metrics` endpoint): std binds it, so address errors are ours to report,
//! and glommio adopts the socket, as `listener` does for client traffic.
//! No SO_REUSEPORT: one shard serves it.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};

use super::Stream;

/// A listening socket adopted by this shard's reactor.
pub struct Listener(glommio::net::TcpListener);

/// Binds `addr` (`host:port`) on the calling shard.
pub fn bind(addr: &str) -> io::Result<Listener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    // SAFETY: the fd is a bound, listening socket we own; glommio takes it.
    let l = unsafe { glommio::net::TcpListener::from_raw_fd(std.into_raw_fd()) };
    Ok(Listener(l))
}

impl Listener {
    /// The next connection.
    pub async fn accept(&self) -> io::Result<Stream> {
        self.0
            .accept()
            .await
            .map(Stream::Tcp)
            .map_err(io::Error::from)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr().map_err(io::Error::from)
    }
}
