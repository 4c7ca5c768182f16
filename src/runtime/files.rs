//! What the files the configuration names say, read together at start, on RELOAD and on
//! `SET` of a key that names one: `auth_file` (users and secrets), `auth_hba_file` and
//! `auth_ident_file` (with `auth_type = hba`), the client TLS certificate and key (and CA), and
//! the TLS configuration for server connections. A shard reads one [`Files`] snapshot per
//! login; RELOAD swaps the whole snapshot, so a login never sees half of a change.

use std::sync::Arc;

use crate::auth::hba::Hba;
use crate::auth::ident::IdentMap;
use crate::auth::userlist::UserList;
use crate::config::{AuthType, Config, General, SslMode};

/// One snapshot of the files.
#[derive(Debug, Default)]
pub struct Files {
    /// `auth_file` (empty without one).
    pub users: UserList,
    /// `auth_hba_file`, with `auth_type = hba`.
    pub hba: Option<Hba>,
    /// `auth_ident_file`, with `auth_type = hba`.
    pub ident: Option<IdentMap>,
    /// TLS towards clients, when `client_tls_sslmode` is not `disable`.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS towards servers, for `server_tls_sslmode` `prefer` and stronger.
    pub server_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Reads every file `config` names.
pub fn load_files(config: &Config) -> Result<Files, String> {
    let general = &config.general;
    let users = match &general.auth_file {
        Some(path) => {
            UserList::load(path.as_ref()).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => UserList::default(),
    };
    let (hba, ident) = match (&general.auth_hba_file, general.auth_type) {
        (Some(path), AuthType::Hba) => {
            let hba =
                Hba::load(path).map_err(|e| format!("auth_hba_file {}: {e}", path.display()))?;
            let ident = load_ident(general, &hba)?;
            (Some(hba), ident)
        }
        _ => (None, None),
    };
    Ok(Files {
        users,
        hba,
        ident,
        client_tls: client_tls(general)?,
        server_tls: server_tls(general)?,
    })
}

/// `auth_ident_file`, if set; every `map=` of the hba rules must name a map it defines.
fn load_ident(general: &General, hba: &Hba) -> Result<Option<IdentMap>, String> {
    let ident = match &general.auth_ident_file {
        Some(path) => Some(
            IdentMap::load(path).map_err(|e| format!("auth_ident_file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    for (map, line) in hba.maps() {
        if !ident.as_ref().is_some_and(|i| i.has(map)) {
            return Err(format!(
                "auth_hba_file line {line}: map={map} is not defined (auth_ident_file)"
            ));
        }
    }
    Ok(ident)
}

/// The TLS configuration for clients; none for `disable` (validation asks for both files
/// otherwise).
fn client_tls(general: &General) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let mode = general.client_tls_sslmode;
    let (Some(cert), Some(key)) = (&general.client_tls_cert_file, &general.client_tls_key_file)
    else {
        return Ok(None);
    };
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let files = super::tls::TlsFiles {
        cert,
        key,
        ca: general.client_tls_ca_file.as_deref(),
        require_client_cert: matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull),
        protocols: &general.client_tls_protocols,
        tls13_ciphers: &general.client_tls13_ciphers,
        tls12_ciphers: &general.client_tls_ciphers,
        ecdh_curves: &general.client_tls_ecdhcurve,
    };
    super::tls::acceptor(&files)
        .map(Some)
        .map_err(|e| format!("client TLS: {e}"))
}

/// The TLS configuration for server connections: none for `disable` and `allow` (pgring
/// connects in plain and does not retry with TLS).
fn server_tls(general: &General) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    use super::tls::ServerCheck;
    let check = match general.server_tls_sslmode {
        SslMode::Disable | SslMode::Allow => return Ok(None),
        SslMode::Prefer | SslMode::Require => ServerCheck::None,
        SslMode::VerifyCa => ServerCheck::Chain,
        SslMode::VerifyFull => ServerCheck::ChainAndName,
    };
    let client_cert = general
        .server_tls_cert_file
        .as_deref()
        .zip(general.server_tls_key_file.as_deref());
    let ca = general.server_tls_ca_file.as_deref();
    let ciphers = (
        general.server_tls13_ciphers.as_str(),
        general.server_tls_ciphers.as_str(),
    );
    super::tls::connector(
        check,
        ca,
        client_cert,
        &general.server_tls_protocols,
        ciphers,
    )
    .map(Some)
    .map_err(|e| format!("server TLS: {e}"))
}
