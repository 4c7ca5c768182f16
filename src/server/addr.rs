//! Where a PostgreSQL server listens, as a database entry's `host` names it.
//!
//! PgBouncer's rules (doc/config.md, `host`; objects.c `dns_connect`): a host starting with `/`
//! is a directory holding the server's unix socket `<dir>/.s.PGSQL.<port>` (libpq's name); one
//! starting with `@` is the same name in Linux's abstract namespace; an unset host means the
//! unix socket in `unix_socket_dir`; anything else is a name or address reached over TCP. This
//! module only names addresses: resolving host names is `pool::resolve_addrs`, connecting is
//! `runtime::io::connect`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// A server's address: TCP, or a unix socket.
///
/// Every connection of a pool carries a clone of its pool's address (and so does a client's
/// [`Linked`](crate::client::Linked), for cancel requests), so the socket path is shared, not
/// copied: an `Arc`, because server connections move between shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket.
    Unix {
        /// `<dir>/.s.PGSQL.<port>`; a leading `@` means the abstract namespace.
        path: Arc<str>,
        /// The port in the socket's name (SHOW SERVERS shows it beside addr `unix`).
        port: u16,
    },
}

/// A place a database entry's `host` (or a peer's) names, before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket or a literal IP address: nothing to look up.
    Fixed(ServerAddr),
    /// A host name, looked up when a connection opens (see `server::dns`).
    Name(String),
}

/// The targets of a `host` (a comma list; `None`: unset, the unix socket in
/// `unix_socket_dir`), in order. An unset host adds nothing when `unix_socket_dir` is empty
/// (config validation refuses that up front).
pub fn server_targets(host: Option<&str>, port: u16, unix_socket_dir: &str) -> Vec<Target> {
    let Some(host) = host else {
        return match unix_socket_dir {
            "" => Vec::new(),
            dir => vec![Target::Fixed(ServerAddr::unix(dir, port))],
        };
    };
    host.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            if is_unix_host(h) {
                Target::Fixed(ServerAddr::unix(h, port))
            } else if let Ok(ip) = h.parse::<std::net::IpAddr>() {
                Target::Fixed(ServerAddr::Tcp(SocketAddr::new(ip, port)))
            } else {
                Target::Name(h.to_owned())
            }
        })
        .collect()
}

/// The largest socket path a `sockaddr_un` holds (108 bytes with the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// Does this `host` (one entry of a host list) name a unix socket directory?
pub fn is_unix_host(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@')
}

impl ServerAddr {
    /// The socket `<dir>/.s.PGSQL.<port>` in directory (or abstract prefix) `dir`.
    pub fn unix(dir: &str, port: u16) -> ServerAddr {
        // As PgBouncer formats it: "%s/.s.PGSQL.%d", whether or not dir ends in a slash.
        ServerAddr::Unix {
            path: format!("{dir}/.s.PGSQL.{port}").into(),
            port,
        }
    }

    /// The TCP address, if it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ServerAddr::Tcp(a) => Some(*a),
            ServerAddr::Unix { .. } => None,
        }
    }

    /// The port in a unix socket's name (SHOW SERVERS prints it beside addr `unix`).
    pub fn unix_port(&self) -> Option<u16> {
        match self {
            ServerAddr::Unix { port, .. } => Some(*port),
            ServerAddr::Tcp(_) => None,
        }
    }

    /// The kernel's form of the address. An abstract name (`@...`) gets its leading NUL and
    /// no terminating one, as PostgreSQL's own listener names it.
    pub fn sock_addr(&self) -> std::io::Result<socket2::SockAddr> {
        match self {
            ServerAddr::Tcp(a) => Ok((*a).into()),
            ServerAddr::Unix { path, .. } => match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::unix::ffi::OsStrExt;
                    let mut bytes = Vec::with_capacity(name.len() + 1);
                    bytes.push(0);
                    bytes.extend_from_slice(name.as_bytes());
                    socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))
                }
                None => socket2::SockAddr::unix(&**path),
            },
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(a) => a.fmt(f),
            ServerAddr::Unix { path, .. } => f.write_str(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_hosts_name_the_libpq_socket() {
        let a = ServerAddr::unix("/var/run/postgresql", 5433);
        assert_eq!(a.to_string(), "/var/run/postgresql/.s.PGSQL.5433");
        assert!(matches!(a, ServerAddr::Unix { .. }) && a.tcp().is_none());
        let sa = a.sock_addr().expect("a short path fits");
        assert_eq!(
            sa.as_pathname(),
            Some(std::path::Path::new("/var/run/postgresql/.s.PGSQL.5433"))
        );
        assert!(is_unix_host("/tmp") && is_unix_host("@pg") && !is_unix_host("db.local"));
    }

    #[test]
    fn host_lists_mix_sockets_addresses_and_names_and_unset_means_unix_socket_dir() {
        let targets = server_targets(
            Some("/run/pg, 127.0.0.1,@abs, db.example, ::1"),
            6000,
            "/tmp",
        );
        let shown: Vec<String> = targets
            .iter()
            .map(|t| match t {
                Target::Fixed(a) => a.to_string(),
                Target::Name(n) => format!("name {n}"),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "/run/pg/.s.PGSQL.6000",
                "127.0.0.1:6000",
                "@abs/.s.PGSQL.6000",
                "name db.example",
                "[::1]:6000"
            ]
        );
        assert_eq!(
            server_targets(None, 5432, "/var/run/postgresql"),
            [Target::Fixed(ServerAddr::unix("/var/run/postgresql", 5432))]
        );
        assert!(server_targets(None, 5432, "").is_empty());
    }

    #[test]
    fn abstract_hosts_lose_the_at_sign_for_a_nul() {
        let sa = ServerAddr::unix("@pg", 5432)
            .sock_addr()
            .expect("a short name fits");
        assert_eq!(sa.as_abstract_namespace(), Some(&b"pg/.s.PGSQL.5432"[..]));
        assert_eq!(sa.as_pathname(), None);
    }

    #[test]
    fn a_path_too_long_for_sockaddr_un_is_an_error_not_a_truncation() {
        let dir = format!("/{}", "d".repeat(MAX_UNIX_PATH));
        assert!(ServerAddr::unix(&dir, 5432).sock_addr().is_err());
    }
}
