//! One task's life on this instance: pull (with ECR credentials obtained automatically), platform
//! check, create, start in `dependsOn` order, report RUNNING with the network bindings, then watch
//! the containers until an essential one exits or a stop is asked for, stop the rest (stop signal,
//! then SIGKILL after `stopTimeout`) in reverse order, and report STOPPED.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetport_runtime::{ContainerState, Credentials, Runtime, labels};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Ctx;
use crate::client;
use crate::spec::{self, TaskInfo};

const DEFAULT_STOP_TIMEOUT: i64 = 30;
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(180);

fn now() -> f64 {
    fleetport_proto::clock::epoch_seconds()
}

struct Def {
    name: String,
    essential: bool,
    stop_timeout: i64,
    depends_on: Vec<(String, String)>,
    start_timeout: Duration,
    def: Value,
}

fn defs_of(task: &Value) -> Vec<Def> {
    task.get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| Def {
            name: d
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            essential: d.get("essential").and_then(Value::as_bool).unwrap_or(true),
            stop_timeout: d
                .get("stopTimeout")
                .and_then(Value::as_i64)
                .unwrap_or(DEFAULT_STOP_TIMEOUT),
            depends_on: d
                .get("dependsOn")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|x| {
                    Some((
                        x.get("containerName")?.as_str()?.to_string(),
                        x.get("condition")?.as_str()?.to_string(),
                    ))
                })
                .collect(),
            start_timeout: d
                .get("startTimeout")
                .and_then(Value::as_u64)
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_START_TIMEOUT),
            def: d.clone(),
        })
        .collect()
}

fn bindings_json(s: &ContainerState) -> Value {
    Value::Array(
        s.bindings
            .iter()
            .map(|b| {
                json!({"bindIP": b.host_ip, "containerPort": b.container_port, "hostPort": b.host_port, "protocol": b.protocol})
            })
            .collect(),
    )
}

fn health_of(s: &ContainerState) -> &'static str {
    match s.health.as_str() {
        "healthy" => "HEALTHY",
        "unhealthy" => "UNHEALTHY",
        _ => "UNKNOWN",
    }
}

fn report_of(name: &str, s: &ContainerState) -> Value {
    let status = if s.running {
        "RUNNING"
    } else if s.exit_code.is_some() {
        "STOPPED"
    } else {
        "PENDING"
    };
    let mut c = json!({
        "containerName": name,
        "runtimeId": s.id,
        "status": status,
        "networkBindings": bindings_json(s),
        "healthStatus": health_of(s),
    });
    if let (Some(code), Value::Object(o)) = (s.exit_code, &mut c) {
        o.insert("exitCode".into(), json!(code));
        if s.oom_killed {
            o.insert(
                "reason".into(),
                json!("OutOfMemoryError: Container killed due to memory usage"),
            );
        }
    }
    c
}

struct Runner {
    ctx: Arc<Ctx>,
    task_arn: String,
    cluster: String,
    defs: Vec<Def>,
    /// Container name → runtime id.
    ids: HashMap<String, String>,
    /// awsvpc: the pause container holding the task's network namespace, and its address.
    pause: Option<String>,
    address: Option<String>,
}

impl Runner {
    fn rt(&self) -> &dyn Runtime {
        &*self.ctx.rt
    }

    async fn submit(
        &self,
        status: &str,
        reason: Option<&str>,
        containers: Vec<Value>,
        extra: Value,
    ) {
        let mut input = json!({
            "cluster": self.cluster,
            "task": self.task_arn,
            "status": status,
            "containers": containers,
        });
        if let Value::Object(o) = &mut input {
            if let Some(r) = reason {
                o.insert(
                    "reason".into(),
                    json!(r.chars().take(1024).collect::<String>()),
                );
            }
            if let Value::Object(e) = extra {
                o.extend(e);
            }
        }
        self.ctx.submit(input).await;
    }

    async fn states(&self) -> Vec<(String, ContainerState)> {
        let mut out = Vec::new();
        for d in &self.defs {
            if let Some(id) = self.ids.get(&d.name)
                && let Ok(s) = self.rt().inspect(id).await
            {
                out.push((d.name.clone(), s));
            }
        }
        out
    }

    async fn reports(&self) -> Vec<Value> {
        self.states()
            .await
            .iter()
            .map(|(n, s)| report_of(n, s))
            .collect()
    }

    /// Credentials for images in this Fleetport's own registry (any of its replicas').
    async fn credentials(&self, image: &str) -> Option<Credentials> {
        let (host, _) = image.split_once('/')?;
        let login = self.ctx.registry_login().await?;
        let ours = login.proxy_host == host || self.ctx.api.is_replica(host);
        ours.then(|| Credentials {
            username: login.username,
            password: login.password,
            server: host.to_string(),
        })
    }

    async fn pull_all(&self) -> Result<(), String> {
        let host_arch = match std::env::consts::ARCH {
            "aarch64" => "arm64",
            "x86_64" => "amd64",
            other => other,
        };
        let mut done: Vec<String> = Vec::new();
        for d in &self.defs {
            let image = d
                .def
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if done.contains(&image) {
                continue;
            }
            let creds = self.credentials(&image).await;
            let platform = self
                .rt()
                .pull(&image, creds)
                .await
                .map_err(|e| format!("CannotPullContainerError: pull image {image}: {e}"))?;
            if platform.os != "linux" || platform.architecture != host_arch {
                return Err(format!(
                    "CannotPullContainerError: image {image} is built for {}/{}, but this container instance is linux/{host_arch}",
                    platform.os, platform.architecture
                ));
            }
            done.push(image);
        }
        Ok(())
    }

    async fn remove_all(&self) {
        for id in self.ids.values().chain(self.pause.iter()) {
            let _ = self.rt().remove(id).await;
        }
    }

    /// Waits until `dep` satisfies `condition`; `Err` when it never can.
    async fn wait_dependency(
        &self,
        dep: &str,
        condition: &str,
        deadline: Instant,
    ) -> Result<(), String> {
        let Some(id) = self.ids.get(dep) else {
            return Err(format!("dependency container {dep} does not exist"));
        };
        loop {
            let s = self.rt().inspect(id).await.map_err(|e| e.to_string())?;
            let ok = match condition {
                "START" => s.running || s.exit_code.is_some(),
                "COMPLETE" => s.exit_code.is_some(),
                "SUCCESS" => match s.exit_code {
                    Some(0) => true,
                    Some(code) => {
                        return Err(format!(
                            "dependency {dep} exited with {code}, condition SUCCESS"
                        ));
                    }
                    None => false,
                },
                "HEALTHY" => match s.health.as_str() {
                    "healthy" => true,
                    "unhealthy" => return Err(format!("dependency {dep} is unhealthy")),
                    _ if s.exit_code.is_some() => {
                        return Err(format!("dependency {dep} exited before it was healthy"));
                    }
                    _ => false,
                },
                _ => true,
            };
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "DockerTimeoutError: timed out waiting for dependency {dep} ({condition})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// awsvpc: starts the pause container that owns the task's network namespace.
    async fn start_pause(&mut self, info: &TaskInfo<'_>) -> Result<(), String> {
        let fail = |e: String| {
            format!("ResourceInitializationError: failed to set up the task network: {e}")
        };
        let tar = fleetport_runtime::pause::image_tar()
            .ok_or_else(|| fail(format!("no pause program for {}", std::env::consts::ARCH)))?;
        self.rt()
            .ensure_imported(
                fleetport_runtime::pause::IMAGE,
                tar,
                vec!["ENTRYPOINT [\"/pause\"]".into()],
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        let id = self
            .rt()
            .create(&spec::pause(info))
            .await
            .map_err(|e| fail(e.to_string()))?;
        self.pause = Some(id.clone());
        self.rt()
            .start(&id)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let state = self
            .rt()
            .inspect(&id)
            .await
            .map_err(|e| fail(e.to_string()))?;
        self.address = Some(state.ip_address).filter(|a| !a.is_empty());
        Ok(())
    }

    async fn create_and_start(
        &mut self,
        info: &TaskInfo<'_>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        if info.network_mode == "awsvpc" {
            self.start_pause(info).await?;
        }
        for d in &self.defs {
            let spec = spec::build(info, &d.def, self.pause.as_deref());
            let id = self
                .rt()
                .create(&spec)
                .await
                .map_err(|e| format!("CannotCreateContainerError: {e}"))?;
            self.ids.insert(d.name.clone(), id);
        }
        for d in &self.defs {
            let deadline = Instant::now() + d.start_timeout;
            for (dep, cond) in &d.depends_on {
                self.wait_dependency(dep, cond, deadline).await?;
            }
            if *stop.borrow() {
                return Err("Task stopped before it started".into());
            }
            let Some(id) = self.ids.get(&d.name) else {
                continue;
            };
            self.rt()
                .start(id)
                .await
                .map_err(|e| format!("CannotStartContainerError: {e}"))?;
        }
        Ok(())
    }

    /// Stops every container still running, last-started first.
    async fn stop_all(&self) {
        for d in self.defs.iter().rev() {
            if let Some(id) = self.ids.get(&d.name)
                && let Err(e) = self.rt().stop(id, d.stop_timeout).await
            {
                tracing::warn!(task = %self.task_arn, container = %d.name, error = %e, "stop failed");
            }
        }
        // The pause container only holds the namespace: it goes once the task's containers have.
        if let Some(p) = &self.pause {
            let _ = self.rt().remove(p).await;
        }
    }

    fn network_report(&self) -> Value {
        match &self.address {
            Some(a) => json!({"privateIpv4Address": a}),
            None => json!({}),
        }
    }
}

pub(crate) async fn run(
    ctx: Arc<Ctx>,
    task: Value,
    adopted: Vec<ContainerState>,
    mut stop: watch::Receiver<bool>,
) {
    let task_arn = task
        .get("taskArn")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let family = task
        .get("family")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let revision = task.get("revision").and_then(Value::as_u64).unwrap_or(0);
    let network_mode = task
        .get("networkMode")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string();
    // The managed capacity serves every cluster; an instance agent only its own.
    let cluster = task
        .get("cluster")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| ctx.cfg.cluster.clone());
    let mut r = Runner {
        ctx: ctx.clone(),
        task_arn: task_arn.clone(),
        cluster: cluster.clone(),
        defs: defs_of(&task),
        ids: HashMap::new(),
        pause: None,
        address: None,
    };
    for c in &adopted {
        match c.labels.get(labels::CONTAINER_NAME) {
            Some(name) if name == spec::PAUSE => {
                r.pause = Some(c.id.clone());
                r.address = Some(c.ip_address.clone()).filter(|a| !a.is_empty());
            }
            Some(name) => {
                r.ids.insert(name.clone(), c.id.clone());
            }
            None => {}
        }
    }
    let info = TaskInfo {
        cluster: &cluster,
        task_arn: &task_arn,
        family: &family,
        revision,
        network_mode: &network_mode,
        instance_id: &ctx.instance_id,
        advertise: &ctx.cfg.advertise,
    };
    if adopted.is_empty() {
        if *stop.borrow() {
            r.submit("STOPPED", None, vec![], json!({})).await;
            return;
        }
        let pull_started = now();
        if let Err(reason) = r.pull_all().await {
            let containers: Vec<Value> = r
                .defs
                .iter()
                .map(|d| json!({"containerName": d.name, "status": "STOPPED", "reason": reason}))
                .collect();
            r.submit(
                "STOPPED",
                Some(&reason),
                containers,
                json!({"pullStartedAt": pull_started, "pullStoppedAt": now()}),
            )
            .await;
            return;
        }
        let pulled = json!({"pullStartedAt": pull_started, "pullStoppedAt": now()});
        // Images are here: a FARGATE task moves from PROVISIONING to PENDING.
        r.submit("PENDING", None, vec![], pulled.clone()).await;
        if let Err(reason) = r.create_and_start(&info, &mut stop).await {
            // A task that fails to start leaves no container behind.
            let mut containers = r.reports().await;
            for c in &mut containers {
                if let Value::Object(o) = c {
                    o.insert("status".into(), json!("STOPPED"));
                    o.entry("reason").or_insert_with(|| json!(reason));
                }
            }
            r.stop_all().await;
            r.remove_all().await;
            r.submit("STOPPED", Some(&reason), containers, pulled).await;
            return;
        }
        let containers = r.reports().await;
        r.submit("RUNNING", None, containers, r.network_report())
            .await;
    } else {
        tracing::info!(task = %task_arn, "re-adopted running task");
        let containers = r.reports().await;
        r.submit("RUNNING", None, containers, r.network_report())
            .await;
    }
    watch_task(&r, &mut stop).await;
}

/// Watches until an essential container exits or a stop is asked for; then stops the task.
async fn watch_task(r: &Runner, stop: &mut watch::Receiver<bool>) {
    let mut exits = tokio::task::JoinSet::new();
    for d in &r.defs {
        if let Some(id) = r.ids.get(&d.name) {
            let rt = r.ctx.rt.clone();
            let (name, id, essential) = (d.name.clone(), id.clone(), d.essential);
            exits.spawn(async move {
                let code = rt.wait(&id).await;
                (name, essential, code)
            });
        }
    }
    let has_health = r.defs.iter().any(|d| d.def.get("healthCheck").is_some());
    let mut last_health: HashMap<String, &'static str> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let reason = loop {
        if *stop.borrow() {
            break None;
        }
        tokio::select! {
            exited = exits.join_next() => match exited {
                Some(Ok((name, essential, code))) => {
                    let states = r.states().await;
                    if let Some((_, s)) = states.iter().find(|(n, _)| *n == name) {
                        let mut c = report_of(&name, s);
                        if let (Ok(code), Value::Object(o)) = (code, &mut c) {
                            o.insert("exitCode".into(), json!(code));
                            o.insert("status".into(), json!("STOPPED"));
                        }
                        let mut input = c;
                        if let Value::Object(o) = &mut input {
                            o.insert("cluster".into(), json!(r.cluster));
                            o.insert("task".into(), json!(r.task_arn));
                        }
                        let _ = r.ctx.api.call(client::ECS, "SubmitContainerStateChange", &input).await;
                    }
                    if essential {
                        break Some("Essential container in task exited");
                    }
                }
                Some(Err(_)) => {}
                None => {
                    // Nothing left to wait on (every container gone): the task is over.
                    break Some("Essential container in task exited");
                }
            },
            _ = stop.changed() => {}
            _ = tick.tick(), if has_health => {
                for (name, s) in r.states().await {
                    let h = health_of(&s);
                    if last_health.get(&name) != Some(&h) {
                        let mut c = report_of(&name, &s);
                        if let Value::Object(o) = &mut c {
                            o.insert("cluster".into(), json!(r.cluster));
                            o.insert("task".into(), json!(r.task_arn));
                        }
                        // Noted as sent only once delivered; otherwise the next tick tries again.
                        match r.ctx.api.call(client::ECS, "SubmitContainerStateChange", &c).await {
                            Ok(_) => {
                                last_health.insert(name.clone(), h);
                            }
                            Err(e) if e.is_transient() => {
                                tracing::debug!(error = %e, "health report not delivered; retrying");
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "health report refused");
                                last_health.insert(name.clone(), h);
                            }
                        }
                    }
                }
            }
        }
    };
    r.submit("STOPPING", reason, vec![], json!({})).await;
    let execution_stopped = now();
    r.stop_all().await;
    if r.pause.is_some() {
        // awsvpc: the network interface is released after the containers stop.
        r.submit("DEPROVISIONING", reason, vec![], json!({})).await;
    }
    let containers = r.reports().await;
    r.submit(
        "STOPPED",
        reason,
        containers,
        json!({"executionStoppedAt": execution_stopped}),
    )
    .await;
}
