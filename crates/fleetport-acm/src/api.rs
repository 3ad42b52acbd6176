//! The ACM operations: import (and re-import) with validation, describe, get, list with ACM's
//! filters and paging, delete (refused while in use), and tags.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fleetport_proto::AwsError;
use fleetport_proto::input;
use fleetport_store::{Abort, ReadTxnExt, WriteTxn, WriteTxnExt};
use serde_json::{Value, json};

use crate::cert::{self, Invalid};
use crate::{Acm, COLLECTION, Record};

fn validation(m: impl Into<String>) -> AwsError {
    AwsError::client("ValidationException", m)
}

fn not_found(arn: &str) -> AwsError {
    AwsError::client(
        "ResourceNotFoundException",
        format!("Could not find certificate {arn}."),
    )
}

fn store_error(e: fleetport_store::StoreError) -> AwsError {
    tracing::error!(error = %e, "certificate store");
    AwsError::internal()
}

/// An API error, or a store failure already turned into one.
struct Failed(AwsError);

impl From<fleetport_store::StoreError> for Failed {
    fn from(e: fleetport_store::StoreError) -> Self {
        Failed(store_error(e))
    }
}

/// One write transaction whose domain errors are API errors.
async fn write<T: Send + 'static>(
    acm: &Acm,
    f: impl FnOnce(&mut dyn WriteTxn) -> Result<T, Abort<AwsError>> + Send + 'static,
) -> Result<T, AwsError> {
    fleetport_store::write(&*acm.inner.store, move |txn| {
        f(txn).map_err(|e| match e {
            Abort::Domain(d) => Abort::Domain(Failed(d)),
            Abort::Store(s) => Abort::Store(s),
        })
    })
    .await
    .map_err(|Failed(e)| e)
}

/// ACM's default key types for ListCertificates when `Includes.keyTypes` is not given.
const DEFAULT_KEY_TYPES: &[&str] = &["RSA_1024", "RSA_2048"];
const MAX_TAGS: usize = 50;

fn now() -> f64 {
    fleetport_proto::clock::epoch_seconds()
}

fn blob(input: &Value, member: &str) -> Result<Option<Vec<u8>>, AwsError> {
    input::string(input, member)
        .map(|b| {
            STANDARD
                .decode(b)
                .map_err(|_| validation(format!("{member} is not valid base64.")))
        })
        .transpose()
}

fn status(rec: &Record) -> &'static str {
    if rec.facts.not_after < now() {
        "EXPIRED"
    } else {
        "ISSUED"
    }
}

/// Tags as given, checked: keys 1–128 characters, not `aws:`, values up to 256.
fn parse_tags(input: &Value, member: &str) -> Result<Vec<Value>, AwsError> {
    let mut out: Vec<Value> = Vec::new();
    for t in input::items(input, member) {
        let key = t.get("Key").and_then(Value::as_str).unwrap_or_default();
        let value = t.get("Value").and_then(Value::as_str);
        if key.is_empty() || key.chars().count() > 128 {
            return Err(AwsError::client(
                "InvalidParameterException",
                "Tag keys must be 1 to 128 characters.",
            ));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(AwsError::client(
                "InvalidTagException",
                format!("Tag key '{key}' uses the reserved prefix 'aws:'."),
            ));
        }
        if value.is_some_and(|v| v.chars().count() > 256) {
            return Err(AwsError::client(
                "InvalidParameterException",
                "Tag values must be at most 256 characters.",
            ));
        }
        out.retain(|o| o.get("Key").and_then(Value::as_str) != Some(key));
        out.push(match value {
            Some(v) => json!({"Key": key, "Value": v}),
            None => json!({"Key": key}),
        });
    }
    Ok(out)
}

fn merge_tags(tags: &mut Vec<Value>, new: Vec<Value>) -> Result<(), AwsError> {
    for t in new {
        tags.retain(|o| o.get("Key") != t.get("Key"));
        tags.push(t);
    }
    if tags.len() > MAX_TAGS {
        return Err(AwsError::client(
            "TooManyTagsException",
            format!("A certificate can have at most {MAX_TAGS} tags."),
        ));
    }
    Ok(())
}

impl Acm {
    /// The record behind `CertificateArn`: an ARN that is not an ARN is `InvalidArnException`,
    /// an unknown one `ResourceNotFoundException`.
    fn existing(&self, input: &Value) -> Result<Record, AwsError> {
        let arn = input::string(input, "CertificateArn").unwrap_or_default();
        if !arn.starts_with("arn:") || arn.split(':').count() < 6 {
            return Err(AwsError::client(
                "InvalidArnException",
                format!("String '{arn}' is not a valid ARN."),
            ));
        }
        self.record(arn)?.ok_or_else(|| not_found(arn))
    }

    pub(crate) async fn import_certificate(&self, input: Value) -> Result<Value, AwsError> {
        let certificate = blob(&input, "Certificate")?.unwrap_or_default();
        let chain = blob(&input, "CertificateChain")?;
        let key = blob(&input, "PrivateKey")?.unwrap_or_default();
        let checked = cert::check(&certificate, chain.as_deref(), &key)
            .map_err(|Invalid(m)| validation(m))?;
        let text = |b: Vec<u8>| {
            String::from_utf8(b).map_err(|_| validation("PEM input must be ASCII text."))
        };
        let tags = parse_tags(&input, "Tags")?;
        let previous = match input::string(&input, "CertificateArn") {
            Some(_) => {
                if !tags.is_empty() {
                    return Err(validation(
                        "Tags cannot be specified when a certificate is re-imported.",
                    ));
                }
                Some(self.existing(&input)?)
            }
            None => None,
        };
        let id = previous
            .as_ref()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), |p| p.id.clone());
        let at = now();
        let arn = self.arn(&id);
        let private_key = self.seal_key(&arn, &text(key)?)?;
        let mut rec = Record {
            arn,
            id: id.clone(),
            certificate: text(certificate)?,
            chain: chain.map(text).transpose()?,
            private_key,
            facts: checked.facts,
            created_at: at,
            imported_at: at,
            tags,
        };
        if let Some(p) = previous {
            rec.created_at = p.created_at;
            rec.tags = p.tags;
        }
        let arn = rec.arn.clone();
        write(self, move |txn| {
            txn.put_json(COLLECTION, &id, &rec)?;
            // Load balancers may now refer to it (see `fleetport_store::refs`).
            fleetport_store::refs::declare(txn, &rec.arn)?;
            Ok(())
        })
        .await?;
        self.changed();
        Ok(json!({"CertificateArn": arn}))
    }

    pub(crate) fn describe_certificate(&self, input: Value) -> Result<Value, AwsError> {
        let rec = self.existing(&input)?;
        let in_use = self.users(&rec.arn);
        Ok(json!({"Certificate": {
            "CertificateArn": rec.arn,
            "DomainName": rec.facts.domain_name,
            "SubjectAlternativeNames": rec.facts.names,
            "Serial": rec.facts.serial,
            "Subject": rec.facts.subject,
            "Issuer": rec.facts.issuer,
            "ImportedAt": rec.imported_at,
            "Status": status(&rec),
            "NotBefore": rec.facts.not_before,
            "NotAfter": rec.facts.not_after,
            "KeyAlgorithm": rec.facts.key_algorithm,
            "SignatureAlgorithm": rec.facts.signature_algorithm,
            "InUseBy": in_use,
            "Type": "IMPORTED",
            "RenewalEligibility": "INELIGIBLE",
            "KeyUsages": [],
            "ExtendedKeyUsages": [],
            "Options": {"CertificateTransparencyLoggingPreference": "ENABLED"},
        }}))
    }

    pub(crate) fn get_certificate(&self, input: Value) -> Result<Value, AwsError> {
        let rec = self.existing(&input)?;
        let mut out = json!({"Certificate": rec.certificate});
        if let Some(c) = rec.chain {
            out["CertificateChain"] = json!(c);
        }
        Ok(out)
    }

    pub(crate) fn list_certificates(&self, input: Value) -> Result<Value, AwsError> {
        let statuses = input::strings(&input, "CertificateStatuses");
        let key_types: Vec<String> = input
            .pointer("/Includes/keyTypes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_else(|| DEFAULT_KEY_TYPES.iter().map(|k| k.to_string()).collect());
        let limit = match input.get("MaxItems").and_then(Value::as_i64) {
            None => 1000,
            Some(n) if (1..=1000).contains(&n) => n as usize,
            Some(_) => return Err(validation("MaxItems must be between 1 and 1000.")),
        };
        let after =
            match input::string(&input, "NextToken") {
                None => None,
                Some(t) => Some(fleetport_proto::paging::decode_key(t).ok_or_else(|| {
                    AwsError::client("InvalidArgsException", "Invalid NextToken.")
                })?),
            };
        let all = fleetport_store::read(&*self.inner.store, |txn| {
            txn.scan_json::<Record>(COLLECTION, "", None, usize::MAX)
        })
        .map_err(store_error)?;
        let items = all
            .into_iter()
            .filter(|(_, r)| statuses.is_empty() || statuses.iter().any(|s| s == status(r)))
            .filter(|(_, r)| key_types.contains(&r.facts.key_algorithm))
            .map(|(k, r)| {
                let in_use = !self.users(&r.arn).is_empty();
                let summary = json!({
                    "CertificateArn": r.arn,
                    "DomainName": r.facts.domain_name,
                    "SubjectAlternativeNameSummaries": r.facts.names.iter().take(100).collect::<Vec<_>>(),
                    "HasAdditionalSubjectAlternativeNames": r.facts.names.len() > 100,
                    "Status": status(&r),
                    "Type": "IMPORTED",
                    "KeyAlgorithm": r.facts.key_algorithm,
                    "KeyUsages": [],
                    "ExtendedKeyUsages": [],
                    "InUse": in_use,
                    "RenewalEligibility": "INELIGIBLE",
                    "NotBefore": r.facts.not_before,
                    "NotAfter": r.facts.not_after,
                    "ImportedAt": r.imported_at,
                });
                (k, summary)
            })
            .collect();
        let (page, token) = fleetport_proto::paging::page(items, after.as_deref(), limit, false);
        let mut out = json!({"CertificateSummaryList": page});
        if let Some(t) = token {
            out["NextToken"] = json!(t);
        }
        Ok(out)
    }

    pub(crate) async fn delete_certificate(&self, input: Value) -> Result<Value, AwsError> {
        let rec = self.existing(&input)?;
        if !self.users(&rec.arn).is_empty() {
            return Err(AwsError::client(
                "ResourceInUseException",
                format!("Certificate {} is in use.", rec.arn),
            ));
        }
        let (id, arn) = (rec.id, rec.arn);
        // Checked again where it deletes: a listener taking the certificate up meanwhile either
        // committed its reference first (then this is refused) or finds it retired.
        write(self, move |txn| {
            fleetport_store::refs::retire(txn, &arn).map_err(|e| match e {
                fleetport_store::refs::RefError::Store(s) => Abort::Store(s),
                _ => Abort::Domain(AwsError::client(
                    "ResourceInUseException",
                    format!("Certificate {arn} is in use."),
                )),
            })?;
            txn.delete(COLLECTION, &id)?;
            Ok(())
        })
        .await?;
        self.changed();
        Ok(json!({}))
    }

    async fn update_tags(
        &self,
        input: Value,
        f: impl FnOnce(&mut Vec<Value>) -> Result<(), AwsError> + Send + 'static,
    ) -> Result<Value, AwsError> {
        let rec = self.existing(&input)?;
        let id = rec.id;
        write(self, move |txn| {
            let mut rec = txn
                .get_json::<Record>(COLLECTION, &id)?
                .ok_or_else(|| Abort::Domain(not_found(&id)))?;
            f(&mut rec.tags).map_err(Abort::Domain)?;
            txn.put_json(COLLECTION, &id, &rec)?;
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) async fn add_tags(&self, input: Value) -> Result<Value, AwsError> {
        let new = parse_tags(&input, "Tags")?;
        self.update_tags(input, move |tags| merge_tags(tags, new))
            .await
    }

    pub(crate) async fn remove_tags(&self, input: Value) -> Result<Value, AwsError> {
        let gone = parse_tags(&input, "Tags")?;
        self.update_tags(input, move |tags| {
            tags.retain(|t| {
                !gone.iter().any(|g| {
                    g.get("Key") == t.get("Key")
                        && g.get("Value").is_none_or(|v| Some(v) == t.get("Value"))
                })
            });
            Ok(())
        })
        .await
    }

    pub(crate) fn list_tags(&self, input: Value) -> Result<Value, AwsError> {
        let rec = self.existing(&input)?;
        Ok(json!({"Tags": rec.tags}))
    }
}
