//! Registry passwords as ECR issues them: `GetAuthorizationToken` returns base64(`AWS:<token>`),
//! valid 12 hours. The token is self-describing and HMAC-signed
//! (`<account>@<region>.<expiry>.<nonce>[.<principal>].<mac>`, no `:`), so the registry checks it
//! without a store lookup, and the one endpoint can tell whose registry (which account and region)
//! a request is for before it checks anything ([`registry_of`]). Tokens from before regions name
//! only the account: they are for the default region. The principal (base64url of its encoded form) is who asked for the token:
//! the registry authorises each request as that principal, as ECR does. Tokens without one
//! (issued before principals existed) stand for the account's root.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const VALIDITY_SECS: i64 = 12 * 3600;

#[derive(Debug, Clone)]
pub struct TokenKey([u8; 32]);

/// What a valid password stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub account: String,
    /// The registry's region; None in tokens issued before regions existed.
    pub region: Option<String>,
    /// Who asked for it ([`Principal::encode`]'s text); None for the account's root.
    pub principal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the registry password is malformed")]
    Malformed,
    #[error("the registry password was not issued by this registry")]
    Forged,
    #[error("the registry password expired; run aws ecr get-login-password again")]
    Expired,
}

impl TokenKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, payload: &str) -> String {
        // HMAC takes keys of any length.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(payload.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A password for `account`, valid until `expires_at` (Unix seconds), standing for the
    /// principal (its [`Principal::encode`] text) when one is given.
    pub fn issue(
        &self,
        account: &str,
        region: &str,
        expires_at: i64,
        principal: Option<&str>,
    ) -> String {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let payload = match principal {
            Some(p) => format!(
                "{account}@{region}.{expires_at}.{nonce}.{}",
                URL_SAFE_NO_PAD.encode(p)
            ),
            None => format!("{account}@{region}.{expires_at}.{nonce}"),
        };
        format!("{payload}.{}", self.mac(&payload))
    }

    /// The signature of a layer download URL (GetDownloadUrlForLayer): it names one blob of one
    /// repository until `expires_at`, like the presigned S3 URL ECR hands out.
    pub fn sign_download(&self, repository: &str, digest: &str, expires_at: i64) -> String {
        self.mac(&format!("download\n{repository}\n{digest}\n{expires_at}"))
    }

    /// Checks a download URL's signature at time `now`.
    pub fn verify_download(
        &self,
        repository: &str,
        digest: &str,
        expires_at: i64,
        signature: &str,
        now: i64,
    ) -> Result<(), TokenError> {
        let want = self.sign_download(repository, digest, expires_at);
        if !bool::from(want.as_bytes().ct_eq(signature.as_bytes())) {
            return Err(TokenError::Forged);
        }
        if now > expires_at {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// Checks a password at time `now`; returns the account it was issued for and the
    /// principal (`arn`, `aws:userid`) it stands for, if it names one.
    pub fn verify(&self, token: &str, now: i64) -> Result<Issued, TokenError> {
        let (payload, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = payload.split('.');
        let (Some(account), Some(expiry), Some(_nonce), principal, None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        if !bool::from(self.mac(payload).as_bytes().ct_eq(mac.as_bytes())) {
            return Err(TokenError::Forged);
        }
        let expiry: i64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        if now > expiry {
            return Err(TokenError::Expired);
        }
        let principal = match principal {
            None => None,
            Some(p) => Some(
                URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or(TokenError::Malformed)?,
            ),
        };
        let (account, region) = split_registry(account);
        Ok(Issued {
            account: account.to_string(),
            region: region.map(String::from),
            principal,
        })
    }
}

fn split_registry(first: &str) -> (&str, Option<&str>) {
    match first.split_once('@') {
        Some((account, region)) => (account, Some(region)),
        None => (first, None),
    }
}

/// Whose registry a password claims to be for, `(account, region)`, read without checking it
/// (the registry it names checks it). None when the text is no token at all.
pub fn registry_of(token: &str) -> Option<(String, Option<String>)> {
    let first = token.split('.').next().filter(|f| !f.is_empty())?;
    let (account, region) = split_registry(first);
    Some((account.to_string(), region.map(String::from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_expire_forge() {
        let k = TokenKey::new([7; 32]);
        let t = k.issue("000000000000", "eu-west-1", 1000, None);
        assert!(!t.contains(':'));
        assert_eq!(k.verify(&t, 999).unwrap().account, "000000000000");
        assert_eq!(
            k.verify(&t, 999).unwrap().region.as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            registry_of(&t),
            Some(("000000000000".into(), Some("eu-west-1".into())))
        );
        let u = k.issue("000000000000", "us-east-1", 1000, Some("who:ever\nx"));
        assert!(!u.contains(':'));
        assert_eq!(
            k.verify(&u, 999).unwrap().principal.as_deref(),
            Some("who:ever\nx")
        );
        assert_eq!(k.verify(&t, 1001), Err(TokenError::Expired));
        let forged = t.replacen("1000", "9999", 1);
        assert_eq!(k.verify(&forged, 999), Err(TokenError::Forged));
        assert_eq!(
            TokenKey::new([8; 32]).verify(&t, 999),
            Err(TokenError::Forged)
        );
        assert_eq!(k.verify("nope", 0), Err(TokenError::Malformed));
        let sig = k.sign_download("web", "sha256:ab", 1000);
        assert_eq!(
            k.verify_download("web", "sha256:ab", 1000, &sig, 999),
            Ok(())
        );
        assert_eq!(
            k.verify_download("web", "sha256:ab", 1000, &sig, 1001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            k.verify_download("api", "sha256:ab", 1000, &sig, 999),
            Err(TokenError::Forged)
        );
        assert_eq!(
            k.verify_download("web", "sha256:ab", 9999, &sig, 999),
            Err(TokenError::Forged)
        );
    }
}
