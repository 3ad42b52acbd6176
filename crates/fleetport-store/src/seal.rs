//! Secrets at rest: private keys (and every secret Fleetport keeps from now on) are stored
//! sealed with AES-256-GCM under a key of their own (`secrets.key` in the data directory), so
//! the state database, its WAL and any copy of them reveal nothing without that file.
//!
//! A sealed value is text, `fpsealed:v1:` then base64 of nonce and ciphertext; the name of what
//! it holds (e.g. a certificate ARN) is bound as associated data, so a sealed value moved onto
//! another record does not open.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

const PREFIX: &str = "fpsealed:v1:";

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "secrets.key";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value does not open with this data directory's secrets.key")]
    WrongKey,
    #[error("no randomness for a nonce")]
    Random,
}

/// Seals and opens secrets with one key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Self {
        // AES-256 takes exactly 32 bytes, which the type guarantees.
        let unbound = UnboundKey::new(&AES_256_GCM, &key).unwrap_or_else(|_| unreachable!());
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// The sealer of data directory `dir`, making its key on first use.
    pub fn open_dir(dir: &Path) -> std::io::Result<Self> {
        crate::datadir::key(dir, KEY_FILE).map(Self::new)
    }

    /// Seals `secret` for the record named `context`.
    pub fn seal(&self, context: &str, secret: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buf = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Malformed)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .ok_or(SealError::Malformed)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SealError::WrongKey)?;
        Ok(plain.to_vec())
    }

    /// Whether `value` is sealed (older state kept secrets in the clear).
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_with_their_key_and_context() {
        let s = Sealer::new([7; 32]);
        let sealed = s.seal("arn:a", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(Sealer::is_sealed(&sealed) && !sealed.contains("PRIVATE"));
        assert_eq!(
            s.open("arn:a", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert_eq!(s.open("arn:b", &sealed), Err(SealError::WrongKey));
        assert_eq!(
            Sealer::new([8; 32]).open("arn:a", &sealed),
            Err(SealError::WrongKey)
        );
        assert_ne!(
            sealed,
            s.seal("arn:a", b"-----BEGIN PRIVATE KEY-----").unwrap(),
            "fresh nonce each time"
        );
        assert_eq!(s.open("arn:a", "plain"), Err(SealError::Malformed));
        assert_eq!(
            s.open("arn:a", "fpsealed:v1:AAAA"),
            Err(SealError::Malformed)
        );
    }
}
