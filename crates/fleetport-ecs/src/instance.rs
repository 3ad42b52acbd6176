//! Container instances: what an agent registers (RegisterContainerInstance), what users see
//! (List/DescribeContainerInstances with registered and remaining resources, agentConnected,
//! task counts), draining (UpdateContainerInstancesState) and deregistration.
//!
//! Documents live in `ecs.instance` keyed `<cluster>/<id>`. Remaining resources are not stored:
//! they are registered resources minus the reservations of the instance's tasks whose desired
//! status is RUNNING, computed from the task documents at read time, so they can never drift.

use fleetport_proto::input;
use fleetport_proto::paging;
use fleetport_store::{Abort, ReadTxn, ReadTxnExt, WriteTxnExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Ecs;
use crate::cluster::{INSTANCES, TASKS};
use crate::error::{EcsResult, invalid, store};
use crate::placement::Reservation;
use crate::query::{Facts, Query};
use crate::task::TaskRecord;

/// An agent that has not polled for this long is reported disconnected and gets no new tasks
/// (`fleetport up --agent-timeout` changes it).
pub const AGENT_TIMEOUT_SECS: f64 = 60.0;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub arn: String,
    pub id: String,
    pub cluster: String,
    pub ec2_instance_id: String,
    pub status: String,
    pub registered_at: f64,
    pub last_seen: f64,
    pub version: u64,
    pub attributes: Vec<Value>,
    pub cpu: i64,
    pub memory: i64,
    pub ports: Vec<String>,
    pub ports_udp: Vec<String>,
    pub version_info: Value,
    #[serde(default)]
    pub tags: Vec<Value>,
    /// `privateIp` of the instance identity document the agent registered with: where load
    /// balancers reach the instance's `instance` targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<std::net::IpAddr>,
}

impl InstanceRecord {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|a| a.get("value").and_then(Value::as_str))
    }

    /// Whether the agent has polled since `seen_after` (now minus the agent timeout).
    pub fn connected(&self, seen_after: f64) -> bool {
        self.last_seen > seen_after
    }
}

/// What the tasks on one instance hold.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    /// The reservations of the tasks whose desired status is RUNNING.
    pub held: Reservation,
    pub running: u64,
    pub pending: u64,
}

pub fn usage(tasks: &[TaskRecord], instance_arn: &str) -> Usage {
    let mut u = Usage::default();
    for t in tasks
        .iter()
        .filter(|t| t.container_instance_arn.as_deref() == Some(instance_arn))
    {
        if t.desired_status == "RUNNING" {
            u.held.add(&t.reservation);
            u.running += 1;
        }
        if t.last_status == "PENDING" {
            u.pending += 1;
        }
    }
    u
}

fn resource_int(name: &str, v: i64) -> Value {
    json!({"name": name, "type": "INTEGER", "doubleValue": 0.0, "longValue": 0, "integerValue": v})
}

fn resource_set(name: &str, v: &[String]) -> Value {
    json!({"name": name, "type": "STRINGSET", "doubleValue": 0.0, "longValue": 0, "integerValue": 0, "stringSetValue": v})
}

pub fn render(rec: &InstanceRecord, u: &Usage, seen_after: f64, with_tags: bool) -> Value {
    let mut ports = rec.ports.clone();
    ports.extend(u.held.ports.iter().cloned());
    let mut ports_udp = rec.ports_udp.clone();
    ports_udp.extend(u.held.ports_udp.iter().cloned());
    let mut out = json!({
        "containerInstanceArn": rec.arn,
        "ec2InstanceId": rec.ec2_instance_id,
        "version": rec.version,
        "versionInfo": rec.version_info,
        "status": rec.status,
        "agentConnected": rec.connected(seen_after),
        "runningTasksCount": u.running,
        "pendingTasksCount": u.pending,
        "attributes": rec.attributes,
        "registeredAt": rec.registered_at,
        "registeredResources": [
            resource_int("CPU", rec.cpu),
            resource_int("MEMORY", rec.memory),
            resource_set("PORTS", &rec.ports),
            resource_set("PORTS_UDP", &rec.ports_udp),
        ],
        "remainingResources": [
            resource_int("CPU", rec.cpu - u.held.cpu),
            resource_int("MEMORY", rec.memory - u.held.memory),
            resource_set("PORTS", &ports),
            resource_set("PORTS_UDP", &ports_udp),
        ],
        "attachments": [],
    });
    if with_tags && let Value::Object(o) = &mut out {
        o.insert("tags".into(), Value::Array(rec.tags.clone()));
    }
    out
}

/// Container instances by EC2 instance ID (`i-…` → `<cluster>/<id>`), for load balancers that
/// resolve `instance` targets without scanning every instance.
pub(crate) const INSTANCES_BY_EC2_ID: &str = "ecs.instance_by_ec2";

/// The id part of a container-instance reference (bare id or ARN).
pub fn instance_id(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

fn total(input: &Value, name: &str) -> Option<Value> {
    input
        .get("totalResources")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
        .cloned()
}

pub fn tasks_of_cluster(
    txn: &dyn ReadTxn,
    cluster: &str,
) -> Result<Vec<TaskRecord>, fleetport_store::StoreError> {
    Ok(txn
        .scan_json::<TaskRecord>(TASKS, &format!("{cluster}/"), None, usize::MAX)?
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

/// What the cluster query language can ask about `inst`, given its cluster's tasks.
pub fn facts<'a>(inst: &'a InstanceRecord, tasks: &'a [TaskRecord], seen_after: f64) -> Facts<'a> {
    let groups: Vec<&str> = tasks
        .iter()
        .filter(|t| {
            t.container_instance_arn.as_deref() == Some(inst.arn.as_str())
                && t.desired_status == "RUNNING"
        })
        .map(|t| t.group.as_str())
        .collect();
    Facts {
        inst,
        connected: inst.connected(seen_after),
        running_tasks: groups.len() as u64,
        groups,
    }
}

impl Ecs {
    pub async fn register_container_instance(&self, input: Value) -> EcsResult<Value> {
        let cluster = crate::error::read(&*self.store, |txn| {
            self.active_cluster(txn, input::string(&input, "cluster"))
        })?;
        let int = |name: &str| -> EcsResult<i64> {
            match total(&input, name) {
                None => Ok(0),
                Some(r) => r
                    .get("integerValue")
                    .and_then(Value::as_i64)
                    .filter(|v| *v >= 0)
                    .ok_or_else(|| {
                        invalid(format!(
                            "totalResources {name} must have a non-negative integerValue."
                        ))
                    }),
            }
        };
        let set = |name: &str| -> Vec<String> {
            total(&input, name)
                .and_then(|r| r.get("stringSetValue").cloned())
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default()
        };
        let (cpu, memory) = (int("CPU")?, int("MEMORY")?);
        let (ports, ports_udp) = (set("PORTS"), set("PORTS_UDP"));
        let mut attributes = input::items(&input, "attributes");
        for a in &attributes {
            let name = a.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() || name.len() > 128 {
                return Err(invalid("Attribute names must be 1 to 128 characters."));
            }
        }
        let now = crate::now();
        let existing =
            input::string(&input, "containerInstanceArn").map(|a| instance_id(a).to_string());
        if let Some(id) = &existing
            && !(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(
                "containerInstanceArn is not a container instance ARN of this cluster.",
            ));
        }
        // An ARN this cluster does not know (its state was reset) gets a new identity: only a
        // known instance is re-registered.
        let known = match &existing {
            Some(id) => {
                let key = format!("{}/{id}", cluster.name);
                crate::error::read(&*self.store, |txn| {
                    txn.get_json::<InstanceRecord>(INSTANCES, &key)
                        .map(|r| r.is_some())
                        .map_err(crate::error::store)
                })?
            }
            None => false,
        };
        let id = existing
            .filter(|_| known)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let arn = self
            .scope
            .arn(&format!("container-instance/{}/{id}", cluster.name));
        let ec2_id = format!("i-{}", &id[..17.min(id.len())]);
        if !attributes
            .iter()
            .any(|a| a.get("name").and_then(Value::as_str) == Some("ecs.availability-zone"))
        {
            attributes.push(json!({"name": "ecs.availability-zone", "value": format!("{}a", self.scope.region)}));
        }
        let private_ip = private_ip(&input)?;
        let tags = input::items(&input, "tags");
        let key = format!("{}/{id}", cluster.name);
        let rec = InstanceRecord {
            arn,
            id: id.clone(),
            cluster: cluster.name.clone(),
            ec2_instance_id: ec2_id,
            status: "ACTIVE".into(),
            registered_at: now,
            last_seen: now,
            version: 1,
            attributes,
            cpu,
            memory,
            ports,
            ports_udp,
            version_info: input
                .get("versionInfo")
                .cloned()
                .unwrap_or_else(|| json!({})),
            tags,
            private_ip,
        };
        let rec = crate::error::write(&*self.store, move |txn| {
            let mut rec = rec;
            // Re-registration (an agent restarting) keeps identity, registration time and the
            // status an operator set: a DRAINING instance stays DRAINING. A deregistered one is
            // gone for good, as on ECS: its agent must register afresh.
            if let Some(old) = txn.get_json::<InstanceRecord>(INSTANCES, &key)? {
                if old.status == "INACTIVE" {
                    return Err(Abort::Domain(invalid(format!(
                        "Container instance {} was deregistered and cannot register again; remove the agent's state to register a new instance.",
                        old.arn
                    ))));
                }
                rec.registered_at = old.registered_at;
                rec.version = old.version + 1;
                rec.ec2_instance_id = old.ec2_instance_id;
                rec.status = old.status;
            }
            txn.put(INSTANCES_BY_EC2_ID, &rec.ec2_instance_id, key.as_bytes())?;
            txn.put_json(INSTANCES, &key, &rec)?;
            Ok::<_, Abort<_>>(rec)
        })
        .await?;
        self.wake([rec.id.as_str()]);
        self.nudge();
        Ok(json!({"containerInstance": render(&rec, &Usage::default(), self.seen_after(), true)}))
    }

    /// The instance of any cluster whose `ec2InstanceId` is `ec2_id`, for load balancers that
    /// resolve `instance` targets. A re-registered instance keeps its ID, so at most one is
    /// not INACTIVE; that one wins.
    pub fn instance_by_ec2_id(&self, ec2_id: &str) -> Option<InstanceRecord> {
        fleetport_store::read(&*self.store, |txn| {
            let Some(key) = txn.get(INSTANCES_BY_EC2_ID, ec2_id)? else {
                return Ok(None);
            };
            txn.get_json::<InstanceRecord>(INSTANCES, &String::from_utf8_lossy(&key))
        })
        .map_err(|e: fleetport_store::StoreError| {
            tracing::warn!(error = %e, "could not read container instances")
        })
        .ok()
        .flatten()
    }

    /// Indexes instances registered before the EC2-ID index existed; idempotent, run at start.
    pub(crate) fn index_instances(
        txn: &mut dyn fleetport_store::WriteTxn,
    ) -> Result<(), fleetport_store::StoreError> {
        for (key, rec) in txn.scan_json::<InstanceRecord>(INSTANCES, "", None, usize::MAX)? {
            if txn
                .get(INSTANCES_BY_EC2_ID, &rec.ec2_instance_id)?
                .is_none()
            {
                txn.put(INSTANCES_BY_EC2_ID, &rec.ec2_instance_id, key.as_bytes())?;
            }
        }
        Ok(())
    }

    fn instances_of(&self, txn: &dyn ReadTxn, cluster: &str) -> EcsResult<Vec<InstanceRecord>> {
        Ok(txn
            .scan_json::<InstanceRecord>(INSTANCES, &format!("{cluster}/"), None, usize::MAX)
            .map_err(store)?
            .into_iter()
            .map(|(_, r)| self.agents.overlay(r))
            .collect())
    }

    pub fn describe_container_instances(&self, input: Value) -> EcsResult<Value> {
        let with_tags = input::includes(&input, "include", "TAGS");
        let seen_after = self.seen_after();
        crate::error::read(&*self.store, |txn| {
            let cluster = self.active_cluster(txn, input::string(&input, "cluster"))?;
            let tasks = tasks_of_cluster(txn, &cluster.name).map_err(store)?;
            let mut found = Vec::new();
            let mut failures = Vec::new();
            for r in input::strings(&input, "containerInstances") {
                let key = format!("{}/{}", cluster.name, instance_id(&r));
                match txn
                    .get_json::<InstanceRecord>(INSTANCES, &key)
                    .map_err(store)?
                {
                    Some(rec) => found.push(render(
                        &self.agents.overlay(rec.clone()),
                        &usage(&tasks, &rec.arn),
                        seen_after,
                        with_tags,
                    )),
                    None => {
                        let arn = if r.starts_with("arn:") {
                            r.clone()
                        } else {
                            self.scope
                                .arn(&format!("container-instance/{}/{r}", cluster.name))
                        };
                        failures.push(json!({"arn": arn, "reason": "MISSING"}));
                    }
                }
            }
            Ok(json!({"containerInstances": found, "failures": failures}))
        })
    }

    pub fn list_container_instances(&self, input: Value) -> EcsResult<Value> {
        let limit = paging::max_results(&input, 100, 100)?;
        let after = paging::decode_token(&input)?;
        let status = input::string(&input, "status").map(String::from);
        let filter = input::string(&input, "filter")
            .filter(|f| !f.trim().is_empty())
            .map(Query::parse)
            .transpose()?;
        let (all, tasks) = crate::error::read(&*self.store, |txn| {
            let cluster = self.active_cluster(txn, input::string(&input, "cluster"))?;
            let tasks = match filter {
                Some(_) => tasks_of_cluster(txn, &cluster.name).map_err(store)?,
                None => Vec::new(),
            };
            Ok((self.instances_of(txn, &cluster.name)?, tasks))
        })?;
        let seen_after = self.seen_after();
        let keys: Vec<(String, String)> = all
            .into_iter()
            .filter(|r| match status.as_deref() {
                Some(s) => r.status == s,
                None => r.status != "INACTIVE",
            })
            .filter(|r| {
                filter
                    .as_ref()
                    .is_none_or(|q| q.matches(&facts(r, &tasks, seen_after)))
            })
            .map(|r| (r.id.clone(), r.arn))
            .collect();
        let (arns, token) = paging::page(keys, after.as_deref(), limit, false);
        Ok(paging::with_token(
            json!({"containerInstanceArns": arns}),
            token,
        ))
    }

    pub async fn update_container_instances_state(&self, input: Value) -> EcsResult<Value> {
        let status = input::owned(&input, "status");
        if status != "ACTIVE" && status != "DRAINING" {
            return Err(invalid(format!(
                "Container instances can only be set to ACTIVE or DRAINING, not '{status}'."
            )));
        }
        let cluster = crate::error::read(&*self.store, |txn| {
            self.active_cluster(txn, input::string(&input, "cluster"))
        })?;
        let refs = input::strings(&input, "containerInstances");
        let seen_after = self.seen_after();
        let cluster_name = cluster.name.clone();
        let scope = self.scope.clone();
        let (found, failures) = crate::error::write(&*self.store, move |txn| {
            let mut found = Vec::new();
            let mut failures = Vec::new();
            for r in refs {
                let key = format!("{cluster_name}/{}", instance_id(&r));
                match txn.get_json::<InstanceRecord>(INSTANCES, &key)? {
                    Some(mut rec) if rec.status == "ACTIVE" || rec.status == "DRAINING" => {
                        if rec.status != status {
                            rec.status = status.clone();
                            rec.version += 1;
                            txn.put_json(INSTANCES, &key, &rec)?;
                        }
                        found.push(rec);
                    }
                    Some(rec) => failures.push(json!({"arn": rec.arn, "reason": "INACTIVE"})),
                    None => failures.push(json!({
                        "arn": scope.arn(&format!("container-instance/{cluster_name}/{}", instance_id(&r))),
                        "reason": "MISSING"
                    })),
                }
            }
            Ok::<_, Abort<_>>((found, failures))
        })
        .await?;
        self.wake(found.iter().map(|r| r.id.as_str()));
        self.nudge();
        let tasks = crate::error::read(&*self.store, |txn| {
            tasks_of_cluster(txn, &cluster.name).map_err(store)
        })?;
        let rendered: Vec<Value> = found
            .into_iter()
            .map(|r| {
                let r = self.agents.overlay(r);
                render(&r, &usage(&tasks, &r.arn), seen_after, false)
            })
            .collect();
        Ok(json!({"containerInstances": rendered, "failures": failures}))
    }

    pub async fn deregister_container_instance(&self, input: Value) -> EcsResult<Value> {
        let force = input.get("force").and_then(Value::as_bool).unwrap_or(false);
        let cluster = crate::error::read(&*self.store, |txn| {
            self.active_cluster(txn, input::string(&input, "cluster"))
        })?;
        let id = instance_id(&input::owned(&input, "containerInstance")).to_string();
        let key = format!("{}/{id}", cluster.name);
        let cluster_name = cluster.name.clone();
        let seen_after = self.seen_after();
        let (rec, u) = crate::error::write(&*self.store, move |txn| {
            let Some(mut rec) = txn.get_json::<InstanceRecord>(INSTANCES, &key)? else {
                return Err(Abort::Domain(invalid("The referenced container instance was not found.")));
            };
            let tasks = tasks_of_cluster(txn, &cluster_name)?;
            let u = usage(&tasks, &rec.arn);
            if u.running > 0 && !force {
                return Err(Abort::Domain(invalid(
                    "Found running tasks on the instance. Use force to deregister the instance anyway.",
                )));
            }
            rec.status = "INACTIVE".into();
            rec.version += 1;
            txn.put_json(INSTANCES, &key, &rec)?;
            Ok((rec, u))
        })
        .await?;
        self.wake([rec.id.as_str()]);
        self.nudge();
        let rec = self.agents.overlay(rec);
        Ok(json!({"containerInstance": render(&rec, &u, seen_after, false)}))
    }

    /// Records an agent's heartbeat; returns the instance (for its status). The heartbeat is
    /// kept in memory; the store's copy is written only once it has aged by half the agent
    /// timeout (so a restarted control plane still knows roughly when each agent last polled).
    pub async fn heartbeat(&self, cluster: &str, instance: &str) -> EcsResult<InstanceRecord> {
        let key = format!("{cluster}/{}", instance_id(instance));
        let now = crate::now();
        let stored = crate::error::read(&*self.store, |txn| {
            txn.get_json::<InstanceRecord>(INSTANCES, &key)
                .map_err(store)
        })?;
        let Some(rec) = stored else {
            return Err(invalid("The referenced container instance was not found."));
        };
        self.agents.beat(&rec.arn, now);
        if now - rec.last_seen < self.agent_timeout_secs / 2.0 {
            return Ok(self.agents.overlay(rec));
        }
        crate::error::write(&*self.store, move |txn| {
            let Some(mut rec) = txn.get_json::<InstanceRecord>(INSTANCES, &key)? else {
                return Err(Abort::Domain(invalid(
                    "The referenced container instance was not found.",
                )));
            };
            rec.last_seen = rec.last_seen.max(now);
            txn.put_json(INSTANCES, &key, &rec)?;
            Ok(rec)
        })
        .await
    }
}

/// The `privateIp` of RegisterContainerInstance's `instanceIdentityDocument` (the EC2 document
/// the ECS agent reads from instance metadata, which Fleetport agents write themselves).
fn private_ip(input: &Value) -> EcsResult<Option<std::net::IpAddr>> {
    let Some(doc) = input::string(input, "instanceIdentityDocument") else {
        return Ok(None);
    };
    let doc: Value = serde_json::from_str(doc)
        .map_err(|_| invalid("instanceIdentityDocument must be a JSON document."))?;
    match doc.get("privateIp") {
        None | Some(Value::Null) => Ok(None),
        Some(ip) => ip
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                invalid("privateIp of the instanceIdentityDocument must be an IP address.")
            }),
    }
}

/// An ACTIVE instance with 1024 CPU units, 512 MiB, port 22 reserved, agent 1.82.3, registered
/// 2024-03-01T00:00:00Z and last seen at t=100, for unit tests.
#[cfg(test)]
pub(crate) fn test_instance(attrs: &[(&str, &str)]) -> InstanceRecord {
    InstanceRecord {
        arn: "arn".into(),
        id: "id".into(),
        cluster: "c".into(),
        ec2_instance_id: "i-1".into(),
        status: "ACTIVE".into(),
        registered_at: 1_709_251_200.0,
        last_seen: 100.0,
        version: 1,
        attributes: attrs
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect(),
        cpu: 1024,
        memory: 512,
        ports: vec!["22".into()],
        ports_udp: vec![],
        version_info: json!({"agentVersion": "1.82.3"}),
        tags: vec![],
        private_ip: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ip_comes_from_the_identity_document() {
        let with = |doc: &str| private_ip(&json!({"instanceIdentityDocument": doc}));
        assert_eq!(
            with(r#"{"privateIp":"10.0.0.7","instanceType":"t3.micro"}"#)
                .ok()
                .flatten(),
            "10.0.0.7".parse().ok()
        );
        assert!(matches!(with(r#"{"region":"us-east-1"}"#), Ok(None)));
        assert!(matches!(private_ip(&json!({})), Ok(None)));
        assert!(with("not json").is_err());
        assert!(with(r#"{"privateIp":"ten"}"#).is_err());
        assert!(with(r#"{"privateIp":7}"#).is_err());
    }
}
