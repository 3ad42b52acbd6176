//! Account-wide answers: DescribeAccountLimits (the quotas this build enforces) and
//! DescribeSSLPolicies (the predefined policy names, for tools that list them).

use serde_json::{Value, json};

use crate::Elb;
use crate::error::{ElbResult, code};

const LIMITS: &[(&str, u32)] = &[
    ("application-load-balancers", 50),
    ("network-load-balancers", 50),
    ("target-groups", 3000),
    ("targets-per-application-load-balancer", 1000),
    ("targets-per-network-load-balancer", 3000),
    ("targets-per-target-group", 1000),
    ("listeners-per-application-load-balancer", 50),
    ("listeners-per-network-load-balancer", 50),
    ("rules-per-application-load-balancer", 100),
    ("condition-values-per-alb-rule", 5),
    ("condition-wildcards-per-alb-rule", 5),
    ("target-groups-per-action-on-application-load-balancer", 5),
    ("target-groups-per-application-load-balancer", 100),
    ("certificates-per-application-load-balancer", 25),
];

pub(crate) const POLICIES: &[&str] = &[
    "ELBSecurityPolicy-2016-08",
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS-1-2-2017-01",
    "ELBSecurityPolicy-FS-1-2-Res-2020-10",
];

impl Elb {
    pub(crate) fn describe_account_limits(&self, input: Value) -> ElbResult<Value> {
        let items = LIMITS
            .iter()
            .map(|(n, m)| (n.to_string(), json!({"Name": n, "Max": m.to_string()})))
            .collect();
        crate::error::page(&input, "Limits", items)
    }

    pub(crate) fn describe_ssl_policies(&self, input: Value) -> ElbResult<Value> {
        let names = fleetport_proto::input::strings(&input, "Names");
        for n in &names {
            if !POLICIES.contains(&n.as_str()) {
                return Err(code(
                    "SSLPolicyNotFound",
                    format!("SSL policy '{n}' not found"),
                ));
            }
        }
        let render = |n: &str| {
            let tls13 = n.contains("TLS13");
            let mut protocols = vec![json!({"Name": "TLSv1.2", "Priority": 1})];
            if tls13 {
                protocols.insert(0, json!({"Name": "TLSv1.3", "Priority": 1}));
            }
            json!({
                "Name": n,
                "SslProtocols": protocols.iter().map(|p| p["Name"].clone()).collect::<Vec<_>>(),
                "Ciphers": [
                    {"Name": "ECDHE-ECDSA-AES128-GCM-SHA256", "Priority": 1},
                    {"Name": "ECDHE-RSA-AES128-GCM-SHA256", "Priority": 2}
                ],
                "SupportedLoadBalancerTypes": ["application", "network"],
            })
        };
        let items = POLICIES
            .iter()
            .filter(|p| names.is_empty() || names.iter().any(|n| n == *p))
            .map(|p| (p.to_string(), render(p)))
            .collect();
        crate::error::page(&input, "SslPolicies", items)
    }
}
