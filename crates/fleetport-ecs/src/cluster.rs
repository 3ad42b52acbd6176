//! Clusters: CreateCluster, DescribeClusters, ListClusters, UpdateCluster,
//! UpdateClusterSettings, PutClusterCapacityProviders, DeleteCluster.

use fleetport_proto::AwsError;
use fleetport_store::{Abort, ReadTxn, ReadTxnExt, WriteTxnExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::arn::valid_name;
use crate::error::{EcsResult, cluster_not_found, invalid, store};
use fleetport_proto::{input, paging};

use crate::{Ecs, now, tags};

pub const COLLECTION: &str = "ecs.cluster";
/// Collections of cluster-scoped resources, keyed `<cluster>/<id>`. DeleteCluster refuses while
/// any of them holds a live member of the cluster.
pub const SERVICES: &str = "ecs.service";
pub const INSTANCES: &str = "ecs.instance";
pub const TASKS: &str = "ecs.task";

pub const ACTIVE: &str = "ACTIVE";
pub const INACTIVE: &str = "INACTIVE";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRecord {
    pub name: String,
    pub arn: String,
    pub status: String,
    pub created_at: f64,
    pub settings: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_connect_defaults: Option<Value>,
    pub capacity_providers: Vec<String>,
    pub default_capacity_provider_strategy: Vec<Value>,
}

/// What `include` asked DescribeClusters to add.
#[derive(Debug, Default, Clone, Copy)]
struct Include {
    tags: bool,
    settings: bool,
    configurations: bool,
    statistics: bool,
}

impl Include {
    fn all() -> Self {
        Include {
            tags: true,
            settings: true,
            configurations: true,
            statistics: false,
        }
    }

    fn from(input: &Value) -> Self {
        let mut inc = Include::default();
        for v in input
            .get("include")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match v.as_str() {
                Some("TAGS") => inc.tags = true,
                Some("SETTINGS") => inc.settings = true,
                Some("CONFIGURATIONS") => inc.configurations = true,
                Some("STATISTICS") => inc.statistics = true,
                _ => {}
            }
        }
        inc
    }
}

/// Live resources in one cluster collection (documents keyed `<cluster>/…` with a `status`).
fn live_count(
    txn: &dyn ReadTxn,
    collection: &str,
    cluster: &str,
    dead: &[&str],
) -> Result<u64, fleetport_store::StoreError> {
    let docs = txn.scan_json::<Value>(collection, &format!("{cluster}/"), None, usize::MAX)?;
    Ok(docs
        .iter()
        .filter(|(_, d)| {
            let status = d
                .get("status")
                .or_else(|| d.get("lastStatus"))
                .and_then(Value::as_str)
                .unwrap_or("");
            !dead.contains(&status)
        })
        .count() as u64)
}

fn render(
    txn: &dyn ReadTxn,
    rec: &ClusterRecord,
    inc: Include,
) -> Result<Value, fleetport_store::StoreError> {
    let instances = live_count(txn, INSTANCES, &rec.name, &["INACTIVE"])?;
    let services = live_count(txn, SERVICES, &rec.name, &["INACTIVE", "DRAINING"])?;
    let running = live_count(
        txn,
        TASKS,
        &rec.name,
        &["STOPPED", "PENDING", "PROVISIONING"],
    )?;
    let pending = live_count(
        txn,
        TASKS,
        &rec.name,
        &[
            "STOPPED",
            "RUNNING",
            "STOPPING",
            "DEPROVISIONING",
            "DEACTIVATING",
        ],
    )?;
    let mut out = json!({
        "clusterArn": rec.arn,
        "clusterName": rec.name,
        "status": rec.status,
        "registeredContainerInstancesCount": instances,
        "runningTasksCount": running,
        "pendingTasksCount": pending,
        "activeServicesCount": services,
        "statistics": [],
        "capacityProviders": rec.capacity_providers,
        "defaultCapacityProviderStrategy": rec.default_capacity_provider_strategy,
    });
    let Value::Object(obj) = &mut out else {
        return Ok(out);
    };
    if inc.tags {
        obj.insert("tags".into(), tags::to_json(&tags::get(txn, &rec.arn)?));
    }
    if inc.settings {
        obj.insert("settings".into(), Value::Array(rec.settings.clone()));
    }
    if inc.configurations {
        if let Some(c) = &rec.configuration {
            obj.insert("configuration".into(), c.clone());
        }
        if let Some(c) = &rec.service_connect_defaults {
            obj.insert("serviceConnectDefaults".into(), c.clone());
        }
    }
    if inc.statistics {
        let stats: Vec<Value> = [
            ("runningEC2TasksCount", running),
            ("runningFargateTasksCount", 0),
            ("pendingEC2TasksCount", pending),
            ("pendingFargateTasksCount", 0),
            ("activeEC2ServiceCount", services),
            ("activeFargateServiceCount", 0),
            ("drainingEC2ServiceCount", 0),
            ("drainingFargateServiceCount", 0),
        ]
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v.to_string()}))
        .collect();
        obj.insert("statistics".into(), Value::Array(stats));
    }
    Ok(out)
}

const INSIGHTS_VALUES: [&str; 3] = ["enabled", "disabled", "enhanced"];

fn check_settings(settings: &[Value]) -> EcsResult<()> {
    for s in settings {
        let value = s.get("value").and_then(Value::as_str).unwrap_or("");
        if !INSIGHTS_VALUES.contains(&value) {
            return Err(invalid(format!(
                "The value '{value}' for containerInsights is not valid. Valid values are: enabled, disabled, enhanced."
            )));
        }
    }
    Ok(())
}

fn merge_settings(current: &mut Vec<Value>, new: &[Value]) {
    for s in new {
        let name = s.get("name");
        match current.iter_mut().find(|c| c.get("name") == name) {
            Some(c) => *c = s.clone(),
            None => current.push(s.clone()),
        }
    }
}

/// The capacity providers and default strategy of a request, checked against each other.
fn capacity(input: &Value) -> EcsResult<(Vec<String>, Vec<Value>)> {
    let providers = input::strings(input, "capacityProviders");
    let strategy = input::items(input, "defaultCapacityProviderStrategy");
    check_capacity(&providers, &strategy)?;
    Ok((providers, strategy))
}

/// Validates capacity providers and a default strategy against them.
fn check_capacity(providers: &[String], strategy: &[Value]) -> EcsResult<()> {
    for p in providers {
        if p != "FARGATE" && p != "FARGATE_SPOT" {
            return Err(invalid(format!(
                "The specified capacity provider '{p}' is not in an ACTIVE state. Specify a valid capacity provider and try again."
            )));
        }
    }
    let mut with_base = 0;
    for item in strategy {
        let name = item
            .get("capacityProvider")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !providers.iter().any(|p| p == name) {
            return Err(invalid(
                "The specified capacity provider strategy cannot contain a capacity provider that is not associated with the cluster. Associate the capacity provider with the cluster or specify a valid capacity provider and try again.",
            ));
        }
        if item.get("base").and_then(Value::as_i64).unwrap_or(0) > 0 {
            with_base += 1;
        }
    }
    if with_base > 1 {
        return Err(invalid(
            "Only one capacity provider in a capacity provider strategy can have a base defined.",
        ));
    }
    Ok(())
}

pub(crate) fn named(
    txn: &dyn ReadTxn,
    name: &str,
) -> Result<Option<ClusterRecord>, fleetport_store::StoreError> {
    txn.get_json(COLLECTION, name)
}

impl Ecs {
    /// Resolves a cluster reference (`None` → `default`) to an ACTIVE cluster record.
    pub fn active_cluster(
        &self,
        txn: &dyn ReadTxn,
        reference: Option<&str>,
    ) -> EcsResult<ClusterRecord> {
        let name = self
            .scope
            .cluster_name(reference.unwrap_or("default"))
            .ok_or_else(cluster_not_found)?;
        match named(txn, name).map_err(store)? {
            Some(c) if c.status == ACTIVE => Ok(c),
            _ => Err(cluster_not_found()),
        }
    }

    pub async fn create_cluster(&self, input: Value) -> EcsResult<Value> {
        let name = input
            .get("clusterName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        if !valid_name(&name) {
            return Err(invalid(
                "Cluster name can have up to 255 characters: letters (uppercase and lowercase), numbers, underscores and hyphens.",
            ));
        }
        let new_tags = tags::parse(&input, "tags")?;
        let mut settings = vec![json!({"name": "containerInsights", "value": "disabled"})];
        let given = input::items(&input, "settings");
        check_settings(&given)?;
        merge_settings(&mut settings, &given);
        let (providers, strategy) = capacity(&input)?;
        let rec = ClusterRecord {
            arn: self.scope.cluster_arn(&name),
            name: name.clone(),
            status: ACTIVE.into(),
            created_at: now(),
            settings,
            configuration: input.get("configuration").filter(|v| !v.is_null()).cloned(),
            service_connect_defaults: input
                .get("serviceConnectDefaults")
                .filter(|v| !v.is_null())
                .cloned(),
            capacity_providers: providers,
            default_capacity_provider_strategy: strategy,
        };
        let rec = crate::error::write(&*self.store, move |txn| {
            // CreateCluster is idempotent by name: an ACTIVE cluster is returned as it is.
            if let Some(existing) = named(txn, &rec.name)?
                && existing.status == ACTIVE
            {
                return Ok(existing);
            }
            txn.put_json(COLLECTION, &rec.name, &rec)?;
            tags::set(txn, &rec.arn, &new_tags)?;
            Ok::<_, Abort<AwsError>>(rec)
        })
        .await?;
        // As on AWS, the first cluster brings the service-linked role ECS acts through; a
        // failure to make it does not undo the cluster (AWS reports it only when it is used).
        if let Some(directory) = self.roles.get()
            && let Err(e) = directory
                .ensure_service_linked_role(&self.scope.account)
                .await
        {
            tracing::warn!(error = %e.message, "could not create AWSServiceRoleForECS");
        }
        self.render_one(&rec, Include::all())
    }

    fn render_one(&self, rec: &ClusterRecord, inc: Include) -> EcsResult<Value> {
        let cluster = crate::error::read(&*self.store, |txn| render(txn, rec, inc).map_err(store))?;
        Ok(json!({ "cluster": cluster }))
    }

    pub fn describe_clusters(&self, input: Value) -> EcsResult<Value> {
        let refs: Vec<String> = match input.get("clusters").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => list
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => vec!["default".to_string()],
        };
        if refs.len() > 100 {
            return Err(invalid(
                "The clusters parameter accepts at most 100 clusters.",
            ));
        }
        let inc = Include::from(&input);
        crate::error::read(&*self.store, |txn| {
            let mut clusters = Vec::new();
            let mut failures = Vec::new();
            for r in &refs {
                let found = match self.scope.cluster_name(r) {
                    Some(name) => named(txn, name).map_err(store)?,
                    None => None,
                };
                match found {
                    Some(rec) => clusters.push(render(txn, &rec, inc).map_err(store)?),
                    None => {
                        let arn = if r.starts_with("arn:") {
                            r.clone()
                        } else {
                            self.scope.cluster_arn(r)
                        };
                        failures.push(json!({"arn": arn, "reason": "MISSING"}));
                    }
                }
            }
            Ok(json!({"clusters": clusters, "failures": failures}))
        })
    }

    pub fn list_clusters(&self, input: Value) -> EcsResult<Value> {
        let limit = paging::max_results(&input, 100, 100)?;
        let after = paging::decode_token(&input)?;
        let all = crate::error::read(&*self.store, |txn| {
            txn.scan_json::<ClusterRecord>(COLLECTION, "", None, usize::MAX)
                .map_err(store)
        })?;
        let active: Vec<(String, String)> = all
            .into_iter()
            .filter(|(_, c)| c.status == ACTIVE)
            .map(|(k, c)| (k, c.arn))
            .collect();
        let (arns, token) = paging::page(active, after.as_deref(), limit, false);
        Ok(paging::with_token(json!({ "clusterArns": arns }), token))
    }

    /// Applies `change` to an ACTIVE cluster in one transaction and returns it rendered.
    async fn modify_cluster(
        &self,
        reference: Option<String>,
        change: impl FnOnce(&mut ClusterRecord) -> EcsResult<()> + Send + 'static,
    ) -> EcsResult<Value> {
        let ecs = self.clone();
        let rec = crate::error::write(&*self.store, move |txn| {
            let mut rec = ecs
                .active_cluster(txn, reference.as_deref())
                .map_err(Abort::Domain)?;
            change(&mut rec).map_err(Abort::Domain)?;
            txn.put_json(COLLECTION, &rec.name, &rec)?;
            Ok(rec)
        })
        .await?;
        self.render_one(&rec, Include::all())
    }

    pub async fn update_cluster(&self, input: Value) -> EcsResult<Value> {
        let settings = input::items(&input, "settings");
        check_settings(&settings)?;
        let configuration = input.get("configuration").filter(|v| !v.is_null()).cloned();
        let connect = input
            .get("serviceConnectDefaults")
            .filter(|v| !v.is_null())
            .cloned();
        self.modify_cluster(cluster_ref(&input), move |rec| {
            merge_settings(&mut rec.settings, &settings);
            if configuration.is_some() {
                rec.configuration = configuration;
            }
            if connect.is_some() {
                rec.service_connect_defaults = connect;
            }
            Ok(())
        })
        .await
    }

    pub async fn update_cluster_settings(&self, input: Value) -> EcsResult<Value> {
        let settings = input::items(&input, "settings");
        check_settings(&settings)?;
        self.modify_cluster(cluster_ref(&input), move |rec| {
            merge_settings(&mut rec.settings, &settings);
            Ok(())
        })
        .await
    }

    pub async fn put_cluster_capacity_providers(&self, input: Value) -> EcsResult<Value> {
        let (providers, strategy) = capacity(&input)?;
        self.modify_cluster(cluster_ref(&input), move |rec| {
            rec.capacity_providers = providers;
            rec.default_capacity_provider_strategy = strategy;
            Ok(())
        })
        .await
    }

    pub async fn delete_cluster(&self, input: Value) -> EcsResult<Value> {
        let name = cluster_ref(&input)
            .and_then(|r| self.scope.cluster_name(&r).map(String::from))
            .ok_or_else(cluster_not_found)?;
        let rec = crate::error::write(&*self.store, move |txn| {
            let Some(mut rec) = named(txn, &name)? else { return Err(Abort::Domain(cluster_not_found())) };
            if rec.status == INACTIVE {
                return Ok(rec);
            }
            if live_count(txn, SERVICES, &name, &["INACTIVE"])? > 0 {
                return Err(Abort::Domain(AwsError::client(
                    "ClusterContainsServicesException",
                    "The Cluster cannot be deleted while Services are active.",
                )));
            }
            if live_count(txn, INSTANCES, &name, &["INACTIVE"])? > 0 {
                return Err(Abort::Domain(AwsError::client(
                    "ClusterContainsContainerInstancesException",
                    "The Cluster cannot be deleted while Container Instances are active or draining.",
                )));
            }
            if live_count(txn, TASKS, &name, &["STOPPED"])? > 0 {
                return Err(Abort::Domain(AwsError::client(
                    "ClusterContainsTasksException",
                    "The Cluster cannot be deleted while Tasks are active.",
                )));
            }
            rec.status = INACTIVE.into();
            txn.put_json(COLLECTION, &rec.name, &rec)?;
            Ok(rec)
        })
        .await?;
        self.render_one(&rec, Include::all())
    }
}

fn cluster_ref(input: &Value) -> Option<String> {
    input
        .get("cluster")
        .and_then(Value::as_str)
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleetport_store::sqlite::SqliteStore;
    use serde_json::json;

    use super::*;

    async fn with_member(collection: &'static str, doc: Value) -> EcsResult<Value> {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let ecs = Ecs::new(store.clone(), "us-east-1", "000000000000");
        ecs.create_cluster(json!({"clusterName": "c"}))
            .await
            .unwrap();
        crate::error::write(&*store, move |txn| {
            Ok(txn.put_json(collection, "c/x", &doc)?)
        })
        .await
        .unwrap();
        ecs.delete_cluster(json!({"cluster": "c"})).await
    }

    #[tokio::test]
    async fn delete_refuses_while_members_are_live() {
        let e = with_member(SERVICES, json!({"status": "ACTIVE"}))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            (
                "ClusterContainsServicesException",
                "The Cluster cannot be deleted while Services are active."
            )
        );
        let e = with_member(INSTANCES, json!({"status": "DRAINING"}))
            .await
            .unwrap_err();
        assert_eq!(e.code, "ClusterContainsContainerInstancesException");
        let e = with_member(TASKS, json!({"lastStatus": "RUNNING"}))
            .await
            .unwrap_err();
        assert_eq!(e.code, "ClusterContainsTasksException");
        // Members that are gone do not block deletion.
        let ok = with_member(SERVICES, json!({"status": "INACTIVE"}))
            .await
            .unwrap();
        assert_eq!(ok["cluster"]["status"], "INACTIVE");
        let ok = with_member(TASKS, json!({"lastStatus": "STOPPED"}))
            .await
            .unwrap();
        assert_eq!(ok["cluster"]["status"], "INACTIVE");
    }
}
