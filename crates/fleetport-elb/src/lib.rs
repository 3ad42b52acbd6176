//! Elastic Load Balancing (v2) for Fleetport: the awsQuery API version 2015-12-01 and the data
//! plane behind it.
//!
//! API handlers check each change against the whole configuration ([`state::ElbState`]),
//! persist it, and publish it; the data plane ([`plane`]) follows every published
//! configuration: it opens and closes listener ports, compiles rules, and runs the health
//! checks whose results DescribeTargetHealth reports. Depends only on `fleetport-proto` and
//! `fleetport-store`.

mod attrs;
pub mod certificates;
mod error;
pub mod instances;
mod lb;
mod listener;
mod listener_certs;
mod misc;
pub mod plane;
pub mod state;
mod tags;
mod tg;

use std::collections::HashMap;
use std::sync::Arc;

use fleetport_proto::model::{self, ServiceModel};
use fleetport_proto::{AwsError, BoxFuture, RequestContext, Service};
use fleetport_store::Store;
use serde_json::Value;
use tokio::sync::{Mutex, watch};

use crate::certificates::CertificateSource;
use crate::error::store_error;
use crate::instances::InstanceDirectory;
use crate::state::ElbState;

fn targets_input(target_group: &str, targets: &[(String, u16)]) -> Value {
    serde_json::json!({
        "TargetGroupArn": target_group,
        "Targets": targets.iter().map(|(id, port)| serde_json::json!({"Id": id, "Port": port})).collect::<Vec<_>>(),
    })
}

/// The ELB service. Cheap to clone.
#[derive(Clone)]
pub struct Elb {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    region: String,
    account_id: String,
    /// Serialises changes; the value is the last persisted configuration.
    state: Mutex<ElbState>,
    current: watch::Sender<Arc<ElbState>>,
    health: Arc<plane::health::HealthBoard>,
    /// What this ELB shares with the other tenants' and the data plane, and its place there.
    shared: plane::fleet::Shared,
    slot: usize,
    ports: Arc<plane::Ports>,
    instances: Arc<dyn InstanceDirectory>,
    certificates: Arc<dyn CertificateSource>,
}

impl std::fmt::Debug for Elb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elb")
            .field("region", &self.inner.region)
            .finish_non_exhaustive()
    }
}

const IMPLEMENTED: &[&str] = &[
    "CreateLoadBalancer",
    "DescribeLoadBalancers",
    "DeleteLoadBalancer",
    "DescribeLoadBalancerAttributes",
    "ModifyLoadBalancerAttributes",
    "SetSecurityGroups",
    "SetSubnets",
    "SetIpAddressType",
    "CreateTargetGroup",
    "DescribeTargetGroups",
    "ModifyTargetGroup",
    "DeleteTargetGroup",
    "DescribeTargetGroupAttributes",
    "ModifyTargetGroupAttributes",
    "RegisterTargets",
    "DeregisterTargets",
    "DescribeTargetHealth",
    "CreateListener",
    "DescribeListeners",
    "ModifyListener",
    "DeleteListener",
    "DescribeListenerAttributes",
    "ModifyListenerAttributes",
    "CreateRule",
    "DescribeRules",
    "ModifyRule",
    "DeleteRule",
    "SetRulePriorities",
    "AddTags",
    "RemoveTags",
    "DescribeTags",
    "DescribeAccountLimits",
    "DescribeSSLPolicies",
    "AddListenerCertificates",
    "RemoveListenerCertificates",
    "DescribeListenerCertificates",
];

impl Elb {
    /// Loads the saved configuration; the data plane starts with [`Elb::run_data_plane`].
    /// `instances` resolves the IDs of `instance` targets; `certificates` gives HTTPS and TLS
    /// listeners their certificates.
    ///
    /// `shared` are the parts every tenant's ELB shares with the one data plane: listener
    /// ports (a port holds load balancers of several accounts and regions, told apart by
    /// host name), target health and traffic counters.
    pub fn open(
        store: Arc<dyn Store>,
        region: &str,
        account_id: &str,
        instances: Arc<dyn InstanceDirectory>,
        certificates: Arc<dyn CertificateSource>,
        shared: &plane::fleet::Shared,
    ) -> Result<Self, fleetport_store::StoreError> {
        let (saved, _) = fleetport_store::read(&*store, state::load)?;
        let (current, _) = watch::channel(Arc::new(saved.clone()));
        let slot = shared.join(current.subscribe());
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                region: region.to_string(),
                account_id: account_id.to_string(),
                state: Mutex::new(saved),
                current,
                health: shared.health.clone(),
                shared: shared.clone(),
                slot,
                ports: shared.ports.clone(),
                instances,
                certificates,
            }),
        })
    }

    /// Every published configuration, for the data plane.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ElbState>> {
        self.inner.current.subscribe()
    }

    /// Where HTTPS and TLS listeners of this ELB get their certificates.
    pub fn certificates(&self) -> Arc<dyn CertificateSource> {
        self.inner.certificates.clone()
    }

    /// Expires drained targets and follows the addresses of `instance` targets (every two
    /// seconds); runs until aborted.
    pub async fn run_maintenance(self) {
        for round in 0u64.. {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if round % 8 == 0 {
                self.refresh_instance_addresses().await;
            }
            let now = fleetport_proto::clock::epoch_seconds();
            let due = {
                let cur = self.snapshot();
                cur.target_groups.iter().any(|tg| {
                    tg.targets
                        .iter()
                        .any(|t| t.draining_until.is_some_and(|d| d <= now))
                })
            };
            if due {
                let r = self
                    .change(|s| {
                        for tg in &mut s.target_groups {
                            tg.targets
                                .retain(|t| t.draining_until.is_none_or(|d| d > now));
                        }
                        Ok(())
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e.message, "could not remove drained targets");
                }
            }
        }
    }

    /// Instances stop, go away or come back: their targets follow, so traffic and health checks
    /// reach an instance only while it runs.
    async fn refresh_instance_addresses(&self) {
        let dir = &*self.inner.instances;
        let snapshot = self.snapshot();
        let targets: Vec<&state::Target> = snapshot
            .target_groups
            .iter()
            .filter(|tg| tg.target_type == "instance")
            .flat_map(|tg| tg.targets.iter())
            .collect();
        // One lookup per instance, however many targets (ports, groups) name it.
        let mut resolved: HashMap<String, Option<String>> = HashMap::new();
        for t in &targets {
            if !resolved.contains_key(&t.id) {
                resolved.insert(t.id.clone(), instances::address(dir, &t.id));
            }
        }
        if targets
            .iter()
            .all(|t| resolved.get(&t.id) == Some(&t.address))
        {
            return;
        }
        for t in &targets {
            if let Some(a) = resolved.get(&t.id).filter(|a| **a != t.address) {
                tracing::debug!(instance = %t.id, from = ?t.address, to = ?a, "instance target address changed");
            }
        }
        let r = self
            .change(|s| {
                for tg in s
                    .target_groups
                    .iter_mut()
                    .filter(|tg| tg.target_type == "instance")
                {
                    for t in &mut tg.targets {
                        // Targets registered since the lookups wait for the next round.
                        if let Some(a) = resolved.get(&t.id) {
                            t.address = a.clone();
                        }
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e.message, "could not update instance target addresses");
        }
    }

    /// A target group's type, whether a load balancer forwards to it, and its deregistration
    /// delay in seconds (for ECS services, through the binary's link).
    pub fn target_group_summary(&self, arn: &str) -> Option<(String, bool, f64)> {
        let s = self.snapshot();
        let tg = s.tg(arn)?;
        let delay = tg
            .attributes
            .get("deregistration_delay.timeout_seconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300.0);
        Some((tg.target_type.clone(), !s.lbs_of_tg(arn).is_empty(), delay))
    }

    /// RegisterTargets for one target group.
    pub async fn register(
        &self,
        target_group: &str,
        targets: &[(String, u16)],
    ) -> Result<(), AwsError> {
        self.register_targets(targets_input(target_group, targets))
            .await
            .map(|_| ())
    }

    /// DeregisterTargets for one target group (the targets drain for the group's delay).
    pub async fn deregister(
        &self,
        target_group: &str,
        targets: &[(String, u16)],
    ) -> Result<(), AwsError> {
        self.deregister_targets(targets_input(target_group, targets))
            .await
            .map(|_| ())
    }

    /// DescribeTargetHealth's `TargetHealth` for one target.
    pub fn target_health(&self, target_group: &str, id: &str, port: u16) -> Option<Value> {
        let out = self
            .describe_target_health(targets_input(target_group, &[(id.to_string(), port)]))
            .ok()?;
        out.pointer("/TargetHealthDescriptions/0/TargetHealth")
            .cloned()
    }

    /// Moves whenever some target's health changes.
    pub fn health_changes(&self) -> watch::Receiver<u64> {
        self.inner.health.changes()
    }

    /// Reads the configuration again after another process (a replica on the same database)
    /// changed it, and publishes it, so the data plane here serves what that replica stored.
    pub async fn reload(&self) -> Result<(), fleetport_store::StoreError> {
        let mut guard = self.inner.state.lock().await;
        let (saved, _) = fleetport_store::read(&*self.inner.store, state::load)?;
        *guard = saved.clone();
        self.inner.current.send_replace(Arc::new(saved));
        Ok(())
    }

    /// Drops the configuration held in memory after the store was emptied (test resets), which
    /// closes every listener.
    pub async fn forget_all(&self) {
        let mut guard = self.inner.state.lock().await;
        *guard = ElbState::default();
        self.inner
            .current
            .send_replace(Arc::new(ElbState::default()));
    }

    pub(crate) fn snapshot(&self) -> Arc<ElbState> {
        self.inner.current.borrow().clone()
    }

    /// Applies `f` to a copy of the configuration; if it succeeds, persists and publishes it.
    pub(crate) async fn change<T>(
        &self,
        f: impl FnOnce(&mut ElbState) -> Result<T, AwsError>,
    ) -> Result<T, AwsError> {
        let mut guard = self.inner.state.lock().await;
        let mut next = guard.clone();
        let out = f(&mut next)?;
        let delta = state::Delta::between(&guard, &next).map_err(|_| AwsError::internal())?;
        let (gone, added) = certificate_uses(&guard).diff(&certificate_uses(&next));
        if delta.is_empty() && gone.is_empty() && added.is_empty() {
            // Nothing to store (a repeated idempotent call): no transaction, no fsync.
            *guard = next.clone();
            self.inner.current.send_replace(Arc::new(next));
            return Ok(out);
        }
        fleetport_store::write(&*self.inner.store, move |txn| {
            // Certificate uses are recorded where ACM checks them when it deletes one, in this
            // same transaction: a deleted certificate cannot be taken up, nor a used one deleted.
            for (cert, listener) in &gone {
                fleetport_store::refs::unlink(txn, cert, listener)?;
            }
            for (cert, listener) in &added {
                fleetport_store::refs::link(txn, cert, listener).map_err(|e| match e {
                    fleetport_store::refs::RefError::Store(s) => fleetport_store::Abort::Store(s),
                    _ => fleetport_store::Abort::Domain(ElbFailure(error::certificate_not_found(
                        cert,
                    ))),
                })?;
            }
            delta.apply(txn)?;
            Ok(())
        })
        .await
        .map_err(|e: ElbFailure| e.0)?;
        *guard = next.clone();
        self.inner.current.send_replace(Arc::new(next));
        Ok(out)
    }

    /// Brings the stored configuration up to date, idempotently, at start: a configuration
    /// kept as one document (before per-resource documents) is split, and every certificate
    /// use is recorded where ACM checks it (uses from before those records existed).
    pub async fn prepare_store(&self) -> Result<(), fleetport_store::StoreError> {
        let current = self.snapshot();
        let uses = certificate_uses(&current);
        fleetport_store::write(&*self.inner.store, move |txn| {
            let (saved, legacy) = state::load(txn)?;
            if legacy {
                state::Delta::between(&ElbState::default(), &saved)
                    .map_err(|e| fleetport_store::StoreError::Backend(e.to_string()))?
                    .apply(txn)?;
                txn.delete(state::LEGACY_COLLECTION, state::LEGACY_KEY)?;
            }
            for (cert, listener) in &uses.0 {
                match fleetport_store::refs::link(txn, cert, listener) {
                    Ok(()) => {}
                    Err(fleetport_store::refs::RefError::Store(e)) => {
                        return Err(fleetport_store::Abort::Store(e));
                    }
                    Err(e) => tracing::warn!(error = %e, listener, "a listener names a certificate ACM does not have"),
                }
            }
            Ok::<_, fleetport_store::Abort<fleetport_store::StoreError>>(())
        })
        .await
    }

    pub(crate) fn arn(&self, resource: &str) -> String {
        format!(
            "arn:aws:elasticloadbalancing:{}:{}:{resource}",
            self.inner.region, self.inner.account_id
        )
    }

    async fn dispatch(&self, operation: &str, input: Value) -> Result<Value, AwsError> {
        match operation {
            "CreateLoadBalancer" => self.create_load_balancer(input).await,
            "DescribeLoadBalancers" => self.describe_load_balancers(input),
            "DeleteLoadBalancer" => self.delete_load_balancer(input).await,
            "DescribeLoadBalancerAttributes" => self.describe_load_balancer_attributes(input),
            "ModifyLoadBalancerAttributes" => self.modify_load_balancer_attributes(input).await,
            "SetSecurityGroups" => self.set_security_groups(input).await,
            "SetSubnets" => self.set_subnets(input).await,
            "SetIpAddressType" => self.set_ip_address_type(input).await,
            "CreateTargetGroup" => self.create_target_group(input).await,
            "DescribeTargetGroups" => self.describe_target_groups(input),
            "ModifyTargetGroup" => self.modify_target_group(input).await,
            "DeleteTargetGroup" => self.delete_target_group(input).await,
            "DescribeTargetGroupAttributes" => self.describe_target_group_attributes(input),
            "ModifyTargetGroupAttributes" => self.modify_target_group_attributes(input).await,
            "RegisterTargets" => self.register_targets(input).await,
            "DeregisterTargets" => self.deregister_targets(input).await,
            "DescribeTargetHealth" => self.describe_target_health(input),
            "CreateListener" => self.create_listener(input).await,
            "DescribeListeners" => self.describe_listeners(input),
            "ModifyListener" => self.modify_listener(input).await,
            "DeleteListener" => self.delete_listener(input).await,
            "AddListenerCertificates" => self.add_listener_certificates(input).await,
            "RemoveListenerCertificates" => self.remove_listener_certificates(input).await,
            "DescribeListenerCertificates" => self.describe_listener_certificates(input),
            "DescribeListenerAttributes" => self.describe_listener_attributes(input),
            "ModifyListenerAttributes" => self.modify_listener_attributes(input).await,
            "CreateRule" => self.create_rule(input).await,
            "DescribeRules" => self.describe_rules(input),
            "ModifyRule" => self.modify_rule(input).await,
            "DeleteRule" => self.delete_rule(input).await,
            "SetRulePriorities" => self.set_rule_priorities(input).await,
            "AddTags" => self.add_tags(input).await,
            "RemoveTags" => self.remove_tags(input).await,
            "DescribeTags" => self.describe_tags(input),
            "DescribeAccountLimits" => self.describe_account_limits(input),
            "DescribeSSLPolicies" => self.describe_ssl_policies(input),
            _ => Err(AwsError::client(
                "InvalidAction",
                format!("The action {operation} is not valid for this web service."),
            )),
        }
    }
}

impl Service for Elb {
    fn model(&self) -> &'static ServiceModel {
        model::elbv2()
    }

    fn constraint_error_code(&self) -> &'static str {
        "ValidationError"
    }

    fn implements(&self, operation: &str) -> bool {
        IMPLEMENTED.contains(&operation)
    }

    fn call<'a>(
        &'a self,
        _ctx: &'a RequestContext,
        operation: &'a str,
        input: Value,
    ) -> BoxFuture<'a, Result<Value, AwsError>> {
        Box::pin(self.dispatch(operation, input))
    }

    fn resource_tags(&self, resource: &str) -> Vec<(String, String)> {
        self.snapshot()
            .tags
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }

    /// Actions on a load balancer, listener, rule or target group are authorised on its ARN
    /// (tags on each resource named); Describe* and the creation of load balancers and target
    /// groups on `*`.
    fn resources(&self, _ctx: &RequestContext, operation: &str, input: &Value) -> Vec<String> {
        if operation.starts_with("Describe") {
            return vec!["*".to_string()];
        }
        let named = fleetport_proto::input::strings(input, "ResourceArns");
        if !named.is_empty() {
            return named;
        }
        let priorities: Vec<String> = fleetport_proto::input::items(input, "RulePriorities")
            .iter()
            .filter_map(|p| p.get("RuleArn").and_then(Value::as_str).map(String::from))
            .collect();
        if !priorities.is_empty() {
            return priorities;
        }
        for member in [
            "RuleArn",
            "ListenerArn",
            "TargetGroupArn",
            "LoadBalancerArn",
        ] {
            if let Some(arn) = fleetport_proto::input::string(input, member) {
                return vec![arn.to_string()];
            }
        }
        vec!["*".to_string()]
    }
}

/// A certificate ARN and a listener ARN that uses it.
type CertificateUse = (String, String);

/// Which listener uses which certificate.
struct CertificateUses(std::collections::BTreeSet<CertificateUse>);

fn certificate_uses(s: &ElbState) -> CertificateUses {
    CertificateUses(
        s.listeners
            .iter()
            .flat_map(|l| {
                l.certificate_arns()
                    .map(move |c| (c.to_string(), l.arn.clone()))
            })
            .collect(),
    )
}

impl CertificateUses {
    /// (uses in `self` not in `next`, uses in `next` not in `self`).
    fn diff(&self, next: &Self) -> (Vec<CertificateUse>, Vec<CertificateUse>) {
        (
            self.0.difference(&next.0).cloned().collect(),
            next.0.difference(&self.0).cloned().collect(),
        )
    }
}

/// An ELB error carried through the store's transaction helper.
struct ElbFailure(AwsError);

impl From<fleetport_store::StoreError> for ElbFailure {
    fn from(e: fleetport_store::StoreError) -> Self {
        ElbFailure(store_error(e))
    }
}

#[cfg(test)]
mod tests {
    use fleetport_store::WriteTxnExt;
    use fleetport_store::sqlite::SqliteStore;
    use serde_json::json;

    use super::*;

    fn open(store: Arc<dyn Store>) -> Elb {
        Elb::open(
            store,
            "us-east-1",
            "000000000000",
            Arc::new(instances::NoInstances),
            Arc::new(certificates::NoCertificates::default()),
            &plane::fleet::Shared::default(),
        )
        .unwrap()
    }

    async fn tg(elb: &Elb, name: &str) -> String {
        let out = elb
            .dispatch(
                "CreateTargetGroup",
                json!({"Name": name, "Protocol": "HTTP", "Port": 80, "TargetType": "ip", "VpcId": "vpc-1"}),
            )
            .await
            .unwrap();
        out["TargetGroups"][0]["TargetGroupArn"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn a_target_registration_writes_only_its_target_group() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let elb = open(store.clone());
        let one = tg(&elb, "one").await;
        tg(&elb, "two").await;
        let before = elb.snapshot();
        elb.dispatch(
            "RegisterTargets",
            json!({"TargetGroupArn": one, "Targets": [{"Id": "127.0.0.1", "Port": 8080}]}),
        )
        .await
        .unwrap();
        let delta = state::Delta::between(&before, &elb.snapshot()).unwrap();
        let keys: Vec<&str> = delta.puts.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, [format!("tg/{one}")]);
        assert!(delta.deletes.is_empty());
        // What is stored reads back as what is current, in order.
        let (loaded, legacy) = fleetport_store::read(&*store, state::load).unwrap();
        assert!(!legacy);
        assert_eq!(loaded.target_groups, elb.snapshot().target_groups);
        assert_eq!(loaded.target_groups[0].targets.len(), 1);
    }

    #[tokio::test]
    async fn a_single_document_configuration_is_split_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let elb = open(store.clone());
        tg(&elb, "a").await;
        tg(&elb, "b").await;
        let state = elb.snapshot();
        // As older builds stored it.
        let legacy = (*state).clone();
        fleetport_store::write(&*store, move |txn| {
            txn.delete(state::PARTS, &format!("tg/{}", legacy.target_groups[0].arn))?;
            txn.delete(state::PARTS, &format!("tg/{}", legacy.target_groups[1].arn))?;
            txn.put_json(state::LEGACY_COLLECTION, state::LEGACY_KEY, &legacy)?;
            Ok::<_, fleetport_store::Abort<fleetport_store::StoreError>>(())
        })
        .await
        .unwrap();
        let reopened = open(store.clone());
        assert_eq!(reopened.snapshot().target_groups, state.target_groups);
        reopened.prepare_store().await.unwrap();
        let (loaded, legacy) = fleetport_store::read(&*store, state::load).unwrap();
        assert!(!legacy);
        assert_eq!(loaded.target_groups, state.target_groups);
    }
}
