//! Client-side TLS (`client_tls_sslmode`): a rustls server session inside a [`Stream`].
//!
//! A client that sends SSLRequest is answered `S` when pgring has a certificate, and from then
//! on every byte of its [`Stream`] goes through [`Tls`]: reads take ciphertext from the socket
//! and hand out plaintext, writes take plaintext and send ciphertext. Everything above the
//! stream (login, relay, console) is unchanged, and a stream without TLS pays one branch.
//!
//! The socket work stays ours (the reactor's readiness, non-blocking `recv`/`send`): rustls
//! only sees byte slices, through `read_tls` from a buffer we filled and `write_tls` into
//! [`Tls::out`], which we send. Server connections are plain (`server_tls_sslmode` is not
//! implemented), and a TLS client never moves to another shard (its session state would have
//! to move with the socket).
//!
//! [`Stream`]: super::Stream

use std::io::{self, Read, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, ServerConnection};

/// Ciphertext read from the socket per `recv`: at most one TLS record's worth of plaintext
/// comes of it, which rustls's received-plaintext buffer (16 KiB) always has room for, since
/// we only read when that buffer is empty.
const READ_CHUNK: usize = 16 * 1024;

/// Where the TLS configuration for clients comes from (`client_tls_*`).
pub struct TlsFiles<'a> {
    /// `client_tls_cert_file`: a PEM chain, leaf first.
    pub cert: &'a Path,
    /// `client_tls_key_file`: a PEM private key.
    pub key: &'a Path,
    /// `client_tls_ca_file`: the roots client certificates must chain to, if any.
    pub ca: Option<&'a Path>,
    /// `verify-ca`/`verify-full`: a client without a valid certificate fails the handshake.
    /// Otherwise a certificate is asked for (with a CA file) but not required.
    pub require_client_cert: bool,
}

/// Builds the TLS configuration for clients: TLS 1.2 and 1.3 with rustls's safe defaults, as
/// PgBouncer's `secure` protocols and ciphers; client certificates checked against
/// `client_tls_ca_file` when one is given.
pub fn acceptor(files: &TlsFiles<'_>) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(files.cert)?;
    let key = PrivateKeyDer::from_pem_file(files.key).map_err(|e| shown(files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match files.ca {
        None if files.require_client_cert => {
            return Err("verify-ca and verify-full need client_tls_ca_file".into())
        }
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| shown(ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| shown(ca, &e))?)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| shown(files.key, &e))?;
    Ok(Arc::new(config))
}

fn shown(p: &Path, e: &dyn std::fmt::Display) -> String {
    format!("{}: {e}", p.display())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| shown(path, &e))?;
    if certs.is_empty() {
        return Err(shown(path, &"no certificate in the file"));
    }
    Ok(certs)
}

/// One client's TLS session.
pub struct Tls {
    conn: ServerConnection,
    /// Ciphertext produced but not yet sent.
    out: Vec<u8>,
    /// Plaintext taken by the last `poll_write` whose ciphertext is not all sent yet: it is
    /// reported written once it is (the caller polls again with the same bytes after
    /// `Pending`, and they must not be taken twice).
    unacked: usize,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Socket I/O for one poll, as `Stream` does it: non-blocking, readiness from the reactor.
pub(super) trait Socket {
    /// `recv` into `buf` once readable (0: end of stream).
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// `send` from `buf` once writable.
    fn poll_send(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
}

impl Tls {
    /// A session for a client that was just answered `S`.
    pub fn new(config: Arc<ServerConfig>) -> io::Result<Tls> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Tls {
            conn,
            out: Vec::new(),
            unacked: 0,
        })
    }

    /// PgBouncer's `tls_get_connection_info` style: `TLSv1.3/TLS13_AES_256_GCM_SHA384`.
    pub fn describe(&self) -> String {
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(v) => format!("{v:?}"),
            None => "handshaking".to_owned(),
        };
        match self.conn.negotiated_cipher_suite() {
            Some(suite) => format!("{version}/{:?}", suite.suite()),
            None => version,
        }
    }

    /// The CommonName of the client's certificate (verified against `client_tls_ca_file`
    /// during the handshake), for `auth_type = cert`: PgBouncer takes the user name from it.
    pub fn peer_common_name(&self) -> Option<String> {
        let leaf = self.conn.peer_certificates()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let cn = cert.subject().iter_common_name().next()?;
        cn.as_str().ok().map(str::to_owned)
    }

    /// Plaintext into `buf`, reading and decrypting what the socket has as needed (and
    /// sending what the handshake owes first).
    pub(super) fn poll_read(
        &mut self,
        sock: &impl Socket,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.conn.reader().read(buf) {
                // 0: the client said close_notify.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = std::task::ready!(self.poll_flush(sock, cx)) {
                return Poll::Ready(Err(e));
            }
            let mut raw = [0u8; READ_CHUNK];
            let n = match std::task::ready!(sock.poll_recv(cx, &mut raw)) {
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if let Err(e) = self.take_ciphertext(&raw[..n]) {
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Feeds ciphertext to rustls and processes it: handshake messages queue replies (sent by
    /// the next flush), records become plaintext.
    fn take_ciphertext(&mut self, mut raw: &[u8]) -> io::Result<()> {
        while !raw.is_empty() {
            let used = self.conn.read_tls(&mut raw)?;
            if let Err(e) = self.conn.process_new_packets() {
                // The alert rustls queued for the client goes out if the socket takes it now.
                let _ = self.conn.write_tls(&mut self.out);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if used == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Encrypts `buf` and sends it; `Ready(n)` once its ciphertext has all been sent.
    pub(super) fn poll_write(
        &mut self,
        sock: &impl Socket,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.unacked == 0 && !buf.is_empty() {
            // Anything still queued goes first, so rustls's buffer has room for `buf`.
            if let Err(e) = std::task::ready!(self.poll_flush(sock, cx)) {
                return Poll::Ready(Err(e));
            }
            self.unacked = self.conn.writer().write(buf)?;
        }
        if let Err(e) = std::task::ready!(self.poll_flush(sock, cx)) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(std::mem::take(&mut self.unacked)))
    }

    /// Sends every ciphertext byte rustls has produced.
    pub(super) fn poll_flush(
        &mut self,
        sock: &impl Socket,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.out.is_empty() {
                if !self.conn.wants_write() {
                    return Poll::Ready(Ok(()));
                }
                self.conn.write_tls(&mut self.out)?;
                continue;
            }
            let n = std::task::ready!(sock.poll_send(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
    }

    /// Queues close_notify and sends what is queued, if the socket takes it now.
    pub(super) fn poll_close(
        &mut self,
        sock: &impl Socket,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.conn.send_close_notify();
        self.poll_flush(sock, cx)
    }
}
