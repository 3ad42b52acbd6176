//! Turning an ECS container definition into a runtime [`ContainerSpec`]: the fields ECS applies
//! for real (image, command, entryPoint, environment, workingDirectory, user, cpu shares, memory
//! and memoryReservation, ulimits, stopTimeout, dockerLabels, port mappings, healthCheck,
//! logConfiguration).

use std::collections::BTreeMap;

use fleetport_runtime::{ContainerSpec, HealthCheck, NetworkMode, PortRequest, Ulimit, labels};
use serde_json::Value;

/// What the agent knows about the task a container belongs to.
pub struct TaskInfo<'a> {
    pub cluster: &'a str,
    pub task_arn: &'a str,
    pub family: &'a str,
    pub revision: u64,
    pub network_mode: &'a str,
    pub instance_id: &'a str,
    pub advertise: &'a str,
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    Some(
        v?.as_array()?
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect(),
    )
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Docker container names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn docker_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

pub fn container_name(t: &TaskInfo<'_>, name: &str) -> String {
    let id = t.task_arn.rsplit('/').next().unwrap_or_default();
    docker_name(&format!("ecs-{}-{}-{name}-{id}", t.family, t.revision))
}

/// The name the pause container of an awsvpc task is labelled with (as the ECS agent names it).
pub const PAUSE: &str = "~internal~ecs~pause";

/// The awsvpc pause container: owns the task's network namespace.
pub fn pause(t: &TaskInfo<'_>) -> ContainerSpec {
    let mut labels_map = BTreeMap::new();
    for (k, v) in [
        (labels::CLUSTER, t.cluster),
        (labels::TASK_ARN, t.task_arn),
        (labels::CONTAINER_NAME, PAUSE),
        (labels::FAMILY, t.family),
        (labels::INSTANCE, t.instance_id),
    ] {
        labels_map.insert(k.to_string(), v.to_string());
    }
    ContainerSpec {
        name: container_name(t, "internalecspause"),
        image: fleetport_runtime::pause::IMAGE.to_string(),
        labels: labels_map,
        network: Some(NetworkMode::Bridge),
        cpu_shares: Some(2),
        ..Default::default()
    }
}

/// `netns`: for awsvpc tasks, the pause container whose network namespace the container joins.
pub fn build(t: &TaskInfo<'_>, def: &Value, netns: Option<&str>) -> ContainerSpec {
    let name = def.get("name").and_then(Value::as_str).unwrap_or_default();
    let mut labels_map: BTreeMap<String, String> = def
        .get("dockerLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in [
        (labels::CLUSTER, t.cluster.to_string()),
        (labels::TASK_ARN, t.task_arn.to_string()),
        (labels::CONTAINER_NAME, name.to_string()),
        (labels::FAMILY, t.family.to_string()),
        (labels::VERSION, t.revision.to_string()),
        (labels::INSTANCE, t.instance_id.to_string()),
    ] {
        labels_map.insert(k.to_string(), v);
    }
    let env = def
        .get("environment")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e.get("name")?.as_str()?.to_string(),
                e.get("value")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ))
        })
        .collect();
    let network = match (t.network_mode, netns) {
        (_, Some(owner)) => NetworkMode::Container(owner.to_string()),
        ("host", _) => NetworkMode::Host,
        ("none", _) => NetworkMode::None,
        _ => NetworkMode::Bridge,
    };
    let ports = if network == NetworkMode::Bridge {
        def.get("portMappings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|pm| {
                Some(PortRequest {
                    container_port: u16::try_from(int(pm.get("containerPort"))?).ok()?,
                    host_port: int(pm.get("hostPort"))
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(0),
                    protocol: pm
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("tcp")
                        .to_string(),
                    host_ip: t.advertise.to_string(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let health_check = def.get("healthCheck").and_then(|h| {
        let test = strings(h.get("command"))?;
        Some(HealthCheck {
            test,
            interval_secs: int(h.get("interval")).unwrap_or(30),
            timeout_secs: int(h.get("timeout")).unwrap_or(5),
            retries: int(h.get("retries")).unwrap_or(3),
            start_period_secs: int(h.get("startPeriod")).unwrap_or(0),
        })
    });
    let ulimits = def
        .get("ulimits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|u| {
            Some(Ulimit {
                name: u.get("name")?.as_str()?.to_string(),
                soft: int(u.get("softLimit"))?,
                hard: int(u.get("hardLimit"))?,
            })
        })
        .collect();
    // Logs stay on the instance's disk, rotated: json-file unless the task asks for a driver the
    // engine has. awslogs has no CloudWatch here, so it is kept locally the same way.
    let log = def.get("logConfiguration");
    let requested = log
        .and_then(|l| l.get("logDriver"))
        .and_then(Value::as_str)
        .unwrap_or("json-file");
    let (log_driver, mut log_options) = match requested {
        "awslogs" | "awsfirelens" | "splunk" | "json-file" => {
            ("json-file".to_string(), BTreeMap::new())
        }
        other => (
            other.to_string(),
            log.and_then(|l| l.get("options"))
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
        ),
    };
    if log_driver == "json-file" {
        log_options.insert("max-size".into(), "10m".into());
        log_options.insert("max-file".into(), "3".into());
    }
    ContainerSpec {
        name: container_name(t, name),
        image: def
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        command: strings(def.get("command")).filter(|c| !c.is_empty()),
        entry_point: strings(def.get("entryPoint")).filter(|c| !c.is_empty()),
        env,
        working_dir: def
            .get("workingDirectory")
            .and_then(Value::as_str)
            .map(String::from),
        user: def.get("user").and_then(Value::as_str).map(String::from),
        // ECS gives containers without cpu 2 shares, the kernel's minimum.
        cpu_shares: Some(int(def.get("cpu")).unwrap_or(0).max(2)),
        memory_mib: int(def.get("memory")),
        memory_reservation_mib: int(def.get("memoryReservation")),
        ulimits,
        stop_timeout_secs: int(def.get("stopTimeout")),
        labels: labels_map,
        network: Some(network),
        ports,
        health_check,
        log_driver: Some(log_driver),
        log_options,
        // A container in another's network namespace takes that namespace's hostname.
        hostname: def
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|_| netns.is_none())
            .map(String::from),
    }
}
