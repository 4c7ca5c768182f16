//! The `pgbouncer` admin console (also reachable as `pgring`): SHOW
//! commands merged across shards, and control commands fanned out to them.

pub mod console;
pub mod reload;

use std::rc::Rc;

use crate::runtime::Shard;

/// What `SHOW VERSION` and the console's `server_version` say.
pub const SERVER_VERSION: &str = concat!("pgring ", env!("CARGO_PKG_VERSION"));

/// A console request sent to another shard, answered on its own channel.
pub enum AdminRequest {
    /// Placeholder until the console gathers from shards.
    Ping,
}

/// Serves a console request from another shard.
pub fn serve_remote(_shard: &Rc<Shard>, _req: AdminRequest) {}
