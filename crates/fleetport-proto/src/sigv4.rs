//! AWS Signature Version 4 verification (Authorization header and presigned query forms).
//!
//! The server recomputes the signature from exactly what the client said it signed
//! (`SignedHeaders`, the credential scope, the payload hash) and compares in constant time.
//! Canonicalisation follows the SigV4 specification for non-S3 services: the path is
//! URI-encoded once more, query parameters are decoded, re-encoded strictly and sorted.
//! A [`Signer`] is provided for tests, benchmarks and the agent's client.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Characters SigV4 leaves unencoded: `A-Z a-z 0-9 - _ . ~`.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
const PATH: &AsciiSet = &STRICT.remove(b'/');

/// Why a request's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("missing authentication")]
    Missing,
    #[error("incomplete signature: {0}")]
    Incomplete(String),
    #[error("unknown access key")]
    UnknownAccessKey,
    #[error("signature mismatch")]
    Mismatch,
    #[error("credential scope: {0}")]
    Scope(String),
    #[error("signature expired: {0}")]
    Expired(String),
    #[error("signature not yet current: {0}")]
    NotYetCurrent(String),
    /// The payload hash is not the body's own (`UNSIGNED-PAYLOAD` where the API does not allow
    /// it): the signature would not bind the body.
    #[error("payload not signed: {0}")]
    UnsignedPayload(String),
    /// Temporary credentials past their expiry.
    #[error("the security token expired")]
    ExpiredToken,
}

/// Whether a request may leave its body out of the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadRule {
    /// The JSON and query APIs: the body's own SHA-256, except in presigned URLs, where
    /// `UNSIGNED-PAYLOAD` is what SigV4 defines.
    BodyHash,
    /// APIs that stream bodies (S3): `UNSIGNED-PAYLOAD` in the header form too.
    UnsignedAllowed,
}

/// Headers that, when a request carries them, choose what it does: they must be signed, or a
/// captured request could be replayed as another operation.
const MUST_SIGN: [&str; 2] = ["x-amz-target", "content-type"];

/// The longest a presigned URL may be valid: seven days, as AWS documents.
pub const MAX_PRESIGN_EXPIRES: u64 = 604_800;

/// The parsed SigV4 fields of one request, from whichever form it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFields {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    pub amz_date: String,
    pub presigned: bool,
    pub expires: Option<u64>,
}

/// The parts of an HTTP request SigV4 covers.
#[derive(Debug)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The raw path as sent (still percent-encoded).
    pub path: &'a str,
    /// The raw query string as sent, without `?`.
    pub query: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
}

/// The static keys: each is the root of an account (the one it was configured for, else the
/// default account). A key ID that is itself a 12-digit account ID, and not configured, is the
/// root of that account and signs with the shared secret for such keys, as LocalStack lets test
/// suites pick an account with `AWS_ACCESS_KEY_ID=123456789012`.
#[derive(Debug, Default, Clone)]
pub struct CredentialSet {
    keys: HashMap<String, (String, Option<String>)>,
    account_keys_secret: Option<String>,
}

/// Whether `s` is an AWS account ID: exactly 12 ASCII digits.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

impl CredentialSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// A root key of the default account.
    pub fn insert(&mut self, access_key: impl Into<String>, secret: impl Into<String>) {
        self.keys.insert(access_key.into(), (secret.into(), None));
    }

    /// A root key of `account`.
    pub fn insert_for_account(
        &mut self,
        access_key: impl Into<String>,
        secret: impl Into<String>,
        account: impl Into<String>,
    ) {
        self.keys
            .insert(access_key.into(), (secret.into(), Some(account.into())));
    }

    /// Lets any 12-digit key ID sign, with `secret`, as the root of the account it names.
    pub fn allow_account_keys(&mut self, secret: impl Into<String>) {
        self.account_keys_secret = Some(secret.into());
    }

    pub fn secret(&self, access_key: &str) -> Option<&str> {
        match self.keys.get(access_key) {
            Some((s, _)) => Some(s),
            None if is_account_id(access_key) => self.account_keys_secret.as_deref(),
            None => None,
        }
    }

    /// The account a static key is the root of: `None` for the default account (and for keys
    /// that are not static).
    pub fn account<'a>(&'a self, access_key: &'a str) -> Option<&'a str> {
        match self.keys.get(access_key) {
            Some((_, account)) => account.as_deref(),
            None if is_account_id(access_key) && self.account_keys_secret.is_some() => {
                Some(access_key)
            }
            None => None,
        }
    }

    /// The secret a 12-digit key signs with, if such keys are allowed.
    pub fn account_keys_secret(&self) -> Option<&str> {
        self.account_keys_secret.as_deref()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn access_keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

/// (access key, date, region, service): what a derived signing key depends on.
type ScopeKey = (String, String, String, String);

/// Verifies signatures against a [`CredentialSet`], caching derived signing keys (they change
/// only with the date, region and service, so a hot path does one HMAC instead of five).
pub struct Verifier {
    credentials: CredentialSet,
    /// Keys issued at run time (IAM's), asked when a key is not a static one.
    source: std::sync::OnceLock<std::sync::Arc<dyn crate::auth::KeySource>>,
    key_cache: Mutex<HashMap<ScopeKey, [u8; 32]>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("static_keys", &self.credentials.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(credentials: CredentialSet) -> Self {
        Self {
            credentials,
            source: std::sync::OnceLock::new(),
            key_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Adds the source of run-time keys (set once, when IAM starts).
    pub fn set_source(&self, source: std::sync::Arc<dyn crate::auth::KeySource>) {
        let _ = self.source.set(source);
    }

    pub fn credentials(&self) -> &CredentialSet {
        &self.credentials
    }

    /// The secret of a static key, or of a run-time key with the principal it stands for.
    fn secret_of(&self, access_key: &str) -> Option<std::borrow::Cow<'_, str>> {
        if let Some(s) = self.credentials.secret(access_key) {
            return Some(std::borrow::Cow::Borrowed(s));
        }
        let resolved = self.source.get()?.resolve(access_key)?;
        Some(std::borrow::Cow::Owned(resolved.secret.clone()))
    }

    /// Temporary credentials: the request must carry the session's token (header or, presigned,
    /// query parameter), and the session must not have expired.
    fn check_session(
        &self,
        req: &SignedRequest<'_>,
        access_key: &str,
        now: i64,
    ) -> Result<(), SigError> {
        if self.credentials.secret(access_key).is_some() {
            return Ok(());
        }
        let Some(resolved) = self.source.get().and_then(|s| s.resolve(access_key)) else {
            return Err(SigError::UnknownAccessKey);
        };
        let Some(session) = &resolved.session else {
            return Ok(());
        };
        let sent = req
            .headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .or_else(|| {
                form_urlencoded::parse(req.query.as_bytes())
                    .find(|(k, _)| k == "X-Amz-Security-Token")
                    .map(|(_, v)| v.into_owned())
            });
        let Some(sent) = sent else {
            return Err(SigError::UnknownAccessKey);
        };
        if !session.token_matches(&sent) {
            return Err(SigError::UnknownAccessKey);
        }
        if now >= session.expires_at {
            return Err(SigError::ExpiredToken);
        }
        Ok(())
    }

    /// Tells the key's source that the key signed an authenticated request (static keys have
    /// no last use to record).
    pub fn note_use(&self, access_key: &str, service: &str, region: &str) {
        if self.credentials.secret(access_key).is_some() {
            return;
        }
        if let Some(source) = self.source.get() {
            source.used(access_key, service, region);
        }
    }

    /// When temporary credentials were issued (`aws:TokenIssueTime`); None for other keys.
    pub fn token_issued_at(&self, access_key: &str) -> Option<i64> {
        if self.credentials.secret(access_key).is_some() {
            return None;
        }
        self.source
            .get()?
            .resolve(access_key)?
            .session
            .as_ref()
            .map(|s| s.issued_at)
    }

    /// Who signs with a key: the root of the key's account for a static key (`default_account`
    /// unless the key names another), the run-time key's principal otherwise.
    pub fn principal(&self, access_key: &str, default_account: &str) -> crate::auth::Principal {
        if self.credentials.secret(access_key).is_some() {
            let account = self
                .credentials
                .account(access_key)
                .unwrap_or(default_account);
            return crate::auth::Principal::root(account);
        }
        self.principal_of(access_key)
            .unwrap_or_else(|| crate::auth::Principal::root(default_account))
    }

    /// Who a key stands for: `None` for a static key (the root of the configured account),
    /// the run-time key's principal otherwise.
    pub fn principal_of(&self, access_key: &str) -> Option<crate::auth::Principal> {
        if self.credentials.secret(access_key).is_some() {
            return None;
        }
        self.source
            .get()?
            .resolve(access_key)
            .map(|r| r.principal.clone())
    }

    /// Checks the request's signature. `now` is Unix seconds; `max_skew` in seconds.
    /// Returns the parsed fields (the caller checks region and service against its own).
    pub fn verify(
        &self,
        req: &SignedRequest<'_>,
        now: i64,
        max_skew: i64,
        rule: PayloadRule,
    ) -> Result<SignatureFields, SigError> {
        let fields = self.precheck(req)?;
        self.check_session(req, &fields.access_key, now)?;
        check_time(&fields, now, max_skew)?;
        check_signed_headers(req.headers, &fields.signed_headers)?;
        let secret = self
            .secret_of(&fields.access_key)
            .ok_or(SigError::UnknownAccessKey)?;
        let key = self.signing_key(
            &fields.access_key,
            &secret,
            &fields.date,
            &fields.region,
            &fields.service,
        );
        let scope = format!(
            "{}/{}/{}/aws4_request",
            fields.date, fields.region, fields.service
        );
        let candidates = payload_hashes(req, fields.presigned, rule)?;
        for payload_hash in candidates.iter().flatten() {
            let canonical =
                canonical_request(req, &fields.signed_headers, payload_hash, fields.presigned)?;
            let string_to_sign = format!(
                "{ALGORITHM}\n{}\n{scope}\n{}",
                fields.amz_date,
                hex::encode(Sha256::digest(&canonical))
            );
            let expected = hex::encode(hmac(&key, string_to_sign.as_bytes()));
            if bool::from(expected.as_bytes().ct_eq(fields.signature.as_bytes())) {
                return Ok(fields);
            }
        }
        Err(SigError::Mismatch)
    }

    /// What can be checked from the request line and headers alone, before any body byte is
    /// read: that the request is signed at all, and with a key this server knows.
    pub fn precheck(&self, req: &SignedRequest<'_>) -> Result<SignatureFields, SigError> {
        let fields = extract(req)?;
        if self.secret_of(&fields.access_key).is_none() {
            return Err(SigError::UnknownAccessKey);
        }
        Ok(fields)
    }

    fn signing_key(
        &self,
        access_key: &str,
        secret: &str,
        date: &str,
        region: &str,
        service: &str,
    ) -> [u8; 32] {
        let id = (
            access_key.to_string(),
            date.to_string(),
            region.to_string(),
            service.to_string(),
        );
        let mut cache = self.key_cache.lock();
        if let Some(k) = cache.get(&id) {
            return *k;
        }
        let key = derive_key(secret, date, region, service);
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(id, key);
        key
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn derive_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    // Query strings from form encoders may use '+' for spaces.
    percent_decode_str(&s.replace('+', "%20"))
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses the SigV4 fields from the Authorization header or, failing that, the query string.
pub fn extract(req: &SignedRequest<'_>) -> Result<SignatureFields, SigError> {
    if let Some(auth) = req.headers.get(http::header::AUTHORIZATION) {
        let auth = auth
            .to_str()
            .map_err(|_| SigError::Incomplete("Authorization header is not valid text".into()))?;
        return parse_authorization(auth, req.headers);
    }
    let pairs = query_pairs(req.query);
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let Some(algorithm) = get("X-Amz-Algorithm") else {
        return Err(SigError::Missing);
    };
    if algorithm != ALGORITHM {
        return Err(SigError::Incomplete(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'"
        )));
    }
    let need = |name: &str| {
        get(name).ok_or_else(|| {
            SigError::Incomplete(format!(
                "AWS query-string parameters must include '{name}'."
            ))
        })
    };
    let credential = need("X-Amz-Credential")?;
    let signed_headers = need("X-Amz-SignedHeaders")?;
    let signature = need("X-Amz-Signature")?;
    let amz_date = need("X-Amz-Date")?;
    let expires = match get("X-Amz-Expires") {
        Some(e) => {
            let secs = e.parse::<u64>().map_err(|_| {
                SigError::Incomplete("X-Amz-Expires must be a number of seconds".into())
            })?;
            if secs > MAX_PRESIGN_EXPIRES {
                return Err(SigError::Incomplete(format!(
                    "X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGN_EXPIRES}"
                )));
            }
            Some(secs)
        }
        None => None,
    };
    let (access_key, date, region, service) = parse_credential(&credential)?;
    Ok(SignatureFields {
        access_key,
        date,
        region,
        service,
        signed_headers: signed_headers
            .split(';')
            .map(str::to_ascii_lowercase)
            .collect(),
        signature,
        amz_date,
        presigned: true,
        expires,
    })
}

fn parse_authorization(auth: &str, headers: &http::HeaderMap) -> Result<SignatureFields, SigError> {
    let Some(rest) = auth.strip_prefix(ALGORITHM) else {
        return Err(SigError::Incomplete(format!(
            "Authorization header requires '{ALGORITHM}' as the algorithm."
        )));
    };
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    // The header itself is not echoed: it would put a replayable signature into error
    // bodies and whatever logs them.
    let missing = |what: &str| {
        SigError::Incomplete(format!("Authorization header requires '{what}' parameter."))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let amz_date = header_str(headers, "x-amz-date").ok_or_else(|| {
        SigError::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .into(),
        )
    })?;
    let (access_key, date, region, service) = parse_credential(credential)?;
    let signed_headers: Vec<String> = signed.split(';').map(str::to_ascii_lowercase).collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(SigError::Incomplete(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    Ok(SignatureFields {
        access_key,
        date,
        region,
        service,
        signed_headers,
        signature: signature.to_string(),
        amz_date: amz_date.to_string(),
        presigned: false,
        expires: None,
    })
}

fn parse_credential(credential: &str) -> Result<(String, String, String, String), SigError> {
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"] if !key.is_empty() => Ok((
            key.to_string(),
            date.to_string(),
            region.to_string(),
            service.to_string(),
        )),
        _ => Err(SigError::Incomplete(format!(
            "Credential should be scoped to a valid region, service and 'aws4_request' terminator: {credential}"
        ))),
    }
}

/// Parses `YYYYMMDDTHHMMSSZ` into Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || !s.is_ascii() || &s[8..9] != "T" || &s[15..16] != "Z" {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i16>().ok());
    let dt = jiff::civil::DateTime::new(
        n(0..4)?,
        n(4..6)? as i8,
        n(6..8)? as i8,
        n(9..11)? as i8,
        n(11..13)? as i8,
        n(13..15)? as i8,
        0,
    )
    .ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp().as_second())
}

/// Formats Unix seconds as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(secs: i64) -> String {
    let ts = jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y%m%dT%H%M%SZ").to_string()
}

fn check_time(fields: &SignatureFields, now: i64, max_skew: i64) -> Result<(), SigError> {
    let at = parse_amz_date(&fields.amz_date).ok_or_else(|| {
        SigError::Incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{}'.",
            fields.amz_date
        ))
    })?;
    if fields.date.len() != 8 || fields.amz_date.get(..8) != Some(fields.date.as_str()) {
        return Err(SigError::Scope(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            fields.date,
            &fields.amz_date[..8.min(fields.amz_date.len())]
        )));
    }
    if fields.presigned {
        let expires = fields.expires.unwrap_or(900) as i64;
        if now > at + expires {
            return Err(SigError::Expired(format!(
                "{} is now earlier than {} ({} - {} sec.)",
                format_amz_date(at + expires),
                format_amz_date(now),
                format_amz_date(now),
                expires
            )));
        }
    } else if at < now - max_skew {
        return Err(SigError::Expired(format!(
            "{} is now earlier than {} ({} - {} min.)",
            fields.amz_date,
            format_amz_date(now - max_skew),
            format_amz_date(now),
            max_skew / 60
        )));
    }
    if at > now + max_skew {
        return Err(SigError::NotYetCurrent(format!(
            "{} is still later than {} ({} + {} min.)",
            fields.amz_date,
            format_amz_date(now + max_skew),
            format_amz_date(now),
            max_skew / 60
        )));
    }
    Ok(())
}

/// The payload hashes a valid signature may have used, most likely first: the body's own hash,
/// and `UNSIGNED-PAYLOAD` where `rule` or the presigned form allows it.
fn payload_hashes(
    req: &SignedRequest<'_>,
    presigned: bool,
    rule: PayloadRule,
) -> Result<[Option<String>; 2], SigError> {
    let body_hash = || hex::encode(Sha256::digest(req.body));
    // A presigned URL may leave its payload unsigned only when it has none: an unsigned form
    // body would add parameters the signature never covered.
    let unsigned_ok = rule == PayloadRule::UnsignedAllowed || (presigned && req.body.is_empty());
    match header_str(req.headers, "x-amz-content-sha256") {
        Some(UNSIGNED_PAYLOAD) if unsigned_ok => Ok([Some(UNSIGNED_PAYLOAD.to_string()), None]),
        Some(UNSIGNED_PAYLOAD) => Err(SigError::UnsignedPayload(
            "UNSIGNED-PAYLOAD is accepted only in presigned URLs without a body; sign the request body.".into(),
        )),
        Some(claimed) => {
            // A client-declared hash must match the body, or a signed header could cover a swapped body.
            if claimed.eq_ignore_ascii_case(&body_hash()) {
                Ok([Some(claimed.to_string()), None])
            } else {
                Err(SigError::Mismatch)
            }
        }
        // A presigned URL says nothing of its payload: SigV4 signs it as UNSIGNED-PAYLOAD,
        // though some signers (botocore for non-S3 services) hash the body.
        None if presigned && unsigned_ok => {
            Ok([Some(body_hash()), Some(UNSIGNED_PAYLOAD.to_string())])
        }
        None => Ok([Some(body_hash()), None]),
    }
}

/// Refuses a signature that leaves out a header which chooses what the request does.
fn check_signed_headers(headers: &http::HeaderMap, signed: &[String]) -> Result<(), SigError> {
    for name in MUST_SIGN {
        if headers.contains_key(name) && !signed.iter().any(|h| h == name) {
            let shown = match name {
                "x-amz-target" => "X-Amz-Target",
                _ => "Content-Type",
            };
            return Err(SigError::Incomplete(format!(
                "'{shown}' must be a 'SignedHeader' in the AWS Authorization."
            )));
        }
    }
    Ok(())
}

fn canonical_headers(headers: &http::HeaderMap, signed: &[String]) -> Result<String, SigError> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                let v = String::from_utf8_lossy(v.as_bytes());
                v.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(SigError::Mismatch);
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

fn canonical_request(
    req: &SignedRequest<'_>,
    signed: &[String],
    payload_hash: &str,
    presigned: bool,
) -> Result<String, SigError> {
    let path = if req.path.is_empty() { "/" } else { req.path };
    let canonical_uri = utf8_percent_encode(path, PATH).to_string();
    let mut pairs: Vec<(String, String)> = query_pairs(req.query)
        .into_iter()
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| {
            (
                utf8_percent_encode(&k, STRICT).to_string(),
                utf8_percent_encode(&v, STRICT).to_string(),
            )
        })
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    Ok(format!(
        "{}\n{canonical_uri}\n{query}\n{}\n{}\n{payload_hash}",
        req.method,
        canonical_headers(req.headers, signed)?,
        signed.join(";")
    ))
}

/// Who signs, and for which scope: used by tests, benchmarks and Fleetport's own clients.
#[derive(Debug, Clone)]
pub struct Signer {
    pub access_key: String,
    pub secret: String,
    pub region: String,
    pub service: String,
}

impl Signer {
    /// Signs a request in place with the Authorization header form, adding `x-amz-date`.
    /// Every header present is signed; `host` must be set by the caller.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &mut http::HeaderMap,
        body: &[u8],
        now: i64,
    ) {
        let amz_date = format_amz_date(now);
        if let Ok(v) = http::HeaderValue::from_str(&amz_date) {
            headers.insert("x-amz-date", v);
        }
        let mut signed: Vec<String> = headers
            .keys()
            .map(|k| k.as_str().to_ascii_lowercase())
            .collect();
        signed.retain(|h| h != "authorization");
        signed.sort();
        signed.dedup();
        let req = SignedRequest {
            method,
            path,
            query,
            headers,
            body,
        };
        let payload = match header_str(headers, "x-amz-content-sha256") {
            Some(h) => h.to_string(),
            None => hex::encode(Sha256::digest(body)),
        };
        let canonical = canonical_request(&req, &signed, &payload, false).unwrap_or_default();
        let date = &amz_date[..8];
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let sts = format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(&canonical))
        );
        let sig = hex::encode(hmac(
            &derive_key(&self.secret, date, &self.region, &self.service),
            sts.as_bytes(),
        ));
        let auth = format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
            self.access_key,
            signed.join(";")
        );
        if let Ok(v) = http::HeaderValue::from_str(&auth) {
            headers.insert(http::header::AUTHORIZATION, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        let mut c = CredentialSet::new();
        c.insert("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        Verifier::new(c)
    }

    /// The `get-vanilla` case of the AWS SigV4 test suite.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let mut h = http::HeaderMap::new();
        h.insert("host", "example.amazonaws.com".parse().unwrap());
        h.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        h.insert(
            http::header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                .parse()
                .unwrap(),
        );
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let now = parse_amz_date("20150830T123600Z").unwrap();
        verifier()
            .verify(&req, now, 300, PayloadRule::BodyHash)
            .unwrap();
        // One byte of the body changed: the payload hash differs, so the signature must not match.
        let req = SignedRequest { body: b"x", ..req };
        assert_eq!(
            verifier().verify(&req, now, 300, PayloadRule::BodyHash),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn sign_then_verify_roundtrip_and_skew() {
        let mut h = http::HeaderMap::new();
        h.insert("host", "localhost:4566".parse().unwrap());
        h.insert(
            "x-amz-target",
            "AmazonEC2ContainerServiceV20141113.ListClusters"
                .parse()
                .unwrap(),
        );
        let now = 1_800_000_000;
        let signer = Signer {
            access_key: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            service: "ecs".into(),
        };
        signer.sign("POST", "/", "", &mut h, b"{}", now);
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body: b"{}",
        };
        let f = verifier()
            .verify(&req, now + 10, 300, PayloadRule::BodyHash)
            .unwrap();
        assert_eq!(
            (f.region.as_str(), f.service.as_str()),
            ("us-east-1", "ecs")
        );
        assert!(
            matches!(verifier().verify(&req, now + 301, 300, PayloadRule::BodyHash), Err(SigError::Expired(m)) if m.ends_with("- 5 min.)"))
        );
        assert!(matches!(
            verifier().verify(&req, now - 301, 300, PayloadRule::BodyHash),
            Err(SigError::NotYetCurrent(_))
        ));
    }

    fn signer() -> Signer {
        Signer {
            access_key: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            service: "ecs".into(),
        }
    }

    fn check(
        h: &http::HeaderMap,
        body: &[u8],
        now: i64,
        rule: PayloadRule,
    ) -> Result<(), SigError> {
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: h,
            body,
        };
        verifier().verify(&req, now, 300, rule).map(|_| ())
    }

    #[test]
    fn headers_that_choose_the_operation_must_be_signed() {
        let now = 1_800_000_000;
        for (name, value) in [
            (
                "x-amz-target",
                "AmazonEC2ContainerServiceV20141113.DeleteCluster",
            ),
            ("content-type", "application/x-amz-json-1.1"),
        ] {
            let mut h = signed_headers(&[], b"{}", now);
            check(&h, b"{}", now, PayloadRule::BodyHash).unwrap();
            // Added after signing: the signature does not cover it.
            h.insert(name, value.parse().unwrap());
            assert!(
                matches!(check(&h, b"{}", now, PayloadRule::BodyHash), Err(SigError::Incomplete(m)) if m.contains("must be a 'SignedHeader'")),
                "{name}"
            );
            // Signed along with the rest: accepted.
            h.remove(http::header::AUTHORIZATION);
            signer().sign("POST", "/", "", &mut h, b"{}", now);
            check(&h, b"{}", now, PayloadRule::BodyHash).unwrap();
        }
    }

    /// Headers for `host` and `extra`, signed over `body` at `now`.
    fn signed_headers(extra: &[(&'static str, &str)], body: &[u8], now: i64) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("host", "localhost:4566".parse().unwrap());
        for (k, v) in extra {
            h.insert(*k, v.parse().unwrap());
        }
        signer().sign("POST", "/", "", &mut h, body, now);
        h
    }

    #[test]
    fn unsigned_payload_only_where_the_rule_allows_it() {
        let now = 1_800_000_000;
        let h = signed_headers(&[("x-amz-content-sha256", UNSIGNED_PAYLOAD)], b"{}", now);
        assert!(matches!(
            check(&h, b"{}", now, PayloadRule::BodyHash),
            Err(SigError::UnsignedPayload(_))
        ));
        check(&h, b"{}", now, PayloadRule::UnsignedAllowed).unwrap();
    }

    #[test]
    fn scope_date_must_be_the_request_date() {
        let now = 1_800_000_000;
        let mut h = signed_headers(&[], b"", now);
        let auth = h[http::header::AUTHORIZATION].to_str().unwrap().to_string();
        let date = &format_amz_date(now)[..8];
        for wrong in ["", "2027", "20270114"] {
            let forged = auth.replace(&format!("/{date}/"), &format!("/{wrong}/"));
            h.insert(http::header::AUTHORIZATION, forged.parse().unwrap());
            assert!(
                matches!(
                    check(&h, b"", now, PayloadRule::BodyHash),
                    Err(SigError::Scope(_))
                ),
                "scope date {wrong:?}"
            );
        }
    }

    #[test]
    fn presigned_expiry_above_a_week_is_refused_not_capped() {
        let h = http::HeaderMap::new();
        let query = |expires: u64| {
            format!(
                "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20260101%2Fus-east-1%2Fecs%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host&X-Amz-Signature=00"
            )
        };
        let parse = |q: &str| {
            extract(&SignedRequest {
                method: "GET",
                path: "/",
                query: q,
                headers: &h,
                body: b"",
            })
        };
        assert_eq!(parse(&query(604_800)).unwrap().expires, Some(604_800));
        assert!(
            matches!(parse(&query(604_801)), Err(SigError::Incomplete(m)) if m.contains("604800"))
        );
    }

    #[test]
    fn errors_do_not_echo_the_authorization_header() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/ecs/aws4_request, Signature=deadbeefcafe"
                .parse()
                .unwrap(),
        );
        h.insert("x-amz-date", "20260101T000000Z".parse().unwrap());
        let e = extract(&SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        })
        .unwrap_err();
        assert!(!e.to_string().contains("deadbeefcafe"), "{e}");
    }

    #[test]
    fn amz_date_roundtrip() {
        assert_eq!(
            format_amz_date(parse_amz_date("20261124T180203Z").unwrap()),
            "20261124T180203Z"
        );
        assert_eq!(parse_amz_date("2026-11-24T18:02:03Z"), None);
        assert_eq!(parse_amz_date("20261324T180203Z"), None);
    }
}
