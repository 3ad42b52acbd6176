//! Fleetport's container runtime driver: what the agent needs from a container engine (pull,
//! create, start, stop, inspect, list by label, wait, remove), as the [`Runtime`] trait, and its
//! implementation over the Docker Engine API ([`docker::DockerRuntime`], via bollard).
//!
//! The trait speaks in Fleetport's terms ([`ContainerSpec`], [`ContainerState`]) so a Podman or
//! containerd driver can be added without touching the agent.

pub mod docker;
pub mod pause;

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;

pub use docker::DockerRuntime;

/// Errors from the container engine, with the engine's own message (users see it in `reason`).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Engine(String),
}

/// Registry credentials for a pull (ECR: user `AWS`, password from GetAuthorizationToken).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub server: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    Bridge,
    Host,
    None,
    /// Join another container's network namespace (awsvpc: the task's pause container).
    Container(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRequest {
    pub container_port: u16,
    /// 0 asks the engine for a free ephemeral port.
    pub host_port: u16,
    pub protocol: String,
    pub host_ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub container_port: u16,
    pub host_port: u16,
    pub protocol: String,
    pub host_ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Docker form: `["CMD", …]` or `["CMD-SHELL", "…"]`.
    pub test: Vec<String>,
    pub interval_secs: i64,
    pub timeout_secs: i64,
    pub retries: i64,
    pub start_period_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// Everything needed to create one container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entry_point: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub cpu_shares: Option<i64>,
    pub memory_mib: Option<i64>,
    pub memory_reservation_mib: Option<i64>,
    pub ulimits: Vec<Ulimit>,
    pub stop_timeout_secs: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub network: Option<NetworkMode>,
    pub ports: Vec<PortRequest>,
    pub health_check: Option<HealthCheck>,
    pub log_driver: Option<String>,
    pub log_options: BTreeMap<String, String>,
    pub hostname: Option<String>,
}

/// What the engine reports about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub running: bool,
    /// Set once the container has exited.
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub error: String,
    /// `healthy`, `unhealthy`, `starting`, or empty when the container has no check.
    pub health: String,
    pub started_at: String,
    pub finished_at: String,
    pub bindings: Vec<Binding>,
    pub labels: BTreeMap<String, String>,
    pub ip_address: String,
}

/// OS and architecture of a local image, in OCI terms (`linux`, `amd64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlatform {
    pub os: String,
    pub architecture: String,
}

/// A container engine. Object-safe so the agent can hold `Arc<dyn Runtime>`.
pub trait Runtime: Send + Sync {
    fn pull<'a>(
        &'a self,
        image: &'a str,
        credentials: Option<Credentials>,
    ) -> BoxFuture<'a, Result<ImagePlatform, RuntimeError>>;
    fn create<'a>(&'a self, spec: &'a ContainerSpec)
    -> BoxFuture<'a, Result<String, RuntimeError>>;
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Stop signal, then SIGKILL after `timeout_secs`.
    fn stop<'a>(
        &'a self,
        id: &'a str,
        timeout_secs: i64,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerState, RuntimeError>>;
    /// Every container (running or not) carrying `label=value` (any value when `value` is empty).
    fn list<'a>(
        &'a self,
        label: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerState>, RuntimeError>>;
    /// Resolves when the container exits, with its exit code.
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<i64, RuntimeError>>;
    /// The last `tail` lines of the container's stdout and stderr, interleaved.
    fn logs<'a>(&'a self, id: &'a str, tail: usize) -> BoxFuture<'a, Result<String, RuntimeError>>;
    /// Makes `reference` from a root-filesystem tar (`docker import`) unless it exists already.
    fn ensure_imported<'a>(
        &'a self,
        reference: &'a str,
        tar: Vec<u8>,
        changes: Vec<String>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Engine version, for `versionInfo.dockerVersion`.
    fn version(&self) -> BoxFuture<'_, Result<String, RuntimeError>>;
}

/// The labels the ECS agent puts on every container; `docker ps --filter label=…` works as on ECS.
pub mod labels {
    pub const CLUSTER: &str = "com.amazonaws.ecs.cluster";
    pub const TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
    pub const CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
    pub const FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
    pub const VERSION: &str = "com.amazonaws.ecs.task-definition-version";
    /// Fleetport's own: the container instance that owns the container (several agents per host).
    pub const INSTANCE: &str = "dev.fleetport.container-instance";
}
