//! SigV4: the Authorization header and presigned query forms, verified against a known key.
//! Input: a method line, a request-target line (`path?query`), header lines, a blank line,
//! the body.
#![no_main]

use std::sync::OnceLock;

use fleetport_proto::sigv4::{CredentialSet, PayloadRule, SignedRequest, Verifier};
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut creds = CredentialSet::new();
        creds.insert("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        creds.allow_account_keys("test");
        Verifier::new(creds)
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default();
    let target = lines.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = http::HeaderMap::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    let body = lines.collect::<Vec<_>>().join("\n");
    let req = SignedRequest {
        method,
        path,
        query,
        headers: &headers,
        body: body.as_bytes(),
    };
    let _ = verifier().precheck(&req);
    for rule in [PayloadRule::BodyHash, PayloadRule::UnsignedAllowed] {
        let _ = verifier().verify(&req, 1_440_938_160, 300, rule);
    }
});
