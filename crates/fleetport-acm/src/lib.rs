//! AWS Certificate Manager for Fleetport: the certificates HTTPS listeners serve. Only imported
//! certificates exist here (ImportCertificate, with re-import to rotate); Fleetport cannot
//! validate domains, so RequestCertificate is not offered. Records live in `acm.certificate`
//! keyed by certificate ID; the private key is kept sealed (`fleetport_store::seal`, bound to the
//! certificate's ARN), so the state files never hold it in the clear.
//!
//! Load balancers read certificates through [`Acm::material`] and learn of changes from
//! [`Acm::subscribe`]; who uses a certificate (InUseBy, and the refusal to delete one in use)
//! comes from a [`CertificateUsers`] the binary wires in. Depends only on `fleetport-proto` and
//! `fleetport-store`.

mod api;
pub mod cert;

use std::sync::{Arc, OnceLock};

use fleetport_proto::model::{self, ServiceModel};
use fleetport_proto::{AwsError, BoxFuture, RequestContext, Service};
use fleetport_store::Store;
use fleetport_store::seal::Sealer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

pub(crate) const COLLECTION: &str = "acm.certificate";

/// Who uses certificates (the load balancers' listeners).
pub trait CertificateUsers: Send + Sync + 'static {
    /// The ARNs of the resources that use `certificate_arn`.
    fn users(&self, certificate_arn: &str) -> Vec<String>;
}

/// One imported certificate as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record {
    pub arn: String,
    pub id: String,
    pub certificate: String,
    pub chain: Option<String>,
    /// Sealed with the data directory's secrets key (records from before sealing hold PEM).
    pub private_key: String,
    #[serde(flatten)]
    pub facts: cert::Facts,
    pub created_at: f64,
    pub imported_at: f64,
    pub tags: Vec<Value>,
}

/// What a TLS server needs of a certificate.
#[derive(Debug, Clone)]
pub struct Material {
    /// The certificate, its chain and its signing key.
    pub key: Arc<rustls::sign::CertifiedKey>,
    /// The domain name and the DNS subject alternative names, for choosing by SNI.
    pub names: Vec<String>,
}

/// The ACM service. Cheap to clone.
#[derive(Clone)]
pub struct Acm {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    region: String,
    account_id: String,
    users: OnceLock<Arc<dyn CertificateUsers>>,
    sealer: Arc<Sealer>,
    /// Bumped after every import, re-import and delete.
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for Acm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acm")
            .field("region", &self.inner.region)
            .finish_non_exhaustive()
    }
}

const IMPLEMENTED: &[&str] = &[
    "ImportCertificate",
    "DescribeCertificate",
    "GetCertificate",
    "ListCertificates",
    "DeleteCertificate",
    "AddTagsToCertificate",
    "RemoveTagsFromCertificate",
    "ListTagsForCertificate",
];

impl Acm {
    /// `sealer` keeps private keys sealed at rest.
    pub fn new(store: Arc<dyn Store>, region: &str, account_id: &str, sealer: Arc<Sealer>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                region: region.to_string(),
                account_id: account_id.to_string(),
                users: OnceLock::new(),
                sealer,
                changes: watch::Sender::new(0),
            }),
        }
    }

    /// Sets who uses certificates; later calls are ignored. Until it is set, no certificate is
    /// in use.
    pub fn set_users(&self, users: Arc<dyn CertificateUsers>) {
        let _ = self.inner.users.set(users);
    }

    /// The certificate behind `arn`, if one was imported.
    pub fn material(&self, arn: &str) -> Option<Material> {
        let rec = self.record(arn).ok().flatten()?;
        let key = if Sealer::is_sealed(&rec.private_key) {
            match self.inner.sealer.open(&rec.arn, &rec.private_key) {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(arn, error = %e, "a stored private key does not open");
                    return None;
                }
            }
        } else {
            rec.private_key.clone().into_bytes()
        };
        // Checked at import; checked again because the store is a file users can touch.
        match cert::check(
            rec.certificate.as_bytes(),
            rec.chain.as_deref().map(str::as_bytes),
            &key,
        ) {
            Ok(c) => Some(Material {
                key: c.key,
                names: rec.facts.names,
            }),
            Err(cert::Invalid(m)) => {
                tracing::error!(arn, reason = m, "a stored certificate no longer loads");
                None
            }
        }
    }

    /// Declares every stored certificate in the store's reference records (certificates
    /// imported before those records existed); idempotent, run at start.
    pub async fn declare_existing(&self) -> Result<(), fleetport_store::StoreError> {
        fleetport_store::write(&*self.inner.store, |txn| {
            let records: Vec<(String, Record)> =
                fleetport_store::ReadTxnExt::scan_json(txn, COLLECTION, "", None, usize::MAX)?;
            for (_, r) in records {
                fleetport_store::refs::declare(txn, &r.arn)?;
            }
            Ok::<_, fleetport_store::Abort<fleetport_store::StoreError>>(())
        })
        .await
    }

    /// Changes whenever a certificate is imported, re-imported or deleted.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub(crate) fn users(&self, arn: &str) -> Vec<String> {
        self.inner
            .users
            .get()
            .map(|u| u.users(arn))
            .unwrap_or_default()
    }

    /// `private_key` sealed for the certificate `arn`.
    pub(crate) fn seal_key(&self, arn: &str, private_key: &str) -> Result<String, AwsError> {
        self.inner
            .sealer
            .seal(arn, private_key.as_bytes())
            .map_err(|e| {
                tracing::error!(error = %e, "sealing a private key");
                AwsError::internal()
            })
    }

    pub(crate) fn changed(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
    }

    pub(crate) fn arn(&self, id: &str) -> String {
        format!(
            "arn:aws:acm:{}:{}:certificate/{id}",
            self.inner.region, self.inner.account_id
        )
    }

    /// The certificate ID inside an ARN of this account and region.
    pub(crate) fn id_of<'a>(&self, arn: &'a str) -> Option<&'a str> {
        let prefix = self.arn("");
        arn.strip_prefix(prefix.as_str())
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    }

    pub(crate) fn record(&self, arn: &str) -> Result<Option<Record>, AwsError> {
        let Some(id) = self.id_of(arn) else {
            return Ok(None);
        };
        fleetport_store::read(&*self.inner.store, |txn| {
            fleetport_store::ReadTxnExt::get_json::<Record>(txn, COLLECTION, id)
        })
        .map_err(|e| {
            tracing::error!(error = %e, "reading a certificate");
            AwsError::internal()
        })
    }

    async fn dispatch(&self, operation: &str, input: Value) -> Result<Value, AwsError> {
        match operation {
            "ImportCertificate" => self.import_certificate(input).await,
            "DescribeCertificate" => self.describe_certificate(input),
            "GetCertificate" => self.get_certificate(input),
            "ListCertificates" => self.list_certificates(input),
            "DeleteCertificate" => self.delete_certificate(input).await,
            "AddTagsToCertificate" => self.add_tags(input).await,
            "RemoveTagsFromCertificate" => self.remove_tags(input).await,
            "ListTagsForCertificate" => self.list_tags(input),
            _ => Err(AwsError::client(
                "ValidationException",
                format!("Operation {operation} is not supported by Fleetport."),
            )),
        }
    }
}

impl Service for Acm {
    fn model(&self) -> &'static ServiceModel {
        model::acm()
    }

    fn constraint_error_code(&self) -> &'static str {
        "ValidationException"
    }

    fn implements(&self, operation: &str) -> bool {
        IMPLEMENTED.contains(&operation)
    }

    fn call<'a>(
        &'a self,
        _ctx: &'a RequestContext,
        operation: &'a str,
        input: Value,
    ) -> BoxFuture<'a, Result<Value, AwsError>> {
        Box::pin(self.dispatch(operation, input))
    }

    /// Every action but ListCertificates (and an ImportCertificate that makes a new one) is on
    /// the certificate its `CertificateArn` names, as IAM's reference for ACM lists them.
    fn resources(&self, _ctx: &RequestContext, _operation: &str, input: &Value) -> Vec<String> {
        match input.get("CertificateArn").and_then(Value::as_str) {
            Some(arn) => vec![arn.to_string()],
            None => vec!["*".to_string()],
        }
    }
}
