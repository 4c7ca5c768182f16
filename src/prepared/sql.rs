//! The one piece of SQL pgring looks at: `DEALLOCATE [PREPARE] name` sent
//! as a simple Query (Rails, PHP PDO). Recognised by its first word and a
//! strict shape (one statement, one identifier, optional `;`), never by a
//! parser: anything else goes to the server untouched.

/// What a DEALLOCATE names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocate {
    /// One statement, by its name as PostgreSQL resolves it (unquoted
    /// identifiers folded to lower case, quoted ones exact).
    Name(Vec<u8>),
    /// `DEALLOCATE ALL`: left to the server, noticed in its CommandComplete.
    All,
}

/// Could a Query starting with `prefix` be a DEALLOCATE or a DISCARD? `None` while too few
/// bytes are buffered to tell.
pub fn maybe_deallocate_or_discard(prefix: &[u8]) -> Option<bool> {
    let text = trim_start(prefix);
    let mut undecided = false;
    for word in [&b"deallocate"[..], b"discard"] {
        let n = text.len().min(word.len());
        if text[..n].eq_ignore_ascii_case(&word[..n]) {
            if n == word.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(false)
}

/// Is this Query body `DEALLOCATE [PREPARE] ALL` or `DISCARD ALL` (the server's prepared
/// statements all go)?
pub fn clears_all(body: &[u8]) -> bool {
    let Some(sql) = body.strip_suffix(b"\0") else {
        return false;
    };
    let all = |name: Option<Ident<'_>>| matches!(name, Some(Ident::Plain(n)) if n.eq_ignore_ascii_case(b"all"));
    deallocate(body) == Some(Deallocate::All) || all(keyword(sql, b"discard").and_then(target))
}

/// Recognises `DEALLOCATE [PREPARE] name|ALL [;]` in a Query body (the SQL
/// text and its NUL).
pub fn deallocate(body: &[u8]) -> Option<Deallocate> {
    let sql = body.strip_suffix(b"\0")?;
    let rest = keyword(sql, b"deallocate")?;
    // `DEALLOCATE prepare` names a statement called "prepare".
    let name = keyword(rest, b"prepare")
        .and_then(target)
        .or_else(|| target(rest))?;
    match name {
        Ident::Plain(n) if n.eq_ignore_ascii_case(b"all") => Some(Deallocate::All),
        Ident::Plain(n) => Some(Deallocate::Name(n.to_ascii_lowercase())),
        Ident::Quoted(n) => Some(Deallocate::Name(n)),
    }
}

/// The one identifier that must make up the rest of the statement.
fn target(s: &[u8]) -> Option<Ident<'_>> {
    let (name, rest) = identifier(trim_start(s))?;
    let rest = trim_start(rest);
    let rest = rest.strip_prefix(b";").unwrap_or(rest);
    trim_start(rest).is_empty().then_some(name)
}

enum Ident<'a> {
    Plain(&'a [u8]),
    Quoted(Vec<u8>),
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// `word` (any case) followed by whitespace or the end; what follows it.
fn keyword<'a>(s: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let s = trim_start(s);
    let head = s.get(..word.len())?;
    let rest = &s[word.len()..];
    let separated = rest.first().is_none_or(|b| b.is_ascii_whitespace());
    (head.eq_ignore_ascii_case(word) && separated).then_some(rest)
}

fn identifier(s: &[u8]) -> Option<(Ident<'_>, &[u8])> {
    if let Some(mut rest) = s.strip_prefix(b"\"") {
        let mut name = Vec::new();
        loop {
            let q = rest.iter().position(|&b| b == b'"')?;
            name.extend_from_slice(&rest[..q]);
            rest = &rest[q + 1..];
            match rest.strip_prefix(b"\"") {
                Some(more) => {
                    name.push(b'"');
                    rest = more;
                }
                None => return (!name.is_empty()).then_some((Ident::Quoted(name), rest)),
            }
        }
    }
    let ok = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80;
    let n = s.iter().take_while(|b| ok(b)).count();
    let first_ok = s.first().is_some_and(|b| !b.is_ascii_digit() && *b != b'$');
    (n > 0 && first_ok).then_some((Ident::Plain(&s[..n]), &s[n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(sql: &str) -> Option<Deallocate> {
        deallocate(format!("{sql}\0").as_bytes())
    }

    fn name(n: &str) -> Option<Deallocate> {
        Some(Deallocate::Name(n.as_bytes().to_vec()))
    }

    #[test]
    fn recognises_the_forms_drivers_send() {
        assert_eq!(d("DEALLOCATE pdo_stmt_00000001"), name("pdo_stmt_00000001"));
        assert_eq!(d("deallocate a1;"), name("a1"));
        assert_eq!(d("  DEALLOCATE PREPARE S1 ; "), name("s1"));
        assert_eq!(d("DEALLOCATE \"S1\"\"x\""), name("S1\"x"));
        assert_eq!(d("DEALLOCATE prepare"), name("prepare"));
        assert_eq!(d("DEALLOCATE ALL"), Some(Deallocate::All));
        assert_eq!(d("DEALLOCATE PREPARE all;"), Some(Deallocate::All));
    }

    #[test]
    fn anything_else_is_left_alone() {
        for sql in [
            "DEALLOCATE",
            "DEALLOCATEx a",
            "DEALLOCATE a; SELECT 1",
            "DEALLOCATE a b",
            "DEALLOCATE 1a",
            "DEALLOCATE \"\"",
            "DEALLOCATE \"open",
            "SELECT 1",
            "/* c */ DEALLOCATE a",
        ] {
            assert_eq!(d(sql), None, "{sql}");
        }
        assert_eq!(deallocate(b"DEALLOCATE a"), None, "no NUL");
    }

    #[test]
    fn deallocate_all_and_discard_all_clear_everything() {
        for sql in [
            "DEALLOCATE ALL",
            "deallocate prepare all;",
            "DISCARD ALL",
            " discard all ; ",
        ] {
            assert!(clears_all(format!("{sql}\0").as_bytes()), "{sql}");
        }
        for sql in [
            "DISCARD PLANS",
            "DEALLOCATE a",
            "DISCARD ALL; SELECT 1",
            "SELECT 1",
        ] {
            assert!(!clears_all(format!("{sql}\0").as_bytes()), "{sql}");
        }
    }

    #[test]
    fn prefix_check() {
        assert_eq!(maybe_deallocate_or_discard(b"SELECT"), Some(false));
        assert_eq!(maybe_deallocate_or_discard(b" deAll"), None);
        assert_eq!(maybe_deallocate_or_discard(b"DISC"), None);
        assert_eq!(maybe_deallocate_or_discard(b"DISCARD "), Some(true));
        assert_eq!(maybe_deallocate_or_discard(b"\nDEALLOCATE x"), Some(true));
        assert_eq!(maybe_deallocate_or_discard(b"DEALLOCATE"), Some(true));
    }
}
