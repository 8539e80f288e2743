//! Standard Webhooks signatures: secrets, signing, and checking a signature header.
//!
//! A secret is `whsec_` followed by the base64 of 32 random bytes; the HMAC key is those
//! decoded bytes (the Standard Webhooks convention, so its libraries verify Aura's deliveries
//! as they are). A delivery is signed over `"{webhook-id}.{webhook-timestamp}.{body}"` with
//! HMAC-SHA256, and `webhook-signature` carries `v1,<base64 of the MAC>` — twice, separated by a
//! space, while a rotated secret is still valid.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new secret: 256 random bits.
pub fn new_secret() -> anyhow::Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("reading random bytes for a secret: {e}"))?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
}

/// The HMAC key of a secret: the bytes after `whsec_`, base64-decoded. `None` when the text
/// is not such a secret.
pub fn key_of(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.trim().strip_prefix(SECRET_PREFIX)?;
    STANDARD.decode(encoded).ok().filter(|k| !k.is_empty())
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with `key`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(mac(key, id, timestamp, body)))
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return Vec::new() };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The `webhook-signature` value for a delivery: one `v1,` signature per key, space-separated.
pub fn header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter().map(|k| signature(k, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// Whether any `v1,` signature in a `webhook-signature` header is the one `key` makes for this
/// request (compared in constant time).
pub fn verify(key: &[u8], id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    header.split_whitespace().filter_map(|s| s.strip_prefix("v1,")).any(|given| {
        let Ok(given) = STANDARD.decode(given) else { return false };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return false };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&given).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_secret_and_not_with_another() {
        let secret = new_secret().expect("random");
        let key = key_of(&secret).expect("a secret");
        assert_eq!(key.len(), 32);
        let sig = signature(&key, "42", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("v1,"));
        assert!(verify(&key, "42", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify(&key, "42", 1_700_000_001, b"{\"a\":1}", &sig));
        assert!(!verify(&key, "43", 1_700_000_000, b"{\"a\":1}", &sig));
        let other = key_of(&new_secret().expect("random")).expect("a secret");
        assert!(!verify(&other, "42", 1_700_000_000, b"{\"a\":1}", &sig));
        // Two signatures: either key verifies.
        let both = header(&[other.clone(), key.clone()], "42", 1_700_000_000, b"x");
        assert_eq!(both.split(' ').count(), 2);
        assert!(verify(&key, "42", 1_700_000_000, b"x", &both));
        assert!(verify(&other, "42", 1_700_000_000, b"x", &both));
    }

    #[test]
    fn the_standard_webhooks_example_verifies() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("a secret");
        let body = br#"{"test": 2432232314}"#;
        let sig = signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
