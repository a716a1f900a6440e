//! Secrets at rest: the credentials a bot is given through the admin API
//! (`flowbot bots add`) are kept in the store sealed with ChaCha20-Poly1305
//! (`ring`'s AEAD), under a key from the environment (`FLOWBOT_SECRET_KEY`)
//! or a file (`server.secret_key_file`): 32 bytes, written as 64 hex digits
//! (`openssl rand -hex 32`, or `flowbot bots keygen`).
//!
//! A sealed value is `sealed:v1:<hex of nonce, ciphertext and tag>`; each is
//! sealed with a random nonce and bound to what it is (the bot and the key's
//! name, as associated data), so a sealed value copied to another bot or
//! another key does not open. Without a key, the admin API refuses
//! credentials and accepts only references to them (`*_file`, or the bot's
//! own environment variables).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// What marks a sealed value.
const PREFIX: &str = "sealed:v1:";

/// The environment variable that holds the key.
pub const KEY_ENV: &str = "FLOWBOT_SECRET_KEY";

/// Why a key or a sealed value is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key is not 64 hex digits.
    #[error("{source_of_key}: the secret key must be 32 bytes written as 64 hex digits (`openssl rand -hex 32`); it has {found}")]
    BadKey {
        /// Where the key came from.
        source_of_key: String,
        /// What it has instead.
        found: String,
    },
    /// The key file cannot be read.
    #[error("server.secret_key_file {path}: {message}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A sealed value does not open with this key.
    #[error("{what}: the sealed value does not open with this secret key (sealed with another key, or changed)")]
    Open {
        /// Which value.
        what: String,
    },
}

/// The key secrets are sealed with.
pub struct SecretKey(LessSafeKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// A key from its 64 hex digits; `from` says where they came from.
    pub fn from_hex(hex_digits: &str, from: &str) -> Result<SecretKey, SealError> {
        let t = hex_digits.trim();
        let bad = |found: String| SealError::BadKey {
            source_of_key: from.to_owned(),
            found,
        };
        if t.len() != 64 {
            return Err(bad(format!("{} characters", t.chars().count())));
        }
        let bytes = hex::decode(t).map_err(|_| bad("characters that are not hex digits".into()))?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| bad("an unusable value".into()))?;
        Ok(SecretKey(LessSafeKey::new(key)))
    }

    /// The key of `FLOWBOT_SECRET_KEY`, else of `file`; `None` when neither
    /// is set.
    pub fn load(file: Option<&std::path::Path>) -> Result<Option<SecretKey>, SealError> {
        if let Ok(v) = std::env::var(KEY_ENV) {
            if !v.trim().is_empty() {
                return SecretKey::from_hex(&v, KEY_ENV).map(Some);
            }
        }
        let Some(path) = file else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|e| SealError::KeyFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        SecretKey::from_hex(&text, &format!("server.secret_key_file {}", path.display())).map(Some)
    }

    /// A new random key, as 64 hex digits.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        // The system's generator fails only where there is none at all.
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random number generator");
        hex::encode(bytes)
    }

    /// Seals `value`, bound to `what` (such as `acme/qpien.client_secret`).
    pub fn seal(&self, what: &str, value: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random number generator");
        let mut data = value.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(what.as_bytes()),
                &mut data,
            )
            .expect("a secret shorter than ChaCha20-Poly1305's limit");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{PREFIX}{}", hex::encode(out))
    }

    /// Opens what [`SecretKey::seal`] sealed for `what`.
    pub fn open(&self, what: &str, sealed: &str) -> Result<String, SealError> {
        let failed = || SealError::Open {
            what: what.to_owned(),
        };
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(failed)?;
        if bytes.len() < NONCE_LEN {
            return Err(failed());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
        let mut data = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(what.as_bytes()), &mut data)
            .map_err(|_| failed())?;
        String::from_utf8(plain.to_vec()).map_err(|_| failed())
    }
}

/// Whether `value` is a sealed value.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_hex(&SecretKey::generate(), "test").unwrap()
    }

    #[test]
    fn a_sealed_value_opens_for_what_it_was_sealed_for_only() {
        let k = key();
        let s = k.seal("acme/qpien.client_secret", "hunter2-hunter2");
        assert!(is_sealed(&s));
        assert!(!s.contains("hunter2"));
        assert_eq!(
            k.open("acme/qpien.client_secret", &s).unwrap(),
            "hunter2-hunter2"
        );
        assert!(k.open("other/qpien.client_secret", &s).is_err());
        assert!(key().open("acme/qpien.client_secret", &s).is_err());
        let mut changed = s.clone();
        changed.pop();
        changed.push(if s.ends_with('0') { '1' } else { '0' });
        assert!(k.open("acme/qpien.client_secret", &changed).is_err());
        assert_ne!(s, k.seal("acme/qpien.client_secret", "hunter2-hunter2"));
    }

    #[test]
    fn a_bad_key_says_what_is_wrong() {
        let e = SecretKey::from_hex("abc", "FLOWBOT_SECRET_KEY").unwrap_err();
        assert!(e.to_string().contains("3 characters"), "{e}");
        let e = SecretKey::from_hex(&"z".repeat(64), "FLOWBOT_SECRET_KEY").unwrap_err();
        assert!(e.to_string().contains("not hex"), "{e}");
    }
}
