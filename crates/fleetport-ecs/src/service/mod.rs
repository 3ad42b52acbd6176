//! ECS services: the records the API writes (desired state: the service, its deployments) and
//! the scheduler updates (observed counts, rollout states, events), and how they render.
//!
//! A service document lives in `ecs.service` keyed `<cluster>/<name>`. Its tasks are ordinary
//! task documents with `group: service:<name>` and `startedBy: <deployment id>`, so RunTask's
//! placement, the agents and DescribeTasks treat them like any other task.
//!
//! - [`api`]: CreateService, UpdateService, DeleteService, Describe/ListServices, the
//!   service-deployment and revision reads.
//! - [`plan`]: the scheduler's decision for one service, a pure function.
//! - [`run`]: the executor that observes, calls [`plan`] and applies its actions.
//! - [`lb`]: what the scheduler needs from load balancers, wired by the binary.

pub mod api;
pub mod events;
pub mod lb;
pub mod plan;
pub mod run;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::capacity::Capacity;

pub use crate::cluster::SERVICES as COLLECTION;

pub const ACTIVE: &str = "ACTIVE";
pub const DRAINING: &str = "DRAINING";
pub const INACTIVE: &str = "INACTIVE";

/// How long an INACTIVE service stays describable before it is forgotten.
pub const INACTIVE_RETENTION_SECS: f64 = 3600.0;

/// What a deployment runs: the members of a service whose change starts a new deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub task_definition: String,
    pub capacity: Capacity,
    #[serde(default)]
    pub platform_version: Option<String>,
    #[serde(default)]
    pub network_configuration: Option<Value>,
    #[serde(default)]
    pub load_balancers: Vec<Value>,
    #[serde(default)]
    pub service_registries: Vec<Value>,
    /// Images resolved to digests when the revision was created (`containerImages`).
    #[serde(default)]
    pub container_images: Vec<Value>,
}

/// `deploymentConfiguration` as the scheduler uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfig {
    pub maximum_percent: u32,
    pub minimum_healthy_percent: u32,
    pub breaker_enable: bool,
    pub breaker_rollback: bool,
    /// `thresholdConfiguration`: `BOUNDED_PERCENT` (default), `COUNT` or `UNBOUNDED_PERCENT`.
    pub threshold_type: String,
    pub threshold_value: f64,
    pub reset_on_healthy_task: bool,
    /// The rest of the member as the client sent it (alarms, strategy, …), echoed.
    #[serde(default)]
    pub echo: Value,
}

impl DeploymentConfig {
    /// The circuit breaker's threshold for `desired` tasks.
    pub fn threshold(&self, desired: u32) -> u32 {
        let pct = |v: f64| (f64::from(desired) * v / 100.0).ceil() as u32;
        match self.threshold_type.as_str() {
            "COUNT" => (self.threshold_value as u32).max(1),
            "UNBOUNDED_PERCENT" => pct(self.threshold_value).max(1),
            _ if (self.threshold_value - 50.0).abs() < f64::EPSILON => {
                crate::rollout::circuit_breaker_threshold(desired)
            }
            _ => pct(self.threshold_value).clamp(3, 200),
        }
    }

    pub fn render(&self) -> Value {
        let mut o = match &self.echo {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        o.insert(
            "deploymentCircuitBreaker".into(),
            json!({"enable": self.breaker_enable, "rollback": self.breaker_rollback}),
        );
        o.insert("maximumPercent".into(), json!(self.maximum_percent));
        o.insert(
            "minimumHealthyPercent".into(),
            json!(self.minimum_healthy_percent),
        );
        o.entry("alarms")
            .or_insert_with(|| json!({"alarmNames": [], "rollback": false, "enable": false}));
        o.entry("strategy").or_insert_with(|| json!("ROLLING"));
        Value::Object(o)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// `ecs-svc/<19 digits>`: tasks carry it as `startedBy`.
    pub id: String,
    /// `PRIMARY`, `ACTIVE`, or `INACTIVE` once it has no tasks left.
    pub status: String,
    pub revision: Revision,
    pub desired_count: u32,
    pub running_count: u32,
    pub pending_count: u32,
    pub failed_tasks: u32,
    pub created_at: f64,
    pub updated_at: f64,
    /// `IN_PROGRESS`, `COMPLETED` or `FAILED`.
    pub rollout_state: String,
    pub rollout_state_reason: String,
    /// The service deployment (ListServiceDeployments) this deployment is the target of.
    pub service_deployment_id: String,
    /// `PENDING | IN_PROGRESS | SUCCESSFUL | STOPPED | STOP_REQUESTED | ROLLBACK_REQUESTED |
    /// ROLLBACK_IN_PROGRESS | ROLLBACK_SUCCESSFUL | ROLLBACK_FAILED`.
    pub service_deployment_status: String,
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// The revisions this deployment replaces (the service's deployments when it started).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Set on a rollback deployment: why, and which deployment it rolls back from.
    #[serde(default)]
    pub rollback_of: Option<String>,
    /// The deployment configuration it started with.
    pub config: DeploymentConfig,
}

impl Deployment {
    /// The 19 digits of the ID: the revision ARN reuses them.
    pub fn number(&self) -> &str {
        self.id.trim_start_matches("ecs-svc/")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    pub created_at: f64,
    pub message: String,
}

/// Scheduler bookkeeping that DescribeServices does not show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Stopped tasks up to this `stoppedAt` have been counted (failures, replacements).
    pub observed_until: f64,
    /// Consecutive tasks of the PRIMARY deployment that stopped before running.
    pub start_failures: u32,
    /// No new task starts before this instant (ECS's launch back-off).
    pub backoff_until: f64,
    /// `start_failures` when the last back-off began: a new failure after it backs off longer.
    #[serde(default)]
    pub backoff_at_failures: u32,
    /// The steady-state event was last written at this instant (0: not steady).
    pub steady_since: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    pub arn: String,
    pub name: String,
    pub cluster: String,
    pub cluster_arn: String,
    pub status: String,
    pub desired_count: u32,
    /// `REPLICA` or `DAEMON`.
    pub scheduling_strategy: String,
    /// What new deployments run (the PRIMARY's revision, or the next one).
    pub revision: Revision,
    pub deployment_config: DeploymentConfig,
    pub placement_constraints: Vec<Value>,
    pub placement_strategy: Vec<Value>,
    pub health_check_grace_period: u64,
    pub propagate_tags: String,
    pub enable_ecs_managed_tags: bool,
    pub enable_execute_command: bool,
    pub availability_zone_rebalancing: String,
    pub role_arn: String,
    pub created_at: f64,
    pub created_by: String,
    #[serde(default)]
    pub client_token: Option<String>,
    /// The CreateService request's settings, to tell a repeated create from a different one.
    pub fingerprint: String,
    /// Current deployments, PRIMARY first.
    pub deployments: Vec<Deployment>,
    /// Finished deployments, newest first (ListServiceDeployments, rollback targets).
    #[serde(default)]
    pub history: Vec<Deployment>,
    /// Newest first, at most [`events::MAX_EVENTS`].
    pub events: Vec<Event>,
    pub running_count: u32,
    pub pending_count: u32,
    #[serde(default)]
    pub progress: Progress,
    /// Bumped by every write, API or scheduler: the scheduler writes only over what it read.
    pub version: u64,
    #[serde(default)]
    pub deleted_at: Option<f64>,
}

pub fn key(cluster: &str, name: &str) -> String {
    format!("{cluster}/{name}")
}

/// ECS's 19-digit deployment and revision numbers.
pub fn new_number() -> String {
    let n = u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    format!(
        "{:019}",
        n % 9_000_000_000_000_000_000 + 1_000_000_000_000_000_000
    )
}

/// A service deployment's ID: 21 URL-safe characters.
pub fn new_deployment_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..21].to_string()
}

impl ServiceRecord {
    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.status == "PRIMARY")
    }

    pub fn is_daemon(&self) -> bool {
        self.scheduling_strategy == "DAEMON"
    }

    /// Where the service's deployments and revisions are named.
    pub fn deployment_arn(&self, scope: &crate::arn::Scope, d: &Deployment) -> String {
        scope.arn(&format!(
            "service-deployment/{}/{}/{}",
            self.cluster, self.name, d.service_deployment_id
        ))
    }

    pub fn revision_arn(&self, scope: &crate::arn::Scope, d: &Deployment) -> String {
        scope.arn(&format!(
            "service-revision/{}/{}/{}",
            self.cluster,
            self.name,
            d.number()
        ))
    }

    pub fn render(&self, scope: &crate::arn::Scope, tags: Option<Value>) -> Value {
        let mut o = Map::new();
        o.insert("serviceArn".into(), json!(self.arn));
        o.insert("serviceName".into(), json!(self.name));
        o.insert("clusterArn".into(), json!(self.cluster_arn));
        o.insert("loadBalancers".into(), json!(self.revision.load_balancers));
        o.insert(
            "serviceRegistries".into(),
            json!(self.revision.service_registries),
        );
        o.insert("status".into(), json!(self.status));
        o.insert("desiredCount".into(), json!(self.desired_count));
        o.insert("runningCount".into(), json!(self.running_count));
        o.insert("pendingCount".into(), json!(self.pending_count));
        self.revision.capacity.render_into(&mut o);
        if self.revision.capacity.launch_type() == crate::task::MANAGED {
            o.insert(
                "platformVersion".into(),
                json!(
                    self.revision
                        .platform_version
                        .as_deref()
                        .unwrap_or("LATEST")
                ),
            );
            o.insert("platformFamily".into(), json!("Linux"));
        }
        o.insert(
            "taskDefinition".into(),
            json!(self.revision.task_definition),
        );
        o.insert(
            "deploymentConfiguration".into(),
            self.deployment_config.render(),
        );
        o.insert(
            "deployments".into(),
            Value::Array(self.deployments.iter().map(render_deployment).collect()),
        );
        o.insert("roleArn".into(), json!(self.role_arn));
        o.insert(
            "events".into(),
            Value::Array(
                self.events
                    .iter()
                    .map(|e| json!({"id": e.id, "createdAt": e.created_at, "message": e.message}))
                    .collect(),
            ),
        );
        o.insert("createdAt".into(), json!(self.created_at));
        o.insert(
            "placementConstraints".into(),
            json!(self.placement_constraints),
        );
        o.insert("placementStrategy".into(), json!(self.placement_strategy));
        if let Some(n) = &self.revision.network_configuration {
            o.insert("networkConfiguration".into(), n.clone());
        }
        o.insert(
            "healthCheckGracePeriodSeconds".into(),
            json!(self.health_check_grace_period),
        );
        o.insert("schedulingStrategy".into(), json!(self.scheduling_strategy));
        o.insert("deploymentController".into(), json!({"type": "ECS"}));
        o.insert("createdBy".into(), json!(self.created_by));
        o.insert(
            "enableECSManagedTags".into(),
            json!(self.enable_ecs_managed_tags),
        );
        o.insert("propagateTags".into(), json!(self.propagate_tags));
        o.insert(
            "enableExecuteCommand".into(),
            json!(self.enable_execute_command),
        );
        o.insert(
            "availabilityZoneRebalancing".into(),
            json!(self.availability_zone_rebalancing),
        );
        o.insert("resourceManagementType".into(), json!("CUSTOMER"));
        if let Some(d) = self.deployments.first() {
            o.insert(
                "currentServiceDeployment".into(),
                json!(self.deployment_arn(scope, d)),
            );
        }
        o.insert(
            "currentServiceRevisions".into(),
            Value::Array(
                self.deployments
                    .iter()
                    .map(|d| {
                        json!({
                            "arn": self.revision_arn(scope, d),
                            "requestedTaskCount": d.desired_count,
                            "runningTaskCount": d.running_count,
                            "pendingTaskCount": d.pending_count,
                        })
                    })
                    .collect(),
            ),
        );
        if let Some(t) = tags {
            o.insert("tags".into(), t);
        }
        Value::Object(o)
    }
}

fn render_deployment(d: &Deployment) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(d.id));
    o.insert("status".into(), json!(d.status));
    o.insert("taskDefinition".into(), json!(d.revision.task_definition));
    o.insert("desiredCount".into(), json!(d.desired_count));
    o.insert("pendingCount".into(), json!(d.pending_count));
    o.insert("runningCount".into(), json!(d.running_count));
    o.insert("failedTasks".into(), json!(d.failed_tasks));
    o.insert("createdAt".into(), json!(d.created_at));
    o.insert("updatedAt".into(), json!(d.updated_at));
    d.revision.capacity.render_into(&mut o);
    if d.revision.capacity.launch_type() == crate::task::MANAGED {
        o.insert("platformVersion".into(), json!("1.4.0"));
        o.insert("platformFamily".into(), json!("Linux"));
    }
    if let Some(n) = &d.revision.network_configuration {
        o.insert("networkConfiguration".into(), n.clone());
    }
    o.insert("rolloutState".into(), json!(d.rollout_state));
    o.insert("rolloutStateReason".into(), json!(d.rollout_state_reason));
    Value::Object(o)
}
