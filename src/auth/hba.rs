//! `auth_hba_file`: PgBouncer's subset of PostgreSQL's `pg_hba.conf`, used with
//! `auth_type = hba` to choose the authentication method per connection.
//!
//! What PgBouncer documents (doc/config.md, "HBA file format") is what this accepts:
//! - record types `local`, `host`, `hostssl`, `hostnossl`;
//! - databases `all`, `sameuser`, `@file`, names (comma-separated, quoted or not);
//! - users `all`, `@file`, names;
//! - addresses `all`, `ADDR/LEN` and `ADDR MASK`, IPv4 and IPv6;
//! - methods `trust`, `reject`, `md5`, `password`, `scram-sha-256`, `peer` and `cert`, the last
//!   two with an optional `map=` into `auth_ident_file` ([`IdentMap`](crate::auth::ident::IdentMap), literal names).
//!
//! Everything else (`replication`, `samerole`, `+group`, regular expressions, host names,
//! `samehost`, other options, `include` directives) is refused with its line number rather
//! than read loosely: a rule pgring cannot honour would let in or keep out clients the
//! operator did not mean to. As in PostgreSQL, the
//! first rule matching the connection decides, and a connection no rule matches is refused.
//!
//! The file is read once at start and at each reload (with `auth_file`, see
//! `runtime::files`); a login only walks the parsed rules. This module does no
//! I/O at login and knows nothing of sockets: callers describe the connection as a [`Peer`].

pub(crate) mod parse;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What a rule lets a matching connection do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// In without a password.
    Trust,
    /// Refused.
    Reject,
    /// MD5 challenge (SCRAM when the secret is a SCRAM verifier, as with `auth_type = md5`).
    Md5,
    /// Cleartext password (`password`; `auth_type = plain`).
    Password,
    /// SCRAM-SHA-256.
    Scram,
    /// Unix socket peer whose OS user name is the login user name.
    Peer,
    /// TLS client certificate whose CommonName is the login user name.
    Cert,
}

/// The connection being judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Over the unix socket.
    Local,
    /// Over TCP.
    Host {
        /// The client's address.
        addr: IpAddr,
        /// Whether it speaks TLS (`hostssl` rules need it, `hostnossl` rules refuse it).
        tls: bool,
    },
}

/// Why the file could not be read: every problem, each with its line.
#[derive(Debug, thiserror::Error)]
pub enum HbaError {
    /// The file (or an `@file` it names) could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Lines that are not rules pgring can honour.
    #[error("{}", .0.join("; "))]
    Lines(Vec<String>),
}

/// The parsed file: rules in file order.
#[derive(Clone, Debug, Default)]
pub struct Hba {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    /// 1-based line in the file, for the log.
    line: usize,
    kind: Kind,
    databases: Vec<Name>,
    users: Vec<Name>,
    address: Address,
    method: Method,
    /// `map=NAME` (peer and cert): the `auth_ident_file` map that says which OS user or
    /// certificate name may log in as which user.
    map: Option<String>,
}

/// The rule a connection matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Its method.
    pub method: Method,
    /// Its line in the file (for the log).
    pub line: usize,
    /// Its `map=`, if any.
    pub map: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Name {
    All,
    /// Databases only: the database named like the user.
    SameUser,
    Literal(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Address {
    /// `local` rules carry none.
    None,
    All,
    Net {
        base: IpAddr,
        prefix: u8,
    },
}

impl Hba {
    /// Reads the file at `path`; `@file` names are relative to its directory.
    pub fn load(path: &Path) -> Result<Hba, HbaError> {
        let text = read(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Hba::parse(&text, &|name| read(&dir.join(name)))
    }

    /// Parses rules; `include` reads an `@file`.
    pub fn parse(
        text: &str,
        include: &dyn Fn(&str) -> Result<String, HbaError>,
    ) -> Result<Hba, HbaError> {
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for (line, fields) in parse::records(text) {
            match parse::parse_rule(line, &fields, include) {
                Ok(rule) => rules.push(rule),
                Err(HbaError::Lines(p)) => problems.extend(p),
                Err(e) => problems.push(format!("line {line}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(Hba { rules })
        } else {
            Err(HbaError::Lines(problems))
        }
    }

    /// The method of the first rule matching, with that rule's line; `None` when no rule
    /// matches (the connection is refused).
    pub fn method(&self, peer: Peer, db: &str, user: &str) -> Option<Decision<'_>> {
        self.rules
            .iter()
            .find(|r| r.matches(peer, db, user))
            .map(|r| Decision {
                method: r.method,
                line: r.line,
                map: r.map.as_deref(),
            })
    }

    /// The `map=` names the rules use, with their lines (checked against `auth_ident_file`).
    pub fn maps(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.rules
            .iter()
            .filter_map(|r| r.map.as_deref().map(|m| (m, r.line)))
    }

    /// How many rules the file holds.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the file holds no rule (every connection is refused).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Rule {
    fn matches(&self, peer: Peer, db: &str, user: &str) -> bool {
        let kind = match (self.kind, peer) {
            (Kind::Local, Peer::Local) => true,
            (Kind::Host, Peer::Host { addr, .. })
            | (Kind::HostSsl, Peer::Host { addr, tls: true })
            | (Kind::HostNoSsl, Peer::Host { addr, tls: false }) => self.address.contains(addr),
            _ => false,
        };
        kind && self.databases.iter().any(|n| n.matches(db, Some(user)))
            && self.users.iter().any(|n| n.matches(user, None))
    }
}

impl Name {
    /// `user` is given when matching a database (for `sameuser`).
    fn matches(&self, name: &str, user: Option<&str>) -> bool {
        match self {
            Name::All => true,
            Name::SameUser => user == Some(name),
            Name::Literal(n) => n == name,
        }
    }
}

impl Address {
    fn contains(self, ip: IpAddr) -> bool {
        match self {
            Address::None => false,
            Address::All => true,
            Address::Net { base, prefix } => in_net(canonical(ip), base, prefix),
        }
    }
}

/// A v4 client seen on a v6 socket (`::ffff:a.b.c.d`) is matched as the v4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, base: IpAddr, prefix: u8) -> bool {
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

pub(crate) fn read(path: &Path) -> Result<String, HbaError> {
    std::fs::read_to_string(path).map_err(|source| HbaError::Io {
        path: path.to_owned(),
        source,
    })
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Trust => "trust",
            Method::Reject => "reject",
            Method::Md5 => "md5",
            Method::Password => "password",
            Method::Scram => "scram-sha-256",
            Method::Peer => "peer",
            Method::Cert => "cert",
        })
    }
}

#[cfg(test)]
mod tests;
