//! The console grammar, as PgBouncer's regexes in src/admin.c have it:
//! `WORD [WORD] [;]` or `SET WORD (=|TO) (WORD|'string') [;]`, where WORD
//! is `[0-9a-z_]+` (any case) or a "double-quoted" identifier. Sans-IO.

/// A parsed console statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// Nothing but whitespace and semicolons.
    Empty,
    /// A command word (lower-cased) and its optional argument (as written,
    /// unquoted).
    Command {
        /// `show`, `pause`, `kill_client`...
        cmd: String,
        /// The argument.
        arg: Option<String>,
    },
    /// `SET key = value`.
    Set {
        /// Setting name (lower-cased).
        key: String,
        /// Value, unquoted.
        value: String,
    },
}

/// Parses one console query; `None` is PgBouncer's syntax error.
pub fn parse(sql: &str) -> Option<Statement> {
    let sql = sql.trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql).trim_end();
    if sql.is_empty() {
        return Some(Statement::Empty);
    }
    let mut p = Parser { rest: sql };
    let first = p.word()?;
    if first.eq_ignore_ascii_case("set") && p.space() {
        return p.set();
    }
    let arg = if p.space() { Some(p.word()?) } else { None };
    p.done()?;
    Some(Statement::Command {
        cmd: first.to_ascii_lowercase(),
        arg,
    })
}

struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    /// Skips whitespace; true if there was any.
    fn space(&mut self) -> bool {
        let trimmed = self.rest.trim_start();
        let had = trimmed.len() != self.rest.len();
        self.rest = trimmed;
        had
    }

    fn done(&mut self) -> Option<()> {
        self.space();
        self.rest.is_empty().then_some(())
    }

    /// A bare word or a double-quoted identifier (`""` escapes a quote).
    fn word(&mut self) -> Option<String> {
        if self.rest.starts_with('"') {
            return self.quoted('"');
        }
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (w, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(w.to_owned())
    }

    fn quoted(&mut self, q: char) -> Option<String> {
        let mut out = String::new();
        let mut chars = self.rest.char_indices().skip(1).peekable();
        while let Some((i, c)) = chars.next() {
            if c != q {
                out.push(c);
                continue;
            }
            if let Some(&(_, n)) = chars.peek() {
                if n == q {
                    out.push(q);
                    chars.next();
                    continue;
                }
            }
            self.rest = &self.rest[i + 1..];
            return (!out.is_empty() || q == '\'').then_some(out);
        }
        None
    }

    fn set(&mut self) -> Option<Statement> {
        let key = self.word()?.to_ascii_lowercase();
        self.space();
        if let Some(r) = self.rest.strip_prefix('=') {
            self.rest = r;
        } else {
            // Checked: a multi-byte character may straddle byte 2.
            let (to, r) = self.rest.split_at_checked(2)?;
            if !to.eq_ignore_ascii_case("to") || !r.starts_with(char::is_whitespace) {
                return None;
            }
            self.rest = r;
        }
        self.space();
        let value = if self.rest.starts_with('\'') {
            self.quoted('\'')?
        } else {
            self.value_word()?
        };
        self.done()?;
        Some(Statement::Set { key, value })
    }

    /// An unquoted SET value: PgBouncer's WORD, plus the characters numbers
    /// and durations need (`0.5`, `-1`).
    fn value_word(&mut self) -> Option<String> {
        if self.rest.starts_with('"') {
            return self.quoted('"');
        }
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (w, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(w.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(c: &str, a: Option<&str>) -> Option<Statement> {
        Some(Statement::Command {
            cmd: c.into(),
            arg: a.map(Into::into),
        })
    }

    #[test]
    fn commands() {
        assert_eq!(parse("SHOW POOLS;"), cmd("show", Some("POOLS")));
        assert_eq!(parse("  pause  "), cmd("pause", None));
        assert_eq!(parse("kill \"My Db\""), cmd("kill", Some("My Db")));
        assert_eq!(parse("kill_client 513"), cmd("kill_client", Some("513")));
        assert_eq!(parse(";"), Some(Statement::Empty));
        assert_eq!(parse("show pools extra"), None);
        assert_eq!(parse("show pools; show stats"), None);
        assert_eq!(parse("select * from x"), None);
    }

    #[test]
    fn set() {
        let set = |k: &str, v: &str| {
            Some(Statement::Set {
                key: k.into(),
                value: v.into(),
            })
        };
        assert_eq!(
            parse("SET default_pool_size = 5"),
            set("default_pool_size", "5")
        );
        assert_eq!(
            parse("set pool_mode to 'session';"),
            set("pool_mode", "session")
        );
        assert_eq!(parse("set x='it''s'"), set("x", "it's"));
        assert_eq!(
            parse("set reserve_pool_timeout=0.5"),
            set("reserve_pool_timeout", "0.5")
        );
        assert_eq!(parse("set x"), None);
    }

    /// Found by the `frontend` fuzz target: byte 2 after the key falls
    /// inside a character; this used to panic the shard.
    #[test]
    fn set_with_multibyte_value_is_a_syntax_error() {
        assert_eq!(parse("SET x V\u{16d6}"), None);
        assert_eq!(parse("set x \u{e9}"), None);
        assert_eq!(parse("set x t"), None);
    }
}
