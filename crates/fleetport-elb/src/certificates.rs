//! Certificates for HTTPS and TLS listeners. The ELB asks a [`CertificateSource`] (ACM, wired in
//! by the binary) for the certificate behind an ARN instead of reading another service's
//! records, and follows its change signal so a re-imported certificate is served at once.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

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

/// Remembers the certificates a source loaded until [`Self::forget`] (called when the source
/// signals a change), so republishing the configuration, as every target registration does,
/// does not parse every private key again.
pub struct Cached {
    source: Arc<dyn CertificateSource>,
    loaded: Mutex<HashMap<String, Option<ServerCertificate>>>,
}

impl Cached {
    pub fn new(source: Arc<dyn CertificateSource>) -> Self {
        Self {
            source,
            loaded: Mutex::default(),
        }
    }

    /// Drops everything loaded: the next lookups ask the source again.
    pub fn forget(&self) {
        self.loaded.lock().clear();
    }
}

impl CertificateSource for Cached {
    fn certificate(&self, arn: &str) -> Option<ServerCertificate> {
        if let Some(c) = self.loaded.lock().get(arn) {
            return c.clone();
        }
        let c = self.source.certificate(arn);
        self.loaded.lock().insert(arn.to_string(), c.clone());
        c
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.source.changes()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting(AtomicUsize, watch::Sender<u64>);

    impl CertificateSource for Counting {
        fn certificate(&self, _: &str) -> Option<ServerCertificate> {
            self.0.fetch_add(1, Ordering::Relaxed);
            None
        }
        fn changes(&self) -> watch::Receiver<u64> {
            self.1.subscribe()
        }
    }

    #[test]
    fn certificates_are_loaded_once_until_forgotten() {
        let source = Arc::new(Counting(AtomicUsize::new(0), watch::Sender::new(0)));
        let cached = Cached::new(source.clone());
        for _ in 0..3 {
            assert!(cached.certificate("arn:a").is_none());
        }
        assert_eq!(source.0.load(Ordering::Relaxed), 1);
        cached.forget();
        cached.certificate("arn:a");
        assert_eq!(source.0.load(Ordering::Relaxed), 2);
    }
}
