//! What the service scheduler needs from load balancers, as an interface the binary implements
//! over ELB (ECS never reads ELB's records): a target group's type and deregistration delay,
//! registering and deregistering a task's targets, and each target's health.

use std::sync::Arc;

use fleetport_proto::{AwsError, BoxFuture};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One target of a task: (target group, instance ID or IP, port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub target_group: String,
    pub id: String,
    pub port: u16,
}

/// A registered target's health, in ELB's states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHealth {
    Healthy,
    Initial,
    Unhealthy { reason: String, description: String },
    Draining,
    Unused,
    NotRegistered,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroupInfo {
    /// `instance` or `ip`.
    pub target_type: String,
    /// Whether a listener or rule of a load balancer forwards to it.
    pub has_load_balancer: bool,
    /// `deregistration_delay.timeout_seconds`.
    pub deregistration_delay: f64,
}

pub trait LoadBalancing: Send + Sync {
    fn target_group(&self, arn: &str) -> Option<TargetGroupInfo>;
    fn register<'a>(&'a self, targets: &'a [TargetRef]) -> BoxFuture<'a, Result<(), AwsError>>;
    /// Starts draining the targets (they leave after the group's deregistration delay).
    fn deregister<'a>(&'a self, targets: &'a [TargetRef]) -> BoxFuture<'a, Result<(), AwsError>>;
    fn health(&self, target: &TargetRef) -> TargetHealth;
    /// Moves whenever some target's health changes.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// No load balancers: every target group is unknown.
#[derive(Debug, Default)]
pub struct Without;

impl LoadBalancing for Without {
    fn target_group(&self, _arn: &str) -> Option<TargetGroupInfo> {
        None
    }
    fn register<'a>(&'a self, _t: &'a [TargetRef]) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async { Err(AwsError::internal()) })
    }
    fn deregister<'a>(&'a self, _t: &'a [TargetRef]) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async { Ok(()) })
    }
    fn health(&self, _t: &TargetRef) -> TargetHealth {
        TargetHealth::NotRegistered
    }
    fn changes(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }
}

/// The load balancers ECS was wired to (none until the binary sets them).
#[derive(Default)]
pub(crate) struct Slot(std::sync::OnceLock<Arc<dyn LoadBalancing>>);

impl Slot {
    pub(crate) fn get(&self) -> Arc<dyn LoadBalancing> {
        self.0
            .get()
            .cloned()
            .unwrap_or_else(|| Arc::new(Without) as Arc<dyn LoadBalancing>)
    }

    pub(crate) fn set(&self, lb: Arc<dyn LoadBalancing>) {
        let _ = self.0.set(lb);
    }
}
