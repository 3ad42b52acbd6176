//! Tasks: RunTask (placement on EC2 container instances), StopTask, DescribeTasks, ListTasks, and
//! the agent's reports (SubmitTaskStateChange, SubmitContainerStateChange) that move a task
//! through ECS's lifecycle.
//!
//! A task document (`ecs.task`, key `<cluster>/<id>`) holds desired state written by the API
//! (desiredStatus, the resolved container definitions the agent runs, the reservation placement
//! counted) and observed state reported by the agent (lastStatus, container runtime ids, exit
//! codes, bindings, timestamps).

use fleetport_proto::{input, paging};
use fleetport_store::{Abort, ReadTxnExt, WriteTxnExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::Ecs;
use crate::cluster::{INSTANCES, TASKS};
use crate::error::{EcsResult, client, invalid, store};
use crate::instance::{InstanceRecord, instance_id, tasks_of_cluster, usage};
use crate::placement::{self, Candidate, Constraint, Reservation};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub task_arn: String,
    pub id: String,
    pub cluster: String,
    pub cluster_arn: String,
    pub task_definition_arn: String,
    pub family: String,
    pub revision: u64,
    pub container_instance_arn: Option<String>,
    pub launch_type: String,
    pub last_status: String,
    pub desired_status: String,
    pub network_mode: String,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub containers: Vec<Value>,
    /// The container definitions the agent runs: the task definition's, with overrides applied.
    pub container_definitions: Vec<Value>,
    pub overrides: Value,
    pub started_by: Option<String>,
    pub group: String,
    pub version: u64,
    pub created_at: f64,
    pub pull_started_at: Option<f64>,
    pub pull_stopped_at: Option<f64>,
    pub started_at: Option<f64>,
    pub stopping_at: Option<f64>,
    pub stopped_at: Option<f64>,
    pub execution_stopped_at: Option<f64>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    pub tags: Vec<Value>,
    /// What placement counted for this task on its instance.
    pub reservation: Reservation,
    pub availability_zone: Option<String>,
    /// awsvpc: the task's network interface (ECS `attachments` entry).
    #[serde(default)]
    pub attachments: Vec<Value>,
    #[serde(default)]
    pub platform_version: Option<String>,
    /// The capacity provider a strategy placed the task on (FARGATE or FARGATE_SPOT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_provider_name: Option<String>,
    /// Service tasks: the load balancer targets the scheduler registered for the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<crate::service::lb::TargetRef>,
    /// Service tasks: deregistered from their target groups, stopped once this passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_until: Option<f64>,
    /// Why the scheduler is stopping the task once its drain ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_reason: Option<String>,
}

pub const MANAGED: &str = "FARGATE";

/// Tasks by the host that runs them, `<host>/<cluster>/<task id>` (host: the container
/// instance's ID, or `FARGATE`): an agent's poll reads its own tasks, not its cluster's.
pub(crate) const TASKS_BY_HOST: &str = "ecs.task_by_host";

impl TaskRecord {
    /// Asks for the task to stop (the agent stops its containers); the first reason given stays.
    /// Returns whether anything changed.
    pub(crate) fn request_stop(&mut self, code: &str, reason: String, now: f64) -> bool {
        if self.desired_status == "STOPPED" {
            return false;
        }
        self.desired_status = "STOPPED".into();
        self.stopped_reason = Some(reason);
        self.stop_code = Some(code.into());
        self.stopping_at = Some(now);
        self.version += 1;
        true
    }

    /// Who runs the task: its container instance's ID, or `FARGATE` for managed capacity.
    pub(crate) fn host(&self) -> &str {
        match &self.container_instance_arn {
            Some(arn) if self.launch_type != MANAGED => instance_id(arn),
            _ => MANAGED,
        }
    }
}

fn host_key(t: &TaskRecord) -> String {
    format!("{}/{}/{}", t.host(), t.cluster, t.id)
}

/// Lifecycle order, so a late or repeated report never moves a task backwards.
fn rank(status: &str) -> u8 {
    match status {
        "PROVISIONING" => 0,
        "PENDING" => 1,
        "ACTIVATING" => 2,
        "RUNNING" => 3,
        "DEACTIVATING" => 4,
        "STOPPING" => 5,
        "DEPROVISIONING" => 6,
        "STOPPED" => 7,
        _ => 0,
    }
}

fn int_of(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl TaskRecord {
    pub fn render(&self, with_tags: bool) -> Value {
        let mut o = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                o.insert(k.to_string(), v);
            }
        };
        put("taskArn", json!(self.task_arn));
        put("clusterArn", json!(self.cluster_arn));
        put("taskDefinitionArn", json!(self.task_definition_arn));
        put("containerInstanceArn", json!(self.container_instance_arn));
        put("overrides", self.overrides.clone());
        put("lastStatus", json!(self.last_status));
        put("desiredStatus", json!(self.desired_status));
        put("cpu", json!(self.cpu));
        put("memory", json!(self.memory));
        put("containers", json!(self.containers));
        put("startedBy", json!(self.started_by));
        put("version", json!(self.version));
        put("stopCode", json!(self.stop_code));
        put("stoppedReason", json!(self.stopped_reason));
        put(
            "connectivity",
            if self.started_at.is_some() {
                json!("CONNECTED")
            } else {
                Value::Null
            },
        );
        put("connectivityAt", json!(self.started_at));
        put("pullStartedAt", json!(self.pull_started_at));
        put("pullStoppedAt", json!(self.pull_stopped_at));
        put("executionStoppedAt", json!(self.execution_stopped_at));
        put("createdAt", json!(self.created_at));
        put("startedAt", json!(self.started_at));
        put("stoppingAt", json!(self.stopping_at));
        put("stoppedAt", json!(self.stopped_at));
        put("group", json!(self.group));
        put("launchType", json!(self.launch_type));
        put("availabilityZone", json!(self.availability_zone));
        put("capacityProviderName", json!(self.capacity_provider_name));
        put("attachments", json!(self.attachments));
        if self.launch_type == MANAGED {
            put("platformVersion", json!(self.platform_version));
            put("platformFamily", json!("Linux"));
            put("ephemeralStorage", json!({"sizeInGiB": 20}));
        }
        put(
            "healthStatus",
            json!(task_health(&self.containers, &self.container_definitions)),
        );
        put("enableExecuteCommand", json!(false));
        if with_tags {
            put("tags", json!(self.tags));
        }
        Value::Object(o)
    }

    /// What the agent needs to run (or stop) this task.
    pub fn assignment(&self) -> Value {
        json!({
            "taskArn": self.task_arn,
            "cluster": self.cluster,
            "desiredStatus": self.desired_status,
            "lastStatus": self.last_status,
            "family": self.family,
            "revision": self.revision,
            "networkMode": self.network_mode,
            "cpu": self.cpu,
            "memory": self.memory,
            "containers": self.container_definitions,
        })
    }
}

/// ECS's rule: from essential containers that have a health check; UNHEALTHY wins, then UNKNOWN.
pub(crate) fn task_health(containers: &[Value], defs: &[Value]) -> &'static str {
    let mut seen = false;
    let mut unknown = false;
    for d in defs {
        let essential = d.get("essential").and_then(Value::as_bool).unwrap_or(true);
        if !essential || d.get("healthCheck").is_none() {
            continue;
        }
        let name = d.get("name").and_then(Value::as_str).unwrap_or("");
        let status = containers
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|c| c.get("healthStatus").and_then(Value::as_str))
            .unwrap_or("UNKNOWN");
        seen = true;
        match status {
            "UNHEALTHY" => return "UNHEALTHY",
            "HEALTHY" => {}
            _ => unknown = true,
        }
    }
    if !seen || unknown {
        "UNKNOWN"
    } else {
        "HEALTHY"
    }
}

/// Applies RunTask `overrides` to the task definition's container definitions.
fn apply_overrides(defs: &[Value], overrides: &Value) -> EcsResult<Vec<Value>> {
    let mut out = defs.to_vec();
    for o in overrides
        .get("containerOverrides")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = o.get("name").and_then(Value::as_str).unwrap_or("");
        let Some(def) = out
            .iter_mut()
            .find(|d| d.get("name").and_then(Value::as_str) == Some(name))
        else {
            return Err(invalid(format!(
                "Override for container named {name} is not a container in the TaskDefinition."
            )));
        };
        let Value::Object(d) = def else { continue };
        for k in ["command", "cpu", "memory", "memoryReservation"] {
            if let Some(v) = o.get(k) {
                d.insert(k.to_string(), v.clone());
            }
        }
        if let Some(env) = o.get("environment").and_then(Value::as_array) {
            let mut merged: Vec<Value> = d
                .get("environment")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for e in env {
                let n = e.get("name");
                merged.retain(|x| x.get("name") != n);
                merged.push(e.clone());
            }
            d.insert("environment".into(), Value::Array(merged));
        }
    }
    Ok(out)
}

/// CPU, memory and static ports one task reserves on its instance.
fn demand(defs: &[Value], cpu: Option<i64>, memory: Option<i64>, mode: &str) -> Reservation {
    let cpu = cpu.unwrap_or_else(|| defs.iter().filter_map(|d| int_of(d.get("cpu"))).sum());
    let memory = memory.unwrap_or_else(|| {
        defs.iter()
            .filter_map(|d| int_of(d.get("memoryReservation")).or_else(|| int_of(d.get("memory"))))
            .sum()
    });
    let mut ports = Vec::new();
    let mut ports_udp = Vec::new();
    if mode == "bridge" || mode == "host" {
        for pm in defs
            .iter()
            .filter_map(|d| d.get("portMappings").and_then(Value::as_array))
            .flatten()
        {
            let host = int_of(pm.get("hostPort")).unwrap_or(0);
            let host = if mode == "host" {
                int_of(pm.get("containerPort")).unwrap_or(0)
            } else {
                host
            };
            if host > 0 {
                if pm.get("protocol").and_then(Value::as_str) == Some("udp") {
                    ports_udp.push(host.to_string());
                } else {
                    ports.push(host.to_string());
                }
            }
        }
    }
    Reservation {
        cpu,
        memory,
        ports,
        ports_udp,
    }
}

/// The cluster's registered (not INACTIVE) container instances, with their latest heartbeats.
pub(crate) fn live_instances(
    txn: &dyn fleetport_store::ReadTxn,
    agents: &crate::agents::Agents,
    cluster: &str,
) -> Result<Vec<InstanceRecord>, fleetport_store::StoreError> {
    Ok(txn
        .scan_json::<InstanceRecord>(INSTANCES, &format!("{cluster}/"), None, usize::MAX)?
        .into_iter()
        .map(|(_, r)| agents.overlay(r))
        .filter(|r| r.status != "INACTIVE")
        .collect())
}

/// A new task from the RunTask template: its ARN, containers, and (awsvpc) its network interface.
fn new_task(
    template: &TaskRecord,
    scope: &crate::arn::Scope,
    instance: Option<String>,
    zone: Option<String>,
    subnet: Option<&str>,
) -> TaskRecord {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut t = template.clone();
    t.task_arn = scope.arn(&format!("task/{}/{id}", t.cluster));
    t.id = id;
    t.container_instance_arn = instance;
    t.availability_zone = zone;
    if let Some(subnet) = subnet {
        let eni = uuid::Uuid::new_v4().simple().to_string();
        t.attachments = vec![json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "ElasticNetworkInterface",
            "status": "PRECREATED",
            "details": [
                {"name": "subnetId", "value": subnet},
                {"name": "networkInterfaceId", "value": format!("eni-{}", &eni[..17])},
            ],
        })];
    }
    t.containers = t
        .container_definitions
        .iter()
        .map(|d| {
            let name = d.get("name").and_then(Value::as_str).unwrap_or("");
            let mut c = json!({
                "containerArn": scope.arn(&format!("container/{}/{}/{}", t.cluster, t.id, uuid::Uuid::new_v4())),
                "taskArn": t.task_arn,
                "name": name,
                "image": d.get("image").cloned().unwrap_or(Value::Null),
                "lastStatus": "PENDING",
                "networkBindings": [],
                "networkInterfaces": [],
                "healthStatus": "UNKNOWN",
                "cpu": int_of(d.get("cpu")).unwrap_or(0).to_string(),
            });
            if let Value::Object(o) = &mut c {
                if let Some(m) = int_of(d.get("memory")) {
                    o.insert("memory".into(), json!(m.to_string()));
                }
                if let Some(m) = int_of(d.get("memoryReservation")) {
                    o.insert("memoryReservation".into(), json!(m.to_string()));
                }
            }
            c
        })
        .collect();
    t
}

/// What to place: the task every placed copy starts from, how many, and the rules (RunTask and
/// StartTask build it from their request; the service scheduler will build it from a service).
pub(crate) struct Placement {
    pub template: TaskRecord,
    pub count: usize,
    /// StartTask: the instance for each task, in order.
    pub targets: Option<Vec<String>>,
    pub need: Reservation,
    pub strategies: Vec<placement::Strategy>,
    pub constraints: Vec<Constraint>,
    pub subnet: Option<String>,
    pub seed: u64,
    pub seen_after: f64,
    /// With a capacity provider strategy: the provider of each task, in order.
    pub providers: Vec<Option<String>>,
}

/// Places `request.count` tasks on the cluster's instances (or the managed capacity) inside
/// `txn`, and saves them: the placed tasks, and ECS's `failures` for those that did not fit.
pub(crate) fn place_tasks(
    txn: &mut dyn fleetport_store::WriteTxn,
    scope: &crate::arn::Scope,
    agents: &crate::agents::Agents,
    request: &Placement,
) -> Result<(Vec<TaskRecord>, Vec<Value>), Abort<fleetport_proto::AwsError>> {
    let Placement {
        template,
        count,
        targets,
        need,
        strategies,
        constraints,
        subnet,
        seed,
        seen_after,
        providers,
    } = request;
    let (seed, seen_after) = (*seed, *seen_after);
    let region = &scope.region;
    if template.launch_type == MANAGED {
        let mut placed = Vec::new();
        for n in 0..*count {
            let mut t = new_task(
                template,
                scope,
                None,
                Some(format!("{region}a")),
                subnet.as_deref(),
            );
            t.capacity_provider_name = providers.get(n).cloned().flatten();
            save_task(txn, &t)?;
            placed.push(t);
        }
        return Ok((placed, Vec::new()));
    }
    let instances = live_instances(txn, agents, &template.cluster)?;
    if instances.is_empty() {
        return Err(Abort::Domain(invalid(
            "No Container Instances were found in your cluster.",
        )));
    }
    let mut existing = tasks_of_cluster(txn, &template.cluster)?;
    let mut placed = Vec::new();
    let mut failures = Vec::new();
    for n in 0..*count {
        let mut cands = Vec::new();
        let mut reasons = Vec::new();
        // StartTask: exactly the named instance for this task, if it exists.
        let target = targets.as_ref().and_then(|t| t.get(n));
        if let Some(id) = target
            && !instances.iter().any(|i| &i.id == id)
        {
            failures.push(json!({
                "arn": scope.arn(&format!("container-instance/{}/{id}", template.cluster)),
                "reason": "MISSING"
            }));
            continue;
        }
        for inst in instances
            .iter()
            .filter(|i| target.is_none_or(|id| &i.id == id))
        {
            let u = usage(&existing, &inst.arn);
            if let Some(reason) = placement::misfit(inst, &u, need, seen_after) {
                reasons.push(json!({"arn": inst.arn, "reason": reason}));
                continue;
            }
            let group_count = existing
                .iter()
                .filter(|t| {
                    t.container_instance_arn.as_deref() == Some(inst.arn.as_str())
                        && t.desired_status == "RUNNING"
                        && t.group == template.group
                })
                .count() as u64;
            let ok = constraints.iter().all(|c| match c {
                Constraint::DistinctInstance => group_count == 0,
                Constraint::MemberOf(q) => {
                    q.matches(&crate::instance::facts(inst, &existing, seen_after))
                }
            });
            if !ok {
                reasons.push(json!({"arn": inst.arn, "reason": "ATTRIBUTE"}));
                continue;
            }
            cands.push(Candidate {
                inst: inst.clone(),
                usage: u,
                group_count,
            });
        }
        if cands.is_empty() {
            failures.extend(reasons);
            continue;
        }
        let refs: Vec<&Candidate> = cands.iter().collect();
        let chosen = &cands[placement::choose(&refs, strategies, seed.wrapping_add(n as u64))];
        let t = new_task(
            template,
            scope,
            Some(chosen.inst.arn.clone()),
            chosen
                .inst
                .attribute("ecs.availability-zone")
                .map(String::from),
            subnet.as_deref(),
        );
        save_task(txn, &t)?;
        existing.push(t.clone());
        placed.push(t);
    }
    Ok((placed, failures))
}

fn save_task(
    txn: &mut dyn fleetport_store::WriteTxn,
    t: &TaskRecord,
) -> Result<(), Abort<fleetport_proto::AwsError>> {
    txn.put_json(TASKS, &format!("{}/{}", t.cluster, t.id), t)?;
    txn.put(TASKS_BY_HOST, &host_key(t), b"")?;
    if !t.tags.is_empty() {
        // Not parsed as a request's tags: ECS-managed tags (`aws:ecs:…`) are allowed here.
        let tags: Vec<crate::tags::Tag> = t
            .tags
            .iter()
            .filter_map(|v| {
                Some(crate::tags::Tag {
                    key: v.get("key")?.as_str()?.to_string(),
                    value: v
                        .get("value")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                })
            })
            .collect();
        crate::tags::merge(txn, &t.task_arn, &tags)?;
    }
    Ok(())
}

/// A task as a task definition describes it, before placement: what RunTask and the service
/// scheduler both start from.
pub(crate) struct Template {
    pub task: TaskRecord,
    pub need: Reservation,
    /// The task definition's own placement constraints.
    pub constraints: Vec<Value>,
}

/// The task `td` (with `overrides`) gives on `launch_type`, checked as RunTask checks it.
pub(crate) fn template(
    cluster: &crate::cluster::ClusterRecord,
    td: &Value,
    launch_type: &str,
    overrides: &Value,
    now: f64,
    require_active: bool,
) -> EcsResult<Template> {
    // Services keep starting tasks of a revision deregistered after they took it, as ECS's do.
    if require_active && td.get("status").and_then(Value::as_str) != Some("ACTIVE") {
        return Err(invalid("TaskDefinition is inactive"));
    }
    let mode = td
        .get("networkMode")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string();
    let compatible = td
        .get("compatibilities")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|x| x.as_str() == Some(launch_type)));
    if !compatible {
        return Err(invalid(format!(
            "Task definition does not support launch_type {launch_type}."
        )));
    }
    let defs: Vec<Value> = td
        .get("containerDefinitions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let defs = apply_overrides(&defs, overrides)?;
    let task_cpu = int_of(overrides.get("cpu")).or_else(|| int_of(td.get("cpu")));
    let task_memory = int_of(overrides.get("memory")).or_else(|| int_of(td.get("memory")));
    let need = demand(&defs, task_cpu, task_memory, &mode);
    let family = td
        .get("family")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let revision = td.get("revision").and_then(Value::as_u64).unwrap_or(0);
    let managed = launch_type == MANAGED;
    let task = TaskRecord {
        cluster: cluster.name.clone(),
        cluster_arn: cluster.arn.clone(),
        task_definition_arn: td
            .get("taskDefinitionArn")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        group: format!("family:{family}"),
        family,
        revision,
        launch_type: launch_type.to_string(),
        last_status: if managed { "PROVISIONING" } else { "PENDING" }.into(),
        desired_status: "RUNNING".into(),
        network_mode: mode,
        cpu: task_cpu.map(|c| c.to_string()),
        memory: task_memory.map(|m| m.to_string()),
        container_definitions: defs,
        overrides: json!({
            "containerOverrides": overrides.get("containerOverrides").cloned().unwrap_or_else(|| json!([])),
            "inferenceAcceleratorOverrides": [],
        }),
        version: 1,
        created_at: now,
        reservation: need.clone(),
        platform_version: managed.then(|| "1.4.0".to_string()),
        ..Default::default()
    };
    Ok(Template {
        task,
        need,
        constraints: td
            .get("placementConstraints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    })
}

pub(crate) fn recheck_cluster(
    txn: &dyn fleetport_store::ReadTxn,
    cluster: &str,
) -> Result<(), Abort<fleetport_proto::AwsError>> {
    match crate::cluster::named(txn, cluster)? {
        Some(c) if c.status == crate::cluster::ACTIVE => Ok(()),
        _ => Err(Abort::Domain(crate::error::cluster_not_found())),
    }
}

/// awsvpc: the subnet a task's interface goes in (the first listed); other modes take none.
pub(crate) fn awsvpc_subnet(mode: &str, network: Option<&Value>) -> EcsResult<Option<String>> {
    if mode != "awsvpc" {
        return Ok(None);
    }
    let Some(vpc) = network.and_then(|n| n.get("awsvpcConfiguration")) else {
        return Err(invalid(
            "Network Configuration must be provided when networkMode 'awsvpc' is specified.",
        ));
    };
    let subnets = input::strings(vpc, "subnets");
    if subnets.is_empty() {
        return Err(invalid("subnets can not be empty."));
    }
    if subnets.len() > 16 {
        return Err(invalid("At most 16 subnets can be provided."));
    }
    Ok(Some(subnets[0].clone()))
}

/// Where new tasks are written: the cluster must still be ACTIVE and the task definition still
/// registered (a DeleteCluster or deregistration that committed since the request's read wins).
pub(crate) fn recheck(
    txn: &dyn fleetport_store::ReadTxn,
    template: &TaskRecord,
) -> Result<(), Abort<fleetport_proto::AwsError>> {
    recheck_cluster(txn, &template.cluster)?;
    let td_now: Option<Value> = txn.get_json(
        crate::taskdef::COLLECTION,
        &crate::taskdef::key(&template.family, template.revision),
    )?;
    if td_now
        .as_ref()
        .and_then(|v| v.get("status"))
        .and_then(Value::as_str)
        != Some("ACTIVE")
    {
        return Err(Abort::Domain(invalid("TaskDefinition is inactive")));
    }
    Ok(())
}

fn task_id(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

impl Ecs {
    pub async fn run_task(&self, input: Value) -> EcsResult<Value> {
        self.launch(input, None).await
    }

    /// StartTask: one task on each named container instance, no placement strategy.
    pub async fn start_task(&self, input: Value) -> EcsResult<Value> {
        let targets: Vec<String> = input::strings(&input, "containerInstances")
            .iter()
            .map(|r| instance_id(r).to_string())
            .collect();
        if targets.is_empty() || targets.len() > 10 {
            return Err(invalid(
                "containerInstances must name between 1 and 10 container instances.",
            ));
        }
        self.launch(input, Some(targets)).await
    }

    async fn launch(&self, input: Value, targets: Option<Vec<String>>) -> EcsResult<Value> {
        let count = match &targets {
            Some(t) => t.len() as i64,
            None => input.get("count").and_then(Value::as_i64).unwrap_or(1),
        };
        if !(1..=10).contains(&count) {
            return Err(invalid("The count must be between 1 and 10."));
        }
        if input.get("capacityProviderStrategy").is_some() && input.get("launchType").is_some() {
            return Err(invalid(
                "Specifying both a launch type and capacity provider strategy is not supported. Remove one and try again.",
            ));
        }
        let (cluster, td) = crate::error::read(&*self.store, |txn| {
            let cluster = self.active_cluster(txn, input::string(&input, "cluster"))?;
            let reference = input::owned(&input, "taskDefinition");
            let td = self
                .find_task_definition(txn, &reference)
                .map_err(store)?
                .ok_or_else(|| client("TaskDefinition not found."))?;
            Ok((cluster, td))
        })?;
        // An explicit strategy, else a launch type, else the cluster's default strategy.
        let capacity = crate::capacity::resolve(
            input::string(&input, "launchType"),
            input
                .get("capacityProviderStrategy")
                .map(|_| input::items(&input, "capacityProviderStrategy")),
            &cluster,
            targets.is_some(),
        )?;
        let overrides = input.get("overrides").cloned().unwrap_or_else(|| json!({}));
        let now = crate::now();
        let Template {
            mut task,
            need,
            constraints: td_constraints,
        } = template(&cluster, &td, capacity.launch_type(), &overrides, now, true)?;
        let subnet = awsvpc_subnet(&task.network_mode, input.get("networkConfiguration"))?;
        let strategies = placement::parse_strategies(&input)?;
        let mut constraint_items = input::items(&input, "placementConstraints");
        constraint_items.extend(td_constraints);
        let constraints = placement::parse_constraints(&constraint_items)?;
        if let Some(group) = input::string(&input, "group") {
            task.group = group.to_string();
        }
        task.started_by = input::string(&input, "startedBy").map(String::from);
        task.tags = input::items(&input, "tags");
        let request = Placement {
            template: task,
            count: count as usize,
            targets,
            need,
            strategies,
            constraints,
            subnet,
            seed: now.to_bits(),
            seen_after: self.seen_after(),
            providers: capacity.split(count as u32, &[]),
        };
        let scope = self.scope.clone();
        let agents = self.agents.clone();
        // Placement and the new task documents are one transaction, so concurrent RunTasks
        // never both take the last free resources.
        let (tasks, failures) = crate::error::write(&*self.store, move |txn| {
            recheck(txn, &request.template)?;
            place_tasks(txn, &scope, &agents, &request)
        })
        .await?;
        self.wake(tasks.iter().map(TaskRecord::host));
        self.nudge();
        let rendered: Vec<Value> = tasks.iter().map(|t| t.render(true)).collect();
        Ok(json!({"tasks": rendered, "failures": failures}))
    }

    pub async fn stop_task(&self, input: Value) -> EcsResult<Value> {
        let cluster = crate::error::read(&*self.store, |txn| {
            self.active_cluster(txn, input::string(&input, "cluster"))
        })?;
        let reason = input::string(&input, "reason")
            .filter(|r| !r.is_empty())
            .unwrap_or("Task stopped by user")
            .chars()
            .take(255)
            .collect::<String>();
        let key = format!(
            "{}/{}",
            cluster.name,
            task_id(&input::owned(&input, "task"))
        );
        let now = crate::now();
        let task = crate::error::write(&*self.store, move |txn| {
            let Some(mut t) = txn.get_json::<TaskRecord>(TASKS, &key)? else {
                return Err(Abort::Domain(invalid("The referenced task was not found.")));
            };
            if t.request_stop("UserInitiated", reason, now) {
                txn.put_json(TASKS, &key, &t)?;
            }
            Ok(t)
        })
        .await?;
        self.wake([task.host()]);
        self.nudge();
        Ok(json!({"task": task.render(false)}))
    }

    pub fn describe_tasks(&self, input: Value) -> EcsResult<Value> {
        let with_tags = input::includes(&input, "include", "TAGS");
        crate::error::read(&*self.store, |txn| {
            let cluster = self.active_cluster(txn, input::string(&input, "cluster"))?;
            let mut tasks = Vec::new();
            let mut failures = Vec::new();
            for r in input::strings(&input, "tasks") {
                let key = format!("{}/{}", cluster.name, task_id(&r));
                match txn.get_json::<TaskRecord>(TASKS, &key).map_err(store)? {
                    Some(t) => {
                        let mut v = t.render(false);
                        if with_tags && let Value::Object(o) = &mut v {
                            let tags = crate::tags::get(txn, &t.task_arn).map_err(store)?;
                            o.insert("tags".into(), crate::tags::to_json(&tags));
                        }
                        tasks.push(v);
                    }
                    None => {
                        let arn = if r.starts_with("arn:") {
                            r.clone()
                        } else {
                            self.scope.arn(&format!("task/{}/{r}", cluster.name))
                        };
                        failures.push(json!({"arn": arn, "reason": "MISSING"}));
                    }
                }
            }
            Ok(json!({"tasks": tasks, "failures": failures}))
        })
    }

    pub fn list_tasks(&self, input: Value) -> EcsResult<Value> {
        let limit = paging::max_results(&input, 100, 100)?;
        let after = paging::decode_token(&input)?;
        let desired = input::string(&input, "desiredStatus")
            .unwrap_or("RUNNING")
            .to_string();
        let family = input::string(&input, "family").map(String::from);
        let started_by = input::string(&input, "startedBy").map(String::from);
        let service = input::string(&input, "serviceName").map(|s| format!("service:{s}"));
        let launch_type = input::string(&input, "launchType").map(String::from);
        let instance =
            input::string(&input, "containerInstance").map(|i| instance_id(i).to_string());
        let all = crate::error::read(&*self.store, |txn| {
            let cluster = self.active_cluster(txn, input::string(&input, "cluster"))?;
            tasks_of_cluster(txn, &cluster.name).map_err(store)
        })?;
        let keys: Vec<(String, String)> = all
            .into_iter()
            .filter(|t| t.desired_status == desired)
            .filter(|t| family.as_deref().is_none_or(|f| t.family == f))
            .filter(|t| {
                started_by
                    .as_deref()
                    .is_none_or(|s| t.started_by.as_deref() == Some(s))
            })
            .filter(|t| service.as_deref().is_none_or(|s| t.group == s))
            .filter(|t| launch_type.as_deref().is_none_or(|l| t.launch_type == l))
            .filter(|t| {
                instance.as_deref().is_none_or(|i| {
                    t.container_instance_arn
                        .as_deref()
                        .is_some_and(|a| instance_id(a) == i)
                })
            })
            .map(|t| (t.id.clone(), t.task_arn))
            .collect();
        let (arns, token) = paging::page(keys, after.as_deref(), limit, false);
        Ok(paging::with_token(json!({"taskArns": arns}), token))
    }

    /// The agent's report of a task's state and its containers'.
    pub async fn submit_task_state_change(&self, input: Value) -> EcsResult<Value> {
        let cluster = crate::error::read(&*self.store, |txn| {
            self.active_cluster(txn, input::string(&input, "cluster"))
        })?;
        let key = format!(
            "{}/{}",
            cluster.name,
            task_id(&input::owned(&input, "task"))
        );
        let now = crate::now();
        let task = crate::error::write(&*self.store, move |txn| {
            let Some(mut t) = txn.get_json::<TaskRecord>(TASKS, &key)? else {
                return Err(Abort::Domain(invalid("The referenced task was not found.")));
            };
            for c in input::items(&input, "containers") {
                update_container(&mut t, &c);
            }
            for (k, field) in [
                ("pullStartedAt", &mut t.pull_started_at),
                ("pullStoppedAt", &mut t.pull_stopped_at),
                ("executionStoppedAt", &mut t.execution_stopped_at),
            ] {
                if field.is_none() {
                    *field = input.get(k).and_then(Value::as_f64);
                }
            }
            if let Some(ip) = input::string(&input, "privateIpv4Address") {
                attach_ip(&mut t, ip);
            }
            if let Some(status) = input::string(&input, "status")
                && rank(status) > rank(&t.last_status)
            {
                let reason = input::string(&input, "reason").map(String::from);
                transition(&mut t, status, reason, now);
            }
            t.version += 1;
            txn.put_json(TASKS, &key, &t)?;
            Ok::<_, Abort<_>>(t)
        })
        .await?;
        // Only the reporting agent's own assignment list changed.
        self.wake([task.host()]);
        if task.group.starts_with("service:") {
            self.nudge();
        }
        Ok(json!({"acknowledgment": "ACK"}))
    }

    pub async fn submit_container_state_change(&self, input: Value) -> EcsResult<Value> {
        let cluster = crate::error::read(&*self.store, |txn| {
            self.active_cluster(txn, input::string(&input, "cluster"))
        })?;
        let key = format!(
            "{}/{}",
            cluster.name,
            task_id(&input::owned(&input, "task"))
        );
        crate::error::write(&*self.store, move |txn| {
            let Some(mut t) = txn.get_json::<TaskRecord>(TASKS, &key)? else {
                return Err(Abort::Domain(invalid("The referenced task was not found.")));
            };
            update_container(&mut t, &input);
            t.version += 1;
            txn.put_json(TASKS, &key, &t)?;
            Ok::<_, Abort<_>>(t.group.starts_with("service:"))
        })
        .await
        .map(|service_task| {
            // Container health decides whether a service task counts as healthy.
            if service_task {
                self.nudge();
            }
        })?;
        Ok(json!({"acknowledgment": "ACK"}))
    }

    /// FARGATE tasks of every cluster that the managed capacity still has to act on.
    pub fn managed_assignments(&self) -> EcsResult<Vec<Value>> {
        let tasks = self.tasks_on(&format!("{MANAGED}/"))?;
        Ok(tasks
            .iter()
            .filter(|t| t.launch_type == MANAGED && t.last_status != "STOPPED")
            .map(TaskRecord::assignment)
            .collect())
    }

    /// Forgets tasks that stopped more than `retention_secs` ago (ECS keeps stopped tasks
    /// describable for about an hour), with their tags. Returns how many went.
    pub async fn expire_stopped(&self, retention_secs: f64) -> EcsResult<usize> {
        let cutoff = crate::now() - retention_secs;
        let expired = move |t: &TaskRecord| {
            t.last_status == "STOPPED" && t.stopped_at.is_some_and(|s| s < cutoff)
        };
        // Find them on the read copy first, so a pass with nothing to forget writes nothing.
        let due: Vec<String> = crate::error::read(&*self.store, |txn| {
            Ok(txn
                .scan_json::<TaskRecord>(TASKS, "", None, usize::MAX)
                .map_err(store)?
                .into_iter()
                .filter(|(_, t)| expired(t))
                .map(|(key, _)| key)
                .collect())
        })?;
        if due.is_empty() {
            return Ok(0);
        }
        crate::error::write(&*self.store, move |txn| {
            let mut gone = 0;
            for key in &due {
                if let Some(t) = txn.get_json::<TaskRecord>(TASKS, key)?
                    && expired(&t)
                {
                    txn.delete(TASKS, key)?;
                    txn.delete(TASKS_BY_HOST, &host_key(&t))?;
                    crate::tags::set(txn, &t.task_arn, &[])?;
                    gone += 1;
                }
            }
            Ok(gone)
        })
        .await
    }

    /// Tasks assigned to an instance that the agent still has to act on.
    pub fn assignments(&self, cluster: &str, instance_arn: &str) -> EcsResult<Vec<Value>> {
        let tasks = self.tasks_on(&format!("{}/{cluster}/", instance_id(instance_arn)))?;
        Ok(tasks
            .iter()
            .filter(|t| t.container_instance_arn.as_deref() == Some(instance_arn))
            .filter(|t| t.last_status != "STOPPED")
            .map(TaskRecord::assignment)
            .collect())
    }

    /// The tasks whose host key starts with `prefix`, through the host index.
    fn tasks_on(&self, prefix: &str) -> EcsResult<Vec<TaskRecord>> {
        crate::error::read(&*self.store, |txn| {
            let mut out = Vec::new();
            for entry in txn
                .scan(TASKS_BY_HOST, prefix, None, usize::MAX)
                .map_err(store)?
            {
                // `<host>/<cluster>/<id>` → the task's own key `<cluster>/<id>`.
                let Some((_, key)) = entry.key.split_once('/') else {
                    continue;
                };
                if let Some(t) = txn.get_json::<TaskRecord>(TASKS, key).map_err(store)? {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    /// Builds the indexes (tasks by host, instances by EC2 ID) for records saved before they
    /// existed; idempotent, run at start.
    pub async fn index(&self) -> EcsResult<()> {
        crate::error::write(&*self.store, |txn| {
            let tasks = txn.scan_json::<TaskRecord>(TASKS, "", None, usize::MAX)?;
            for (_, t) in tasks {
                // Only what is missing: a start after the first writes nothing.
                let key = host_key(&t);
                if txn.get(TASKS_BY_HOST, &key)?.is_none() {
                    txn.put(TASKS_BY_HOST, &key, b"")?;
                }
            }
            crate::Ecs::index_instances(txn)?;
            Ok::<_, Abort<_>>(())
        })
        .await
    }
}

/// awsvpc: the task's address, as ECS reports an attached ENI.
fn attach_ip(t: &mut TaskRecord, ip: &str) {
    let Some(Value::Object(att)) = t.attachments.first_mut() else {
        return;
    };
    att.insert("status".into(), json!("ATTACHED"));
    let attachment_id = att.get("id").cloned().unwrap_or(Value::Null);
    if let Some(Value::Array(details)) = att.get_mut("details") {
        details.retain(|d| {
            !matches!(
                d.get("name").and_then(Value::as_str),
                Some("privateIPv4Address" | "privateDnsName")
            )
        });
        details.push(json!({"name": "privateIPv4Address", "value": ip}));
        details.push(json!({"name": "privateDnsName", "value": format!("ip-{}.ec2.internal", ip.replace('.', "-"))}));
    }
    for c in &mut t.containers {
        if let Value::Object(o) = c {
            o.insert(
                "networkInterfaces".into(),
                json!([{"attachmentId": attachment_id, "privateIpv4Address": ip}]),
            );
        }
    }
}

fn update_container(t: &mut TaskRecord, c: &Value) {
    let name = c.get("containerName").and_then(Value::as_str).unwrap_or("");
    let Some(Value::Object(o)) = t
        .containers
        .iter_mut()
        .find(|x| x.get("name").and_then(Value::as_str) == Some(name))
    else {
        return;
    };
    for (from, to) in [
        ("runtimeId", "runtimeId"),
        ("exitCode", "exitCode"),
        ("reason", "reason"),
        ("networkBindings", "networkBindings"),
        ("imageDigest", "imageDigest"),
    ] {
        if let Some(v) = c.get(from).filter(|v| !v.is_null()) {
            o.insert(to.into(), v.clone());
        }
    }
    if let Some(s) = c.get("status").and_then(Value::as_str) {
        let current = o
            .get("lastStatus")
            .and_then(Value::as_str)
            .unwrap_or("PENDING");
        if rank(s) >= rank(current) {
            o.insert("lastStatus".into(), json!(s));
        }
    }
    // Container health rides on an extra `healthStatus` member: the model's ContainerStateChange
    // has none (ECS agents publish health over TCS), and unknown members are accepted.
    if let Some(h) = c.get("healthStatus").and_then(Value::as_str)
        && matches!(h, "HEALTHY" | "UNHEALTHY" | "UNKNOWN")
    {
        o.insert("healthStatus".into(), json!(h));
    }
}

fn transition(t: &mut TaskRecord, status: &str, reason: Option<String>, now: f64) {
    let was_started = t.started_at.is_some();
    t.last_status = status.to_string();
    match status {
        "RUNNING" => {
            t.started_at.get_or_insert(now);
        }
        "STOPPING" | "DEACTIVATING" => {
            t.stopping_at.get_or_insert(now);
        }
        "STOPPED" => {
            t.desired_status = "STOPPED".into();
            t.stopping_at.get_or_insert(now);
            t.execution_stopped_at.get_or_insert(now);
            t.stopped_at = Some(now);
            if t.stop_code.is_none() {
                // Never RUNNING: the start failed. Otherwise the agent stops a task on its own
                // only when an essential container exits (user stops set UserInitiated).
                t.stop_code = Some(
                    if was_started {
                        "EssentialContainerExited"
                    } else {
                        "TaskFailedToStart"
                    }
                    .into(),
                );
            }
            if t.stopped_reason.is_none() {
                t.stopped_reason = reason;
            }
            for c in &mut t.containers {
                if let Value::Object(o) = c {
                    o.insert("lastStatus".into(), json!("STOPPED"));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleetport_store::sqlite::SqliteStore;

    use super::*;
    use crate::agents::Agents;
    use crate::arn::Scope;

    fn instance(id: &str, memory: i64, last_seen: f64) -> InstanceRecord {
        InstanceRecord {
            arn: format!("arn:aws:ecs:us-east-1:000000000000:container-instance/c/{id}"),
            id: id.into(),
            cluster: "c".into(),
            status: "ACTIVE".into(),
            cpu: 1024,
            memory,
            last_seen,
            ..Default::default()
        }
    }

    /// Placement is a function of the store's state and the request: no API, no agent.
    #[tokio::test]
    async fn place_tasks_spreads_distinct_instances_and_reports_what_did_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let now = crate::now();
        let instances = [
            instance("aaaa", 512, now),
            instance("bbbb", 512, now),
            // Silent for longer than the agent timeout: never chosen, reported as AGENT.
            instance("cccc", 4096, now - 3600.0),
        ];
        let agents = Arc::new(Agents::default());
        let request = Placement {
            template: TaskRecord {
                cluster: "c".into(),
                launch_type: "EC2".into(),
                desired_status: "RUNNING".into(),
                group: "service:web".into(),
                ..Default::default()
            },
            count: 3,
            targets: None,
            need: Reservation {
                memory: 256,
                ..Default::default()
            },
            strategies: Vec::new(),
            constraints: vec![Constraint::DistinctInstance],
            subnet: None,
            seed: 7,
            seen_after: now - 60.0,
            providers: Vec::new(),
        };
        let scope = Scope {
            region: "us-east-1".into(),
            account: "000000000000".into(),
        };
        let (placed, failures) = crate::error::write(&*store, move |txn| {
            for i in &instances {
                txn.put_json(INSTANCES, &format!("c/{}", i.id), i)?;
            }
            place_tasks(txn, &scope, &agents, &request)
        })
        .await
        .unwrap();
        let mut hosts: Vec<&str> = placed.iter().map(TaskRecord::host).collect();
        hosts.sort();
        assert_eq!(hosts, ["aaaa", "bbbb"], "one per instance");
        let reasons: Vec<&str> = failures
            .iter()
            .filter_map(|f| f.get("reason").and_then(Value::as_str))
            .collect();
        assert!(
            reasons.contains(&"AGENT") && reasons.contains(&"ATTRIBUTE"),
            "{failures:?}"
        );
    }
}
