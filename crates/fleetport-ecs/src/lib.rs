//! Amazon ECS for Fleetport: the awsJson service behind `AmazonEC2ContainerServiceV20141113`.
//!
//! Owns clusters, task definitions, tags, container instances, tasks and services (with the
//! service scheduler). Handlers validate, write desired state to the store and render responses shaped
//! by the ECS model; they know nothing about HTTP. Depends only on `fleetport-proto` and
//! `fleetport-store`.

pub mod agent_api;
mod agents;
pub mod arn;
mod authz;
pub mod capacity;
pub mod cluster;
pub mod error;
pub mod instance;
pub mod placement;
pub mod query;
pub mod roles;
pub mod rollout;
pub mod service;
pub mod spot;
pub mod tags;
pub mod task;
pub mod taskdef;

use std::sync::Arc;

use fleetport_proto::model::{self, ServiceModel};
use fleetport_proto::{AwsError, BoxFuture, RequestContext, Service};
use fleetport_store::Store;
use serde_json::Value;

use crate::arn::Scope;

/// The ECS service. Cheap to clone (shared store).
#[derive(Clone)]
pub struct Ecs {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) scope: Scope,
    /// Agents' wake-ups (per host) and heartbeats.
    pub(crate) agents: Arc<agents::Agents>,
    /// Seconds without a poll after which an agent counts as disconnected.
    pub(crate) agent_timeout_secs: f64,
    /// The load balancers service tasks are registered with (wired by the binary).
    pub(crate) lb: Arc<service::lb::Slot>,
    /// Wakes the service scheduler.
    pub(crate) changed: Arc<tokio::sync::Notify>,
    /// Whether a role exists (IAM, wired by the binary).
    pub(crate) roles: Arc<roles::Slot>,
}

impl std::fmt::Debug for Ecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ecs")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Operations this build implements; every other model operation gets a clear error.
const IMPLEMENTED: &[&str] = &[
    "CreateCluster",
    "DescribeClusters",
    "ListClusters",
    "UpdateCluster",
    "UpdateClusterSettings",
    "PutClusterCapacityProviders",
    "DeleteCluster",
    "RegisterTaskDefinition",
    "DescribeTaskDefinition",
    "ListTaskDefinitions",
    "ListTaskDefinitionFamilies",
    "DeregisterTaskDefinition",
    "DeleteTaskDefinitions",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "RegisterContainerInstance",
    "DeregisterContainerInstance",
    "DescribeContainerInstances",
    "ListContainerInstances",
    "UpdateContainerInstancesState",
    "RunTask",
    "StartTask",
    "StopTask",
    "DescribeTasks",
    "ListTasks",
    "SubmitTaskStateChange",
    "SubmitContainerStateChange",
    "CreateService",
    "UpdateService",
    "DeleteService",
    "DescribeServices",
    "ListServices",
    "ListServicesByNamespace",
    "ListServiceDeployments",
    "DescribeServiceDeployments",
    "DescribeServiceRevisions",
    "StopServiceDeployment",
    "DescribeCapacityProviders",
];

pub use fleetport_proto::clock::epoch_seconds as now;

impl Ecs {
    pub fn new(store: Arc<dyn Store>, region: &str, account: &str) -> Self {
        Self {
            store,
            scope: Scope {
                region: region.into(),
                account: account.into(),
            },
            agents: Arc::default(),
            agent_timeout_secs: instance::AGENT_TIMEOUT_SECS,
            lb: Arc::default(),
            changed: Arc::default(),
            roles: Arc::default(),
        }
    }

    /// Where ECS checks that the roles task definitions name exist (IAM, wired by the binary).
    pub fn set_roles(&self, directory: Arc<dyn roles::RoleDirectory>) {
        let _ = self.roles.set(directory);
    }

    /// How long an agent may go without polling before it counts as disconnected.
    pub fn with_agent_timeout(mut self, secs: f64) -> Self {
        self.agent_timeout_secs = secs;
        self
    }

    /// Agents that polled after this instant are connected.
    pub(crate) fn seen_after(&self) -> f64 {
        now() - self.agent_timeout_secs
    }

    /// Wakes the polls of the agents on `hosts` (instance IDs, or `FARGATE`).
    pub(crate) fn wake<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        self.agents.wake(hosts);
    }

    /// Answers every waiting agent poll now (at shutdown, so no long poll holds the listener).
    pub fn wake_agents(&self) {
        self.agents.wake_all();
    }

    async fn dispatch(
        &self,
        ctx: &RequestContext,
        operation: &str,
        input: Value,
    ) -> Result<Value, AwsError> {
        match operation {
            "CreateCluster" => self.create_cluster(input).await,
            "DescribeClusters" => self.describe_clusters(input),
            "ListClusters" => self.list_clusters(input),
            "UpdateCluster" => self.update_cluster(input).await,
            "UpdateClusterSettings" => self.update_cluster_settings(input).await,
            "PutClusterCapacityProviders" => self.put_cluster_capacity_providers(input).await,
            "DeleteCluster" => self.delete_cluster(input).await,
            "RegisterTaskDefinition" => self.register_task_definition(ctx, input).await,
            "DescribeTaskDefinition" => self.describe_task_definition(input),
            "ListTaskDefinitions" => self.list_task_definitions(input),
            "ListTaskDefinitionFamilies" => self.list_task_definition_families(input),
            "DeregisterTaskDefinition" => self.deregister_task_definition(input).await,
            "DeleteTaskDefinitions" => self.delete_task_definitions(input).await,
            "TagResource" => self.tag_resource(input).await,
            "UntagResource" => self.untag_resource(input).await,
            "ListTagsForResource" => self.list_tags_for_resource(input),
            "RegisterContainerInstance" => self.register_container_instance(input).await,
            "DeregisterContainerInstance" => self.deregister_container_instance(input).await,
            "DescribeContainerInstances" => self.describe_container_instances(input),
            "ListContainerInstances" => self.list_container_instances(input),
            "UpdateContainerInstancesState" => self.update_container_instances_state(input).await,
            "RunTask" => self.run_task(input).await,
            "StartTask" => self.start_task(input).await,
            "StopTask" => self.stop_task(input).await,
            "DescribeTasks" => self.describe_tasks(input),
            "ListTasks" => self.list_tasks(input),
            "SubmitTaskStateChange" => self.submit_task_state_change(input).await,
            "SubmitContainerStateChange" => self.submit_container_state_change(input).await,
            "CreateService" => self.create_service(input).await,
            "UpdateService" => self.update_service(input).await,
            "DeleteService" => self.delete_service(input).await,
            "DescribeServices" => self.describe_services(input),
            "ListServices" => self.list_services(input),
            "ListServicesByNamespace" => self.list_services_by_namespace(input),
            "ListServiceDeployments" => self.list_service_deployments(input),
            "DescribeServiceDeployments" => self.describe_service_deployments(input),
            "DescribeServiceRevisions" => self.describe_service_revisions(input),
            "StopServiceDeployment" => self.stop_service_deployment(input).await,
            "DescribeCapacityProviders" => self.describe_capacity_providers(input),
            _ => Err(AwsError::client(
                "UnknownOperationException",
                format!("Unknown operation {operation}"),
            )),
        }
    }
}

impl Service for Ecs {
    fn model(&self) -> &'static ServiceModel {
        model::ecs()
    }

    fn constraint_error_code(&self) -> &'static str {
        "InvalidParameterException"
    }

    fn implements(&self, operation: &str) -> bool {
        IMPLEMENTED.contains(&operation)
    }

    fn call<'a>(
        &'a self,
        ctx: &'a RequestContext,
        operation: &'a str,
        input: Value,
    ) -> BoxFuture<'a, Result<Value, AwsError>> {
        Box::pin(self.dispatch(ctx, operation, input))
    }

    fn resource_tags(&self, resource: &str) -> Vec<(String, String)> {
        fleetport_store::read(&*self.store, |t| tags::get(t, resource))
            .map(|tags| tags.into_iter().map(|t| (t.key, t.value)).collect())
            .unwrap_or_default()
    }

    fn resources(&self, _ctx: &RequestContext, operation: &str, input: &Value) -> Vec<String> {
        self.authz_resources(operation, input)
    }

    fn also_needs(
        &self,
        ctx: &RequestContext,
        operation: &str,
        input: &Value,
    ) -> Vec<fleetport_proto::auth::Access> {
        authz::pass_roles(&ctx.principal.account_id, operation, input)
    }
}
