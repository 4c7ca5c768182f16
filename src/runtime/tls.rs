//! TLS inside a [`Stream`]: rustls sessions for clients (`client_tls_sslmode`, pgring the
//! server) and for server connections (`server_tls_sslmode`, pgring the client).
//!
//! A client that sends SSLRequest is answered `S` when pgring has a certificate; a server
//! connection sends SSLRequest and, on `S`, finishes the handshake before its startup message.
//! From then on every byte of the [`Stream`] goes through [`Tls`]: reads take ciphertext from
//! the socket and hand out plaintext, writes take plaintext and send ciphertext. Everything
//! above the stream (login, relay, console) is unchanged, and a stream without TLS pays one
//! branch.
//!
//! The socket work stays ours (the reactor's readiness, non-blocking `recv`/`send`): rustls
//! only sees byte slices, through `read_tls` from a buffer we filled and `write_tls` into
//! `Tls::out`, which we send. A server handed to another shard takes its session along
//! (`Stream::into_parts`); a TLS client never moves (clients move only for balance, and
//! keeping them is simpler than carrying the session through the client hand-over).
//!
//! [`Stream`]: super::Stream

use std::io::{self, Read, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::config::{KxGroups, Tls12Ciphers, TlsProtocols};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

/// Ciphertext read from the socket per `recv`: at most one TLS record's worth of plaintext
/// comes of it, which rustls's received-plaintext buffer (16 KiB) always has room for, since
/// we only read when that buffer is empty.
const READ_CHUNK: usize = 16 * 1024;

/// The rustls versions of a `*_tls_protocols` list (see [`TlsProtocols`]).
fn protocol_versions(list: &str) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let p = TlsProtocols::parse(list)?;
    let mut versions = Vec::new();
    if p.v13 {
        versions.push(&rustls::version::TLS13);
    }
    if p.v12 {
        versions.push(&rustls::version::TLS12);
    }
    Ok(versions)
}

/// rustls's provider with its TLS 1.3 cipher suites narrowed to a `*_tls13_ciphers` list
/// (OpenSSL's names, colon-separated, in order of preference; empty: all of them), and its
/// TLS 1.2 suites to what a `*_tls_ciphers` value names ([`Tls12Ciphers`]). The two CCM suites
/// OpenSSL can offer for 1.3 are not in rustls: they are skipped, and a list of only those is
/// refused.
fn provider(
    tls13_ciphers: &str,
    tls12_ciphers: &str,
    ecdh_curves: &str,
) -> Result<Arc<rustls::crypto::CryptoProvider>, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    let all = std::mem::take(&mut provider.cipher_suites);
    let (tls13, tls12): (Vec<_>, Vec<_>) = all.into_iter().partition(|s| s.tls13().is_some());
    let mut suites = tls13_suites(tls13, tls13_ciphers)?;
    let wanted = Tls12Ciphers::parse(tls12_ciphers).names;
    if wanted.is_empty() {
        suites.extend(tls12);
    } else {
        let named = |name: &str| tls12.iter().find(|s| tls12_name(s.suite()) == Some(name));
        suites.extend(wanted.iter().filter_map(|w| named(w)).copied());
    }
    provider.cipher_suites = suites;
    narrow_groups(&mut provider.kx_groups, ecdh_curves);
    Ok(Arc::new(provider))
}

/// Keeps the key exchange groups a `client_tls_ecdhcurve` value names ([`KxGroups`]), in its
/// order; all of them when it names none rustls has.
fn narrow_groups(groups: &mut Vec<&'static dyn rustls::crypto::SupportedKxGroup>, curves: &str) {
    use rustls::NamedGroup as G;
    let name = |g: G| match g {
        G::X25519 => Some("X25519"),
        G::secp256r1 => Some("P-256"),
        G::secp384r1 => Some("P-384"),
        _ => None,
    };
    let wanted = KxGroups::parse(curves).names;
    let named: Vec<_> = wanted
        .iter()
        .filter_map(|w| groups.iter().find(|g| name(g.name()) == Some(w)).copied())
        .collect();
    if !named.is_empty() {
        *groups = named;
    }
}

/// The OpenSSL name of one of rustls's TLS 1.2 suites (see [`crate::config::TLS12_SUITES`]).
fn tls12_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as C;
    Some(match suite {
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// The TLS 1.3 suites a `*_tls13_ciphers` list names, in its order (all of them for an empty
/// list).
fn tls13_suites(
    tls13: Vec<rustls::SupportedCipherSuite>,
    tls13_ciphers: &str,
) -> Result<Vec<rustls::SupportedCipherSuite>, String> {
    use rustls::CipherSuite as C;
    let names: Vec<&str> = tls13_ciphers
        .split(':')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(tls13);
    }
    let mut wanted = Vec::new();
    for name in &names {
        wanted.push(match *name {
            "TLS_AES_256_GCM_SHA384" => C::TLS13_AES_256_GCM_SHA384,
            "TLS_AES_128_GCM_SHA256" => C::TLS13_AES_128_GCM_SHA256,
            "TLS_CHACHA20_POLY1305_SHA256" => C::TLS13_CHACHA20_POLY1305_SHA256,
            "TLS_AES_128_CCM_SHA256" | "TLS_AES_128_CCM_8_SHA256" => continue,
            other => return Err(format!("unknown TLS 1.3 cipher suite \"{other}\"")),
        });
    }
    let suites: Vec<_> = wanted
        .iter()
        .filter_map(|w| tls13.iter().find(|s| s.suite() == *w).copied())
        .collect();
    if suites.is_empty() {
        return Err(format!(
            "no TLS 1.3 cipher suite of \"{tls13_ciphers}\" is available (the CCM suites are not)"
        ));
    }
    Ok(suites)
}

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
    /// `client_tls_protocols`.
    pub protocols: &'a str,
    /// `client_tls13_ciphers`.
    pub tls13_ciphers: &'a str,
    /// `client_tls_ciphers` (TLS 1.2).
    pub tls12_ciphers: &'a str,
    /// `client_tls_ecdhcurve`.
    pub ecdh_curves: &'a str,
}

/// Builds the TLS configuration for clients: TLS 1.2 and 1.3 with rustls's safe defaults, as
/// PgBouncer's `secure` protocols and ciphers; client certificates checked against
/// `client_tls_ca_file` when one is given.
pub fn acceptor(files: &TlsFiles<'_>) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(files.cert)?;
    let key = PrivateKeyDer::from_pem_file(files.key).map_err(|e| shown(files.key, &e))?;
    let provider = provider(files.tls13_ciphers, files.tls12_ciphers, files.ecdh_curves)?;
    let versions = protocol_versions(files.protocols)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
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
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| shown(files.key, &e))?;
    // No session resumption, as PostgreSQL (which turns off tickets and its session cache) and
    // PgBouncer: libpq never resumes a session, so the two TLS 1.3 tickets rustls sends by
    // default would cost every handshake a random draw, an insert into a cache all shards lock,
    // and a record written, for nothing.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// How server connections check PostgreSQL's certificate (`server_tls_sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCheck {
    /// `prefer`, `require`: encrypted, certificate not checked (libpq's meaning).
    None,
    /// `verify-ca`: the chain must end at `server_tls_ca_file`.
    Chain,
    /// `verify-full`: the chain, and the host name (or address) in the certificate.
    ChainAndName,
}

/// Builds the TLS configuration for server connections: `server_tls_ca_file` for the roots
/// (`verify-ca`, `verify-full`), `server_tls_cert_file` + `server_tls_key_file` for a client
/// certificate if both are set.
pub fn connector(
    check: ServerCheck,
    ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
    protocols: &str,
    (tls13_ciphers, tls12_ciphers): (&str, &str),
) -> Result<Arc<ClientConfig>, String> {
    // client_tls_ecdhcurve concerns clients only (as in PgBouncer): PostgreSQL is offered all.
    let provider = provider(tls13_ciphers, tls12_ciphers, "auto")?;
    let versions = protocol_versions(protocols)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;
    let chain = match (check, ca) {
        (ServerCheck::None, _) => None,
        (_, None) => return Err("verify-ca and verify-full need server_tls_ca_file".into()),
        (_, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| shown(ca, &e))?;
            }
            let roots = Arc::new(roots);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
            Some(webpki.build().map_err(|e| shown(ca, &e))?)
        }
    };
    let verifier = Arc::new(PgServerCert {
        chain,
        check_name: check == ServerCheck::ChainAndName,
        provider,
    });
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client_cert {
        Some((cert, key)) => {
            let certs = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| shown(key, &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| shown(cert, &e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// How PostgreSQL's certificate is checked. `require`/`prefer` (`chain: None`): not at all, as
/// in libpq. `verify-ca`: the web PKI chain to `server_tls_ca_file`, a certificate for another
/// name passing; `verify-full`: the name too. Either way the handshake's signatures are
/// verified, so the session is with the key's holder.
#[derive(Debug)]
struct PgServerCert {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PgServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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

thread_local! {
    /// Ciphertext just received, on its way into rustls (see `poll_recv_ciphertext`).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// One TLS session: a client's (pgring the server) or a server connection's (pgring the
/// client).
pub struct Tls {
    conn: Connection,
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
    pub fn server(config: Arc<ServerConfig>) -> io::Result<Tls> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Tls::over(conn.into()))
    }

    /// A session to a PostgreSQL server that answered our SSLRequest with `S`; `name` is
    /// what its certificate is checked against (with `verify-full`).
    pub fn client(config: Arc<ClientConfig>, name: ServerName<'static>) -> io::Result<Tls> {
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(Tls::over(conn.into()))
    }

    fn over(conn: Connection) -> Tls {
        Tls {
            conn,
            out: Vec::new(),
            unacked: 0,
        }
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
            std::task::ready!(self.poll_flush(sock, cx))?;
            if std::task::ready!(self.poll_recv_ciphertext(sock, cx))? == 0 {
                return Poll::Ready(Ok(0));
            }
        }
    }

    /// Receives what the socket has (at most [`READ_CHUNK`]) and feeds it to rustls; the count
    /// (0: end of stream). The bytes land in a per-thread scratch buffer, not in a buffer per
    /// connection (an idle TLS client holds none) nor on the stack (a 16 KiB zeroing per read).
    fn poll_recv_ciphertext(
        &mut self,
        sock: &impl Socket,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        SCRATCH.with(|scratch| {
            let mut raw = scratch.borrow_mut();
            let n = std::task::ready!(sock.poll_recv(cx, &mut raw[..]))?;
            if n > 0 {
                self.take_ciphertext(&raw[..n])?;
            }
            Poll::Ready(Ok(n))
        })
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

    /// Drives the handshake to its end (a server connection does it before its startup message,
    /// so a refused certificate is a connect error, not a broken login).
    pub(super) fn poll_handshake(
        &mut self,
        sock: &impl Socket,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.poll_flush(sock, cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if std::task::ready!(self.poll_recv_ciphertext(sock, cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
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
            std::task::ready!(self.poll_flush(sock, cx))?;
            self.unacked = self.conn.writer().write(buf)?;
        }
        std::task::ready!(self.poll_flush(sock, cx))?;
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

#[cfg(test)]
mod tests {
    use super::{provider, tls12_name};
    use crate::config::TLS12_SUITES;
    use rustls::CipherSuite as C;

    fn suites(tls13: &str, tls12: &str, of13: bool) -> Vec<C> {
        let p = provider(tls13, tls12, "auto").unwrap_or_else(|e| panic!("{tls13} / {tls12}: {e}"));
        let all = p.cipher_suites.iter();
        all.filter(|s| s.tls13().is_some() == of13)
            .map(|s| s.suite())
            .collect()
    }

    fn tls13_of(list: &str) -> Vec<C> {
        suites(list, "default", true)
    }

    fn tls12_of(list: &str) -> Vec<C> {
        suites("", list, false)
    }

    #[test]
    fn tls13_ciphers_narrow_and_order_the_suites_and_leave_tls12_alone() {
        assert_eq!(tls13_of("").len(), 3);
        assert_eq!(
            tls13_of("TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"),
            [
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_128_GCM_SHA256
            ]
        );
        // OpenSSL's CCM suites are skipped; rustls has none.
        assert_eq!(
            tls13_of("TLS_AES_128_CCM_SHA256:TLS_AES_256_GCM_SHA384"),
            [C::TLS13_AES_256_GCM_SHA384]
        );
        assert_eq!(
            suites("TLS_AES_256_GCM_SHA384", "default", false),
            tls12_of("default")
        );
        assert!(provider("TLS_AES_128_CCM_8_SHA256", "", "auto").is_err());
        let unknown = provider("TLS_AES_256_GCM_SHA384:AES256-SHA", "", "auto").unwrap_err();
        assert!(unknown.contains("\"AES256-SHA\""), "{unknown}");
    }

    #[test]
    fn tls12_ciphers_name_the_suites_offered_in_order() {
        // Every name pgring lists is one rustls has, and a keyword, a rule or an empty value
        // keeps them all.
        let all = tls12_of("default");
        assert_eq!(all.len(), TLS12_SUITES.len());
        assert!(all.iter().all(|s| tls12_name(*s).is_some()));
        for list in ["", "secure", "fast", "legacy", "HIGH:!aNULL", "AES256-SHA"] {
            assert_eq!(tls12_of(list), all, "{list}");
        }
        assert_eq!(
            tls12_of("ECDHE-RSA-CHACHA20-POLY1305:AES256-SHA:ecdhe-rsa-aes256-gcm-sha384"),
            [
                C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            ],
            "the listed suites rustls has, in order; AES256-SHA (CBC) left out"
        );
        // TLS 1.3's suites are untouched.
        assert_eq!(suites("", "ECDHE-RSA-AES128-GCM-SHA256", true).len(), 3);
    }

    #[test]
    fn ecdh_curves_narrow_and_order_the_key_exchange_groups() {
        use rustls::NamedGroup as G;
        let groups = |curves: &str| {
            let p = provider("", "", curves).expect("provider");
            p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
        };
        assert_eq!(groups("auto").len(), 3);
        assert_eq!(groups("secp384r1,x25519"), [G::secp384r1, G::X25519]);
        assert_eq!(groups("none").len(), 3, "nothing rustls can do: all");
    }
}
