//! pgbouncer.ini import: PgBouncer's own configuration file, read as it is and mapped onto the
//! same [`Config`] as the TOML, so `pgring /etc/pgbouncer/pgbouncer.ini` is a one-word swap.
//!
//! The file format is PgBouncer's (libusual's ini parser plus `src/loader.c`):
//! - `[pgbouncer]` keys are [`General`]'s names; values are bare text to the end of the line
//!   (no inline comments: a `;` inside `server_reset_query` is SQL), typed here by trying what
//!   the field accepts: the text itself, then a number, then a boolean (`0777` stays text, so
//!   `unix_socket_mode` reads it as octal, like PgBouncer's `strtol(.., 0)`).
//! - `[databases]`, `[users]` and `[peers]` lines are `name = key=value key='quoted value' ...`
//!   connection strings; `''` inside quotes is a quote (`cstr_get_pair`). `*` is the fallback database.
//!   The database key `reserve_pool` is PgBouncer's name for `reserve_pool_size`.
//! - `%include FILE` pastes another file in place; a relative FILE is taken relative to the
//!   including file (PgBouncer: the working directory), so a config tree works wherever pgring
//!   starts. Lines starting with `;` or `#` are comments. Later keys override earlier ones.
//!
//! Every problem is collected with its `file:line` before anything fails, as for TOML. A key
//! PgBouncer knows and pgring does not act on is reported by name, as a warning (`syslog`,
//! tuning knobs: none changes what clients or servers see). Values pgring cannot honour are
//! errors, since ignoring them would change behaviour: `target_session_attrs=read-only` here,
//! and (for both formats, in `validate::unsupported`) auth types pgring lacks.
//!
//! One deliberate default differs from the TOML: an INI file without `listen_addr` listens on
//! the unix socket only, as PgBouncer does (pgring's TOML default is `127.0.0.1`).

use super::entries::{Database, Peer, User};
use super::general::General;
use super::parse::{check_one, field_names, suggest};
use super::{Config, ConfigError};
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::Path;
use toml::{Table, Value};

/// Guards against `%include` loops; real configs nest one or two levels.
const MAX_INCLUDE_DEPTH: usize = 8;

/// The sections pgring reads.
const SECTIONS: &[&str] = &["pgbouncer", "databases", "users", "peers"];

/// PgBouncer `[pgbouncer]` keys that have no pgring field: each is reported as ignored, with
/// why (none of them changes what a client or server sees).
const PGBOUNCER_ONLY: &[(&str, &str)] = &[
    (
        "resolv_conf",
        "host names are resolved with the system resolver",
    ),
    ("sbuf_loopcnt", "a PgBouncer tuning knob"),
    (
        "client_tls_dheparams",
        "rustls has no finite-field DH: TLS 1.3 and ECDHE key exchange only",
    ),
    ("auth_ldap_options", "LDAP is not implemented"),
    ("service_name", "Windows only"),
    ("job_name", "Windows only"),
];

/// Where a line came from, printed `pgbouncer.ini:12`.
#[derive(Clone, Debug)]
struct Loc {
    file: String,
    line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One `key = value` line and the section it sits in (lower-cased).
#[derive(Debug)]
struct Line {
    loc: Loc,
    section: String,
    key: String,
    value: String,
}

/// Splits files into lines, following `%include`.
#[derive(Default)]
struct Reader {
    lines: Vec<Line>,
    problems: Vec<String>,
    section: String,
}

impl Reader {
    fn read_file(&mut self, path: &Path, depth: usize, from: Option<&Loc>) {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                let at = from.map_or_else(|| file.clone(), |l| format!("{l}: %include {file}"));
                self.problems.push(format!("{at}: cannot read: {e}"));
                return;
            }
        };
        for (i, raw) in text.lines().enumerate() {
            let loc = Loc {
                file: file.clone(),
                line: i + 1,
            };
            self.read_line(path, loc, raw.trim(), depth);
        }
    }

    fn read_line(&mut self, path: &Path, loc: Loc, line: &str, depth: usize) {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            return;
        }
        if let Some(target) = line.strip_prefix("%include") {
            return self.include(path, loc, target.trim(), depth);
        }
        if let Some(header) = line.strip_prefix('[') {
            match header.strip_suffix(']') {
                Some(name) => self.section = name.trim().to_ascii_lowercase(),
                None => self.problems.push(format!("{loc}: `{line}`: missing `]`")),
            }
            return;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => self.lines.push(Line {
                section: self.section.clone(),
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
                loc,
            }),
            _ => self
                .problems
                .push(format!("{loc}: `{line}`: expected `key = value`")),
        }
    }

    fn include(&mut self, path: &Path, loc: Loc, target: &str, depth: usize) {
        if target.is_empty() {
            self.problems
                .push(format!("{loc}: %include needs a file name"));
        } else if depth >= MAX_INCLUDE_DEPTH {
            self.problems.push(format!(
                "{loc}: %include {target}: nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)"
            ));
        } else {
            // `join` keeps an absolute target as it is.
            let full = path.parent().unwrap_or(Path::new("")).join(target);
            self.read_file(&full, depth + 1, Some(&loc));
        }
    }
}

/// Maps the lines onto the TOML shape (`general`, `databases`, `users`, `peers` tables).
struct Mapper {
    general: Table,
    databases: Table,
    users: Table,
    peers: Table,
    /// `General::default()` as TOML: a key missing from it is an `Option` that is unset.
    defaults: Table,
    problems: Vec<String>,
    warnings: Vec<String>,
}

/// Reads a pgbouncer.ini (and its includes) into a `Config`, without cross-key validation.
/// Returns it with the warnings about ignored keys in `Config::warnings`.
pub(crate) fn parse(path: &Path) -> Result<Config, ConfigError> {
    let mut reader = Reader::default();
    reader.read_file(path, 0, None);
    let mut mapper = Mapper {
        general: Table::new(),
        databases: Table::new(),
        users: Table::new(),
        peers: Table::new(),
        defaults: Table::try_from(General::default()).unwrap_or_default(),
        problems: reader.problems,
        warnings: Vec::new(),
    };
    for line in &reader.lines {
        mapper.line(line);
    }
    mapper.finish(path)
}

impl Mapper {
    fn line(&mut self, line: &Line) {
        match line.section.as_str() {
            "pgbouncer" => self.general_key(line),
            "databases" => {
                let table = self.entry::<Database>("databases", line);
                insert_entry(&mut self.databases, line, table);
            }
            "users" => {
                let table = self.entry::<User>("users", line);
                insert_entry(&mut self.users, line, table);
            }
            "peers" => {
                let table = self.entry::<Peer>("peers", line);
                insert_entry(&mut self.peers, line, table);
            }
            "" => self.problems.push(format!(
                "{}: {}: outside any section (settings go under [pgbouncer])",
                line.loc, line.key
            )),
            other => {
                let hint = suggest(other, SECTIONS)
                    .unwrap_or_else(|| " (expected pgbouncer, databases, users, peers)".into());
                self.problems
                    .push(format!("{}: [{other}]: unknown section{hint}", line.loc));
            }
        }
    }

    fn general_key(&mut self, line: &Line) {
        // PgBouncer matches `[pgbouncer]` keys case-insensitively.
        let key = line.key.to_ascii_lowercase();
        let at = format!("{}: [pgbouncer] {key}", line.loc);
        if let Some((_, why)) = PGBOUNCER_ONLY.iter().find(|(k, _)| *k == key) {
            return self
                .warnings
                .push(format!("{at}: ignored by pgring: {why}"));
        }
        let known = field_names::<General>();
        if !known.contains(&key.as_str()) {
            let hint = suggest(&key, known).unwrap_or_default();
            return self.problems.push(format!("{at}: unknown key{hint}"));
        }
        if line.value.is_empty() && !self.defaults.contains_key(&key) {
            // PgBouncer's "empty = unset" for optional settings (`auth_file =`).
            self.general.remove(&key);
            return;
        }
        match coerce::<General>(&key, &line.value) {
            Ok(value) => {
                self.general.insert(key, value);
            }
            Err(message) => self.problems.push(format!("{at}: {message}")),
        }
    }

    /// One `[databases]`, `[users]` or `[peers]` line as a table of typed values.
    fn entry<T: DeserializeOwned>(&mut self, section: &str, line: &Line) -> Table {
        let at = format!("{}: [{section}] {}", line.loc, line.key);
        let mut table = Table::new();
        let pairs = match connstr(&line.value) {
            Ok(pairs) => pairs,
            Err(message) => {
                self.problems.push(format!("{at}: {message}"));
                return table;
            }
        };
        let known = field_names::<T>();
        for (key, value) in pairs {
            let key = match (section, key.as_str()) {
                ("databases", "reserve_pool") => "reserve_pool_size".to_owned(),
                _ => key,
            };
            if section == "databases" && key == "target_session_attrs" {
                if value != "any" {
                    self.problems.push(format!(
                        "{at}: target_session_attrs={value}: not implemented by pgring"
                    ));
                }
            } else if !known.contains(&key.as_str()) {
                let hint = suggest(&key, known).unwrap_or_default();
                self.problems
                    .push(format!("{at}: {key}: unknown parameter{hint}"));
            } else {
                match coerce::<T>(&key, &value) {
                    Ok(v) => {
                        table.insert(key, v);
                    }
                    Err(message) => self.problems.push(format!("{at}: {key}: {message}")),
                }
            }
        }
        table
    }

    fn finish(mut self, path: &Path) -> Result<Config, ConfigError> {
        if !self.problems.is_empty() {
            return Err(ConfigError::new(self.problems));
        }
        // PgBouncer's default: no listen_addr = unix socket only.
        if !self.general.contains_key("listen_addr") {
            self.general
                .insert("listen_addr".into(), Value::String(String::new()));
        }
        let mut root = Table::new();
        root.insert("general".into(), Value::Table(self.general));
        root.insert("databases".into(), Value::Table(self.databases));
        root.insert("users".into(), Value::Table(self.users));
        root.insert("peers".into(), Value::Table(self.peers));
        let mut config: Config = Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| {
                ConfigError::one(format!("{}: {}", path.display(), e.message()))
            })?;
        config.warnings = self.warnings;
        Ok(config)
    }
}

fn insert_entry(out: &mut Table, line: &Line, table: Table) {
    out.insert(line.key.clone(), Value::Table(table));
}

/// Types a value as the field wants it: the text itself, else a number, else a boolean. The
/// error reported is the one for the reading the text most looks like.
fn coerce<T: DeserializeOwned>(key: &str, text: &str) -> Result<Value, String> {
    let as_text = Value::String(text.to_owned());
    let text_error = match check_one::<T>(key, &as_text) {
        Ok(()) => return Ok(as_text),
        Err(e) => e,
    };
    // Only a field that takes no text at all gets another reading: `0999` refused as a file
    // mode must not come back as the decimal 999.
    if !text_error.starts_with("invalid type") {
        return Err(text_error);
    }
    match typed(text) {
        Some(value) => check_one::<T>(key, &value).map(|()| value),
        None => Err(text_error),
    }
}

/// A number or a boolean in PgBouncer's spellings, if `text` is one.
fn typed(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::Integer(i));
    }
    if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
        return Some(Value::Float(f));
    }
    match text.to_ascii_lowercase().as_str() {
        "yes" | "on" | "true" => Some(Value::Boolean(true)),
        "no" | "off" | "false" => Some(Value::Boolean(false)),
        _ => None,
    }
}

/// Splits a PgBouncer connection string (`host=a port=5 connect_query='SELECT ''x'''`) into
/// pairs, as `cstr_get_pair` in PgBouncer's `src/loader.c` does: blanks separate pairs, blanks
/// are allowed around `=`, single quotes quote a value and `''` is a quote inside them.
fn connstr(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let key_end = rest.find(['=', ' ', '\t']).unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after = rest[key_end..].trim_start();
        let Some(after) = after.strip_prefix('=').filter(|_| !key.is_empty()) else {
            return Err(format!("syntax error in connection string near `{rest}`"));
        };
        let (value, tail) = connstr_value(after.trim_start())?;
        if value.is_empty() {
            return Err(format!("{key}: empty value"));
        }
        pairs.push((key.to_owned(), value));
        rest = tail.trim_start();
    }
    Ok(pairs)
}

/// One value, quoted or not, and what follows it.
fn connstr_value(text: &str) -> Result<(String, &str), String> {
    let Some(quoted) = text.strip_prefix('\'') else {
        let end = text.find([' ', '\t']).unwrap_or(text.len());
        return Ok((text[..end].to_owned(), &text[end..]));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            value.push(c);
        } else if chars.peek().is_some_and(|(_, n)| *n == '\'') {
            chars.next();
            value.push('\'');
        } else {
            return Ok((value, &quoted[i + 1..]));
        }
    }
    Err("unterminated quoted value in connection string".into())
}

#[cfg(test)]
#[path = "ini_tests.rs"]
mod tests;
