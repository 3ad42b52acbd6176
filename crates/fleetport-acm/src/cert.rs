//! Imported material: the PEM certificate, chain and private key ImportCertificate takes, checked
//! the way ACM checks them (one certificate, a chain of certificates, an unencrypted key of a
//! supported algorithm that belongs to the certificate), and the facts DescribeCertificate
//! reports, read from the X.509 structure.

use std::sync::Arc;

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_cert::Certificate;
use x509_cert::der::asn1::{ObjectIdentifier, UintRef};
use x509_cert::der::{Decode, Reader, SliceReader};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// Why imported material was refused; the text is the ValidationException message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

fn invalid(m: impl Into<String>) -> Invalid {
    Invalid(m.into())
}

/// What DescribeCertificate and ListCertificates report about a certificate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    pub domain_name: String,
    /// The DNS names of the subject alternative name extension (the domain name first).
    pub names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    /// Lowercase hex bytes joined by colons, as ACM shows them.
    pub serial: String,
    pub not_before: f64,
    pub not_after: f64,
    /// ACM's `KeyAlgorithm` value, e.g. `RSA_2048` or `EC_prime256v1`.
    pub key_algorithm: String,
    pub signature_algorithm: String,
}

/// Material that passed every check.
#[derive(Debug)]
pub struct Checked {
    pub facts: Facts,
    /// The certificate, chain and key in one piece, as a TLS server uses them.
    pub key: Arc<CertifiedKey>,
}

const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

fn curve_name(oid: &ObjectIdentifier) -> Option<&'static str> {
    Some(match oid.to_string().as_str() {
        "1.2.840.10045.3.1.7" => "EC_prime256v1",
        "1.3.132.0.34" => "EC_secp384r1",
        "1.3.132.0.35" => "EC_secp521r1",
        _ => return None,
    })
}

fn signature_name(oid: &ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.113549.1.1.5" => "SHA1WITHRSA".into(),
        "1.2.840.113549.1.1.11" => "SHA256WITHRSA".into(),
        "1.2.840.113549.1.1.12" => "SHA384WITHRSA".into(),
        "1.2.840.113549.1.1.13" => "SHA512WITHRSA".into(),
        "1.2.840.113549.1.1.10" => "RSASSA_PSS".into(),
        "1.2.840.10045.4.3.2" => "SHA256WITHECDSA".into(),
        "1.2.840.10045.4.3.3" => "SHA384WITHECDSA".into(),
        "1.2.840.10045.4.3.4" => "SHA512WITHECDSA".into(),
        other => other.to_string(),
    }
}

/// The PEM sections of `pem` of the given kinds; anything that is not PEM is an error.
fn sections(pem: &[u8], what: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, Invalid> {
    let mut out = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        out.push(item.map_err(|_| invalid(format!("The {what} is not valid PEM.")))?);
    }
    Ok(out)
}

/// Checks an import and reads its facts.
pub fn check(certificate: &[u8], chain: Option<&[u8]>, key: &[u8]) -> Result<Checked, Invalid> {
    let certs = sections(certificate, "certificate")?;
    let leaf = match certs.as_slice() {
        [(SectionKind::Certificate, der)] => CertificateDer::from(der.clone()),
        [] => {
            return Err(invalid(
                "The certificate field does not contain a certificate.",
            ));
        }
        [_] => {
            return Err(invalid(
                "The certificate field must contain a PEM certificate.",
            ));
        }
        _ => {
            return Err(invalid(
                "The certificate field contains more than one certificate. You can specify only one certificate in this field.",
            ));
        }
    };
    let mut full = vec![leaf.clone()];
    if let Some(chain) = chain {
        for (kind, der) in sections(chain, "certificate chain")? {
            if kind != SectionKind::Certificate {
                return Err(invalid(
                    "The certificate chain must contain only PEM certificates.",
                ));
            }
            Certificate::from_der(&der)
                .map_err(|_| invalid("A certificate of the chain could not be parsed."))?;
            full.push(CertificateDer::from(der));
        }
    }
    let key = match sections(key, "private key")?.as_slice() {
        [(kind, der)] => PrivateKeyDer::from_pem(*kind, der.clone()).ok_or_else(|| {
            invalid("The private key is not supported: it must be an unencrypted PEM key (PKCS#8, PKCS#1 RSA or SEC1 EC).")
        })?,
        _ => return Err(invalid("The private key field must contain exactly one PEM private key.")),
    };
    let parsed = Certificate::from_der(&leaf)
        .map_err(|_| invalid("The certificate could not be parsed as X.509."))?;
    let facts = facts(&parsed)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| invalid("The private key is not supported."))?;
    let certified = CertifiedKey::new(full, signer);
    certified.keys_match().map_err(|_| {
        invalid("The private key does not match the public key in the certificate.")
    })?;
    Ok(Checked {
        facts,
        key: Arc::new(certified),
    })
}

fn facts(cert: &Certificate) -> Result<Facts, Invalid> {
    let tbs = &cert.tbs_certificate;
    let common_name = tbs
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == CN)
        .and_then(|atv| atv.to_string().strip_prefix("CN=").map(String::from));
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some((_, san))) = tbs.get::<SubjectAltName>() {
        for n in san.0 {
            if let GeneralName::DnsName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    let domain_name = match common_name.or_else(|| names.first().cloned()) {
        Some(d) => d,
        None => {
            return Err(invalid(
                "The certificate has no domain name: it needs a common name or a DNS subject alternative name.",
            ));
        }
    };
    if let Some(i) = names.iter().position(|n| *n == domain_name) {
        names.remove(i);
    }
    names.insert(0, domain_name.clone());
    let spki = &tbs.subject_public_key_info;
    let key_algorithm = if spki.algorithm.oid == RSA {
        let bits = rsa_bits(spki.subject_public_key.raw_bytes())
            .ok_or_else(|| invalid("The certificate's RSA public key could not be read."))?;
        match bits {
            1024 | 2048 | 3072 | 4096 => format!("RSA_{bits}"),
            _ => {
                return Err(invalid(format!(
                    "The RSA key size {bits} is not supported."
                )));
            }
        }
    } else if spki.algorithm.oid == EC {
        spki.algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .as_ref()
            .and_then(curve_name)
            .ok_or_else(|| invalid("The certificate's elliptic curve is not supported."))?
            .to_string()
    } else {
        return Err(invalid("The certificate's key algorithm is not supported."));
    };
    let serial = tbs
        .serial_number
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(Facts {
        domain_name,
        names,
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        serial,
        not_before: tbs.validity.not_before.to_unix_duration().as_secs_f64(),
        not_after: tbs.validity.not_after.to_unix_duration().as_secs_f64(),
        key_algorithm,
        signature_algorithm: signature_name(&cert.signature_algorithm.oid),
    })
}

/// The modulus size of a DER `RSAPublicKey`.
fn rsa_bits(der: &[u8]) -> Option<usize> {
    let mut reader = SliceReader::new(der).ok()?;
    let modulus = reader
        .sequence(|r| {
            let n = UintRef::decode(r)?;
            UintRef::decode(r)?;
            Ok(n)
        })
        .ok()?;
    let bytes = modulus.as_bytes();
    let first = *bytes.first()?;
    Some(bytes.len() * 8 - first.leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_CRT: &[u8] = include_bytes!("../testdata/rsa.crt");
    const RSA_KEY: &[u8] = include_bytes!("../testdata/rsa.key");
    const EC_CRT: &[u8] = include_bytes!("../testdata/ec.crt");
    const EC_KEY: &[u8] = include_bytes!("../testdata/ec.key");
    const OTHER_EC_KEY: &[u8] = include_bytes!("../testdata/other-ec.key");

    #[test]
    fn reads_the_facts_acm_reports() {
        let rsa = check(RSA_CRT, None, RSA_KEY).map_err(|e| e.0);
        let Ok(rsa) = rsa else {
            panic!("{rsa:?}");
        };
        let f = rsa.facts;
        assert_eq!(f.domain_name, "www.example.test");
        assert_eq!(f.names, ["www.example.test", "*.example.test"]);
        assert_eq!(f.key_algorithm, "RSA_2048");
        assert_eq!(f.signature_algorithm, "SHA256WITHRSA");
        assert_eq!(f.subject, "O=Fleetport Tests,CN=www.example.test");
        assert_eq!(f.issuer, f.subject);
        assert!(f.serial.len() > 20 && f.serial.split(':').all(|b| b.len() == 2));
        assert!(f.not_after - f.not_before > 3600.0 * 24.0 * 3000.0);
        let ec = check(EC_CRT, Some(RSA_CRT), EC_KEY).map_err(|e| e.0);
        let Ok(ec) = ec else {
            panic!("{ec:?}");
        };
        assert_eq!(ec.facts.key_algorithm, "EC_prime256v1");
        assert_eq!(ec.facts.names, ["api.example.test"]);
        assert_eq!(ec.key.cert.len(), 2);
    }

    proptest::proptest! {
        /// Any input is refused or accepted without a panic, including damaged copies of a
        /// good certificate and key.
        #[test]
        fn never_panics(
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            at in 0usize..1700,
            byte in proptest::num::u8::ANY,
        ) {
            let _ = check(&junk, Some(&junk), &junk);
            let mut crt = RSA_CRT.to_vec();
            let i = at % crt.len();
            crt[i] = byte;
            let _ = check(&crt, None, RSA_KEY);
            let mut key = RSA_KEY.to_vec();
            let i = at % key.len();
            key[i] = byte;
            let _ = check(RSA_CRT, None, &key);
        }
    }

    #[test]
    fn refuses_what_acm_refuses() {
        let two = [RSA_CRT, EC_CRT].concat();
        type Case<'a> = (&'a [u8], Option<&'a [u8]>, &'a [u8], &'a str);
        let cases: [Case<'_>; 6] = [
            (&two, None, RSA_KEY, "more than one certificate"),
            (b"hello", None, RSA_KEY, "does not contain a certificate"),
            (RSA_CRT, None, EC_KEY, "does not match"),
            (EC_CRT, None, OTHER_EC_KEY, "does not match"),
            (RSA_CRT, Some(RSA_KEY), RSA_KEY, "only PEM certificates"),
            (RSA_KEY, None, RSA_KEY, "must contain a PEM certificate"),
        ];
        for (c, chain, k, want) in cases {
            match check(c, chain, k) {
                Err(Invalid(m)) => assert!(m.contains(want), "{m} should say {want}"),
                Ok(_) => panic!("accepted; wanted {want}"),
            }
        }
    }
}
