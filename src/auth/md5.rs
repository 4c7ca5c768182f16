//! PostgreSQL's `md5` password method: the stored `md5...` secret and the salted challenge
//! response.
//!
//! The stored form is `"md5" + hex(md5(password ++ user))`; the client answers an
//! `AuthenticationMD5Password` salt with `"md5" + hex(md5(hex_part ++ salt))`. Because the
//! response only needs the stored hash, pgring can both verify clients and log into
//! PostgreSQL holding nothing but the `md5...` string from userlist.txt. A SCRAM verifier
//! cannot produce an md5 response, so such users cannot use this method at all.
//!
//! This module does not frame `PasswordMessage`s; callers strip the trailing NUL.

// `::md5` is the md-5 crate, not this module.
use ::md5::{Digest, Md5};

use crate::auth::constant_time_eq;
use crate::auth::userlist::Secret;

/// The prefix PostgreSQL puts in front of every md5 hash, stored or sent.
const MD5_PREFIX: &str = "md5";

/// Length of a full md5 secret or response: the prefix plus 32 hex digits.
pub const MD5_SECRET_LEN: usize = 35;

/// Returns whether `text` is an md5 secret as PostgreSQL recognises one.
///
/// Matches `get_password_type()` in PostgreSQL's `src/backend/libpq/crypt.c`: exactly
/// `"md5"` followed by 32 *lowercase* hex digits. Anything else, including uppercase hex,
/// is a plaintext password there, and so it is here.
pub fn is_md5_secret(text: &str) -> bool {
    match text.strip_prefix(MD5_PREFIX) {
        Some(hex) => hex.len() == 32 && hex.bytes().all(is_lower_hex_digit),
        None => false,
    }
}

/// The stored form of a password: `"md5" + hex(md5(password ++ user))`.
pub fn md5_secret(user: &str, password: &str) -> String {
    prefixed_hex_md5(&[password.as_bytes(), user.as_bytes()])
}

/// What a client sends for `AuthenticationMD5Password`:
/// `"md5" + hex(md5(hex_part_of_secret ++ salt))`.
///
/// `secret` is either a plain password or an already-hashed `md5...` secret (as recognised
/// by [`is_md5_secret`]); the latter is what lets pgring log in with only userlist.txt.
pub fn md5_response(user: &str, secret: &str, salt: [u8; 4]) -> String {
    let stored = stored_form(user, secret);
    let hex_part = &stored[MD5_PREFIX.len()..];
    prefixed_hex_md5(&[hex_part.as_bytes(), &salt])
}

/// Server side check of a client's `PasswordMessage` payload (without the trailing NUL)
/// against a stored secret.
///
/// Plain and Md5 secrets can verify; a Scram secret cannot, because the md5 response needs
/// the md5 hash of the password, which a SCRAM verifier does not contain (returns false).
/// The comparison is constant-time.
pub fn verify_md5_response(secret: &Secret, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let expected = match secret {
        Secret::Plain(password) => md5_response(user, password, salt),
        Secret::Md5(hash) => md5_response(user, hash, salt),
        Secret::Scram(_) => return false,
    };
    constant_time_eq(expected.as_bytes(), response)
}

/// The `md5...` stored form of `secret`, hashing it first if it is still plaintext.
fn stored_form(user: &str, secret: &str) -> String {
    if is_md5_secret(secret) {
        secret.to_owned()
    } else {
        md5_secret(user, secret)
    }
}

/// `"md5"` followed by the lowercase hex md5 of the concatenated `parts`.
fn prefixed_hex_md5(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(MD5_SECRET_LEN);
    out.push_str(MD5_PREFIX);
    for byte in digest {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0x0f));
    }
    out
}

/// The lowercase hex digit for a nibble (`0..=15`).
fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

fn is_lower_hex_digit(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::Verifier;

    // Golden values computed independently with Python's hashlib:
    //   "md5" + md5(password + user).hexdigest()
    //   "md5" + md5(secret[3:] + salt).hexdigest()
    const POSTGRES_SECRET: &str = "md553f48b7c4b76a86ce72276c5755f217d";
    const ALICE_SECRET: &str = "md56b765adf84f3c4341e8aab77ceda3bf1";
    const POSTGRES_RESPONSE_01020304: &str = "md5bb41a296aab6baccb36ff243a562abff";
    const ALICE_RESPONSE_DEADBEEF: &str = "md5b1571f9deaaa37580b2e2cbcfd516f3a";

    #[test]
    fn md5_secret_matches_golden_values() {
        assert_eq!(md5_secret("postgres", "secret"), POSTGRES_SECRET);
        assert_eq!(md5_secret("alice", "wonderland"), ALICE_SECRET);
        assert_eq!(md5_secret("bob", ""), "md59f9d51bc70ef21ca5c14f307980a29d8");
    }

    #[test]
    fn md5_response_matches_golden_values_from_plain_and_hashed_secret() {
        let salt = [1, 2, 3, 4];
        assert_eq!(
            md5_response("postgres", "secret", salt),
            POSTGRES_RESPONSE_01020304
        );
        assert_eq!(
            md5_response("postgres", POSTGRES_SECRET, salt),
            POSTGRES_RESPONSE_01020304
        );
        let salt = [0xde, 0xad, 0xbe, 0xef];
        assert_eq!(
            md5_response("alice", ALICE_SECRET, salt),
            ALICE_RESPONSE_DEADBEEF
        );
    }

    #[test]
    fn verify_accepts_correct_response_for_plain_and_md5_secrets() {
        let salt = [9, 8, 7, 6];
        let response = md5_response("postgres", "secret", salt);
        let plain = Secret::Plain("secret".to_owned());
        let hashed = Secret::Md5(POSTGRES_SECRET.to_owned());
        assert!(verify_md5_response(
            &plain,
            "postgres",
            salt,
            response.as_bytes()
        ));
        assert!(verify_md5_response(
            &hashed,
            "postgres",
            salt,
            response.as_bytes()
        ));
    }

    #[test]
    fn verify_rejects_wrong_password_user_salt_or_garbage() {
        let salt = [9, 8, 7, 6];
        let secret = Secret::Md5(POSTGRES_SECRET.to_owned());
        let wrong_password = md5_response("postgres", "Secret", salt);
        let wrong_user = md5_response("postgre", "secret", salt);
        let wrong_salt = md5_response("postgres", "secret", [9, 8, 7, 5]);
        for response in [wrong_password, wrong_user, wrong_salt] {
            assert!(!verify_md5_response(
                &secret,
                "postgres",
                salt,
                response.as_bytes()
            ));
        }
        assert!(!verify_md5_response(&secret, "postgres", salt, b""));
        assert!(!verify_md5_response(&secret, "postgres", salt, &[0xff; 35]));
    }

    #[test]
    fn scram_secret_cannot_verify_md5() {
        let salt = [1, 2, 3, 4];
        let secret = Secret::Scram(Verifier::from_password("secret", b"salt", 1));
        let response = md5_response("postgres", "secret", salt);
        assert!(!verify_md5_response(
            &secret,
            "postgres",
            salt,
            response.as_bytes()
        ));
    }

    #[test]
    fn md5_secret_recognition_follows_postgresql() {
        assert!(is_md5_secret(POSTGRES_SECRET));
        let upper_hex = format!("md5{}", POSTGRES_SECRET[3..].to_uppercase());
        assert!(!is_md5_secret(&upper_hex));
        assert!(!is_md5_secret(&POSTGRES_SECRET.to_uppercase()));
        assert!(!is_md5_secret("md553f48b7c4b76a86ce72276c5755f217"));
        assert!(!is_md5_secret("md553f48b7c4b76a86ce72276c5755f217dd"));
        assert!(!is_md5_secret("md5zzf48b7c4b76a86ce72276c5755f217d"));
        assert!(!is_md5_secret("secret"));
    }
}
