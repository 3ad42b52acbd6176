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
pub struct AgentApi {
    ecs: Ecs,
    /// The newest leader epoch this replica has seen; every answer carries it, so an agent
    /// that has already heard from a newer leader's world ignores a replica left behind (cut
    /// off from the database, its copy of the state no longer moving).
    epochs: tokio::sync::watch::Receiver<i64>,
}

impl AgentApi {
    pub fn new(ecs: Ecs, epochs: tokio::sync::watch::Receiver<i64>) -> Self {
        Self { ecs, epochs }
    }

    fn epoch(&self) -> i64 {
        *self.epochs.borrow()
    }

    /// Waits (up to `waitSeconds`, bounded to a third of the agent timeout so a waiting agent
    /// never looks gone) until the assignment generation moves past the one the agent saw;
    /// returns the current generation.
    async fn wait_for_change(&self, input: &Value, host: &str) -> u64 {
        let ecs = &self.ecs;
        let known = input.get("generation").and_then(Value::as_u64);
        let wait = input
            .get("waitSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min((ecs.agent_timeout_secs / 3.0) as u64);
        let mut rx = ecs.agents.subscribe(host);
        if let Some(known) = known
            && *rx.borrow_and_update() == known
            && wait > 0
        {
            let _ = tokio::time::timeout(Duration::from_secs(wait), rx.changed()).await;
        }
        *rx.borrow()
    }

    async fn poll(&self, input: Value) -> Result<Value, AwsError> {
        let ecs = &self.ecs;
        if input::string(&input, "containerInstance") == Some(crate::task::MANAGED) {
            // The managed capacity (`fleetport up`'s in-process agent) polls as `FARGATE` and
            // receives the FARGATE tasks of every cluster.
            let generation = self.wait_for_change(&input, crate::task::MANAGED).await;
            let tasks = ecs.managed_assignments()?;
            return Ok(json!({"generation": generation, "epoch": self.epoch(),
                "instanceStatus": "ACTIVE", "tasks": tasks}));
        }
        let cluster = crate::error::read(&*ecs.store, |txn| {
            ecs.active_cluster(txn, input::string(&input, "cluster"))
        })?;
        let inst = ecs
            .heartbeat(
                &cluster.name,
                instance_id(&input::owned(&input, "containerInstance")),
            )
            .await?;
        let generation = self.wait_for_change(&input, &inst.id).await;
        let tasks = ecs.assignments(&cluster.name, &inst.arn)?;
        Ok(json!({"generation": generation, "epoch": self.epoch(),
            "instanceStatus": inst.status, "tasks": tasks}))
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
        matches!(operation, "PollTaskAssignments" | "InterruptSpotTask")
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
                "InterruptSpotTask" => self.ecs.interrupt_spot(input).await,
                _ => Err(AwsError::client(
                    "UnknownOperationException",
                    format!("Unknown operation {operation}"),
                )),
            }
        })
    }
}
