//! Load balancers: create (idempotent by name and settings), describe, delete (with its
//! listeners and rules), attributes, security groups, subnets and address type.
//!
//! Every load balancer lives on this host's loopback: its DNS name ends in `.localhost`, which
//! curl and browsers resolve to 127.0.0.1, and each listener is a port on that address.

use serde_json::{Value, json};

use crate::Elb;
use crate::attrs;
use crate::error::{ElbResult, check_name, code, invalid_config, lb_not_found, new_id, validation};
use crate::state::LoadBalancer;
use crate::tags;

fn hosted_zone(kind: &str) -> &'static str {
    if kind == "network" {
        "Z26RNL4JYFTOTI"
    } else {
        "Z35SXDOTRQ7X7K"
    }
}

fn zone_of(region: &str, index: usize) -> String {
    let letter = (b'a' + (index % 26) as u8) as char;
    format!("{region}{letter}")
}

fn subnets_of(input: &Value) -> Vec<String> {
    let mut out = fleetport_proto::input::strings(input, "Subnets");
    if let Some(maps) = input.get("SubnetMappings").and_then(Value::as_array) {
        out.extend(
            maps.iter()
                .filter_map(|m| m.get("SubnetId").and_then(Value::as_str))
                .map(String::from),
        );
    }
    out
}

fn check_subnets(kind: &str, subnets: &[String]) -> ElbResult<()> {
    let mut unique = subnets.to_vec();
    unique.sort();
    unique.dedup();
    if unique.len() != subnets.len() {
        return Err(invalid_config(
            "A load balancer cannot be attached to multiple subnets in the same Availability Zone",
        ));
    }
    if kind == "application" && subnets.len() == 1 {
        return Err(invalid_config(
            "At least two subnets in two different Availability Zones must be specified",
        ));
    }
    Ok(())
}

impl Elb {
    pub(crate) fn render_lb(&self, lb: &LoadBalancer, state: &str) -> Value {
        let zones: Vec<Value> = lb
            .subnets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({"ZoneName": zone_of(&self.inner.region, i), "SubnetId": s,
                       "LoadBalancerAddresses": []})
            })
            .collect();
        let mut out = json!({
            "LoadBalancerArn": lb.arn,
            "DNSName": lb.dns_name,
            "CanonicalHostedZoneId": hosted_zone(&lb.kind),
            "CreatedTime": lb.created_at,
            "LoadBalancerName": lb.name,
            "Scheme": lb.scheme,
            "VpcId": "vpc-local",
            "State": {"Code": state},
            "Type": lb.kind,
            "AvailabilityZones": zones,
            "IpAddressType": lb.ip_address_type,
        });
        if lb.kind == "application" || !lb.security_groups.is_empty() {
            out["SecurityGroups"] = json!(lb.security_groups);
        }
        out
    }

    pub(crate) async fn create_load_balancer(&self, input: Value) -> ElbResult<Value> {
        let name = fleetport_proto::input::owned(&input, "Name");
        check_name("Load balancer", "name", &name)?;
        if name.starts_with("internal-") {
            return Err(validation(format!(
                "Load balancer name '{name}' cannot begin with 'internal-'"
            )));
        }
        let kind = fleetport_proto::input::string(&input, "Type")
            .unwrap_or("application")
            .to_string();
        if kind == "gateway" {
            return Err(code(
                "UnsupportedProtocol",
                "Gateway Load Balancers are not supported by Fleetport",
            ));
        }
        let scheme = fleetport_proto::input::string(&input, "Scheme")
            .unwrap_or("internet-facing")
            .to_string();
        let ip_address_type = fleetport_proto::input::string(&input, "IpAddressType")
            .unwrap_or("ipv4")
            .to_string();
        let mut subnets = subnets_of(&input);
        check_subnets(&kind, &subnets)?;
        if subnets.is_empty() {
            // Nothing to choose from on one host: two local subnets, as a default VPC would offer.
            subnets = vec!["subnet-local-a".into(), "subnet-local-b".into()];
        }
        let security_groups = fleetport_proto::input::strings(&input, "SecurityGroups");
        let new_tags = tags::parse(&input)?;
        let id = new_id();
        let short = if kind == "network" { "net" } else { "app" };
        let arn = self.arn(&format!("loadbalancer/{short}/{name}/{id}"));
        let region = self.inner.region.clone();
        let prefix = if scheme == "internal" {
            "internal-"
        } else {
            ""
        };
        let dns_name = if kind == "network" {
            format!("{prefix}{name}-{id}.elb.{region}.localhost")
        } else {
            let digits = u64::from_str_radix(&id[..8], 16).unwrap_or(0) % 10_000_000_000;
            format!("{prefix}{name}-{digits:010}.{region}.elb.localhost")
        };
        let lb = LoadBalancer {
            arn,
            name: name.clone(),
            kind: kind.clone(),
            scheme,
            dns_name,
            created_at: fleetport_proto::clock::epoch_seconds(),
            subnets,
            security_groups,
            ip_address_type,
            attributes: attrs::lb_defaults(&kind),
        };
        let (lb, created) = self
            .change(move |s| {
                if let Some(old) = s.load_balancers.iter().find(|l| l.name == name) {
                    let same = old.kind == lb.kind
                        && old.scheme == lb.scheme
                        && old.ip_address_type == lb.ip_address_type;
                    if !same {
                        return Err(code(
                            "DuplicateLoadBalancerName",
                            format!("A load balancer with the name '{name}' already exists"),
                        ));
                    }
                    return Ok((old.clone(), false));
                }
                if s.load_balancers.len() >= 50 {
                    return Err(code(
                        "TooManyLoadBalancers",
                        "The quota of load balancers (50) has been reached",
                    ));
                }
                tags::merge(s, &lb.arn, &new_tags)?;
                s.load_balancers.push(lb.clone());
                Ok((lb, true))
            })
            .await?;
        let state = if created { "provisioning" } else { "active" };
        Ok(json!({"LoadBalancers": [self.render_lb(&lb, state)]}))
    }

    pub(crate) fn describe_load_balancers(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let arns = fleetport_proto::input::strings(&input, "LoadBalancerArns");
        let names = fleetport_proto::input::strings(&input, "Names");
        if !arns.is_empty() && !names.is_empty() {
            return Err(validation(
                "Load balancer names and load balancer ARNs cannot be specified at the same time",
            ));
        }
        let mut found: Vec<&LoadBalancer> = Vec::new();
        if !arns.is_empty() {
            for a in &arns {
                found.push(s.lb(a).ok_or_else(lb_not_found)?);
            }
        } else if !names.is_empty() {
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| !s.load_balancers.iter().any(|l| &&l.name == n))
                .collect();
            if !missing.is_empty() {
                let list: Vec<&str> = missing.iter().map(|n| n.as_str()).collect();
                return Err(code(
                    "LoadBalancerNotFound",
                    format!("Load balancers '[{}]' not found", list.join(", ")),
                ));
            }
            found = s
                .load_balancers
                .iter()
                .filter(|l| names.contains(&l.name))
                .collect();
        } else {
            found = s.load_balancers.iter().collect();
        }
        let items = found
            .into_iter()
            .map(|l| (l.arn.clone(), self.render_lb(l, "active")))
            .collect();
        crate::error::page(&input, "LoadBalancers", items)
    }

    pub(crate) async fn delete_load_balancer(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "LoadBalancerArn");
        self.change(move |s| {
            let Some(lb) = s.lb(&arn) else {
                // Deleting what is already gone succeeds, as on AWS.
                return Ok(());
            };
            if lb.attributes.get("deletion_protection.enabled").map(String::as_str) == Some("true") {
                return Err(code(
                    "OperationNotPermitted",
                    format!("Load balancer '{arn}' cannot be deleted because deletion protection is enabled"),
                ));
            }
            let listeners: Vec<String> = s
                .listeners
                .iter()
                .filter(|l| l.load_balancer_arn == arn)
                .map(|l| l.arn.clone())
                .collect();
            s.rules.retain(|r| !listeners.contains(&r.listener_arn));
            s.listeners.retain(|l| l.load_balancer_arn != arn);
            s.load_balancers.retain(|l| l.arn != arn);
            for a in listeners.iter().chain(std::iter::once(&arn)) {
                s.tags.remove(a);
            }
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) fn describe_load_balancer_attributes(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let lb = s
            .lb(fleetport_proto::input::string(&input, "LoadBalancerArn").unwrap_or_default())
            .ok_or_else(lb_not_found)?;
        Ok(json!({"Attributes": attrs::render(&lb.attributes)}))
    }

    pub(crate) async fn modify_load_balancer_attributes(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "LoadBalancerArn");
        let attributes = self
            .change(move |s| {
                let lb = s.lb_mut(&arn).ok_or_else(lb_not_found)?;
                attrs::apply("Load balancer", &mut lb.attributes, &input)?;
                Ok(lb.attributes.clone())
            })
            .await?;
        Ok(json!({"Attributes": attrs::render(&attributes)}))
    }

    pub(crate) async fn set_security_groups(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "LoadBalancerArn");
        let groups = fleetport_proto::input::strings(&input, "SecurityGroups");
        let ids = groups.clone();
        self.change(move |s| {
            let lb = s.lb_mut(&arn).ok_or_else(lb_not_found)?;
            lb.security_groups = groups;
            Ok(())
        })
        .await?;
        Ok(json!({"SecurityGroupIds": ids}))
    }

    pub(crate) async fn set_subnets(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "LoadBalancerArn");
        let subnets = subnets_of(&input);
        let lb = self
            .change(move |s| {
                let lb = s.lb_mut(&arn).ok_or_else(lb_not_found)?;
                check_subnets(&lb.kind, &subnets)?;
                if subnets.is_empty() {
                    return Err(validation("At least one subnet must be specified"));
                }
                lb.subnets = subnets;
                Ok(lb.clone())
            })
            .await?;
        let rendered = self.render_lb(&lb, "active");
        Ok(
            json!({"AvailabilityZones": rendered["AvailabilityZones"], "IpAddressType": lb.ip_address_type}),
        )
    }

    pub(crate) async fn set_ip_address_type(&self, input: Value) -> ElbResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "LoadBalancerArn");
        let kind = fleetport_proto::input::owned(&input, "IpAddressType");
        let out = kind.clone();
        self.change(move |s| {
            let lb = s.lb_mut(&arn).ok_or_else(lb_not_found)?;
            lb.ip_address_type = kind;
            Ok(())
        })
        .await?;
        Ok(json!({"IpAddressType": out}))
    }
}
