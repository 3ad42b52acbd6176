//! The verifier's rules against the AWS SDKs' own signer (the `aws-sigv4` crate) with its default
//! settings: whatever a real Rust SDK sends must be accepted, and the rules that bind a request
//! (signed `X-Amz-Target` and `Content-Type`, the body's own hash) must hold for it.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use fleetport_proto::sigv4::{CredentialSet, PayloadRule, SigError, SignedRequest, Verifier};

const KEY: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn verifier() -> Verifier {
    let mut c = CredentialSet::new();
    c.insert(KEY, SECRET);
    Verifier::new(c)
}

/// Signs `req` the way the SDK would, with `settings` (default unless changed by the caller).
fn sdk_sign(
    req: &mut http::Request<Vec<u8>>,
    body: SignableBody<'_>,
    settings: SigningSettings,
    at: SystemTime,
) {
    let identity = Credentials::new(KEY, SECRET, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ecs")
        .time(at)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let signable = SignableRequest::new(
        req.method().as_str(),
        req.uri().to_string(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        body,
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(req);
}

fn check(req: &http::Request<Vec<u8>>, at: SystemTime) -> Result<(), SigError> {
    let now = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    // `host` travels in the URI for the SDK; on the wire it is a header.
    let mut headers = req.headers().clone();
    if let Some(a) = req.uri().authority() {
        headers.insert(http::header::HOST, a.as_str().parse().unwrap());
    }
    let signed = SignedRequest {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        headers: &headers,
        body: req.body(),
    };
    verifier()
        .verify(&signed, now, 300, PayloadRule::BodyHash)
        .map(|_| ())
}

fn json_request(target: &str, body: &[u8]) -> http::Request<Vec<u8>> {
    http::Request::builder()
        .method("POST")
        .uri("http://localhost:4566/")
        .header("x-amz-target", target)
        .header("content-type", "application/x-amz-json-1.1")
        .body(body.to_vec())
        .unwrap()
}

#[test]
fn default_settings_json_request_is_accepted_and_bound_to_its_target() {
    let at = SystemTime::now();
    let body = br#"{"cluster":"demo"}"#;
    let mut req = json_request("AmazonEC2ContainerServiceV20141113.ListTasks", body);
    sdk_sign(
        &mut req,
        SignableBody::Bytes(body),
        SigningSettings::default(),
        at,
    );
    check(&req, at).unwrap();

    // The same signature presented for another operation no longer verifies.
    let mut replay = req.clone();
    replay.headers_mut().insert(
        "x-amz-target",
        "AmazonEC2ContainerServiceV20141113.DeleteCluster"
            .parse()
            .unwrap(),
    );
    assert_eq!(check(&replay, at), Err(SigError::Mismatch));
}

#[test]
fn target_left_out_of_the_signature_is_refused() {
    let at = SystemTime::now();
    let body = br#"{"cluster":"demo"}"#;
    let mut req = json_request("AmazonEC2ContainerServiceV20141113.ListTasks", body);
    let mut settings = SigningSettings::default();
    settings.excluded_headers = Some(vec!["x-amz-target".into(), "user-agent".into()]);
    sdk_sign(&mut req, SignableBody::Bytes(body), settings, at);
    assert!(
        matches!(check(&req, at), Err(SigError::Incomplete(m)) if m.contains("X-Amz-Target")),
        "an unsigned X-Amz-Target must be refused"
    );
}

#[test]
fn payload_must_be_the_body_hash_in_the_header_form() {
    let at = SystemTime::now();
    let body = b"{}";
    let mut req = json_request("AmazonEC2ContainerServiceV20141113.ListClusters", body);
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
    sdk_sign(&mut req, SignableBody::Bytes(body), settings.clone(), at);
    check(&req, at).unwrap();

    let mut req = json_request("AmazonEC2ContainerServiceV20141113.ListClusters", body);
    sdk_sign(&mut req, SignableBody::UnsignedPayload, settings, at);
    assert!(matches!(check(&req, at), Err(SigError::UnsignedPayload(_))));
}

/// A DescribeLoadBalancers URL presigned by the SDK for `expires` seconds.
fn presigned(
    method: &str,
    expires: u64,
    body: SignableBody<'_>,
    at: SystemTime,
) -> http::Request<Vec<u8>> {
    let mut req = http::Request::builder()
        .method(method)
        .uri("http://localhost:4566/?Action=DescribeLoadBalancers&Version=2015-12-01")
        .body(Vec::new())
        .unwrap();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(expires));
    sdk_sign(&mut req, body, settings, at);
    req
}

#[test]
fn presigned_urls_with_either_payload_form_up_to_seven_days() {
    let at = SystemTime::now();
    for (expires, body) in [
        (300, SignableBody::UnsignedPayload),
        (300, SignableBody::Bytes(b"")),
        (604_800, SignableBody::UnsignedPayload),
    ] {
        let req = presigned("GET", expires, body, at);
        check(&req, at).unwrap_or_else(|e| panic!("expires {expires}: {e}"));
    }
}

#[test]
fn a_presigned_url_cannot_carry_an_unsigned_body() {
    let at = SystemTime::now();
    let mut req = presigned("POST", 300, SignableBody::UnsignedPayload, at);
    check(&req, at).unwrap();
    // The same URL with a form body that would add parameters the signature never covered.
    *req.body_mut() = b"Names.member.1=other".to_vec();
    assert_eq!(check(&req, at), Err(SigError::Mismatch));
    // Nor by declaring the payload unsigned in a header.
    req.headers_mut()
        .insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
    assert!(matches!(check(&req, at), Err(SigError::UnsignedPayload(_))));
}
