//! The TLS side of listeners: the default certificate, SSL policy and ALPN policy of HTTPS and
//! TLS listeners (checked at create and modify), the extra certificates chosen by SNI
//! (Add/Remove/DescribeListenerCertificates), and which load balancers use a certificate.

use serde_json::{Value, json};

use crate::Elb;
use crate::error::{ElbResult, code, listener_not_found, validation};
use crate::misc::POLICIES;
use crate::state::{ElbState, Listener};

pub const DEFAULT_SSL_POLICY: &str = "ELBSecurityPolicy-2016-08";
const ALPN_POLICIES: &[&str] = &[
    "HTTP1Only",
    "HTTP2Only",
    "HTTP2Optional",
    "HTTP2Preferred",
    "None",
];
/// AWS's `certificates-per-application-load-balancer` limit, applied per listener.
const MAX_CERTIFICATES: usize = 25;

fn secure(protocol: &str) -> bool {
    matches!(protocol, "HTTPS" | "TLS")
}

/// The TLS settings a listener of `protocol` gets.
#[derive(Debug, Default)]
pub struct TlsSettings {
    pub certificates: Vec<Value>,
    pub extra_certificates: Vec<String>,
    pub ssl_policy: Option<String>,
    pub alpn_policy: Vec<String>,
}

impl Elb {
    fn certificate_exists(&self, arn: &str) -> ElbResult<()> {
        if self.inner.certificates.certificate(arn).is_none() {
            return Err(crate::error::certificate_not_found(arn));
        }
        Ok(())
    }

    /// The TLS settings of a listener speaking `protocol`, from the request, falling back to
    /// what `old` (the listener being modified) had where the request is silent.
    pub(crate) fn tls_settings(
        &self,
        input: &Value,
        protocol: &str,
        old: Option<&Listener>,
    ) -> ElbResult<TlsSettings> {
        let given_certs = input.get("Certificates").and_then(Value::as_array);
        let given_policy = fleetport_proto::input::string(input, "SslPolicy");
        let given_alpn = fleetport_proto::input::strings(input, "AlpnPolicy");
        if !secure(protocol) {
            if given_certs.is_some_and(|c| !c.is_empty()) || given_policy.is_some() {
                return Err(validation(format!(
                    "Certificates and SSL policies can be set only on HTTPS and TLS listeners, not on {protocol} listeners"
                )));
            }
            if !given_alpn.is_empty() {
                return Err(validation("ALPN policies can be set only on TLS listeners"));
            }
            return Ok(TlsSettings::default());
        }
        let old = old.filter(|o| secure(&o.protocol));
        let certificates = match given_certs {
            Some(list) => {
                let [one] = list.as_slice() else {
                    return Err(validation(format!(
                        "Exactly one default certificate must be specified for {protocol} listeners"
                    )));
                };
                let arn = one
                    .get("CertificateArn")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if arn.is_empty() {
                    return Err(validation("A certificate ARN must be specified"));
                }
                vec![json!({"CertificateArn": arn})]
            }
            None => old.map(|o| o.certificates.clone()).unwrap_or_default(),
        };
        let Some(default) = certificates
            .first()
            .and_then(|c| c.get("CertificateArn"))
            .and_then(Value::as_str)
        else {
            return Err(validation(format!(
                "A certificate must be specified for {protocol} listeners"
            )));
        };
        self.certificate_exists(default)?;
        let ssl_policy = given_policy
            .map(String::from)
            .or_else(|| old.and_then(|o| o.ssl_policy.clone()))
            .unwrap_or_else(|| DEFAULT_SSL_POLICY.to_string());
        if !POLICIES.contains(&ssl_policy.as_str()) {
            return Err(code(
                "SSLPolicyNotFound",
                format!("SSL policy '{ssl_policy}' not found"),
            ));
        }
        let alpn_policy = if given_alpn.is_empty() {
            old.map(|o| o.alpn_policy.clone()).unwrap_or_default()
        } else {
            if protocol != "TLS" {
                return Err(validation("ALPN policies can be set only on TLS listeners"));
            }
            match given_alpn.as_slice() {
                [one] if ALPN_POLICIES.contains(&one.as_str()) => given_alpn.clone(),
                [one] => {
                    return Err(code(
                        "ALPNPolicyNotFound",
                        format!("ALPN policy '{one}' not found"),
                    ));
                }
                _ => return Err(validation("Only one ALPN policy can be specified")),
            }
        };
        Ok(TlsSettings {
            certificates,
            extra_certificates: old
                .map(|o| o.extra_certificates.clone())
                .unwrap_or_default(),
            ssl_policy: Some(ssl_policy),
            alpn_policy,
        })
    }

    /// The load balancers whose listeners serve `certificate_arn` (ACM's InUseBy).
    pub fn certificate_users(&self, certificate_arn: &str) -> Vec<String> {
        let s = self.snapshot();
        let mut out: Vec<String> = s
            .listeners
            .iter()
            .filter(|l| l.certificate_arns().any(|a| a == certificate_arn))
            .map(|l| l.load_balancer_arn.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn certificate_arns_of(input: &Value) -> ElbResult<Vec<String>> {
        let arns: Vec<String> = input
            .get("Certificates")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| {
                        c.get("CertificateArn")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        if arns.is_empty() || arns.iter().any(String::is_empty) {
            return Err(validation(
                "Certificates with a CertificateArn must be specified",
            ));
        }
        Ok(arns)
    }

    fn secure_listener<'a>(s: &'a mut ElbState, arn: &str) -> ElbResult<&'a mut Listener> {
        let l = s.listener_mut(arn).ok_or_else(listener_not_found)?;
        if !secure(&l.protocol) {
            return Err(validation(format!(
                "Certificates can be added only to HTTPS and TLS listeners, not to {} listeners",
                l.protocol
            )));
        }
        Ok(l)
    }

    pub(crate) async fn add_listener_certificates(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "ListenerArn");
        let arns = Self::certificate_arns_of(&input)?;
        for a in &arns {
            self.certificate_exists(a)?;
        }
        let added = arns.clone();
        self.change(move |s| {
            let l = Self::secure_listener(s, &arn)?;
            for a in arns {
                if l.certificate_arns().all(|have| have != a) {
                    l.extra_certificates.push(a);
                }
            }
            if l.certificate_arns().count() > MAX_CERTIFICATES {
                return Err(code(
                    "TooManyCertificates",
                    format!("A listener can have at most {MAX_CERTIFICATES} certificates"),
                ));
            }
            Ok(())
        })
        .await?;
        let out: Vec<Value> = added
            .iter()
            .map(|a| json!({"CertificateArn": a, "IsDefault": false}))
            .collect();
        Ok(json!({"Certificates": out}))
    }

    pub(crate) async fn remove_listener_certificates(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "ListenerArn");
        let arns = Self::certificate_arns_of(&input)?;
        self.change(move |s| {
            let l = Self::secure_listener(s, &arn)?;
            if l.certificate_arns()
                .next()
                .is_some_and(|d| arns.iter().any(|a| a == d))
            {
                return Err(code(
                    "OperationNotPermitted",
                    "The default certificate of a listener cannot be removed; replace it with ModifyListener",
                ));
            }
            l.extra_certificates.retain(|a| !arns.contains(a));
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) fn describe_listener_certificates(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let l = s
            .listener(fleetport_proto::input::string(&input, "ListenerArn").unwrap_or_default())
            .ok_or_else(listener_not_found)?;
        let items = l
            .certificate_arns()
            .enumerate()
            .map(|(i, a)| {
                (
                    a.to_string(),
                    json!({"CertificateArn": a, "IsDefault": i == 0}),
                )
            })
            .collect();
        crate::error::page(&input, "Certificates", items)
    }
}
