//! `auth_hba_file`: PgBouncer's subset of PostgreSQL's `pg_hba.conf`, used with
//! `auth_type = hba` to choose the authentication method per connection.
//!
//! What PgBouncer documents (doc/config.md, "HBA file format") is what this accepts:
//! - record types `local`, `host`, `hostssl`, `hostnossl`;
//! - databases `all`, `sameuser`, `@file`, names (comma-separated, quoted or not);
//! - users `all`, `@file`, names;
//! - addresses `all`, `ADDR/LEN` and `ADDR MASK`, IPv4 and IPv6;
//! - methods `trust`, `reject`, `md5`, `password`, `scram-sha-256`, `peer` and `cert`, the last
//!   two with an optional `map=` into `auth_ident_file` ([`IdentMap`], literal names).
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
        for (line, fields) in records(text) {
            match parse_rule(line, &fields, include) {
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

fn read(path: &Path) -> Result<String, HbaError> {
    std::fs::read_to_string(path).map_err(|source| HbaError::Io {
        path: path.to_owned(),
        source,
    })
}

/// One comma-separated item of a field, and whether it was quoted (a quoted keyword is a
/// plain name, as in PostgreSQL).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Item {
    text: String,
    quoted: bool,
}

/// The file's records: (first line, fields), each field its items. Comments (`#` outside
/// quotes) and blank lines are dropped; a line ending in a backslash continues on the next.
fn records(text: &str) -> Vec<(usize, Vec<Vec<Item>>)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    let mut first = 0;
    for (index, line) in text.lines().enumerate() {
        if pending.is_empty() {
            first = index + 1;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                let fields = fields(&pending);
                if !fields.is_empty() {
                    out.push((first, fields));
                }
                pending.clear();
            }
        }
    }
    if !pending.is_empty() {
        let fields = fields(&pending);
        if !fields.is_empty() {
            out.push((first, fields));
        }
    }
    out
}

/// Splits one record into whitespace-separated fields of comma-separated items.
fn fields(line: &str) -> Vec<Vec<Item>> {
    let mut fields: Vec<Vec<Item>> = Vec::new();
    let mut field: Vec<Item> = Vec::new();
    let mut item = Item {
        text: String::new(),
        quoted: false,
    };
    let (mut in_quotes, mut pending_comma) = (false, false);
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                item.quoted = true;
            }
            '#' if !in_quotes => break,
            ',' if !in_quotes => {
                field.push(std::mem::replace(
                    &mut item,
                    Item {
                        text: String::new(),
                        quoted: false,
                    },
                ));
                pending_comma = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                // A list may go on after a comma and spaces: `a, b`.
                if pending_comma && item.text.is_empty() && !item.quoted {
                    continue;
                }
                if !item.text.is_empty() || item.quoted {
                    field.push(std::mem::replace(
                        &mut item,
                        Item {
                            text: String::new(),
                            quoted: false,
                        },
                    ));
                }
                if !field.is_empty() {
                    fields.push(std::mem::take(&mut field));
                }
            }
            c => {
                item.text.push(c);
                pending_comma = false;
            }
        }
    }
    if !item.text.is_empty() || item.quoted {
        field.push(item);
    }
    if !field.is_empty() {
        fields.push(field);
    }
    fields
}

fn parse_rule(
    line: usize,
    fields: &[Vec<Item>],
    include: &dyn Fn(&str) -> Result<String, HbaError>,
) -> Result<Rule, HbaError> {
    let bad = |why: String| HbaError::Lines(vec![format!("line {line}: {why}")]);
    let word = |i: usize, what: &str| -> Result<&Item, HbaError> {
        match fields.get(i).map(Vec::as_slice) {
            Some([one]) => Ok(one),
            Some(_) => Err(bad(format!("{what} must be one word"))),
            None => Err(bad(format!("missing {what}"))),
        }
    };
    let kind = match word(0, "record type")?.text.as_str() {
        "local" => Kind::Local,
        "host" => Kind::Host,
        "hostssl" => Kind::HostSsl,
        "hostnossl" => Kind::HostNoSsl,
        other => return Err(bad(format!("unsupported record type \"{other}\""))),
    };
    let from = |i: usize| fields.get(i..).unwrap_or_default();
    let databases = names(from(1), "database", include).map_err(&bad)?;
    let users = names(from(2), "user", include).map_err(&bad)?;
    let mut next = 3;
    let address = if kind == Kind::Local {
        Address::None
    } else {
        let (address, used) = address(from(3)).map_err(&bad)?;
        next += used;
        address
    };
    let method = method(&word(next, "authentication method")?.text).map_err(&bad)?;
    let mut map = None;
    for option in fields.iter().skip(next + 1).flatten() {
        match option.text.split_once('=') {
            Some(("map", name)) if matches!(method, Method::Peer | Method::Cert) => {
                map = Some(name.to_owned())
            }
            _ => {
                return Err(bad(format!(
                    "option \"{}\" is not supported (only map= on peer and cert rules)",
                    option.text
                )))
            }
        }
    }
    if method == Method::Peer && kind != Kind::Local {
        return Err(bad(
            "peer authentication works on local (unix socket) rules only".into(),
        ));
    }
    if method == Method::Cert && kind == Kind::Local {
        return Err(bad(
            "cert authentication needs TLS, which the unix socket has not".into(),
        ));
    }
    Ok(Rule {
        line,
        kind,
        databases,
        users,
        address,
        method,
        map,
    })
}

/// `auth_ident_file` (pg_ident.conf format): `MAP SYSTEM-USERNAME DATABASE-USERNAME` lines,
/// which let an hba rule's `map=` admit an OS user (`peer`) or certificate name (`cert`) as a
/// user of another name. Literal names only (PostgreSQL's `/regex` form is refused).
#[derive(Clone, Debug, Default)]
pub struct IdentMap {
    entries: Vec<(String, String, String)>,
}

impl IdentMap {
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<IdentMap, HbaError> {
        IdentMap::parse(&read(path)?)
    }

    /// Parses the file's text; every bad line is reported.
    pub fn parse(text: &str) -> Result<IdentMap, HbaError> {
        let (mut entries, mut problems) = (Vec::new(), Vec::new());
        for (line, fields) in records(text) {
            let words: Vec<&Item> = fields.iter().flatten().collect();
            match words.as_slice() {
                [_, system, _] if system.text.starts_with('/') && !system.quoted => {
                    problems.push(format!(
                        "line {line}: regular expression \"{}\" is not supported",
                        system.text
                    ))
                }
                [map, system, user] if fields.len() == 3 => {
                    entries.push((map.text.clone(), system.text.clone(), user.text.clone()))
                }
                _ => problems.push(format!(
                    "line {line}: expected MAP SYSTEM-USERNAME DATABASE-USERNAME"
                )),
            }
        }
        if problems.is_empty() {
            Ok(IdentMap { entries })
        } else {
            Err(HbaError::Lines(problems))
        }
    }

    /// Whether map `map` lets `system` log in as `user`.
    pub fn allows(&self, map: &str, system: &str, user: &str) -> bool {
        self.entries
            .iter()
            .any(|(m, s, u)| m == map && s == system && u == user)
    }

    /// Whether the file defines map `map`.
    pub fn has(&self, map: &str) -> bool {
        self.entries.iter().any(|(m, _, _)| m == map)
    }
}

/// A database or user field (the first of `fields`), with `@file`s read in.
fn names(
    fields: &[Vec<Item>],
    what: &str,
    include: &dyn Fn(&str) -> Result<String, HbaError>,
) -> Result<Vec<Name>, String> {
    let items = fields.first().ok_or_else(|| format!("missing {what}"))?;
    let mut out = Vec::new();
    for item in items {
        if item.quoted {
            out.push(Name::Literal(item.text.clone()));
            continue;
        }
        match (item.text.as_str(), what) {
            ("all", _) => out.push(Name::All),
            ("sameuser", "database") => out.push(Name::SameUser),
            (file, _) if file.starts_with('@') => {
                let text = include(&file[1..]).map_err(|e| e.to_string())?;
                out.extend(listed_names(&text));
            }
            (kw @ ("replication" | "samerole" | "samegroup"), "database") => {
                return Err(format!("database keyword \"{kw}\" is not supported"))
            }
            (group, "user") if group.starts_with('+') => {
                return Err(format!("group membership \"{group}\" is not supported"))
            }
            (re, _) if re.starts_with('/') => {
                return Err(format!("regular expression \"{re}\" is not supported"))
            }
            (name, _) => out.push(Name::Literal(name.to_owned())),
        }
    }
    Ok(out)
}

/// The names an `@file` lists: separated by spaces, newlines or commas, `#` comments.
fn listed_names(text: &str) -> impl Iterator<Item = Name> + '_ {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|n| !n.is_empty())
        .map(|n| Name::Literal(n.trim_matches('"').to_owned()))
}

/// The address of a host rule: `all`, `ADDR/LEN`, or `ADDR MASK` (two fields). Returns it
/// with the number of fields it took.
fn address(fields: &[Vec<Item>]) -> Result<(Address, usize), String> {
    let Some([item]) = fields.first().map(Vec::as_slice) else {
        return Err("missing address (or more than one)".into());
    };
    let text = item.text.as_str();
    if text == "all" && !item.quoted {
        return Ok((Address::All, 1));
    }
    if let Some((addr, len)) = text.split_once('/') {
        let base: IpAddr = ip(addr)?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = len
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("invalid prefix length \"{len}\" in \"{text}\""))?;
        return Ok((Address::Net { base, prefix }, 1));
    }
    let base = ip(text)?;
    let mask_item = match fields.get(1).map(Vec::as_slice) {
        Some([m]) => m.text.as_str(),
        _ => return Err(format!("address \"{text}\" needs a /LEN or a mask")),
    };
    let prefix = mask_prefix(ip(mask_item)?, base)
        .ok_or_else(|| format!("invalid mask \"{mask_item}\" for \"{text}\""))?;
    Ok((Address::Net { base, prefix }, 2))
}

fn ip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| {
        if matches!(text, "samehost" | "samenet") || text.starts_with('.') {
            format!("address \"{text}\" is not supported")
        } else {
            format!("invalid address \"{text}\" (host names are not supported)")
        }
    })
}

/// A netmask's prefix length: its ones must be contiguous and its family the address's.
fn mask_prefix(mask: IpAddr, base: IpAddr) -> Option<u8> {
    let (bits, width) = match (mask, base) {
        (IpAddr::V4(m), IpAddr::V4(_)) => (u128::from(u32::from(m)) << 96, 32),
        (IpAddr::V6(m), IpAddr::V6(_)) => (u128::from(m), 128),
        _ => return None,
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0 && ones <= width).then_some(ones as u8)
}

fn method(text: &str) -> Result<Method, String> {
    Ok(match text {
        "trust" => Method::Trust,
        "reject" => Method::Reject,
        "md5" => Method::Md5,
        "password" => Method::Password,
        "scram-sha-256" => Method::Scram,
        "peer" => Method::Peer,
        "cert" => Method::Cert,
        other => return Err(format!("unsupported authentication method \"{other}\"")),
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
mod tests {
    use super::*;

    fn no_files(name: &str) -> Result<String, HbaError> {
        Err(HbaError::Lines(vec![format!("no file {name}")]))
    }

    fn hba(text: &str) -> Hba {
        Hba::parse(text, &no_files).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(text: &str) -> String {
        match Hba::parse(text, &no_files) {
            Ok(h) => panic!("parsed: {h:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn host(ip: &str) -> Peer {
        Peer::Host {
            addr: ip.parse().unwrap(),
            tls: false,
        }
    }

    fn host_tls(ip: &str) -> Peer {
        Peer::Host {
            addr: ip.parse().unwrap(),
            tls: true,
        }
    }

    fn method_of(h: &Hba, peer: Peer, db: &str, user: &str) -> Option<Method> {
        h.method(peer, db, user).map(|d| d.method)
    }

    #[test]
    fn the_first_matching_rule_decides_and_no_match_refuses() {
        let h = hba("\
# TYPE  DATABASE  USER   ADDRESS        METHOD
local   all       all                   peer
host    app       bob    10.0.0.0/8     reject
host    app       all    10.0.0.0/8     md5
host    all       admin  127.0.0.1/32   trust
hostnossl all     all    ::1/128        scram-sha-256
host    all       all    192.168.1.0 255.255.255.0 password
");
        assert_eq!(h.len(), 6);
        assert_eq!(method_of(&h, Peer::Local, "app", "x"), Some(Method::Peer));
        assert_eq!(
            method_of(&h, host("10.1.2.3"), "app", "bob"),
            Some(Method::Reject)
        );
        assert_eq!(
            method_of(&h, host("10.1.2.3"), "app", "eve"),
            Some(Method::Md5)
        );
        assert_eq!(method_of(&h, host("10.1.2.3"), "other", "eve"), None);
        assert_eq!(
            method_of(&h, host("127.0.0.1"), "x", "admin"),
            Some(Method::Trust)
        );
        assert_eq!(method_of(&h, host("127.0.0.2"), "x", "admin"), None);
        assert_eq!(method_of(&h, host("::1"), "x", "y"), Some(Method::Scram));
        assert_eq!(
            method_of(&h, host("192.168.1.77"), "x", "y"),
            Some(Method::Password)
        );
        assert_eq!(method_of(&h, host("192.168.2.77"), "x", "y"), None);
        assert_eq!(
            h.method(host("10.0.0.1"), "app", "bob").map(|d| d.line),
            Some(3)
        );
    }

    #[test]
    fn lists_keywords_quotes_and_sameuser() {
        let h = hba("\
host  sameuser          all        all  trust
host  \"all\",b         u1,\"u2\"  all  md5
host  c, d              all        all  password
");
        assert_eq!(
            method_of(&h, host("1.2.3.4"), "al", "al"),
            Some(Method::Trust)
        );
        // A quoted keyword is a name: only the database called "all" matches.
        assert_eq!(
            method_of(&h, host("1.2.3.4"), "all", "u2"),
            Some(Method::Md5)
        );
        assert_eq!(method_of(&h, host("1.2.3.4"), "b", "u1"), Some(Method::Md5));
        assert_eq!(method_of(&h, host("1.2.3.4"), "x", "u1"), None);
        assert_eq!(
            method_of(&h, host("1.2.3.4"), "d", "z"),
            Some(Method::Password)
        );
    }

    #[test]
    fn hostssl_needs_tls_hostnossl_refuses_it_and_local_needs_the_socket() {
        let h =
            hba("hostssl all all all trust\nhostnossl all all all md5\nlocal all all password\n");
        assert_eq!(
            method_of(&h, host_tls("127.0.0.1"), "d", "u"),
            Some(Method::Trust)
        );
        assert_eq!(
            method_of(&h, host("127.0.0.1"), "d", "u"),
            Some(Method::Md5)
        );
        assert_eq!(method_of(&h, Peer::Local, "d", "u"), Some(Method::Password));
        let h = hba("hostnossl all all all md5\n");
        assert_eq!(method_of(&h, host_tls("127.0.0.1"), "d", "u"), None);
    }

    #[test]
    fn a_v4_client_on_a_v6_socket_matches_v4_rules() {
        let h = hba("host all all 127.0.0.0/8 trust\n");
        assert_eq!(
            method_of(&h, host("::ffff:127.0.0.1"), "d", "u"),
            Some(Method::Trust)
        );
    }

    #[test]
    fn continuation_lines_and_comments() {
        let h = hba("host all \\\n  all 0.0.0.0/0 \\\n  md5 # trailing\n\n   # only a comment\n");
        assert_eq!(h.len(), 1);
        assert_eq!(method_of(&h, host("8.8.8.8"), "d", "u"), Some(Method::Md5));
    }

    #[test]
    fn at_files_are_read_relative_to_the_hba_file() {
        let dir = std::env::temp_dir().join(format!("pgring-hba-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admins"), "alice, bob # the admins\ncarol\n").unwrap();
        std::fs::write(dir.join("hba.conf"), "host all @admins all trust\n").unwrap();
        let h = Hba::load(&dir.join("hba.conf")).unwrap();
        for user in ["alice", "bob", "carol"] {
            assert_eq!(
                method_of(&h, host("1.1.1.1"), "d", user),
                Some(Method::Trust)
            );
        }
        assert_eq!(method_of(&h, host("1.1.1.1"), "d", "dave"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn what_pgring_cannot_honour_is_refused_with_its_line() {
        let found = problems(
            "\
host replication all all trust
host all +staff all trust
host all all db.example.com trust
local all all cert
local all all peer clientcert=verify-full
hostgssenc all all all trust
host all all 10.0.0.0/33 trust
host all all 10.0.0.1 255.0.255.0 trust
host all all all peer
host all all
",
        );
        for needle in [
            "line 1: database keyword \"replication\"",
            "line 2: group membership \"+staff\"",
            "line 3: invalid address \"db.example.com\"",
            "line 4: cert authentication needs TLS",
            "line 5: option \"clientcert=verify-full\"",
            "line 6: unsupported record type \"hostgssenc\"",
            "line 7: invalid prefix length",
            "line 8: invalid mask",
            "line 9: peer authentication works on local",
            "line 10: missing address",
        ] {
            assert!(found.contains(needle), "{needle} missing from:\n{found}");
        }
    }

    #[test]
    fn ident_maps_admit_listed_pairs_and_rules_carry_their_map() {
        let ident = IdentMap::parse("# comment\nops  alice  app\nops bob \"app\"\n").unwrap();
        assert!(ident.allows("ops", "alice", "app"));
        assert!(ident.allows("ops", "bob", "app"));
        assert!(!ident.allows("ops", "alice", "bob"));
        assert!(!ident.allows("dev", "alice", "app"));
        assert!(ident.has("ops") && !ident.has("dev"));
        let bad = IdentMap::parse("ops /^(.*)$ \\1\nops alice\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("line 1: regular expression"), "{bad}");
        assert!(bad.contains("line 2: expected MAP"), "{bad}");

        let h = hba("local all all peer map=ops\nhostssl all all all cert map=certs\n");
        let d = h.method(Peer::Local, "d", "u").unwrap();
        assert_eq!((d.method, d.map), (Method::Peer, Some("ops")));
        assert_eq!(h.maps().collect::<Vec<_>>(), [("ops", 1), ("certs", 2)]);
        let found = problems("host all all all md5 map=ops\n");
        assert!(
            found.contains("only map= on peer and cert rules"),
            "{found}"
        );
    }

    #[test]
    fn masks_become_prefixes() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(mask_prefix(v4("255.255.255.0"), v4("1.2.3.0")), Some(24));
        assert_eq!(mask_prefix(v4("0.0.0.0"), v4("1.2.3.0")), Some(0));
        assert_eq!(mask_prefix(v4("255.255.255.255"), v4("1.2.3.0")), Some(32));
        assert_eq!(mask_prefix(v4("255.0.255.0"), v4("1.2.3.0")), None);
        assert_eq!(mask_prefix(v4("ffff:ffff::"), v4("fe80::")), Some(32));
        assert_eq!(mask_prefix(v4("255.0.0.0"), v4("fe80::")), None);
    }
}
