//! pgring: a thread-per-core PostgreSQL connection pooler on io_uring, a
//! drop-in replacement for PgBouncer.
//!
//! # The life of a transaction (transaction pooling)
//!
//! 1. A shard's listener ([`listener`]) accepts the connection; the kernel
//!    picked the shard (SO_REUSEPORT). Admission checks `max_client_conn`.
//! 2. The client session ([`client`]) reads the startup packet, answers
//!    SSL/GSS requests, authenticates the client against the auth file
//!    ([`auth`]), picks the pool for (database, user) ([`pool`]), and greets
//!    the client with server parameters and a cancel key pgring owns.
//! 3. The client sends a query. The session, which waited holding no
//!    buffer, leases a server from its shard's pool slice: an idle one, a new
//!    one within the global budget, one handed over by another shard, or it
//!    waits in FIFO order ([`pool`]).
//! 4. The server's session parameters are made to match the client's
//!    ([`server::params`]).
//! 5. The relay ([`relay`]) moves bytes both ways in large runs, peeking
//!    only at the tags that drive pooling; named prepared statements are
//!    renamed to per-statement server names and prepared on whichever server
//!    the client lands on ([`prepared`]).
//! 6. ReadyForQuery `I` with nothing outstanding ends the transaction: the
//!    server goes back to the pool (or straight to a waiter, possibly on
//!    another shard), and the latency lands in the shard's histograms
//!    ([`stats`]). If requests wait markedly longer on this shard than on
//!    another, the client itself may move there now, socket and session
//!    ([`client::balance`]).
//! 7. A client that leaves mid-transaction never returns a dirty server: it
//!    is rolled back, or cancelled and closed.
//!
//! # Rooms
//! [`config`] settings, [`protocol`] sans-IO wire codec, [`runtime`] the only
//! io_uring and thread code (shards, executor, mesh, signals), [`listener`], [`client`], [`server`],
//! [`pool`], [`relay`], [`prepared`] statements, [`auth`], [`admin`] console,
//! [`stats`], [`metrics`] (Prometheus), [`janitor`], [`process`] (daemon,
//! pidfile, privilege drop, logfile).

#![warn(missing_docs, rust_2018_idioms)]

pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod janitor;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod pool;
pub mod prepared;
pub mod process;
pub mod protocol;
pub mod relay;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod syslog;
pub mod wire;

/// Tells systemd (Type=notify) that pgring is ready, if it is listening.
pub fn notify_ready() {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.send_to(b"READY=1", path);
    }
}
