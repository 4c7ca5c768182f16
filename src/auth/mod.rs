//! Sans-IO authentication: the secrets pgring holds and the password exchanges it speaks.
//!
//! This module owns three things: the PgBouncer `auth_file` (userlist.txt) format
//! ([`userlist`]), PostgreSQL's legacy `md5` challenge ([`md5`]), and SCRAM-SHA-256 in
//! both directions ([`scram`]): as a server when a client logs into pgring, and as a
//! client when pgring logs into PostgreSQL, including the ClientKey pass-through that lets
//! pgring reuse a client's proof material without ever seeing its password.
//!
//! It deliberately does no I/O and knows nothing of the wire framing: callers hand in the
//! payload of a `PasswordMessage` / `SASLInitialResponse` / `SASLResponse` and get back the
//! payload to wrap in the next `Authentication*` message. Everything here is synchronous
//! and deterministic apart from nonce generation, so it is tested without a database.

pub mod hba;
pub mod ident;
pub mod md5;
pub mod scram;
pub mod userlist;

/// Compares two byte strings in time that depends only on their lengths.
///
/// Used for every proof, hash and response comparison so that a client cannot learn how
/// many leading bytes of its guess were right. The lengths themselves are public (they
/// are fixed by the mechanism), so the early return on a length mismatch leaks nothing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
