//! Attribute sets of load balancers, target groups and listeners: the full default set AWS
//! returns before any change, and the checks on every documented key (unknown keys get the
//! exact message Terraform looks for, so it can degrade gracefully).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::error::{ElbResult, validation};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn lb_defaults(kind: &str) -> BTreeMap<String, String> {
    let mut m = map(&[
        ("access_logs.s3.enabled", "false"),
        ("access_logs.s3.bucket", ""),
        ("access_logs.s3.prefix", ""),
        ("deletion_protection.enabled", "false"),
        ("ipv6.deny_all_igw_traffic", "false"),
        ("zonal_shift.config.enabled", "false"),
    ]);
    if kind == "network" {
        m.extend(map(&[
            ("load_balancing.cross_zone.enabled", "false"),
            ("dns_record.client_routing_policy", "any_availability_zone"),
            ("secondary_ips.auto_assigned.per_subnet", "0"),
        ]));
    } else {
        m.extend(map(&[
            ("idle_timeout.timeout_seconds", "60"),
            ("client_keep_alive.seconds", "3600"),
            ("connection_logs.s3.enabled", "false"),
            ("connection_logs.s3.bucket", ""),
            ("connection_logs.s3.prefix", ""),
            ("health_check_logs.s3.enabled", "false"),
            ("health_check_logs.s3.bucket", ""),
            ("health_check_logs.s3.prefix", ""),
            ("routing.http2.enabled", "true"),
            ("routing.http.drop_invalid_header_fields.enabled", "false"),
            ("routing.http.desync_mitigation_mode", "defensive"),
            ("routing.http.preserve_host_header.enabled", "false"),
            ("routing.http.xff_header_processing.mode", "append"),
            ("routing.http.xff_client_port.enabled", "false"),
            (
                "routing.http.x_amzn_tls_version_and_cipher_suite.enabled",
                "false",
            ),
            ("waf.fail_open.enabled", "false"),
            ("load_balancing.cross_zone.enabled", "true"),
        ]));
    }
    m
}

pub fn tg_defaults(protocol: &str, target_type: &str) -> BTreeMap<String, String> {
    let udp = matches!(protocol, "UDP" | "TCP_UDP");
    let mut m = map(&[
        ("deregistration_delay.timeout_seconds", "300"),
        ("stickiness.enabled", "false"),
        (
            "load_balancing.cross_zone.enabled",
            "use_load_balancer_configuration",
        ),
        (
            "target_group_health.dns_failover.minimum_healthy_targets.count",
            "1",
        ),
        (
            "target_group_health.dns_failover.minimum_healthy_targets.percentage",
            "off",
        ),
        (
            "target_group_health.unhealthy_state_routing.minimum_healthy_targets.count",
            "1",
        ),
        (
            "target_group_health.unhealthy_state_routing.minimum_healthy_targets.percentage",
            "off",
        ),
    ]);
    if matches!(protocol, "HTTP" | "HTTPS") {
        m.extend(map(&[
            ("stickiness.type", "lb_cookie"),
            ("stickiness.lb_cookie.duration_seconds", "86400"),
            ("stickiness.app_cookie.cookie_name", ""),
            ("stickiness.app_cookie.duration_seconds", "86400"),
            ("load_balancing.algorithm.type", "round_robin"),
            ("load_balancing.algorithm.anomaly_mitigation", "off"),
            ("slow_start.duration_seconds", "0"),
        ]));
    } else {
        m.extend(map(&[
            ("stickiness.type", "source_ip"),
            // UDP flows have no end of their own: AWS closes them when the delay ends, and
            // always shows them the client's address.
            (
                "deregistration_delay.connection_termination.enabled",
                if udp { "true" } else { "false" },
            ),
            (
                "preserve_client_ip.enabled",
                if target_type == "ip" && !udp {
                    "false"
                } else {
                    "true"
                },
            ),
            ("proxy_protocol_v2.enabled", "false"),
            (
                "target_health_state.unhealthy.connection_termination.enabled",
                "true",
            ),
            (
                "target_health_state.unhealthy.draining_interval_seconds",
                "0",
            ),
        ]));
    }
    m
}

pub fn listener_defaults(protocol: &str) -> BTreeMap<String, String> {
    if matches!(protocol, "HTTP" | "HTTPS") {
        map(&[
            ("routing.http.response.server.enabled", "true"),
            (
                "routing.http.response.strict_transport_security.header_value",
                "",
            ),
            (
                "routing.http.response.access_control_allow_origin.header_value",
                "",
            ),
            ("routing.http.response.x_frame_options.header_value", ""),
        ])
    } else {
        map(&[("tcp.idle_timeout.seconds", "350")])
    }
}

fn int_in(key: &str, v: &str, lo: i64, hi: i64) -> ElbResult<()> {
    match v.parse::<i64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(()),
        _ => Err(validation(format!(
            "The value of '{key}' must be an integer between {lo} and {hi}, not '{v}'"
        ))),
    }
}

fn one_of(key: &str, v: &str, allowed: &[&str]) -> ElbResult<()> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(validation(format!(
            "The value of '{key}' must be one of {}, not '{v}'",
            allowed.join(", ")
        )))
    }
}

/// Checks one value; keys without a rule below accept any text.
fn check_value(key: &str, v: &str) -> ElbResult<()> {
    let boolean = key.ends_with(".enabled") && key != "load_balancing.cross_zone.enabled";
    if boolean {
        return one_of(key, v, &["true", "false"]);
    }
    match key {
        "idle_timeout.timeout_seconds" => int_in(key, v, 1, 4000),
        "client_keep_alive.seconds" => int_in(key, v, 60, 604_800),
        "deregistration_delay.timeout_seconds" => int_in(key, v, 0, 3600),
        "stickiness.lb_cookie.duration_seconds" | "stickiness.app_cookie.duration_seconds" => {
            int_in(key, v, 1, 604_800)
        }
        "slow_start.duration_seconds" => {
            if v == "0" {
                Ok(())
            } else {
                int_in(key, v, 30, 900)
            }
        }
        "tcp.idle_timeout.seconds" => int_in(key, v, 60, 6000),
        "load_balancing.algorithm.type" => one_of(
            key,
            v,
            &[
                "round_robin",
                "least_outstanding_requests",
                "weighted_random",
            ],
        ),
        "stickiness.type" => one_of(key, v, &["lb_cookie", "app_cookie", "source_ip"]),
        "routing.http.desync_mitigation_mode" => {
            one_of(key, v, &["monitor", "defensive", "strictest"])
        }
        "routing.http.xff_header_processing.mode" => {
            one_of(key, v, &["append", "preserve", "remove"])
        }
        "stickiness.app_cookie.cookie_name" => {
            if ["AWSALB", "AWSALBAPP", "AWSALBTG"]
                .iter()
                .any(|p| v.starts_with(p))
            {
                Err(validation(format!(
                    "The cookie name '{v}' is reserved: it must not start with AWSALB, AWSALBAPP or AWSALBTG"
                )))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Applies `Attributes` (a list of `{Key, Value}`) to `current`, whose keys are the known
/// ones. All are checked before any is applied.
pub fn apply(what: &str, current: &mut BTreeMap<String, String>, input: &Value) -> ElbResult<()> {
    let items = input
        .get("Attributes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut next = current.clone();
    for item in &items {
        let key = item.get("Key").and_then(Value::as_str).unwrap_or_default();
        let value = item
            .get("Value")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !current.contains_key(key) {
            return Err(validation(format!(
                "{what} attribute key '{key}' is not recognized"
            )));
        }
        check_value(key, value)?;
        next.insert(key.to_string(), value.to_string());
    }
    *current = next;
    Ok(())
}

pub fn render(attrs: &BTreeMap<String, String>) -> Value {
    Value::Array(
        attrs
            .iter()
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_change_nothing() {
        let mut a = lb_defaults("application");
        let before = a.clone();
        let bad = json!({"Attributes": [
            {"Key": "idle_timeout.timeout_seconds", "Value": "30"},
            {"Key": "no.such.key", "Value": "1"}]});
        let e = apply("Load balancer", &mut a, &bad)
            .err()
            .map(|e| e.message);
        assert_eq!(
            e.as_deref(),
            Some("Load balancer attribute key 'no.such.key' is not recognized")
        );
        assert_eq!(a, before);
        let bad = json!({"Attributes": [{"Key": "idle_timeout.timeout_seconds", "Value": "0"}]});
        assert!(apply("Load balancer", &mut a, &bad).is_err());
        let good = json!({"Attributes": [{"Key": "idle_timeout.timeout_seconds", "Value": "2"}]});
        assert!(apply("Load balancer", &mut a, &good).is_ok());
        assert_eq!(a["idle_timeout.timeout_seconds"], "2");
    }
}
