//! `fleetport agent` (one container instance joining a cluster) and `fleetport logs` (a task's
//! container logs from the local engine): flags, detection of CPU and memory, wiring.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use fleetport_agent::{Agent, AgentConfig, ApiClient};
use fleetport_runtime::{DockerRuntime, Runtime, labels};

/// Where a command reaches the control plane, and the region it signs for.
#[derive(Debug, Clone, Args)]
pub struct ControlPlane {
    /// Control-plane endpoint; several replicas separated by commas (the next is tried when one
    /// does not answer).
    #[arg(
        long,
        env = "FLEETPORT_ENDPOINT",
        default_value = "http://localhost:4566"
    )]
    pub endpoint: String,

    /// Region to sign for (AWS_REGION / AWS_DEFAULT_REGION are read too).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
}

impl ControlPlane {
    /// A client signing with the caller's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
    fn client(&self) -> anyhow::Result<ApiClient> {
        let (key, secret) = credentials()?;
        Ok(ApiClient::new(
            &self.endpoint,
            &region(&self.region),
            &key,
            &secret,
        )?)
    }
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Cluster to join (must exist).
    #[arg(long, env = "FLEETPORT_CLUSTER", default_value = "default")]
    pub cluster: String,

    #[command(flatten)]
    pub control_plane: ControlPlane,

    /// CPU units to offer (1024 per core). Default: this host's cores × 1024.
    #[arg(long)]
    pub cpu: Option<i64>,

    /// Memory to offer, MiB. Default: this host's total memory.
    #[arg(long)]
    pub memory: Option<i64>,

    /// Reserved TCP ports, comma-separated (never given to tasks).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "22,2375,2376,51678,51679"
    )]
    pub reserved_ports: Vec<String>,

    /// Custom attribute NAME=VALUE (repeatable), for placement constraints.
    #[arg(long = "attribute")]
    pub attributes: Vec<String>,

    /// Address published container ports bind to and networkBindings report.
    #[arg(long, env = "FLEETPORT_ADVERTISE_ADDRESS", default_value = "127.0.0.1")]
    pub advertise_address: String,

    /// Value of the ecs.instance-type attribute.
    #[arg(long, default_value = "fleetport.local")]
    pub instance_type: String,

    /// Where the agent remembers its container-instance ARN (one file per cluster). Use a
    /// different directory for each agent on one host.
    #[arg(long, env = "FLEETPORT_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Seconds a stopped task's containers are kept (for `fleetport logs` and `docker inspect`)
    /// before the agent removes them; the ECS agent's default is 3 hours.
    #[arg(long, env = "FLEETPORT_TASK_CLEANUP_WAIT", default_value_t = 10800)]
    pub task_cleanup_wait: u64,
}

fn detect_cpu() -> i64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as i64) * 1024
}

fn detect_memory_mib() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(1024, |kb| kb / 1024)
}

fn credentials() -> anyhow::Result<(String, String)> {
    let key = std::env::var("AWS_ACCESS_KEY_ID")
        .ok()
        .filter(|k| !k.is_empty());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    match (key, secret) {
        (Some(k), Some(s)) => Ok((k, s)),
        _ => anyhow::bail!(
            "the agent signs its calls like any AWS client: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ),
    }
}

fn region(arg: &Option<String>) -> String {
    arg.clone()
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".into())
}

pub async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let api = args.control_plane.client()?;
    let rt: Arc<dyn Runtime> = Arc::new(
        DockerRuntime::connect()
            .await
            .context("connecting to the Docker engine")?,
    );
    let mut attributes = Vec::new();
    for a in &args.attributes {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("--attribute {a}: expected NAME=VALUE"))?;
        attributes.push((k.to_string(), v.to_string()));
    }
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/fleetport/agent"))
        })
        .context("no --state-dir and no HOME")?;
    let cfg = AgentConfig {
        cluster: args.cluster.clone(),
        cpu: args.cpu.unwrap_or_else(detect_cpu),
        memory: args.memory.unwrap_or_else(detect_memory_mib),
        reserved_ports: args.reserved_ports.clone(),
        attributes,
        advertise: args.advertise_address.clone(),
        instance_type: args.instance_type.clone(),
        state_dir,
    };
    let agent = Agent::register(cfg, api, rt)
        .await
        .context("registering the container instance")?
        .with_cleanup_wait(std::time::Duration::from_secs(args.task_cleanup_wait));
    println!(
        "fleetport agent: container instance {}",
        agent.instance_arn()
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = tx.send(true);
    });
    agent.run(rx).await?;
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Task ID or ARN.
    pub task: String,

    /// Only this container of the task.
    #[arg(long)]
    pub container: Option<String>,

    /// Lines from the end of each container's log.
    #[arg(long, default_value_t = 1000)]
    pub tail: usize,
}

/// Prints a task's container logs, kept by the engine on this host (json-file, rotated at
/// 10 MB × 3 files per container).
pub async fn run_logs(args: LogsArgs) -> anyhow::Result<()> {
    let rt = DockerRuntime::connect()
        .await
        .context("connecting to the Docker engine")?;
    let id = args
        .task
        .rsplit('/')
        .next()
        .unwrap_or(&args.task)
        .to_string();
    // Containers are named ecs-<family>-<revision>-<container>-<task id>.
    let all = rt
        .list(labels::CONTAINER_NAME, "")
        .await
        .unwrap_or_default();
    let mut found = false;
    for c in all {
        let task = c.labels.get(labels::TASK_ARN).cloned().unwrap_or_default();
        if !task.ends_with(&format!("/{id}")) {
            continue;
        }
        let name = c
            .labels
            .get(labels::CONTAINER_NAME)
            .cloned()
            .unwrap_or_default();
        if args.container.as_deref().is_some_and(|w| w != name) {
            continue;
        }
        found = true;
        let logs = rt.logs(&c.id, args.tail).await?;
        for line in logs.lines() {
            println!("{name} | {line}");
        }
    }
    anyhow::ensure!(found, "no containers of task {id} on this host");
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct InterruptSpotArgs {
    /// Task ID or ARN (a task on the FARGATE_SPOT capacity provider).
    pub task: String,

    /// The task's cluster.
    #[arg(long, env = "FLEETPORT_CLUSTER", default_value = "default")]
    pub cluster: String,

    #[command(flatten)]
    pub control_plane: ControlPlane,
}

/// Interrupts a FARGATE_SPOT task as Fargate Spot would (signed with the caller's keys).
pub async fn run_interrupt_spot(args: InterruptSpotArgs) -> anyhow::Result<()> {
    let api = args.control_plane.client()?;
    let out = api
        .call(
            fleetport_agent::AGENT,
            "InterruptSpotTask",
            &serde_json::json!({"cluster": args.cluster, "task": args.task}),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{out}");
    Ok(())
}
