//! Fleetport's agent channel (`FleetportAgentV20261124`, model in
//! `fleetport-proto/models/fleetport-agent.json`): the long poll through which an agent learns
//! its task assignments, standing in for ECS's ACS WebSocket. Each poll is also the agent's
//! heartbeat. Everything else an agent does goes through the ECS API itself
//! (RegisterContainerInstance, SubmitTaskStateChange).

use std::time::Duration;

use fleetport_proto::model::{self, ServiceModel};
use fleetport_proto::{AwsError, BoxFuture, RequestContext, Service, input};
use serde_json::{Value, json};

use crate::Ecs;
use crate::instance::instance_id;

/// The agent API over an [`Ecs`].
#[derive(Debug, Clone)]
pub struct AgentApi(pub Ecs);

impl AgentApi {
    async fn poll(&self, input: Value) -> Result<Value, AwsError> {
        let ecs = &self.0;
        if input::string(&input, "containerInstance") == Some(crate::task::MANAGED) {
            return self.poll_managed(input).await;
        }
        let cluster = crate::error::read(&*ecs.store, |txn| {
            ecs.active_cluster(txn, input::string(&input, "cluster"))
        })?;
        let known = input.get("generation").and_then(Value::as_u64);
        let wait = input
            .get("waitSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            // A poll must return well within the agent timeout, or a waiting agent would look gone.
            .min((ecs.agent_timeout_secs / 3.0) as u64);
        let mut rx = ecs.generation.subscribe();
        let inst = ecs
            .heartbeat(
                &cluster.name,
                instance_id(&input::owned(&input, "containerInstance")),
            )
            .await?;
        if let Some(known) = known
            && *rx.borrow_and_update() == known
            && wait > 0
        {
            let _ = tokio::time::timeout(Duration::from_secs(wait), rx.changed()).await;
        }
        let generation = *rx.borrow();
        let tasks = ecs.assignments(&cluster.name, &inst.arn)?;
        Ok(json!({"generation": generation, "instanceStatus": inst.status, "tasks": tasks}))
    }
}

impl AgentApi {
    /// The managed capacity (`fleetport up`'s in-process agent) polls as containerInstance
    /// `FARGATE` and receives the FARGATE tasks of every cluster.
    async fn poll_managed(&self, input: Value) -> Result<Value, AwsError> {
        let ecs = &self.0;
        let known = input.get("generation").and_then(Value::as_u64);
        let wait = input
            .get("waitSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let mut rx = ecs.generation.subscribe();
        if let Some(known) = known
            && *rx.borrow_and_update() == known
            && wait > 0
        {
            let _ = tokio::time::timeout(Duration::from_secs(wait), rx.changed()).await;
        }
        let generation = *rx.borrow();
        let tasks = ecs.managed_assignments()?;
        Ok(json!({"generation": generation, "instanceStatus": "ACTIVE", "tasks": tasks}))
    }
}

impl Service for AgentApi {
    fn model(&self) -> &'static ServiceModel {
        model::agent()
    }

    fn constraint_error_code(&self) -> &'static str {
        "InvalidParameterException"
    }

    fn implements(&self, operation: &str) -> bool {
        operation == "PollTaskAssignments"
    }

    fn call<'a>(
        &'a self,
        _ctx: &'a RequestContext,
        operation: &'a str,
        input: Value,
    ) -> BoxFuture<'a, Result<Value, AwsError>> {
        Box::pin(async move {
            match operation {
                "PollTaskAssignments" => self.poll(input).await,
                _ => Err(AwsError::client(
                    "UnknownOperationException",
                    format!("Unknown operation {operation}"),
                )),
            }
        })
    }
}
