//! The Fleetport agent: one container instance. It registers with the control plane
//! (RegisterContainerInstance, keeping its identity across restarts), long-polls its task
//! assignments (`FleetportAgentV20261124.PollTaskAssignments`, which is also its heartbeat), runs
//! each task on a [`Runtime`], and reports every transition with SubmitTaskStateChange.
//!
//! On start it re-adopts the containers that carry its instance label instead of starting them
//! again, so restarting the agent never restarts or duplicates a task.

pub mod client;
mod spec;
mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use fleetport_runtime::{ContainerState, Runtime, labels};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

pub use client::{AGENT, ApiClient, ClientError};

/// How one agent presents itself.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub cluster: String,
    pub cpu: i64,
    pub memory: i64,
    /// Reserved TCP ports (ECS agent default: 22, 2375, 2376, 51678, 51679).
    pub reserved_ports: Vec<String>,
    pub attributes: Vec<(String, String)>,
    /// The address published ports bind to and networkBindings report.
    pub advertise: String,
    pub instance_type: String,
    /// Where the agent keeps its container-instance ARN between runs.
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Api(#[from] ClientError),
    #[error("{0}")]
    Runtime(#[from] fleetport_runtime::RuntimeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Shared by the poll loop and the per-task runners.
pub(crate) struct Ctx {
    pub cfg: AgentConfig,
    pub api: ApiClient,
    pub rt: Arc<dyn Runtime>,
    pub instance_arn: String,
    pub instance_id: String,
    /// The last ECR login, reused until an hour before it expires (tokens last 12 hours).
    pub login: Mutex<Option<RegistryLogin>>,
}

#[derive(Debug, Clone)]
pub(crate) struct RegistryLogin {
    pub proxy_host: String,
    pub username: String,
    pub password: String,
    pub expires_at: f64,
}

impl Ctx {
    /// This Fleetport's registry login (ECR GetAuthorizationToken), fetched once and reused.
    pub(crate) async fn registry_login(&self) -> Option<RegistryLogin> {
        let mut cached = self.login.lock().await;
        let now = fleetport_proto::clock::epoch_seconds();
        if let Some(l) = cached.as_ref().filter(|l| l.expires_at - now > 3600.0) {
            return Some(l.clone());
        }
        let out = self
            .api
            .call(client::ECR, "GetAuthorizationToken", &json!({}))
            .await
            .ok()?;
        let data = out.pointer("/authorizationData/0")?;
        let proxy = data.get("proxyEndpoint")?.as_str()?;
        let proxy_host = proxy
            .split("://")
            .nth(1)
            .unwrap_or(proxy)
            .trim_end_matches('/');
        let token = data.get("authorizationToken")?.as_str()?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()?;
        let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        let login = RegistryLogin {
            proxy_host: proxy_host.to_string(),
            username: user.to_string(),
            password: password.to_string(),
            expires_at: data.get("expiresAt").and_then(Value::as_f64).unwrap_or(now),
        };
        *cached = Some(login.clone());
        Some(login)
    }

    pub(crate) async fn submit(&self, input: Value) {
        self.deliver("SubmitTaskStateChange", &input).await;
    }

    pub(crate) async fn deliver(&self, operation: &str, input: &Value) -> bool {
        deliver(&self.api, operation, input, Duration::from_millis(250)).await
    }
}

/// Sends a report until it is delivered: the control plane is the record, so a report lost to
/// a restart or an outage would leave it wrong. Only a refusal (4xx) ends the attempts.
async fn deliver(api: &ApiClient, operation: &str, input: &Value, first_wait: Duration) -> bool {
    let mut wait = first_wait;
    let mut attempt = 0u64;
    loop {
        match api.call(client::ECS, operation, input).await {
            Ok(_) => return true,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, attempt, operation, "report not delivered; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY_WAIT);
                attempt += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, operation, "report refused");
                return false;
            }
        }
    }
}

/// The longest pause between two attempts at delivering a report.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// Even while nothing changes, the agent asks for its whole assignment this often (instead of
/// waiting on a generation), so a missed wake-up or a lost change cannot last.
const RESYNC_EVERY: Duration = Duration::from_secs(300);

pub struct Agent {
    ctx: Arc<Ctx>,
    running: Arc<Mutex<HashMap<String, watch::Sender<bool>>>>,
    cleanup_wait: Duration,
}

/// How long a stopped task's containers stay on the engine (the ECS agent's
/// `ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION` default).
pub const DEFAULT_CLEANUP_WAIT: Duration = Duration::from_secs(3 * 3600);

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86_64" => "x86_64",
        other => other,
    }
}

/// What an EC2 instance's metadata service would say about this host. `privateIp` is where
/// load balancers reach the instance's `instance` targets: the advertised address, unless that
/// is a wildcard.
fn identity_document(cfg: &AgentConfig) -> String {
    let mut doc = json!({
        "instanceType": cfg.instance_type,
        "architecture": host_architecture(),
    });
    if let Ok(ip) = cfg.advertise.parse::<std::net::IpAddr>()
        && !ip.is_unspecified()
    {
        doc["privateIp"] = json!(ip.to_string());
    }
    doc.to_string()
}

impl Agent {
    /// Registers (or re-registers) the instance and returns a ready agent.
    pub async fn register(
        cfg: AgentConfig,
        api: ApiClient,
        rt: Arc<dyn Runtime>,
    ) -> Result<Self, AgentError> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let state_file = cfg.state_dir.join(format!("instance-{}.json", cfg.cluster));
        let previous = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| {
                v.get("containerInstanceArn")
                    .and_then(Value::as_str)
                    .map(String::from)
            });
        let docker_version = rt.version().await.unwrap_or_default();
        let mut attributes = vec![
            json!({"name": "ecs.os-type", "value": "linux"}),
            json!({"name": "ecs.os-family", "value": "LINUX"}),
            json!({"name": "ecs.cpu-architecture", "value": host_architecture()}),
            json!({"name": "ecs.instance-type", "value": cfg.instance_type}),
            json!({"name": "com.amazonaws.ecs.capability.docker-remote-api.1.41"}),
            json!({"name": "com.amazonaws.ecs.capability.logging-driver.json-file"}),
            json!({"name": "ecs.capability.container-health-check"}),
            json!({"name": "ecs.capability.container-ordering"}),
        ];
        for (k, v) in &cfg.attributes {
            attributes.retain(|a| a.get("name").and_then(Value::as_str) != Some(k));
            attributes.push(json!({"name": k, "value": v}));
        }
        let mut input = json!({
            "cluster": cfg.cluster,
            "totalResources": [
                {"name": "CPU", "type": "INTEGER", "integerValue": cfg.cpu},
                {"name": "MEMORY", "type": "INTEGER", "integerValue": cfg.memory},
                {"name": "PORTS", "type": "STRINGSET", "stringSetValue": cfg.reserved_ports},
                {"name": "PORTS_UDP", "type": "STRINGSET", "stringSetValue": []},
            ],
            "attributes": attributes,
            "instanceIdentityDocument": identity_document(&cfg),
            "versionInfo": {
                "agentVersion": env!("CARGO_PKG_VERSION"),
                "agentHash": "fleetport",
                "dockerVersion": format!("DockerVersion: {docker_version}"),
            },
        });
        if let (Some(arn), Value::Object(o)) = (&previous, &mut input) {
            o.insert("containerInstanceArn".into(), json!(arn));
        }
        // Each replica of the control plane gets a try before the agent gives up.
        let mut tries = api.endpoint_count();
        let out = loop {
            match api
                .call(client::ECS, "RegisterContainerInstance", &input)
                .await
            {
                Err(client::ClientError::Transport(e)) if tries > 1 => {
                    tries -= 1;
                    tracing::warn!(error = %e, "could not register here; trying the next endpoint");
                }
                r => break r?,
            }
        };
        let arn = out
            .pointer("/containerInstance/containerInstanceArn")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // Atomic: a crash mid-write must not leave an identity the next start cannot read (it
        // would register a second instance for the same host).
        fleetport_store::datadir::write_atomic(
            &state_file,
            json!({"containerInstanceArn": arn}).to_string().as_bytes(),
        )?;
        let instance_id = arn.rsplit('/').next().unwrap_or_default().to_string();
        tracing::info!(instance = %arn, cluster = %cfg.cluster, "container instance registered");
        Ok(Self {
            ctx: Arc::new(Ctx {
                cfg,
                api,
                rt,
                instance_arn: arn,
                instance_id,
                login: Mutex::new(None),
            }),
            running: Arc::new(Mutex::new(HashMap::new())),
            cleanup_wait: DEFAULT_CLEANUP_WAIT,
        })
    }

    /// The managed ("FARGATE") capacity that `fleetport up` runs in-process: it registers no
    /// instance and polls as `FARGATE`, receiving the FARGATE tasks of every cluster.
    ///
    /// `instance_id` labels its containers: each account and region has its own managed
    /// capacity on the same engine, and none may adopt or remove another's containers.
    pub fn managed(
        api: ApiClient,
        rt: Arc<dyn Runtime>,
        advertise: &str,
        instance_id: &str,
    ) -> Self {
        Self {
            ctx: Arc::new(Ctx {
                cfg: AgentConfig {
                    cluster: "-".into(),
                    cpu: 0,
                    memory: 0,
                    reserved_ports: Vec::new(),
                    attributes: Vec::new(),
                    advertise: advertise.to_string(),
                    instance_type: "fargate".into(),
                    state_dir: PathBuf::new(),
                },
                api,
                rt,
                instance_arn: "FARGATE".into(),
                instance_id: instance_id.into(),
                login: Mutex::new(None),
            }),
            running: Arc::new(Mutex::new(HashMap::new())),
            cleanup_wait: DEFAULT_CLEANUP_WAIT,
        }
    }

    /// How long to keep a stopped task's containers before removing them.
    pub fn with_cleanup_wait(mut self, wait: Duration) -> Self {
        self.cleanup_wait = wait;
        self
    }

    pub fn instance_arn(&self) -> &str {
        &self.ctx.instance_arn
    }

    /// Polls for assignments and runs them until `shutdown` fires. Tasks keep running after the
    /// agent exits; the next agent re-adopts them.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let mut adopted = self.adoptable().await?;
        let mut generation: Option<u64> = None;
        let mut epochs = Epochs::default();
        let mut sweeper: Option<AbortOnDrop> = None;
        let mut synced_at = tokio::time::Instant::now();
        loop {
            let mut input = json!({
                "cluster": self.ctx.cfg.cluster,
                "containerInstance": self.ctx.instance_arn,
                "waitSeconds": 20,
            });
            if synced_at.elapsed() >= RESYNC_EVERY {
                generation = None;
                synced_at = tokio::time::Instant::now();
            }
            if let (Some(g), Value::Object(o)) = (generation, &mut input) {
                o.insert("generation".into(), json!(g));
            }
            let poll = self
                .ctx
                .api
                .call(client::AGENT, "PollTaskAssignments", &input);
            let out = tokio::select! {
                r = poll => r,
                _ = shutdown.changed() => return Ok(()),
            };
            match out {
                Ok(v) if !epochs.admits(v.get("epoch").and_then(Value::as_i64).unwrap_or(0)) => {
                    // A replica behind the leader whose assignments this agent already follows
                    // (cut off from the shared state): not acted on; another replica is asked.
                    tracing::warn!(host = %self.ctx.api.host(), "ignored assignments from a replica behind the current leader epoch");
                    self.ctx.api.move_on();
                    generation = None;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                Ok(v) => {
                    generation = v.get("generation").and_then(Value::as_u64);
                    let tasks = v
                        .get("tasks")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    self.reconcile(tasks, &mut adopted).await;
                    // Only after a reconcile: before it, an adopted task's exited non-essential
                    // container could look like a stopped task's.
                    if sweeper.is_none() {
                        sweeper = Some(AbortOnDrop(tokio::spawn(remove_stopped_containers(
                            self.ctx.clone(),
                            self.running.clone(),
                            self.cleanup_wait,
                        ))));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed; retrying");
                    generation = None;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
            }
        }
    }

    /// This instance's containers already on the engine, by task ARN.
    async fn adoptable(&self) -> Result<HashMap<String, Vec<ContainerState>>, AgentError> {
        let mut by_task: HashMap<String, Vec<ContainerState>> = HashMap::new();
        for c in self
            .ctx
            .rt
            .list(labels::INSTANCE, &self.ctx.instance_id)
            .await?
        {
            if let Some(arn) = c.labels.get(labels::TASK_ARN) {
                by_task.entry(arn.clone()).or_default().push(c);
            }
        }
        Ok(by_task)
    }

    async fn reconcile(
        &self,
        tasks: Vec<Value>,
        adopted: &mut HashMap<String, Vec<ContainerState>>,
    ) {
        let mut running = self.running.lock().await;
        running.retain(|_, tx| !tx.is_closed());
        for t in tasks {
            let arn = t
                .get("taskArn")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let desired_stop = t.get("desiredStatus").and_then(Value::as_str) == Some("STOPPED");
            if let Some(tx) = running.get(&arn) {
                if desired_stop {
                    let _ = tx.send(true);
                }
                continue;
            }
            let (tx, rx) = watch::channel(desired_stop);
            let found = adopted.remove(&arn).unwrap_or_default();
            let ctx = self.ctx.clone();
            tokio::spawn(task::run(ctx, t, found, rx));
            running.insert(arn, tx);
        }
    }
}

/// The fencing of assignments by control-plane leader epoch: an answer from an epoch older than
/// one already followed comes from a replica that is cut off and is not acted on.
#[derive(Debug, Default)]
struct Epochs {
    highest: i64,
    /// Since when every answer has been older than `highest`.
    behind_since: Option<std::time::Instant>,
}

/// After this long with only older epochs from every replica, the control plane itself went
/// back (a database restored from a backup starts its epochs again), and the agent follows it.
const EPOCH_GIVE_UP: Duration = Duration::from_secs(60);

impl Epochs {
    fn admits(&mut self, epoch: i64) -> bool {
        self.admits_at(epoch, std::time::Instant::now())
    }

    fn admits_at(&mut self, epoch: i64, now: std::time::Instant) -> bool {
        if epoch >= self.highest {
            self.highest = epoch;
            self.behind_since = None;
            return true;
        }
        let since = *self.behind_since.get_or_insert(now);
        if now.duration_since(since) >= EPOCH_GIVE_UP {
            tracing::warn!(
                from = self.highest,
                to = epoch,
                "the control plane's leader epochs went back (a restored database?); following"
            );
            self.highest = epoch;
            self.behind_since = None;
            return true;
        }
        false
    }
}

/// Aborts the task when dropped, so the sweeper ends with the poll loop.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes the containers of tasks this agent no longer runs once they have been stopped for
/// `wait`, as the ECS agent does; checks a few times per wait, at least once a minute.
async fn remove_stopped_containers(
    ctx: Arc<Ctx>,
    running: Arc<Mutex<HashMap<String, watch::Sender<bool>>>>,
    wait: Duration,
) {
    let every = (wait / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let active: std::collections::HashSet<String> = {
            let mut running = running.lock().await;
            running.retain(|_, tx| !tx.is_closed());
            running.keys().cloned().collect()
        };
        let found = match ctx.rt.list(labels::INSTANCE, &ctx.instance_id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "could not list containers for cleanup");
                continue;
            }
        };
        let cutoff = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(wait).unwrap_or_default())
            .unwrap_or(jiff::Timestamp::MIN);
        for c in found {
            let Some(arn) = c.labels.get(labels::TASK_ARN) else {
                continue;
            };
            if c.running || active.contains(arn) {
                continue;
            }
            // A container that never ran has no finish time; its task is over all the same.
            let finished = c
                .finished_at
                .parse::<jiff::Timestamp>()
                .unwrap_or(jiff::Timestamp::MIN);
            if finished > cutoff {
                continue;
            }
            match ctx.rt.remove(&c.id).await {
                Ok(()) => {
                    tracing::info!(task = %arn, container = %c.name, "removed stopped container")
                }
                Err(e) => {
                    tracing::warn!(error = %e, container = %c.name, "could not remove stopped container")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn older_epochs_are_refused_until_the_control_plane_really_went_back() {
        let t0 = std::time::Instant::now();
        let mut e = Epochs::default();
        assert!(e.admits_at(0, t0), "a store alone (epoch 0) is followed");
        assert!(e.admits_at(3, t0));
        assert!(e.admits_at(3, t0), "the same leader again");
        assert!(!e.admits_at(2, t0), "a replica behind the leader");
        assert!(!e.admits_at(2, t0 + EPOCH_GIVE_UP / 2));
        assert!(e.admits_at(4, t0 + EPOCH_GIVE_UP / 2), "a newer leader");
        assert!(
            !e.admits_at(1, t0 + EPOCH_GIVE_UP),
            "behind again: the clock restarts"
        );
        assert!(
            e.admits_at(1, t0 + EPOCH_GIVE_UP * 2),
            "only older epochs for a minute"
        );
        assert!(
            !e.admits_at(0, t0 + EPOCH_GIVE_UP * 2),
            "and the restored epoch holds"
        );
    }

    /// A control plane that answers each connection's request with the next of `statuses`.
    async fn flaky(statuses: Vec<u16>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            for status in statuses {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = if status == 200 {
                    "{}"
                } else {
                    r#"{"__type":"X","message":"m"}"#
                };
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), seen)
    }

    /// Retried through 5xx until delivered; a 4xx ends the attempts at once.
    #[tokio::test]
    async fn reports_are_retried_through_server_errors_until_delivered_and_never_when_refused() {
        for (statuses, delivered, calls) in
            [(vec![500, 503, 200], true, 3), (vec![400, 200], false, 1)]
        {
            let (endpoint, seen) = flaky(statuses).await;
            let api = ApiClient::new(&endpoint, "us-east-1", "k", "s").unwrap();
            let wait = Duration::from_millis(1);
            assert_eq!(
                deliver(&api, "SubmitTaskStateChange", &json!({}), wait).await,
                delivered
            );
            assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), calls);
        }
    }
}
