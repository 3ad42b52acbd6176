//! TLS from the load balancer to targets: requests to HTTPS target groups, connections to TLS
//! target groups and HTTPS health checks. As AWS documents, the load balancer does not validate
//! a target's certificate (targets usually have self-signed ones); the handshake's signatures
//! are still checked, so the session is bound to the key the target presented.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Accepts any certificate chain; verifies handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What the connection will carry: HTTP/1.1 (offered by ALPN, so a target that also speaks
/// HTTP/2 does not pick it) or an opaque byte stream (no ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    Http1,
    Stream,
}

fn client_config(carries: Carries) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    let verifier = AnyCertificate {
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    if carries == Carries::Http1 {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}

/// The shared client configuration, built on first use.
fn connector(carries: Carries) -> Result<TlsConnector, rustls::Error> {
    type Built = OnceLock<Result<Arc<ClientConfig>, rustls::Error>>;
    static HTTP1: Built = OnceLock::new();
    static STREAM: Built = OnceLock::new();
    let cell = match carries {
        Carries::Http1 => &HTTP1,
        Carries::Stream => &STREAM,
    };
    let config = cell.get_or_init(|| client_config(carries)).clone()?;
    Ok(TlsConnector::from(config))
}

/// Opens TLS on a connection to a target; the server name is the target's IP address, which
/// (as on AWS) sends no SNI.
pub async fn connect(
    stream: TcpStream,
    addr: SocketAddr,
    carries: Carries,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::IpAddress(addr.ip().into());
    let connector = connector(carries).map_err(std::io::Error::other)?;
    connector.connect(name, stream).await
}
