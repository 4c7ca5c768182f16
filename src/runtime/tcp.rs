//! A plain TCP listener for side services on a shard (the Prometheus
//! `/metrics` endpoint): std binds it, so address errors are ours to report,
//! and the shard's reactor adopts the socket, as `listener` does for client traffic.
//! No SO_REUSEPORT: one shard serves it.

use std::io;
use std::os::fd::OwnedFd;

use super::io::Listener;

/// Binds `addr` (`host:port`) on the calling shard.
pub fn bind(addr: &str) -> io::Result<Listener> {
    let std = std::net::TcpListener::bind(addr)?;
    Listener::new(OwnedFd::from(std))
}
