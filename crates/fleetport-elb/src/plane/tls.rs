//! TLS for HTTPS and TLS listeners: one rustls server configuration per port, built on the
//! control side whenever the configuration or a certificate changes and shared by every worker.
//! The certificate is chosen by SNI among the listener's certificates (the default when no name
//! matches), protocol versions follow the SSL policy, and ALPN offers HTTP/2 on HTTPS
//! listeners (unless `routing.http2.enabled` is false) or what a TLS listener's ALPN policy says.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certificates::{CertificateSource, ServerCertificate};
use crate::state::{ElbState, Listener};

/// The server configuration of each HTTPS or TLS port.
pub type TlsConfigs = HashMap<u16, Arc<ServerConfig>>;

/// Builds the configurations of every HTTPS and TLS listener whose default certificate loads.
pub fn configs(state: &ElbState, source: &dyn CertificateSource) -> TlsConfigs {
    let mut out = TlsConfigs::new();
    for l in state
        .listeners
        .iter()
        .filter(|l| matches!(l.protocol.as_str(), "HTTPS" | "TLS"))
    {
        let http2 = state
            .lb(&l.load_balancer_arn)
            .and_then(|lb| lb.attributes.get("routing.http2.enabled"))
            .is_none_or(|v| v != "false");
        match config(l, http2, source) {
            Some(c) => {
                out.insert(l.port, Arc::new(c));
            }
            None => tracing::warn!(
                listener = %l.arn,
                "the listener's default certificate is missing; its port refuses TLS handshakes"
            ),
        }
    }
    out
}

fn config(l: &Listener, http2: bool, source: &dyn CertificateSource) -> Option<ServerConfig> {
    let mut arns = l.certificate_arns();
    let default = source.certificate(arns.next()?)?;
    let named: Vec<ServerCertificate> = arns.filter_map(|a| source.certificate(a)).collect();
    let tls13 = l
        .ssl_policy
        .as_deref()
        .unwrap_or_default()
        .contains("TLS13");
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS12]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { default, named }));
    config.alpn_protocols = alpn(l, http2);
    Some(config)
}

fn alpn(l: &Listener, http2: bool) -> Vec<Vec<u8>> {
    let (h2, h1) = (b"h2".to_vec(), b"http/1.1".to_vec());
    if l.protocol == "HTTPS" {
        return if http2 { vec![h2, h1] } else { vec![h1] };
    }
    match l.alpn_policy.first().map(String::as_str) {
        Some("HTTP1Only") => vec![h1],
        Some("HTTP2Only") => vec![h2],
        Some("HTTP2Optional") => vec![h1, h2],
        Some("HTTP2Preferred") => vec![h2, h1],
        _ => Vec::new(),
    }
}

/// Picks the certificate for a client's SNI name: the first added certificate naming it
/// (exactly or by a one-label wildcard), then the default certificate if it names it, and the
/// default certificate when none does.
#[derive(Debug)]
struct SniResolver {
    default: ServerCertificate,
    named: Vec<ServerCertificate>,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.key.clone();
        };
        let covers = |c: &ServerCertificate| c.names.iter().any(|p| name_matches(p, name));
        if covers(&self.default) {
            return self.default.key.clone();
        }
        self.named
            .iter()
            .find(|c| covers(c))
            .unwrap_or(&self.default)
            .key
            .clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Whether certificate name `pattern` (`www.example.com` or `*.example.com`) covers `name`.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("www.example.com", "WWW.example.com"));
        assert!(name_matches("*.example.com", "api.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("www.example.com", "api.example.com"));
    }
}
