//! The ELB configuration: load balancers, target groups with their registered targets,
//! listeners, rules and tags.
//!
//! Configurations are small (AWS caps them at tens of listeners and hundreds of rules per load
//! balancer), and nearly every change must be checked against the rest (duplicate ports,
//! priorities in use, target groups referenced by actions). So the whole configuration is one
//! value in memory: a change is applied to a copy, checked, written to the store, and only then
//! becomes current. A failed check or write leaves nothing half-done.
//!
//! In the store each resource is its own document (`elb.part`, keyed `<kind>/<arn>`, with its
//! position so lists keep their order), and a change writes, in one transaction, only the
//! documents that differ: registering a target rewrites its target group, not everything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where configurations were kept as one document before they were split (read once, at start).
pub const LEGACY_COLLECTION: &str = "elb.state";
pub const LEGACY_KEY: &str = "config";

/// One document per resource.
pub const PARTS: &str = "elb.part";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ElbState {
    pub load_balancers: Vec<LoadBalancer>,
    pub target_groups: Vec<TargetGroup>,
    pub listeners: Vec<Listener>,
    pub rules: Vec<Rule>,
    /// Resource ARN → tags in the order they were added.
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    pub arn: String,
    pub name: String,
    /// `application` or `network`.
    pub kind: String,
    pub scheme: String,
    pub dns_name: String,
    pub created_at: f64,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub ip_address_type: String,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub enabled: bool,
    pub protocol: String,
    /// `traffic-port` or a port number.
    pub port: String,
    pub path: Option<String>,
    pub interval: u64,
    pub timeout: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// HTTP codes such as `200`, `200,202` or `200-299`; none for TCP checks.
    pub matcher: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetGroup {
    pub arn: String,
    pub name: String,
    pub protocol: String,
    pub port: u16,
    pub vpc_id: Option<String>,
    pub target_type: String,
    pub protocol_version: Option<String>,
    pub ip_address_type: String,
    pub health: HealthCheck,
    pub attributes: BTreeMap<String, String>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub id: String,
    pub port: u16,
    pub availability_zone: Option<String>,
    /// Set at deregistration: the target drains until then, and is gone after.
    pub draining_until: Option<f64>,
    /// For `instance` targets: the instance's private address, resolved at registration and
    /// kept current by maintenance; `None` while the instance is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Target {
    pub fn key(&self) -> (String, u16) {
        (self.id.clone(), self.port)
    }

    /// Where traffic and health checks go: the ID of an `ip` target, the resolved address of an
    /// `instance` target (none while that instance is not running).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.address.as_deref().unwrap_or(&self.id).parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub arn: String,
    pub load_balancer_arn: String,
    pub port: u16,
    pub protocol: String,
    /// The default actions as the API returns them (normalised at create/modify).
    pub default_actions: Vec<Value>,
    /// The default certificate (`[{"CertificateArn": …}]`), as DescribeListeners shows it.
    pub certificates: Vec<Value>,
    /// Certificates added with AddListenerCertificates, chosen by SNI.
    #[serde(default)]
    pub extra_certificates: Vec<String>,
    pub ssl_policy: Option<String>,
    pub alpn_policy: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    /// Every listener has a default rule that DescribeRules lists; its ARN is fixed at create.
    pub default_rule_arn: String,
}

impl Listener {
    /// The default certificate first, then the ones added for SNI.
    pub fn certificate_arns(&self) -> impl Iterator<Item = &str> {
        self.certificates
            .iter()
            .filter_map(|c| c.get("CertificateArn").and_then(Value::as_str))
            .chain(self.extra_certificates.iter().map(String::as_str))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub arn: String,
    pub listener_arn: String,
    pub priority: u32,
    pub conditions: Vec<Value>,
    pub actions: Vec<Value>,
}

impl ElbState {
    pub fn lb(&self, arn: &str) -> Option<&LoadBalancer> {
        self.load_balancers.iter().find(|l| l.arn == arn)
    }

    pub fn lb_mut(&mut self, arn: &str) -> Option<&mut LoadBalancer> {
        self.load_balancers.iter_mut().find(|l| l.arn == arn)
    }

    pub fn listener_mut(&mut self, arn: &str) -> Option<&mut Listener> {
        self.listeners.iter_mut().find(|l| l.arn == arn)
    }

    pub fn tg(&self, arn: &str) -> Option<&TargetGroup> {
        self.target_groups.iter().find(|t| t.arn == arn)
    }

    pub fn tg_mut(&mut self, arn: &str) -> Option<&mut TargetGroup> {
        self.target_groups.iter_mut().find(|t| t.arn == arn)
    }

    pub fn listener(&self, arn: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.arn == arn)
    }

    /// Every action of every listener and rule, with the load balancer it belongs to.
    pub fn actions(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        let defaults = self.listeners.iter().flat_map(|l| {
            l.default_actions
                .iter()
                .map(move |a| (l.load_balancer_arn.as_str(), a))
        });
        let rules = self.rules.iter().flat_map(move |r| {
            let lb = self
                .listener(&r.listener_arn)
                .map(|l| l.load_balancer_arn.as_str())
                .unwrap_or_default();
            r.actions.iter().map(move |a| (lb, a))
        });
        defaults.chain(rules)
    }

    /// The load balancers whose listeners or rules forward to `tg_arn`.
    pub fn lbs_of_tg(&self, tg_arn: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .actions()
            .filter(|(_, a)| forward_targets(a).iter().any(|(t, _)| t == tg_arn))
            .map(|(lb, _)| lb.to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The target groups (and weights) a forward action sends to; empty for other actions.
pub fn forward_targets(action: &Value) -> Vec<(String, u64)> {
    if action.get("Type").and_then(Value::as_str) != Some("forward") {
        return Vec::new();
    }
    if let Some(groups) = action
        .pointer("/ForwardConfig/TargetGroups")
        .and_then(Value::as_array)
    {
        return groups
            .iter()
            .filter_map(|g| {
                let arn = g.get("TargetGroupArn")?.as_str()?.to_string();
                Some((arn, g.get("Weight").and_then(Value::as_u64).unwrap_or(1)))
            })
            .collect();
    }
    action
        .get("TargetGroupArn")
        .and_then(Value::as_str)
        .map(|t| vec![(t.to_string(), 1)])
        .unwrap_or_default()
}

/// One stored resource and its place in its list.
#[derive(Serialize)]
struct Part<'a, T> {
    pos: usize,
    doc: &'a T,
}

#[derive(Deserialize)]
struct OwnedPart<T> {
    pos: usize,
    doc: T,
}

/// The documents that turn the stored `old` configuration into `new`.
#[derive(Debug, Default)]
pub struct Delta {
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
}

impl Delta {
    fn list<T: Serialize + PartialEq>(
        &mut self,
        kind: &str,
        arn: impl Fn(&T) -> &str,
        old: &[T],
        new: &[T],
    ) -> Result<(), serde_json::Error> {
        let before: std::collections::HashMap<&str, (usize, &T)> = old
            .iter()
            .enumerate()
            .map(|(i, t)| (arn(t), (i, t)))
            .collect();
        let mut kept = std::collections::HashSet::new();
        for (pos, item) in new.iter().enumerate() {
            let id = arn(item);
            kept.insert(id);
            if before.get(id).is_some_and(|(p, t)| *p == pos && *t == item) {
                continue;
            }
            let doc = serde_json::to_vec(&Part { pos, doc: item })?;
            self.puts.push((format!("{kind}/{id}"), doc));
        }
        for id in before.keys().filter(|id| !kept.contains(*id)) {
            self.deletes.push(format!("{kind}/{id}"));
        }
        Ok(())
    }

    /// What to write for the change from `old` to `new`.
    pub fn between(old: &ElbState, new: &ElbState) -> Result<Self, serde_json::Error> {
        let mut d = Self::default();
        d.list(
            "lb",
            |x: &LoadBalancer| &x.arn,
            &old.load_balancers,
            &new.load_balancers,
        )?;
        d.list(
            "tg",
            |x: &TargetGroup| &x.arn,
            &old.target_groups,
            &new.target_groups,
        )?;
        d.list(
            "listener",
            |x: &Listener| &x.arn,
            &old.listeners,
            &new.listeners,
        )?;
        d.list("rule", |x: &Rule| &x.arn, &old.rules, &new.rules)?;
        d.tags(&old.tags, &new.tags)?;
        Ok(d)
    }

    /// Tags are a map (ordered by ARN), compared entry by entry without copying either side.
    fn tags(&mut self, old: &Tags, new: &Tags) -> Result<(), serde_json::Error> {
        for (arn, tags) in new {
            if old.get(arn) != Some(tags) {
                let doc = serde_json::to_vec(&Part {
                    pos: 0,
                    doc: &(arn, tags),
                })?;
                self.puts.push((format!("tags/{arn}"), doc));
            }
        }
        for arn in old.keys().filter(|arn| !new.contains_key(*arn)) {
            self.deletes.push(format!("tags/{arn}"));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    /// Writes the documents in `txn`.
    pub fn apply(
        &self,
        txn: &mut dyn fleetport_store::WriteTxn,
    ) -> Result<(), fleetport_store::StoreError> {
        for (key, doc) in &self.puts {
            txn.put(PARTS, key, doc)?;
        }
        for key in &self.deletes {
            txn.delete(PARTS, key)?;
        }
        Ok(())
    }
}

/// Resource ARN → tags in the order they were added.
type Tags = BTreeMap<String, Vec<(String, String)>>;

fn load_list<T: serde::de::DeserializeOwned>(
    txn: &dyn fleetport_store::ReadTxn,
    kind: &str,
) -> Result<Vec<T>, fleetport_store::StoreError> {
    use fleetport_store::ReadTxnExt;
    let mut parts: Vec<(String, OwnedPart<T>)> =
        txn.scan_json(PARTS, &format!("{kind}/"), None, usize::MAX)?;
    parts.sort_by_key(|(_, p)| p.pos);
    Ok(parts.into_iter().map(|(_, p)| p.doc).collect())
}

/// The stored configuration, and whether it came from the single legacy document (which
/// `Elb::prepare_store` splits into per-resource documents at start).
pub fn load(
    txn: &dyn fleetport_store::ReadTxn,
) -> Result<(ElbState, bool), fleetport_store::StoreError> {
    use fleetport_store::ReadTxnExt;
    if let Some(legacy) = txn.get_json::<ElbState>(LEGACY_COLLECTION, LEGACY_KEY)? {
        return Ok((legacy, true));
    }
    let tags: Vec<(String, Vec<(String, String)>)> = load_list(txn, "tags")?;
    Ok((
        ElbState {
            load_balancers: load_list(txn, "lb")?,
            target_groups: load_list(txn, "tg")?,
            listeners: load_list(txn, "listener")?,
            rules: load_list(txn, "rule")?,
            tags: tags.into_iter().collect(),
        },
        false,
    ))
}
