//! The SCRAM-SHA-256 primitives (RFC 5802 section 2.2): Hi, HMAC, H, XOR, and nonces.
//!
//! Kept apart from the exchange logic so that every key derivation reads as one line
//! there. Every function is total on its inputs.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{KEY_LEN, NONCE_BYTES};

type HmacSha256 = Hmac<Sha256>;

/// A fresh nonce: 18 random bytes as base64, which is printable and comma-free.
pub(super) fn random_nonce() -> String {
    let mut raw = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut raw);
    BASE64.encode(raw)
}

/// `SaltedPassword = Hi(password, salt, i)`, i.e. PBKDF2-HMAC-SHA-256.
pub(super) fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(password.as_bytes(), salt, iterations)
}

pub(super) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC takes keys of any length, so this constructor cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

pub(super) fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

pub(super) fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}
