//! The relay's sans-IO steps with bytes in and bytes out, for unit tests
//! of prepared-statement rewriting (golden byte vectors, no sockets): the
//! same scan code the relay runs, minus the writes. Public only behind the
//! `fuzzing` feature, for the fuzz targets in `tests/fuzz`.

use super::*;

/// A link in transaction mode with its client and server state.
pub struct Pair {
    /// The link.
    pub link: Link,
    /// The client's statement names.
    pub client: ClientStatements,
    /// The linked server's prepared set and queue.
    pub server: ServerStatements,
    /// The client's wanted parameters.
    pub params: ClientParams,
    /// The server's parameters.
    pub server_params: ServerParams,
    /// Counters.
    pub stats: PoolStats,
}

fn buf() -> Buf {
    Buf {
        bytes: vec![0; 64],
        filled: 0,
    }
}

fn append(b: &mut Buf, bytes: &[u8]) {
    b.reserve_total(b.filled + bytes.len());
    b.bytes[b.filled..b.filled + bytes.len()].copy_from_slice(bytes);
    b.filled += bytes.len();
}

impl Pair {
    /// Prepared statements on with a per-server cap of `max`.
    pub fn new(max: usize) -> Pair {
        Pair::with_memory_cap(max, 0)
    }

    /// The same, with the client's names capped at `memory` bytes (0 = no cap).
    pub fn with_memory_cap(max: usize, memory: u32) -> Pair {
        Pair {
            link: Link::new(
                buf(),
                buf(),
                PoolMode::Transaction,
                1 << 20,
                Limits::default(),
            ),
            client: ClientStatements::new(max as u32, memory),
            server: ServerStatements::default(),
            params: ClientParams::default(),
            server_params: ServerParams::default(),
            stats: PoolStats::default(),
        }
    }

    /// A new lease of (another) server, keeping the client's names.
    pub fn relink(&mut self, server: ServerStatements) -> ServerStatements {
        self.link = Link::new(
            buf(),
            buf(),
            PoolMode::Transaction,
            1 << 20,
            Limits::default(),
        );
        let mut server = std::mem::replace(&mut self.server, server);
        server.begin_lease();
        self.server.begin_lease();
        server
    }

    /// The client sends `bytes`: (bytes for the server, local replies).
    pub fn client_sends(&mut self, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.try_client_sends(bytes).expect("client step")
    }

    /// [`client_sends`](Self::client_sends), with the protocol error the
    /// relay would close the client with.
    pub fn try_client_sends(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        append(&mut self.link.cbuf, bytes);
        let step = client_step(
            &mut self.link,
            &mut self.server,
            &mut self.client,
            true,
            &self.stats,
        )?;
        let out = match step.direct {
            Some(n) => self.link.cbuf.bytes[..n].to_vec(),
            None => std::mem::take(&mut self.server.to_server),
        };
        self.link.cbuf.consume(step.consumed);
        Ok((out, std::mem::take(&mut self.server.to_client)))
    }

    /// The server sends `bytes`: what the client receives.
    pub fn server_sends(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.try_server_sends(bytes).expect("server step")
    }

    /// [`server_sends`](Self::server_sends), with the protocol error the
    /// relay would drop the server with.
    pub fn try_server_sends(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        append(&mut self.link.sbuf, bytes);
        let (consumed, direct) = server_step(
            &mut self.link,
            &mut self.params,
            &mut self.server_params,
            &mut self.server,
            &mut self.client,
            true,
            &self.stats,
        )?;
        let out = match direct {
            Some(n) => self.link.sbuf.bytes[..n].to_vec(),
            None => std::mem::take(&mut self.server.to_client),
        };
        self.link.sbuf.consume(consumed);
        Ok(out)
    }

    /// The link's protocol state (owed ReadyForQuery, status...).
    pub fn state(&self) -> LinkState {
        self.link.state
    }

    /// Could the server be released now?
    pub fn may_release(&self) -> bool {
        self.link.may_release()
    }
}
