//! Target groups: create (with AWS's health-check defaults per protocol), describe, modify,
//! delete, attributes, target registration with draining, and DescribeTargetHealth.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::Elb;
use crate::attrs;
use crate::error::{
    ElbResult, check_name, code, invalid_config, lb_not_found, new_id, tg_not_found, validation,
};
use crate::instances::{self, InstanceState};
use crate::state::{ElbState, HealthCheck, Target, TargetGroup};
use crate::tags;

const HTTP_LIKE: &[&str] = &["HTTP", "HTTPS"];
const TCP_LIKE: &[&str] = &["TCP", "TLS", "UDP", "TCP_UDP"];

fn int(input: &Value, member: &str) -> Option<i64> {
    input.get(member).and_then(Value::as_i64)
}

/// Checks an HTTP matcher such as `200`, `200,202` or `200-299` against the allowed range.
fn check_matcher(m: &str, lo: u16, hi: u16) -> ElbResult<()> {
    let bad = || {
        validation(format!(
            "Health check matcher HTTP code '{m}' must be a list or range of codes between {lo} and {hi}"
        ))
    };
    for part in m.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b) = (
            a.trim().parse::<u16>().map_err(|_| bad())?,
            b.trim().parse::<u16>().map_err(|_| bad())?,
        );
        if a < lo || b > hi || a > b {
            return Err(bad());
        }
    }
    Ok(())
}

/// Builds or updates the health check from the request, then checks the whole of it.
fn health_from(input: &Value, protocol: &str, old: Option<&HealthCheck>) -> ElbResult<HealthCheck> {
    let hc_protocol = input
        .get("HealthCheckProtocol")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| old.map(|o| o.protocol.clone()))
        .unwrap_or_else(|| {
            if HTTP_LIKE.contains(&protocol) {
                protocol.to_string()
            } else {
                "TCP".to_string()
            }
        });
    let http_check = HTTP_LIKE.contains(&hc_protocol.as_str());
    // AWS: GENEVE, TLS, UDP and TCP_UDP are not health-check protocols.
    if !http_check && hc_protocol != "TCP" {
        return Err(validation(format!(
            "Health check protocol '{hc_protocol}' is not supported; use HTTP, HTTPS or TCP"
        )));
    }
    if HTTP_LIKE.contains(&protocol) && !http_check {
        return Err(validation(format!(
            "Health check protocol '{hc_protocol}' is not supported for target groups with the protocol '{protocol}'"
        )));
    }
    let network = TCP_LIKE.contains(&protocol);
    let protocol_changed = old.is_some_and(|o| o.protocol != hc_protocol);
    let default_timeout = match (network, hc_protocol.as_str()) {
        (false, _) => 5,
        (true, "HTTP") => 6,
        _ => 10,
    };
    let keep = |f: fn(&HealthCheck) -> u64, default: u64| {
        old.filter(|_| !protocol_changed).map(f).unwrap_or(default)
    };
    let interval = int(input, "HealthCheckIntervalSeconds")
        .map(|v| v as u64)
        .unwrap_or_else(|| keep(|o| o.interval, 30));
    let timeout = int(input, "HealthCheckTimeoutSeconds")
        .map(|v| v as u64)
        .unwrap_or_else(|| keep(|o| o.timeout, default_timeout));
    if timeout >= interval {
        return Err(validation(format!(
            "Health check timeout '{timeout}' must be smaller than the interval '{interval}'"
        )));
    }
    let matcher = if http_check {
        let m = input
            .pointer("/Matcher/HttpCode")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| old.and_then(|o| o.matcher.clone()))
            .unwrap_or_else(|| if network { "200-399" } else { "200" }.to_string());
        if network {
            check_matcher(&m, 200, 599)?;
        } else {
            check_matcher(&m, 200, 499)?;
        }
        Some(m)
    } else {
        if input.get("Matcher").is_some() || input.get("HealthCheckPath").is_some() {
            return Err(validation(
                "Custom health check matchers and paths are not supported for TCP health checks",
            ));
        }
        None
    };
    let path = http_check.then(|| {
        input
            .get("HealthCheckPath")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| old.and_then(|o| o.path.clone()))
            .unwrap_or_else(|| "/".to_string())
    });
    if let Some(p) = &path
        && !p.starts_with('/')
    {
        return Err(validation(format!(
            "Health check path '{p}' must begin with a '/' character"
        )));
    }
    let port = input
        .get("HealthCheckPort")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| old.map(|o| o.port.clone()))
        .unwrap_or_else(|| "traffic-port".to_string());
    if port != "traffic-port" && !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(validation(format!(
            "Health check port '{port}' must be 'traffic-port' or a number between 1 and 65535"
        )));
    }
    let enabled = input
        .get("HealthCheckEnabled")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| old.is_none_or(|o| o.enabled));
    if !enabled {
        return Err(validation(
            "Health checks cannot be disabled for target groups with target type 'instance' or 'ip'",
        ));
    }
    Ok(HealthCheck {
        enabled,
        protocol: hc_protocol,
        port,
        path,
        interval,
        timeout,
        healthy_threshold: int(input, "HealthyThresholdCount")
            .map(|v| v as u32)
            .or_else(|| old.map(|o| o.healthy_threshold))
            .unwrap_or(5),
        unhealthy_threshold: int(input, "UnhealthyThresholdCount")
            .map(|v| v as u32)
            .or_else(|| old.map(|o| o.unhealthy_threshold))
            .unwrap_or(2),
        matcher,
    })
}

fn same_settings(a: &TargetGroup, b: &TargetGroup) -> bool {
    a.protocol == b.protocol
        && a.port == b.port
        && a.target_type == b.target_type
        && a.health.protocol == b.health.protocol
        && a.health.path == b.health.path
        && a.health.interval == b.health.interval
        && a.health.timeout == b.health.timeout
        && a.health.matcher == b.health.matcher
}

fn targets_of(input: &Value, tg: &TargetGroup) -> ElbResult<Vec<Target>> {
    let mut out = Vec::new();
    for t in input
        .get("Targets")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let id = t.get("Id").and_then(Value::as_str).unwrap_or_default();
        let port = match t.get("Port").and_then(Value::as_i64) {
            None => tg.port,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                return Err(validation(format!(
                    "Port '{p}' of target '{id}' must be between 1 and 65535"
                )));
            }
        };
        out.push(Target {
            id: id.to_string(),
            port,
            availability_zone: t
                .get("AvailabilityZone")
                .and_then(Value::as_str)
                .map(String::from),
            draining_until: None,
            address: None,
        });
    }
    Ok(out)
}

impl Elb {
    pub(crate) fn render_tg(&self, s: &ElbState, tg: &TargetGroup) -> Value {
        let mut out = json!({
            "TargetGroupArn": tg.arn,
            "TargetGroupName": tg.name,
            "Protocol": tg.protocol,
            "Port": tg.port,
            "VpcId": tg.vpc_id.clone().unwrap_or_else(|| "vpc-local".into()),
            "HealthCheckProtocol": tg.health.protocol,
            "HealthCheckPort": tg.health.port,
            "HealthCheckEnabled": tg.health.enabled,
            "HealthCheckIntervalSeconds": tg.health.interval,
            "HealthCheckTimeoutSeconds": tg.health.timeout,
            "HealthyThresholdCount": tg.health.healthy_threshold,
            "UnhealthyThresholdCount": tg.health.unhealthy_threshold,
            "LoadBalancerArns": s.lbs_of_tg(&tg.arn),
            "TargetType": tg.target_type,
            "IpAddressType": tg.ip_address_type,
        });
        if let Some(p) = &tg.health.path {
            out["HealthCheckPath"] = json!(p);
        }
        if let Some(m) = &tg.health.matcher {
            out["Matcher"] = json!({"HttpCode": m});
        }
        if let Some(v) = &tg.protocol_version {
            out["ProtocolVersion"] = json!(v);
        }
        out
    }

    pub(crate) async fn create_target_group(&self, input: Value) -> ElbResult<Value> {
        let name = fleetport_proto::input::owned(&input, "Name");
        check_name("Target group", "name", &name)?;
        let target_type = fleetport_proto::input::string(&input, "TargetType")
            .unwrap_or("instance")
            .to_string();
        if matches!(target_type.as_str(), "lambda" | "alb") {
            return Err(validation(format!(
                "Target type '{target_type}' is not supported by Fleetport; use 'ip' or 'instance'"
            )));
        }
        let protocol = fleetport_proto::input::string(&input, "Protocol")
            .ok_or_else(|| validation("A protocol must be specified"))?
            .to_string();
        if matches!(protocol.as_str(), "GENEVE" | "QUIC" | "TCP_QUIC") {
            return Err(code(
                "UnsupportedProtocol",
                format!("Protocol '{protocol}' is not supported by Fleetport"),
            ));
        }
        let port = match int(&input, "Port") {
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                return Err(validation(format!(
                    "Port '{p}' must be between 1 and 65535"
                )));
            }
            None => return Err(validation("A port must be specified")),
        };
        let protocol_version = if HTTP_LIKE.contains(&protocol.as_str()) {
            Some(
                fleetport_proto::input::string(&input, "ProtocolVersion")
                    .unwrap_or("HTTP1")
                    .to_string(),
            )
        } else {
            None
        };
        let health = health_from(&input, &protocol, None)?;
        let new_tags = tags::parse(&input)?;
        let tg = TargetGroup {
            arn: self.arn(&format!("targetgroup/{name}/{}", new_id())),
            name: name.clone(),
            attributes: attrs::tg_defaults(&protocol, &target_type),
            protocol,
            port,
            vpc_id: fleetport_proto::input::string(&input, "VpcId").map(String::from),
            target_type,
            protocol_version,
            ip_address_type: fleetport_proto::input::string(&input, "IpAddressType")
                .unwrap_or("ipv4")
                .to_string(),
            health,
            targets: Vec::new(),
        };
        let (tg, s) = self
            .change(move |s| {
                if let Some(old) = s.target_groups.iter().find(|t| t.name == name) {
                    if !same_settings(old, &tg) {
                        return Err(code(
                            "DuplicateTargetGroupName",
                            format!("A target group with the same name '{name}' exists, but with different settings"),
                        ));
                    }
                    return Ok((old.clone(), s.clone()));
                }
                if s.target_groups.len() >= 3000 {
                    return Err(code("TooManyTargetGroups", "The quota of target groups (3000) has been reached"));
                }
                tags::merge(s, &tg.arn, &new_tags)?;
                s.target_groups.push(tg.clone());
                Ok((tg, s.clone()))
            })
            .await?;
        Ok(json!({"TargetGroups": [self.render_tg(&s, &tg)]}))
    }

    pub(crate) fn describe_target_groups(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let arns = fleetport_proto::input::strings(&input, "TargetGroupArns");
        let names = fleetport_proto::input::strings(&input, "Names");
        let lb = fleetport_proto::input::string(&input, "LoadBalancerArn");
        let given = [!arns.is_empty(), !names.is_empty(), lb.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given > 1 {
            return Err(validation(
                "Only one of target group ARNs, names or a load balancer ARN can be specified",
            ));
        }
        let mut found: Vec<&TargetGroup> = Vec::new();
        if !arns.is_empty() {
            for a in &arns {
                found.push(s.tg(a).ok_or_else(tg_not_found)?);
            }
        } else if !names.is_empty() {
            for n in &names {
                found.push(
                    s.target_groups
                        .iter()
                        .find(|t| &t.name == n)
                        .ok_or_else(|| {
                            code(
                                "TargetGroupNotFound",
                                format!("Target groups '[{n}]' not found"),
                            )
                        })?,
                );
            }
        } else if let Some(lb) = lb {
            if s.lb(lb).is_none() {
                return Err(lb_not_found());
            }
            found = s
                .target_groups
                .iter()
                .filter(|t| s.lbs_of_tg(&t.arn).iter().any(|l| l == lb))
                .collect();
        } else {
            found = s.target_groups.iter().collect();
        }
        let items = found
            .into_iter()
            .map(|t| (t.arn.clone(), self.render_tg(&s, t)))
            .collect();
        crate::error::page(&input, "TargetGroups", items)
    }

    pub(crate) async fn modify_target_group(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "TargetGroupArn");
        let (tg, s) = self
            .change(move |s| {
                let tg = s.tg_mut(&arn).ok_or_else(tg_not_found)?;
                tg.health = health_from(&input, &tg.protocol.clone(), Some(&tg.health))?;
                let tg = tg.clone();
                Ok((tg, s.clone()))
            })
            .await?;
        Ok(json!({"TargetGroups": [self.render_tg(&s, &tg)]}))
    }

    pub(crate) async fn delete_target_group(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "TargetGroupArn");
        self.change(move |s| {
            if !s.lbs_of_tg(&arn).is_empty() {
                return Err(code(
                    "ResourceInUse",
                    format!("Target group '{arn}' is currently in use by a listener or a rule"),
                ));
            }
            s.target_groups.retain(|t| t.arn != arn);
            s.tags.remove(&arn);
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) fn describe_target_group_attributes(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let tg = s
            .tg(fleetport_proto::input::string(&input, "TargetGroupArn").unwrap_or_default())
            .ok_or_else(tg_not_found)?;
        Ok(json!({"Attributes": attrs::render(&tg.attributes)}))
    }

    pub(crate) async fn modify_target_group_attributes(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "TargetGroupArn");
        let attributes = self
            .change(move |s| {
                let tg = s.tg_mut(&arn).ok_or_else(tg_not_found)?;
                attrs::apply("Target group", &mut tg.attributes, &input)?;
                let a = &tg.attributes;
                let lor = a.get("load_balancing.algorithm.type").map(String::as_str)
                    == Some("least_outstanding_requests");
                let slow = a
                    .get("slow_start.duration_seconds")
                    .is_some_and(|v| v != "0");
                if lor && slow {
                    return Err(invalid_config(
                        "The least outstanding requests algorithm cannot be used with slow start",
                    ));
                }
                let kind = a.get("stickiness.type").map_or("", String::as_str);
                if a.get("stickiness.enabled").map(String::as_str) == Some("true") {
                    let http = matches!(tg.protocol.as_str(), "HTTP" | "HTTPS");
                    if http == (kind == "source_ip") {
                        return Err(invalid_config(format!(
                            "Stickiness type '{kind}' is not supported for target groups with the {} protocol",
                            tg.protocol
                        )));
                    }
                    if kind == "app_cookie"
                        && a.get("stickiness.app_cookie.cookie_name")
                            .is_none_or(String::is_empty)
                    {
                        return Err(invalid_config(
                            "An application cookie name must be specified for stickiness type 'app_cookie'",
                        ));
                    }
                }
                Ok(tg.attributes.clone())
            })
            .await?;
        Ok(json!({"Attributes": attrs::render(&attributes)}))
    }

    pub(crate) async fn register_targets(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "TargetGroupArn");
        self.change(move |s| {
            let tg = s.tg_mut(&arn).ok_or_else(tg_not_found)?;
            let mut new = targets_of(&input, tg)?;
            for t in &mut new {
                match tg.target_type.as_str() {
                    "ip" => {
                        if t.id.parse::<IpAddr>().is_err() {
                            return Err(code(
                                "InvalidTarget",
                                format!("The IP address '{}' is not a valid IPv4 or IPv6 address", t.id),
                            ));
                        }
                    }
                    _ => {
                        if !instances::well_formed(&t.id) {
                            return Err(validation(format!("Instance ID '{}' is not valid", t.id)));
                        }
                        match self.inner.instances.lookup(&t.id) {
                            InstanceState::Running(ip) => t.address = Some(ip.to_string()),
                            InstanceState::Unknown => {
                                return Err(code(
                                    "InvalidTarget",
                                    format!("The following targets are not valid instances: '{}'", t.id),
                                ));
                            }
                            InstanceState::Stopped => {
                                return Err(code(
                                    "InvalidTarget",
                                    format!(
                                        "The following targets are not in a running state and cannot be registered: '{}'",
                                        t.id
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            for t in new {
                match tg.targets.iter_mut().find(|o| o.key() == t.key()) {
                    // Registering a draining target again brings it back.
                    Some(old) => {
                        old.draining_until = None;
                        old.address = t.address;
                    }
                    None => tg.targets.push(t),
                }
            }
            if tg.targets.len() > 1000 {
                return Err(code("TooManyTargets", "A target group can have at most 1000 targets"));
            }
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) async fn deregister_targets(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "TargetGroupArn");
        let now = fleetport_proto::clock::epoch_seconds();
        self.change(move |s| {
            let tg = s.tg_mut(&arn).ok_or_else(tg_not_found)?;
            let gone = targets_of(&input, tg)?;
            let delay: f64 = tg
                .attributes
                .get("deregistration_delay.timeout_seconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(300.0);
            for g in gone {
                if delay <= 0.0 {
                    tg.targets.retain(|t| t.key() != g.key());
                } else if let Some(t) = tg.targets.iter_mut().find(|t| t.key() == g.key())
                    && t.draining_until.is_none()
                {
                    t.draining_until = Some(now + delay);
                }
            }
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) fn describe_target_health(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let tg = s
            .tg(fleetport_proto::input::string(&input, "TargetGroupArn").unwrap_or_default())
            .ok_or_else(tg_not_found)?;
        let in_use = !s.lbs_of_tg(&tg.arn).is_empty();
        let describe = |t: &Target| {
            let health = if t.draining_until.is_some() {
                json!({"State": "draining", "Reason": "Target.DeregistrationInProgress",
                       "Description": "Target deregistration is in progress"})
            } else if tg.target_type == "instance" && t.address.is_none() {
                json!({"State": "unused", "Reason": "Target.InvalidState",
                       "Description": "Target is in the stopped state"})
            } else if !in_use {
                json!({"State": "unused", "Reason": "Target.NotInUse",
                       "Description": "Given target group is not configured to receive traffic from ELB"})
            } else {
                self.inner.health.describe(&tg.arn, &t.id, t.port)
            };
            let port = if tg.health.port == "traffic-port" {
                t.port.to_string()
            } else {
                tg.health.port.clone()
            };
            let mut target = json!({"Id": t.id, "Port": t.port});
            if let Some(az) = &t.availability_zone {
                target["AvailabilityZone"] = json!(az);
            }
            json!({"Target": target, "HealthCheckPort": port, "TargetHealth": health})
        };
        let asked = targets_of(&input, tg)?;
        let asked_ports: Vec<Option<i64>> = input
            .get("Targets")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|t| t.get("Port").and_then(Value::as_i64))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        if asked.is_empty() {
            out.extend(tg.targets.iter().map(describe));
        } else {
            for (a, port) in asked.iter().zip(asked_ports) {
                let matching: Vec<&Target> = tg
                    .targets
                    .iter()
                    .filter(|t| t.id == a.id && (port.is_none() || t.port == a.port))
                    .collect();
                if matching.is_empty() {
                    out.push(json!({
                        "Target": {"Id": a.id, "Port": a.port},
                        "TargetHealth": {"State": "unused", "Reason": "Target.NotRegistered",
                                         "Description": "Target is not registered to the target group"}
                    }));
                } else {
                    out.extend(matching.into_iter().map(describe));
                }
            }
        }
        Ok(json!({"TargetHealthDescriptions": out}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_defaults_follow_the_protocol() {
        let http = health_from(&json!({}), "HTTP", None).ok();
        let http = http.as_ref();
        assert_eq!(http.map(|h| (h.interval, h.timeout)), Some((30, 5)));
        assert_eq!(http.and_then(|h| h.matcher.clone()).as_deref(), Some("200"));
        let tcp = health_from(&json!({}), "TCP", None).ok();
        assert_eq!(
            tcp.as_ref().map(|h| (h.protocol.as_str(), h.timeout)),
            Some(("TCP", 10))
        );
        assert!(health_from(&json!({"HealthCheckProtocol": "TCP"}), "HTTP", None).is_err());
        assert!(health_from(&json!({"HealthCheckProtocol": "UDP"}), "UDP", None).is_err());
        assert!(health_from(&json!({"HealthCheckProtocol": "TLS"}), "TLS", None).is_err());
        let udp = health_from(&json!({}), "UDP", None).ok();
        assert_eq!(udp.map(|h| h.protocol).as_deref(), Some("TCP"));
        assert!(health_from(&json!({"HealthCheckTimeoutSeconds": 30}), "HTTP", None).is_err());
        assert!(health_from(&json!({"Matcher": {"HttpCode": "600"}}), "HTTP", None).is_err());
        assert!(
            health_from(
                &json!({"Matcher": {"HttpCode": "200-299,302"}}),
                "HTTP",
                None
            )
            .is_ok()
        );
    }
}
