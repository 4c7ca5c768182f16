//! From TOML text to a `Config`, reporting every problem at once.
//!
//! Serde's `deny_unknown_fields` stops at the first bad key, which makes fixing a config a
//! loop of restarts. So the text is first parsed to a `toml::Table` and walked: each key is
//! checked against the field names serde itself generated for the target struct (captured
//! with a tiny probing deserializer, so no hand-kept key list can drift), and each known key
//! is deserialized alone, through the very same serde code, to catch type errors. Only when
//! the walk found nothing is the whole table deserialized.
//!
//! Cross-key rules (pool sizes, auth needs a secret source...) are `validate`'s job, not this.

use super::entries::{Database, Peer, User};
use super::general::General;
use super::{Config, ConfigError};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use toml::{Table, Value};

const SECTIONS: &[&str] = &["general", "databases", "users", "peers"];

/// Parses TOML text into a `Config` without cross-key validation.
pub(crate) fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let root: Table = text
        .parse()
        .map_err(|e| ConfigError::one(format!("{origin}: {}", syntax_error(text, &e))))?;
    let problems = check_root(&root);
    if !problems.is_empty() {
        return Err(ConfigError::new(problems).located(origin));
    }
    Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::one(format!("{origin}: {}", e.message())))
}

fn syntax_error(text: &str, err: &toml::de::Error) -> String {
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", err.message().trim())
        }
        None => err.message().trim().to_owned(),
    }
}

fn check_root(root: &Table) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in root {
        match key.as_str() {
            "general" => check_general(value, &mut out),
            "databases" => check_entries::<Database>("databases", value, &mut out),
            "users" => check_entries::<User>("users", value, &mut out),
            "peers" => check_entries::<Peer>("peers", value, &mut out),
            _ => out.push(unknown_section(key, value)),
        }
    }
    out
}

fn check_general(value: &Value, out: &mut Vec<String>) {
    match value.as_table() {
        Some(table) => check_fields::<General>("[general]", table, out),
        None => out.push(format!(
            "general: expected a table [general], found {}",
            value.type_str()
        )),
    }
}

fn unknown_section(key: &str, value: &Value) -> String {
    if !value.is_table() && field_names::<General>().contains(&key) {
        return format!("{key}: settings go under [general]");
    }
    let hint = suggest(key, SECTIONS)
        .unwrap_or_else(|| " (expected general, databases, users, peers)".into());
    format!("[{key}]: unknown table{hint}")
}

fn check_entries<T: DeserializeOwned>(section: &str, value: &Value, out: &mut Vec<String>) {
    let Some(entries) = value.as_table() else {
        out.push(format!(
            "{section}: expected a table [{section}], found {}",
            value.type_str()
        ));
        return;
    };
    for (name, entry) in entries {
        let label = entry_label(section, name);
        match entry.as_table() {
            Some(table) => check_fields::<T>(&label, table, out),
            None => out.push(not_a_table(section, name, &label, entry)),
        }
    }
}

fn not_a_table(section: &str, name: &str, label: &str, entry: &Value) -> String {
    let ini = if entry.is_str() {
        " (pgbouncer.ini connection strings are not TOML: write host = ..., port = ... under it)"
    } else {
        ""
    };
    let found = entry.type_str();
    format!("[{section}] {name}: expected a table {label}, found {found}{ini}")
}

/// `[databases.bench]`, or `[databases."*"]` when the name is not a bare TOML key.
pub(crate) fn entry_label(section: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        format!("[{section}.{name}]")
    } else {
        format!("[{section}.{name:?}]")
    }
}

fn check_fields<T: DeserializeOwned>(label: &str, table: &Table, out: &mut Vec<String>) {
    let known = field_names::<T>();
    for (key, value) in table {
        if !known.contains(&key.as_str()) {
            let hint = suggest(key, known).unwrap_or_default();
            out.push(format!("{label} {key}: unknown key{hint}"));
        } else if let Err(message) = check_one::<T>(key, value) {
            out.push(format!("{label} {key}: {message}"));
        }
    }
}

/// Deserializes `T` from a table holding only `key`, so the error (if any) is about that key.
pub(crate) fn check_one<T: DeserializeOwned>(key: &str, value: &Value) -> Result<(), String> {
    let mut alone = Table::new();
    alone.insert(key.to_owned(), value.clone());
    Value::Table(alone)
        .try_into::<T>()
        .map(drop)
        .map_err(|e| plain_message(e.message(), value))
}

/// toml reports a number given for an enum (`pool_mode = 3`) as "invalid type: unit variant,
/// expected string only"; say what was expected instead.
fn plain_message(message: &str, value: &Value) -> String {
    if message.contains("unit variant") && !value.is_str() {
        return format!("expected a string, found {}", value.type_str());
    }
    message.trim().to_owned()
}

/// The field names serde derived for `T` (a struct), read from its `deserialize_struct` call.
pub(crate) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The probe always fails after recording the names; that error is expected and dropped.
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe: not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field probe: names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// ` (did you mean `listen_port`?)` when a known name is within a typo's reach.
pub(crate) fn suggest(key: &str, known: &[&str]) -> Option<String> {
    let limit = (key.len() / 4).clamp(1, 3);
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
}

/// Edit distance counting an adjacent swap as one edit (`hots` -> `host` is 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_serde_field_names() {
        let general = field_names::<General>();
        assert!(general.contains(&"listen_port"));
        assert!(general.contains(&"workers"));
        assert_eq!(field_names::<Database>().len(), 22);
        assert_eq!(field_names::<User>().len(), 10);
    }

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(edit_distance("lisen_port", "listen_port"), 1);
        assert_eq!(edit_distance("hots", "host"), 1);
        assert!(suggest("lisen_port", field_names::<General>())
            .unwrap()
            .contains("listen_port"));
        assert_eq!(suggest("frobnicate", field_names::<General>()), None);
    }
}
