//! PgBouncer's `auth_file` (userlist.txt): who may log in, and the secret each user has.
//!
//! The format is PgBouncer's (`load_auth_file()` in `src/loader.c`): one
//! `"user" "secret"` per line, each field in double quotes with `""` standing for a quote
//! inside it, whitespace around the fields, and the rest of the line after the secret
//! ignored (PgBouncer documents this). Lines that are blank or whose first non-blank
//! character is `;` are comments; we also accept `#`, which PgBouncer would reject.
//!
//! Where PgBouncer is lax we are strict, because its laxness loses users silently: on a
//! line it cannot parse it logs "broken auth file" and stops, keeping only the users read
//! so far. We reject the whole file instead and say which line and why, so a reload can
//! keep the previous list. Also stricter: text other than whitespace between the two
//! fields, an empty user name, and a secret that starts like a SCRAM verifier but does not
//! parse (PgBouncer would silently treat it as a plaintext password). As in PgBouncer, a
//! user listed twice keeps the last secret.
//!
//! This module only reads the file; deciding which auth method a secret allows is the
//! caller's, with the help of [`crate::auth::md5`] and [`crate::auth::scram`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::auth::md5::is_md5_secret;
use crate::auth::scram::Verifier;

/// PgBouncer's `MAX_USERNAME` (128) less its trailing NUL: the longest user name field,
/// measured as written in the file (before `""` is unescaped), as PgBouncer measures it.
pub const MAX_USERNAME_LEN: usize = 127;

/// PgBouncer's `MAX_PASSWORD` (2048) less its trailing NUL, measured the same way.
pub const MAX_SECRET_LEN: usize = 2047;

/// A user's stored secret, classified the way PostgreSQL and PgBouncer classify it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plaintext password: allows md5 and SCRAM, both as server and as client.
    Plain(String),
    /// The full `md5...` text (35 characters): allows md5 only.
    Md5(String),
    /// A SCRAM-SHA-256 verifier: allows SCRAM only; logging into PostgreSQL with it needs
    /// the ClientKey recovered from the client's own SCRAM login (pass-through).
    Scram(Verifier),
}

impl Secret {
    /// Classifies a secret string: an md5 hash, a SCRAM verifier, or else a plaintext
    /// password, following PostgreSQL's `get_password_type()`.
    pub fn parse(text: &str) -> Secret {
        if is_md5_secret(text) {
            Secret::Md5(text.to_owned())
        } else if let Some(verifier) = Verifier::parse(text) {
            Secret::Scram(verifier)
        } else {
            Secret::Plain(text.to_owned())
        }
    }
}

// Secrets end up inside structs that get logged; their Debug must never show them.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
            Secret::Md5(_) => f.write_str("Md5(<redacted>)"),
            Secret::Scram(verifier) => f.debug_tuple("Scram").field(verifier).finish(),
        }
    }
}

/// Why the auth_file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum UserListError {
    /// The file could not be read at all.
    #[error("could not open auth_file {}: {source}", path.display())]
    Io {
        /// The path that was being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is malformed; `line` counts from 1.
    #[error("broken auth file at line {line}: {reason}")]
    Line {
        /// One-based line number.
        line: usize,
        /// What is wrong with it.
        reason: LineError,
    },
}

/// What is wrong with one line of the auth_file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The file is not valid UTF-8 (the line holds the first invalid byte).
    #[error("not valid UTF-8")]
    NotUtf8,
    /// The line does not start with a `"`.
    #[error("expected '\"' at the start of the user name")]
    ExpectedUser,
    /// Nothing but whitespace follows the user name.
    #[error("missing secret after the user name")]
    MissingSecret,
    /// Something other than whitespace sits between the two fields.
    #[error("expected '\"' at the start of the secret")]
    ExpectedSecret,
    /// A field's closing quote is missing before the end of the line.
    #[error("unterminated quoted string")]
    Unterminated,
    /// The user name field is empty.
    #[error("empty user name")]
    EmptyUser,
    /// The user name field exceeds [`MAX_USERNAME_LEN`].
    #[error("user name too long (maximum {MAX_USERNAME_LEN} bytes)")]
    UserTooLong,
    /// The secret field exceeds [`MAX_SECRET_LEN`].
    #[error("password too long (maximum {MAX_SECRET_LEN} bytes)")]
    SecretTooLong,
    /// The secret starts with `SCRAM-SHA-256$` but is not a valid verifier.
    #[error("malformed SCRAM-SHA-256 secret")]
    MalformedScram,
}

/// The parsed auth_file: a map from user name to [`Secret`].
#[derive(Debug, Clone, Default)]
pub struct UserList {
    users: HashMap<String, Secret>,
}

impl UserList {
    /// Parses auth_file text, failing on the first malformed line.
    pub fn parse(text: &str) -> Result<UserList, UserListError> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let entry = parse_line(line).map_err(|reason| UserListError::Line {
                line: index + 1,
                reason,
            })?;
            if let Some((user, secret)) = entry {
                users.insert(user, secret);
            }
        }
        Ok(UserList { users })
    }

    /// Reads and parses the auth_file at `path`.
    ///
    /// This is the one blocking read in the auth module; call it at startup or reload,
    /// never from a shard's hot path.
    pub fn load(path: &Path) -> Result<UserList, UserListError> {
        let bytes = std::fs::read(path).map_err(|source| UserListError::Io {
            path: path.to_owned(),
            source,
        })?;
        match std::str::from_utf8(&bytes) {
            Ok(text) => UserList::parse(text),
            Err(error) => Err(UserListError::Line {
                line: line_of_offset(&bytes, error.valid_up_to()),
                reason: LineError::NotUtf8,
            }),
        }
    }

    /// The secret for `user`, if the file lists them.
    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    /// How many users the file lists.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file lists no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every user and secret, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> + '_ {
        self.users
            .iter()
            .map(|(user, secret)| (user.as_str(), secret))
    }
}

/// One line: `Ok(None)` for blank and comment lines, the entry otherwise.
fn parse_line(line: &str) -> Result<Option<(String, Secret)>, LineError> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
        return Ok(None);
    }
    let user = quoted_field(line, LineError::ExpectedUser)?;
    let rest = user.rest.trim_start();
    if rest.is_empty() {
        return Err(LineError::MissingSecret);
    }
    // Whatever follows the secret is ignored, as PgBouncer documents.
    let secret = quoted_field(rest, LineError::ExpectedSecret)?;
    check_field(&user, MAX_USERNAME_LEN, LineError::UserTooLong)?;
    check_field(&secret, MAX_SECRET_LEN, LineError::SecretTooLong)?;
    if user.value.is_empty() {
        return Err(LineError::EmptyUser);
    }
    Ok(Some((user.value, classify(&secret.value)?)))
}

/// [`Secret::parse`], except that a broken SCRAM verifier is an error, not a password.
fn classify(secret: &str) -> Result<Secret, LineError> {
    match Secret::parse(secret) {
        Secret::Plain(_) if secret.starts_with("SCRAM-SHA-256$") => Err(LineError::MalformedScram),
        parsed => Ok(parsed),
    }
}

/// One `"..."` field, unescaped.
struct Field<'a> {
    value: String,
    /// Length between the quotes as written, which is what PgBouncer's limits measure.
    raw_len: usize,
    /// The line after the closing quote.
    rest: &'a str,
}

/// Reads the `"..."` field at the start of `text`, unescaping `""`; `missing` is the
/// error when `text` does not open with a quote.
fn quoted_field(text: &str, missing: LineError) -> Result<Field<'_>, LineError> {
    let body = text.strip_prefix('"').ok_or(missing)?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((raw_len, c)) = chars.next() {
        if c != '"' {
            value.push(c);
        } else if chars.as_str().starts_with('"') {
            // `""` is a literal quote; skip its second half.
            chars.next();
            value.push('"');
        } else {
            let rest = chars.as_str();
            return Ok(Field {
                value,
                raw_len,
                rest,
            });
        }
    }
    Err(LineError::Unterminated)
}

fn check_field(field: &Field<'_>, max: usize, too_long: LineError) -> Result<(), LineError> {
    if field.raw_len > max {
        Err(too_long)
    } else {
        Ok(())
    }
}

/// One-based line number of byte `offset`.
fn line_of_offset(bytes: &[u8], offset: usize) -> usize {
    let before = bytes.get(..offset).unwrap_or(bytes);
    1 + before.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE_SCRAM: &str = "SCRAM-SHA-256$4096:8HA+cfqaJxBptOk0/T+2NA==$z3uUF1fCLGDlN3wU0gJVzmngMzc88RvUWEGLMMlGzOc=:vGGpFsGCpZkCRP0YCc+lsc1rfTM61sVrbA5IrgkJB/k=";

    fn line_error(text: &str) -> (usize, LineError) {
        match UserList::parse(text) {
            Err(UserListError::Line { line, reason }) => (line, reason),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn parses_all_three_secret_kinds() {
        let text = format!(
            "\"plain\" \"secret\"\n\"hashed\" \"md553f48b7c4b76a86ce72276c5755f217d\"\n\"alice\" \"{ALICE_SCRAM}\"\n"
        );
        let list = UserList::parse(&text).expect("valid file");
        assert_eq!(list.len(), 3);
        assert_eq!(list.get("plain"), Some(&Secret::Plain("secret".into())));
        assert_eq!(
            list.get("hashed"),
            Some(&Secret::Md5("md553f48b7c4b76a86ce72276c5755f217d".into()))
        );
        let Some(Secret::Scram(verifier)) = list.get("alice") else {
            panic!("alice should have a SCRAM secret");
        };
        assert_eq!(verifier.iterations, 4096);
        assert_eq!(list.get("nobody"), None);
    }

    #[test]
    fn unescapes_doubled_quotes_and_keeps_spaces() {
        let list = UserList::parse(r#""we""ird user" "pa""ss word""""#).expect("valid");
        assert_eq!(
            list.get("we\"ird user"),
            Some(&Secret::Plain("pa\"ss word\"".into()))
        );
    }

    #[test]
    fn skips_comments_blank_lines_and_trailing_text() {
        let text = "; pgbouncer comment\n# hash comment\n\n   \n\t\"a\"\t\"x\" trailing junk\r\n  ;\"b\" \"y\"\n";
        let list = UserList::parse(text).expect("valid");
        assert_eq!(list.len(), 1);
        assert_eq!(list.get("a"), Some(&Secret::Plain("x".into())));
        assert!(UserList::parse("").expect("empty is valid").is_empty());
    }

    #[test]
    fn later_duplicate_wins_as_in_pgbouncer() {
        let list = UserList::parse("\"a\" \"one\"\n\"a\" \"two\"\n").expect("valid");
        assert_eq!(list.len(), 1);
        assert_eq!(list.get("a"), Some(&Secret::Plain("two".into())));
    }

    #[test]
    fn reports_line_numbers_and_reasons() {
        let ok = "\"a\" \"x\"\n";
        assert_eq!(
            line_error(&format!("{ok}a \"x\"")),
            (2, LineError::ExpectedUser)
        );
        assert_eq!(
            line_error(&format!("{ok}\n\"a\"  ")),
            (3, LineError::MissingSecret)
        );
        assert_eq!(line_error("\"a\" x \"y\""), (1, LineError::ExpectedSecret));
        assert_eq!(line_error("\"a \"x\""), (1, LineError::ExpectedSecret));
        assert_eq!(line_error("\"a\" \"x"), (1, LineError::Unterminated));
        assert_eq!(line_error("\"a"), (1, LineError::Unterminated));
        assert_eq!(line_error("\"a\"\"\" \"x"), (1, LineError::Unterminated));
        assert_eq!(line_error("\"\" \"x\""), (1, LineError::EmptyUser));
        assert_eq!(
            line_error("\"a\" \"SCRAM-SHA-256$4096:c2FsdA==$bad:bad\""),
            (1, LineError::MalformedScram)
        );
    }

    #[test]
    fn quoted_field_cannot_span_lines() {
        assert_eq!(
            line_error("\"a\" \"multi\nline\""),
            (1, LineError::Unterminated)
        );
    }

    #[test]
    fn enforces_pgbouncer_length_limits() {
        let user = "u".repeat(MAX_USERNAME_LEN);
        let secret = "p".repeat(MAX_SECRET_LEN);
        let list = UserList::parse(&format!("\"{user}\" \"{secret}\"")).expect("at the limit");
        assert_eq!(list.len(), 1);
        let long_user = format!("\"{user}u\" \"x\"");
        assert_eq!(line_error(&long_user), (1, LineError::UserTooLong));
        let long_secret = format!("\"a\" \"{secret}p\"");
        assert_eq!(line_error(&long_secret), (1, LineError::SecretTooLong));
    }

    #[test]
    fn multibyte_text_is_handled_without_panics() {
        let list = UserList::parse("\"ünïcødé\" \"pässwörd\"").expect("valid");
        assert_eq!(list.get("ünïcødé"), Some(&Secret::Plain("pässwörd".into())));
        assert_eq!(line_error("\"é\"é\"x\""), (1, LineError::ExpectedSecret));
    }

    #[test]
    fn secret_parse_classifies_like_postgresql() {
        assert_eq!(Secret::parse("hunter2"), Secret::Plain("hunter2".into()));
        let upper = "md553F48B7C4B76A86CE72276C5755F217D";
        assert_eq!(Secret::parse(upper), Secret::Plain(upper.into()));
        assert!(matches!(Secret::parse(ALICE_SCRAM), Secret::Scram(_)));
        assert_eq!(
            Secret::parse("SCRAM-SHA-256$0:c2FsdA==$x:y"),
            Secret::Plain("SCRAM-SHA-256$0:c2FsdA==$x:y".into())
        );
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let list = UserList::parse("\"a\" \"topsecret\"").expect("valid");
        let shown = format!("{list:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
    }

    #[test]
    fn load_reads_files_and_reports_missing_and_non_utf8() {
        let dir = std::env::temp_dir().join(format!("pgring-userlist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("good.txt");
        std::fs::write(&good, "\"a\" \"x\"\n").expect("write");
        assert_eq!(UserList::load(&good).expect("loads").len(), 1);
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"\"a\" \"x\"\n\"b\" \"\xff\"\n").expect("write");
        assert!(matches!(
            UserList::load(&bad),
            Err(UserListError::Line {
                line: 2,
                reason: LineError::NotUtf8
            })
        ));
        let missing = dir.join("missing.txt");
        assert!(matches!(
            UserList::load(&missing),
            Err(UserListError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
