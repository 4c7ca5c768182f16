//! Server connections: connect, log into PostgreSQL, keep the parameter
//! cache, run the few queries pgring itself sends (parameter sync, reset,
//! rollback of an abandoned transaction), and move between shards.
//!
//! A [`ServerConn`] is a socket plus [`ServerMeta`]; the meta part is plain
//! data, so a connection can be detached from one shard's reactor (its polls
//! cancelled, the fd handed over) and attached on another ([`DetachedServer`]).

pub mod addr;
pub mod dns;
pub mod params;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

pub use addr::{ServerAddr, Target};
pub use params::{BaseParams, ClientParams, ServerParams};

use crate::auth::{md5, scram};
use crate::config::Config;
use crate::error::{sqlstate, Error, PgError, Result};
use crate::pool::PoolKey;
use crate::protocol::backend::{self, AuthRequest, ErrorFields};
use crate::protocol::startup::CancelKey;
use crate::protocol::{build, tag};
use crate::runtime::{self, io as rio, Stream};
use crate::wire::{read_message, small_buf, Message, ReadError};

/// How long a closing server's slot stays taken waiting for PostgreSQL to close its end
/// ([`ServerConn::disconnect`]). A backend leaves within a millisecond or so; one busy in a
/// query reads our Terminate or end of stream only when the query ends, and past this the
/// slot is given back regardless, as PgBouncer gives it back at once.
pub const GOODBYE: Duration = Duration::from_secs(5);

/// What pgring knows to log into PostgreSQL as a pool's user.
#[derive(Debug, Clone, Default)]
pub struct ServerCredentials {
    /// Plain password or md5 secret.
    pub password: Option<String>,
    /// Keys from a client's SCRAM login (pass-through).
    pub scram_keys: Option<scram::PassThroughKeys>,
    /// The TLS configuration for server connections (`server_tls_sslmode` `prefer` and
    /// stronger; `None`: plain).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// How to reach and log into PostgreSQL for one pool.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    /// The host list's entries, looked up (names) when a connection opens.
    pub targets: Vec<Target>,
    /// `load_balance_hosts`: where in the list the next connection starts.
    pub balance: crate::config::LoadBalanceHosts,
    /// Index (into the looked-up address list) the next connection tries first.
    next: std::cell::Cell<usize>,
    /// `dns_max_ttl` / `dns_nxdomain_ttl` (answers live in [`dns::hosts`]).
    dns_ttl: dns::Ttl,
    /// Human-readable host (logs, errors): the `host` value, or the `unix_socket_dir` used
    /// when it is unset.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name on the server.
    pub dbname: String,
    /// Login user.
    pub user: String,
    /// Password (plain or md5 secret), if any.
    pub password: Option<String>,
    /// SCRAM pass-through keys, used when no password is known.
    pub scram_keys: Option<scram::PassThroughKeys>,
    /// server_connect_timeout.
    pub connect_timeout: Duration,
    /// connect_query, run once after login.
    pub connect_query: Option<String>,
    /// max_packet_size.
    pub max_packet: u32,
    /// TLS to the server: asked for with SSLRequest on TCP (never on a unix socket, as libpq).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `server_tls_sslmode` `require` and stronger: a server that answers `N` is refused.
    pub tls_required: bool,
    /// TCP options (keepalive, user timeout, buffers) for TCP servers.
    pub tcp: crate::config::TcpTuning,
}

impl ConnectSettings {
    /// How errors name the server: `host:port` as configured, or the socket path (which says
    /// more when the directory is the mistake).
    fn shown(&self, addr: &ServerAddr) -> String {
        match addr {
            ServerAddr::Unix { path, .. } => path.to_string(),
            ServerAddr::Tcp(_) => format!("{}:{}", self.host, self.port),
        }
    }

    /// Resolves from the database entry of `key`.
    pub fn resolve(config: &Config, key: &PoolKey, creds: ServerCredentials) -> Self {
        let db = config.database(&key.db);
        let host = db.and_then(|d| d.host.as_deref());
        let port = db.map(|d| d.port).unwrap_or(5432);
        let socket_dir = &config.general.unix_socket_dir;
        let g = &config.general;
        ConnectSettings {
            targets: addr::server_targets(host, port, socket_dir),
            balance: db.map(|d| d.load_balance()).unwrap_or_default(),
            next: Default::default(),
            dns_ttl: dns::Ttl::of_config(g),
            host: host.unwrap_or(socket_dir).to_owned(),
            port,
            dbname: db
                .and_then(|d| d.dbname.clone())
                .unwrap_or_else(|| key.db.to_string()),
            user: key.user.to_string(),
            password: creds.password,
            scram_keys: creds.scram_keys,
            connect_timeout: config.general.server_connect_timeout.duration(),
            connect_query: db.and_then(|d| d.connect_query.clone()),
            max_packet: config.general.max_packet_size,
            tls: creds.tls,
            tls_required: config.general.server_tls_sslmode.requires_tls(),
            tcp: config.general.tcp_tuning(),
        }
    }
}

/// Everything about a server connection except its socket.
#[derive(Debug)]
pub struct ServerMeta {
    /// pgring's id for it (SHOW SERVERS `id`).
    pub id: u64,
    /// The backend's own cancel key (its pid is PostgreSQL's backend pid).
    pub backend_key: CancelKey,
    /// Where it is connected.
    pub addr: ServerAddr,
    /// Our end (`None` on a unix socket).
    pub local_addr: Option<SocketAddr>,
    /// Parameter state.
    pub params: ServerParams,
    /// When it was opened.
    pub created: Instant,
    /// When it was last released.
    pub last_used: Instant,
    /// Wall-clock open time (SHOW SERVERS connect_time).
    pub connect_time: std::time::SystemTime,
    /// The prepared statements it has (transaction pooling), and the
    /// relay's per-link request queue; moves with it between shards.
    /// Boxed: one allocation per connection keeps `ServerConn` small to move.
    pub prepared: Box<crate::prepared::ServerStatements>,
    /// The TLS session's description (SHOW SERVERS `tls`), made once after the handshake so
    /// that a client's link can show it without formatting anything per transaction.
    pub tls: Option<std::sync::Arc<str>>,
}

/// A live, logged-in server connection.
#[derive(Debug)]
pub struct ServerConn {
    /// The socket.
    pub stream: Stream,
    /// The rest, boxed: a lease moves its server several times (idle list, waiter, session,
    /// back), and the lease future keeps a slot for it in more than one state; 8 bytes
    /// instead of ~300 makes each of those a register move (one allocation per connection).
    pub meta: Box<ServerMeta>,
}

/// A server connection in transit between shards.
#[derive(Debug)]
pub struct DetachedServer {
    fd: OwnedFd,
    /// Its TLS session, which moves with it.
    tls: Option<Box<rio::Tls>>,
    /// The socket's family travels with it: the adopting shard must not ask the kernel.
    unix: bool,
    meta: Box<ServerMeta>,
}

impl ServerConn {
    /// Detaches from this shard's reactor. Must not be called with a read
    /// pending (servers are only moved while idle in a pool).
    pub fn detach(self) -> std::io::Result<DetachedServer> {
        let unix = self.stream.is_unix();
        let (fd, tls) = self.stream.into_parts();
        Ok(DetachedServer {
            unix,
            fd,
            tls,
            meta: self.meta,
        })
    }

    /// Attaches a detached connection to the current shard's reactor.
    pub fn attach(d: DetachedServer) -> std::io::Result<ServerConn> {
        // into_fd left the socket non-blocking; its family came along in `d`.
        let stream = Stream::adopt_with(d.fd, d.unix, d.tls);
        Ok(ServerConn {
            stream,
            meta: d.meta,
        })
    }

    /// Starts watching an idle server for input (see [`ServerConn::is_alive`]).
    pub fn watch_idle(&self) {
        self.stream.watch_input();
    }

    /// Is the connection still open with nothing unread? An idle server
    /// has nothing to say; data (PostgreSQL's FATAL before it closes) or
    /// end-of-stream means it is gone.
    pub fn is_alive(&self) -> bool {
        // Watched since it went idle and nothing arrived: alive, no syscall needed.
        if self.stream.known_quiet() {
            return true;
        }
        let mut b = 0u8;
        // SAFETY: a 1-byte peek into a local on an fd we own; never blocks.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut b as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }

    /// Backend pid (SHOW SERVERS remote_pid).
    pub fn pid(&self) -> u32 {
        self.meta.backend_key.pid
    }

    /// Makes the server's parameters match the client's; reports
    /// ParameterStatus changes back into `wants` (normalised values).
    pub async fn sync_params(&mut self, wants: &mut ClientParams) -> Result<()> {
        let Some(sql) = self.meta.params.sync_query(wants) else {
            return Ok(());
        };
        debug!(server = self.meta.id, %sql, "parameter sync");
        let changes = self.simple_query(&sql).await?;
        for (k, v) in &changes {
            wants.on_status(k, v);
        }
        self.meta.params.synced(wants);
        Ok(())
    }

    /// Runs a query pgring sends on its own behalf and drains its reply up
    /// to ReadyForQuery. ParameterStatus changes are applied and returned; an
    /// ErrorResponse becomes `Error::Server` (the server itself stays clean
    /// if it ended with ReadyForQuery `I`).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::with_capacity(sql.len() + 6);
        build::query(&mut out, sql);
        rio::write_all(&mut self.stream, &out)
            .await
            .map_err(Error::ServerIo)?;
        let mut buf = small_buf();
        let mut changes = Vec::new();
        let mut failure = None;
        loop {
            let msg = self.read(&mut buf).await?;
            match msg.tag {
                tag::PARAMETER_STATUS => {
                    let (k, v) =
                        backend::parameter_status(&msg.body).map_err(Error::ServerProtocol)?;
                    self.meta.params.on_status(k, v);
                    changes.push((k.to_owned(), v.to_owned()));
                }
                tag::ERROR_RESPONSE => {
                    failure = Some(ErrorFields::parse(&msg.body).map_err(Error::ServerProtocol)?);
                }
                // The reset query (DISCARD ALL) drops every prepared statement.
                tag::COMMAND_COMPLETE
                    if matches!(&msg.body[..], b"DEALLOCATE ALL\0" | b"DISCARD ALL\0") =>
                {
                    self.meta.prepared.clear();
                }
                tag::READY_FOR_QUERY => {
                    let status = backend::ready_status(&msg.body).map_err(Error::ServerProtocol)?;
                    return match (failure, status) {
                        (Some(e), _) => Err(Error::Server(PgError::from(e))),
                        (None, b'I') => Ok(changes),
                        (None, _) => Err(Error::Server(PgError::error(
                            sqlstate::PROTOCOL_VIOLATION,
                            "server left in a transaction by pgring's own query",
                        ))),
                    };
                }
                _ => {}
            }
        }
    }

    /// Closes the connection and returns once PostgreSQL has let go of it, or after
    /// [`GOODBYE`]. A server known to be between transactions (`clean`) is sent Terminate, as
    /// PgBouncer does, so its backend leaves at once and quietly; any other gets end of stream,
    /// which its backend sees at its next read. Then we wait for PostgreSQL's end of stream: a
    /// backend closes its socket only after it has left the process table
    /// (pqcomm.c `socket_close`, "so clients can perform a synchronous close"), so a slot given
    /// back after this is one PostgreSQL no longer counts against `max_connections` or a
    /// role's or database's connection limit.
    pub async fn disconnect(mut self, clean: bool) {
        let goodbye = async {
            if clean {
                let mut out = Vec::with_capacity(5);
                build::terminate(&mut out);
                let _ = rio::write_all(&mut self.stream, &out).await;
            }
            self.stream.shut_and_drain().await;
        };
        if rio::timeout(GOODBYE, goodbye).await.is_none() {
            warn!(server = self.meta.id, pid = self.pid(), "server did not close its connection within {GOODBYE:?}; its slot is given back anyway");
        }
    }

    async fn read(&mut self, buf: &mut rio::Buf) -> Result<Message> {
        read_message(&mut self.stream, buf, u32::MAX >> 1)
            .await
            .map_err(|e| match e {
                ReadError::Io(e) => Error::ServerIo(e),
                ReadError::Eof => Error::ServerIo(std::io::ErrorKind::UnexpectedEof.into()),
                ReadError::Protocol(p) => Error::ServerProtocol(p),
            })
    }
}

/// Opens and logs into a server connection.
pub async fn connect(cs: &ConnectSettings, id: u64) -> Result<ServerConn> {
    let (stream, addr) = open_socket(cs).await?;
    let now = Instant::now();
    let mut conn = ServerConn {
        meta: Box::new(ServerMeta {
            id,
            backend_key: CancelKey { pid: 0, secret: 0 },
            addr,
            local_addr: rio::local_addr(&stream),
            params: ServerParams::default(),
            created: now,
            last_used: now,
            connect_time: std::time::SystemTime::now(),
            prepared: Default::default(),
            tls: None,
        }),
        stream,
    };
    match runtime::io::timeout(cs.connect_timeout, login(&mut conn, cs)).await {
        Some(r) => r?,
        None => {
            return Err(Error::refuse(
                sqlstate::CONNECTION_FAILURE,
                format!("server login to {} timed out", cs.shown(&conn.meta.addr)),
            ))
        }
    }
    if let Some(q) = cs.connect_query.as_deref() {
        conn.simple_query(q).await?;
    }
    // PgBouncer's `log_connections` line (objects.c); "from" is our end of the socket.
    if crate::logs::connections() {
        let from = conn
            .meta
            .local_addr
            .map_or_else(|| "unix socket".to_owned(), |a| a.to_string());
        let addr = &conn.meta.addr;
        info!(server = id, pid = conn.pid(), %addr, "new connection to server (from {from})");
    }
    Ok(conn)
}

/// Connects to the first address that answers, starting where `load_balance_hosts` says:
/// with `round-robin` (PgBouncer's default) each new connection starts one further along the
/// list, with `disable` it stays on the address that last worked. Host names are looked up
/// here (cached for `dns_max_ttl`), each contributing all its addresses in place.
async fn open_socket(cs: &ConnectSettings) -> Result<(Stream, ServerAddr)> {
    let addrs = cs.addresses().await;
    let start = cs.next.get() % addrs.len().max(1);
    let round_robin = cs.balance == crate::config::LoadBalanceHosts::RoundRobin;
    if round_robin {
        // Taken now: connections opened at the same time start at different addresses.
        cs.next.set(start + 1);
    }
    let mut last = None;
    for i in (start..addrs.len()).chain(0..start) {
        let addr = &addrs[i];
        match connect_to(addr, cs.connect_timeout, Some(&cs.tcp)).await {
            Ok(s) => {
                if !round_robin {
                    cs.next.set(i);
                }
                return Ok((s, addr.clone()));
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(match last {
        Some((addr, e)) => cannot_connect(cs.shown(addr), e.to_string()),
        None => cannot_connect(
            format!("{}:{}", cs.host, cs.port),
            "no address for host".into(),
        ),
    })
}

impl ConnectSettings {
    /// The addresses of the host list, names looked up (off the shard's thread) unless their
    /// answer is still fresh.
    async fn addresses(&self) -> Vec<ServerAddr> {
        let mut out = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            match t {
                Target::Fixed(a) => out.push(a.clone()),
                Target::Name(name) => {
                    let found = dns::hosts()
                        .resolve(name, self.port, self.dns_ttl, self.connect_timeout)
                        .await;
                    out.extend(found.into_iter().map(ServerAddr::Tcp));
                }
            }
        }
        out
    }
}

fn cannot_connect(server: String, reason: String) -> Error {
    Error::refuse(
        sqlstate::CANNOT_CONNECT,
        format!("pgring cannot connect to server {server}: {reason}"),
    )
}

/// SSLRequest, then TLS if PostgreSQL answers `S` (libpq's order). Exactly one byte is read:
/// anything the server sent after it, before the handshake, would pass as encrypted
/// (CVE-2021-23222), so it is left for the handshake to reject.
async fn negotiate_tls(conn: &mut ServerConn, cs: &ConnectSettings) -> Result<()> {
    let Some(config) = cs.tls.clone() else {
        return Ok(());
    };
    let ServerAddr::Tcp(addr) = conn.meta.addr else {
        return Ok(());
    };
    let mut request = Vec::with_capacity(8);
    build::ssl_request(&mut request);
    rio::write_all(&mut conn.stream, &request)
        .await
        .map_err(Error::ServerIo)?;
    let mut answer = [0u8; 1];
    futures_lite::AsyncReadExt::read_exact(&mut conn.stream, &mut answer)
        .await
        .map_err(Error::ServerIo)?;
    match answer[0] {
        b'S' => {
            let name = tls_name(cs, addr);
            let handshake = conn.stream.start_tls_client(config, name).await;
            handshake.map_err(|e| {
                let shown = cs.shown(&conn.meta.addr);
                cannot_connect(shown, format!("TLS handshake failed: {e}"))
            })?;
            conn.meta.tls = conn.stream.tls_info().map(std::sync::Arc::from);
            Ok(())
        }
        b'N' if !cs.tls_required => Ok(()),
        b'N' => Err(Error::refuse(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "server {} does not support TLS, which server_tls_sslmode requires",
                cs.shown(&conn.meta.addr)
            ),
        )),
        other => Err(Error::ServerProtocol(
            crate::protocol::ProtocolError::Unexpected(other),
        )),
    }
}

/// The name a server's certificate is checked against (`verify-full`): the configured host
/// when it is one name, else the address connected to.
fn tls_name(cs: &ConnectSettings, addr: SocketAddr) -> rustls::pki_types::ServerName<'static> {
    let one_name = !cs.host.contains(',');
    match rustls::pki_types::ServerName::try_from(cs.host.clone()) {
        Ok(name) if one_name => name,
        _ => addr.ip().into(),
    }
}

async fn login(conn: &mut ServerConn, cs: &ConnectSettings) -> Result<()> {
    negotiate_tls(conn, cs).await?;
    let mut out = Vec::new();
    build::startup(&mut out, &[("user", &cs.user), ("database", &cs.dbname)]);
    rio::write_all(&mut conn.stream, &out)
        .await
        .map_err(Error::ServerIo)?;
    let mut buf = small_buf();
    let mut auth = ClientAuth::default();
    loop {
        let msg = conn.read(&mut buf).await?;
        match msg.tag {
            tag::AUTHENTICATION => auth.step(conn, cs, &msg.body).await?,
            tag::PARAMETER_STATUS => {
                let (k, v) = backend::parameter_status(&msg.body).map_err(Error::ServerProtocol)?;
                conn.meta.params.on_status(k, v);
            }
            tag::BACKEND_KEY_DATA => {
                conn.meta.backend_key =
                    backend::backend_key_data(&msg.body).map_err(Error::ServerProtocol)?;
            }
            tag::READY_FOR_QUERY => {
                conn.meta.params.freeze_login();
                return Ok(());
            }
            tag::ERROR_RESPONSE => {
                let e = ErrorFields::parse(&msg.body).map_err(Error::ServerProtocol)?;
                return Err(Error::Server(PgError::from(e).into_fatal()));
            }
            tag::NOTICE_RESPONSE => {}
            other => {
                return Err(Error::ServerProtocol(
                    crate::protocol::ProtocolError::Unexpected(other),
                ))
            }
        }
    }
}

/// pgring as a client of PostgreSQL's authentication.
#[derive(Default)]
struct ClientAuth {
    scram: Option<scram::ScramClient>,
}

impl ClientAuth {
    async fn step(
        &mut self,
        conn: &mut ServerConn,
        cs: &ConnectSettings,
        body: &[u8],
    ) -> Result<()> {
        let req = AuthRequest::parse(body).map_err(Error::ServerProtocol)?;
        let mut out = Vec::new();
        match req {
            AuthRequest::Ok => return Ok(()),
            AuthRequest::Cleartext => build::password_message(&mut out, self.password(cs)?),
            AuthRequest::Md5(salt) => {
                let resp = md5::md5_response(&cs.user, self.password(cs)?, salt);
                build::password_message(&mut out, &resp);
            }
            AuthRequest::Sasl(mechs) => {
                if !AuthRequest::offers(mechs, scram::SCRAM_SHA_256) {
                    return Err(unsupported_auth("SASL without SCRAM-SHA-256"));
                }
                // Pass-through (PgBouncer's scram_client_key) when only a verifier is known.
                let mut client = match (&cs.password, cs.scram_keys) {
                    (None, Some(k)) => scram::ScramClient::with_keys(k.client_key, k.server_key),
                    _ => scram::ScramClient::new(self.password(cs)?),
                };
                build::sasl_initial_response(
                    &mut out,
                    scram::SCRAM_SHA_256,
                    &client.client_first(),
                );
                self.scram = Some(client);
            }
            AuthRequest::SaslContinue(data) => {
                let client = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| unsupported_auth("SASL out of order"))?;
                let reply = client.handle_server_first(data).map_err(scram_failed)?;
                build::sasl_response(&mut out, &reply);
            }
            AuthRequest::SaslFinal(data) => {
                let client = self
                    .scram
                    .as_ref()
                    .ok_or_else(|| unsupported_auth("SASL out of order"))?;
                client.verify_server_final(data).map_err(scram_failed)?;
                return Ok(());
            }
            AuthRequest::Unsupported(code) => {
                return Err(unsupported_auth(&format!("method {code}")))
            }
        }
        rio::write_all(&mut conn.stream, &out)
            .await
            .map_err(Error::ServerIo)
    }

    fn password<'a>(&self, cs: &'a ConnectSettings) -> Result<&'a str> {
        cs.password.as_deref().ok_or_else(|| {
            Error::Server(PgError::fatal(
                sqlstate::INVALID_PASSWORD,
                format!(
                    "no password known to pgring for server login as \"{}\"",
                    cs.user
                ),
            ))
        })
    }
}

fn unsupported_auth(what: &str) -> Error {
    Error::Server(PgError::fatal(
        sqlstate::INVALID_AUTHORIZATION,
        format!("server requested an authentication pgring does not support: {what}"),
    ))
}

fn scram_failed(e: scram::ScramError) -> Error {
    Error::Server(PgError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("SCRAM authentication with the server failed: {e}"),
    ))
}

/// Connects to a server address, TCP or unix socket.
async fn connect_to(
    addr: &ServerAddr,
    deadline: Duration,
    tcp: Option<&crate::config::TcpTuning>,
) -> std::io::Result<Stream> {
    runtime::connect(&addr.sock_addr()?, deadline, tcp).await
}

/// Sends a CancelRequest for `key` to the backend at `addr` on a new
/// connection (how PostgreSQL cancels: out of band; over the same unix socket
/// or TCP address as the connection it cancels).
pub async fn send_cancel(
    addr: ServerAddr,
    key: CancelKey,
    deadline: Duration,
) -> std::io::Result<()> {
    send_cancel_then(addr, key, deadline, || {}).await
}

/// [`send_cancel`], calling `sent` once the request is written (the rest is waiting for the
/// other end to close).
pub async fn send_cancel_then(
    addr: ServerAddr,
    key: CancelKey,
    deadline: Duration,
    sent: impl FnOnce(),
) -> std::io::Result<()> {
    let mut stream = connect_to(&addr, deadline, None).await?;
    let mut out = Vec::with_capacity(16);
    build::cancel_request(&mut out, key);
    rio::write_all(&mut stream, &out).await?;
    sent();
    // PostgreSQL closes the connection when done; wait briefly for that so
    // the cancel is processed before we report anything.
    let mut b = [0u8; 1];
    let _ = runtime::io::timeout(
        deadline,
        futures_lite::AsyncReadExt::read(&mut stream, &mut b),
    )
    .await;
    Ok(())
}
