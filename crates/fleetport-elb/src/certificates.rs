//! Certificates for HTTPS and TLS listeners. The ELB asks a [`CertificateSource`] (ACM, wired in
//! by the binary) for the certificate behind an ARN instead of reading another service's
//! records, and follows its change signal so a re-imported certificate is served at once.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// A certificate ready to serve.
#[derive(Debug, Clone)]
pub struct ServerCertificate {
    pub key: Arc<CertifiedKey>,
    /// The DNS names it is for (wildcards as `*.example.com`), for choosing by SNI.
    pub names: Vec<String>,
}

pub trait CertificateSource: Send + Sync + 'static {
    /// The certificate behind `arn`; `None` when there is no such certificate.
    fn certificate(&self, arn: &str) -> Option<ServerCertificate>;
    /// Changes whenever any certificate may have changed.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// A source without certificates, for an ELB running without ACM.
#[derive(Debug)]
pub struct NoCertificates(watch::Sender<u64>);

impl Default for NoCertificates {
    fn default() -> Self {
        Self(watch::Sender::new(0))
    }
}

impl CertificateSource for NoCertificates {
    fn certificate(&self, _: &str) -> Option<ServerCertificate> {
        None
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
