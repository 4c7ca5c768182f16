//! Reading `auth_hba_file`: records (comments, quotes, continuation lines, comma lists) and
//! the rules they spell, every unsupported form refused with its line. The record reader is
//! shared with `auth_ident_file` (`auth::ident`).

use std::net::IpAddr;

use super::{Address, HbaError, Kind, Method, Name, Rule};

/// One comma-separated item of a field, and whether it was quoted (a quoted keyword is a
/// plain name, as in PostgreSQL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) text: String,
    pub(crate) quoted: bool,
}

impl Item {
    /// Anything read: text, or a pair of quotes (an empty quoted name).
    fn is_some(&self) -> bool {
        !self.text.is_empty() || self.quoted
    }
}

/// The file's records: (first line, fields), each field its items. Comments (`#` outside
/// quotes) and blank lines are dropped; a line ending in a backslash continues on the next.
pub(crate) fn records(text: &str) -> Vec<(usize, Vec<Vec<Item>>)> {
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
    let mut item = Item::default();
    let (mut in_quotes, mut pending_comma) = (false, false);
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                item.quoted = true;
            }
            '#' if !in_quotes => break,
            ',' if !in_quotes => {
                field.push(std::mem::take(&mut item));
                pending_comma = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                // A list may go on after a comma and spaces: `a, b`.
                if pending_comma && item.text.is_empty() && !item.quoted {
                    continue;
                }
                if item.is_some() {
                    field.push(std::mem::take(&mut item));
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
    if item.is_some() {
        field.push(item);
    }
    if !field.is_empty() {
        fields.push(field);
    }
    fields
}

pub(super) fn parse_rule(
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
pub(super) fn mask_prefix(mask: IpAddr, base: IpAddr) -> Option<u8> {
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
