//! RegisterTaskDefinition's validation and normalisation: the checks ECS applies (answered with
//! `ClientException` and ECS's own wording where it is known) and the defaults ECS fills in, so
//! the stored document is exactly what DescribeTaskDefinition echoes.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::error::{EcsResult, client};

/// Members of the TaskDefinition output that ECS computes rather than copies from the request.
const COMPUTED: &[&str] = &[
    "taskDefinitionArn",
    "revision",
    "status",
    "requiresAttributes",
    "compatibilities",
    "registeredAt",
    "deregisteredAt",
    "registeredBy",
    "deleteRequestedAt",
];

const TROUBLESHOOTING: &str =
    "For more information, see the Troubleshooting section of the Amazon ECS Developer Guide.";

/// Task-level `cpu`: integer units or `"<n> vCPU"`, normalised to units.
pub fn parse_cpu(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    if let Some(v) = t.strip_suffix("vcpu") {
        let f: f64 = v.trim().parse().ok()?;
        let units = f * 1024.0;
        (units.fract() == 0.0 && units > 0.0).then_some(units as u64)
    } else {
        t.parse().ok()
    }
}

/// Task-level `memory`: MiB or `"<n> GB"`, normalised to MiB.
pub fn parse_memory(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    if let Some(v) = t.strip_suffix("gb") {
        let f: f64 = v.trim().parse().ok()?;
        let mib = f * 1024.0;
        (mib.fract() == 0.0 && mib > 0.0).then_some(mib as u64)
    } else {
        t.parse().ok()
    }
}

/// The Fargate task sizes: cpu units → (min MiB, max MiB, step MiB).
fn fargate_memory_ok(cpu: u64, mem: u64) -> bool {
    let ranges: &[(u64, u64, u64)] = match cpu {
        256 => return [512, 1024, 2048].contains(&mem),
        512 => &[(1024, 4096, 1024)],
        1024 => &[(2048, 8192, 1024)],
        2048 => &[(4096, 16384, 1024)],
        4096 => &[(8192, 30720, 1024)],
        8192 => &[(16384, 61440, 4096)],
        16384 => &[(32768, 122880, 8192)],
        _ => return false,
    };
    ranges
        .iter()
        .any(|&(lo, hi, step)| mem >= lo && mem <= hi && (mem - lo).is_multiple_of(step))
}

fn str_of<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

fn int_of(m: &Map<String, Value>, key: &str) -> Option<i64> {
    m.get(key).and_then(Value::as_i64)
}

fn valid_container_name(name: &str) -> bool {
    crate::arn::valid_name(name)
}

/// What the task definition needs from where it runs.
struct Shape<'a> {
    network_mode: &'a str,
    cpu: Option<u64>,
    memory: Option<u64>,
}

fn uses_awslogs(containers: &[Map<String, Value>]) -> bool {
    containers.iter().any(|c| {
        c.get("logConfiguration")
            .and_then(|l| l.get("logDriver"))
            .and_then(Value::as_str)
            == Some("awslogs")
    })
}

fn fargate_problem(
    td: &Map<String, Value>,
    containers: &[Map<String, Value>],
    s: &Shape<'_>,
) -> Option<String> {
    if s.network_mode != "awsvpc" {
        return Some("Fargate only supports network mode 'awsvpc'.".into());
    }
    let Some(cpu) = s.cpu else {
        return Some("Fargate requires that 'cpu' be defined at the task level.".into());
    };
    let Some(mem) = s.memory else {
        return Some("Fargate requires that 'memory' be defined at the task level.".into());
    };
    if !fargate_memory_ok(cpu, mem) {
        return Some("No Fargate configuration exists for given values.".into());
    }
    if td.get("ipcMode").is_some_and(|v| !v.is_null()) {
        return Some("Tasks using the Fargate launch type do not support ipcMode.".into());
    }
    if str_of(td, "pidMode") == Some("host") {
        return Some("Tasks using the Fargate launch type do not support pidMode 'host'.".into());
    }
    if containers
        .iter()
        .any(|c| c.get("privileged") == Some(&Value::Bool(true)))
    {
        return Some(
            "Tasks using the Fargate launch type do not support privileged containers.".into(),
        );
    }
    if uses_awslogs(containers) && str_of(td, "executionRoleArn").is_none() {
        return Some("Fargate requires task definition to have execution role ARN to support log driver awslogs.".into());
    }
    None
}

fn external_problem(s: &Shape<'_>) -> Option<String> {
    (s.network_mode == "awsvpc").then(|| {
        "Tasks using the External launch type do not support network mode 'awsvpc'.".into()
    })
}

/// Validates a RegisterTaskDefinition input and returns the TaskDefinition document without
/// the identity members (ARN, revision, status, registration time), which the caller adds.
pub fn normalize(input: &Value) -> EcsResult<Map<String, Value>> {
    let model = fleetport_proto::model::ecs();
    let mut td = Map::new();
    if let (Some(shape), Value::Object(obj)) = (model.shape("TaskDefinition"), input) {
        for name in shape.members.keys() {
            if COMPUTED.contains(&name.as_str()) {
                continue;
            }
            if let Some(v) = obj.get(name).filter(|v| !v.is_null()) {
                td.insert(name.clone(), v.clone());
            }
        }
    }
    let family = str_of(&td, "family").unwrap_or("");
    if family.len() > 255 {
        return Err(client(
            "Family name is too long. The maximum is 255 characters.",
        ));
    }
    if !crate::arn::valid_name(family) {
        return Err(client("Family contains invalid characters."));
    }

    let cpu =
        match str_of(&td, "cpu") {
            Some(raw) => Some(parse_cpu(raw).ok_or_else(|| {
                client(format!("Invalid 'cpu' setting for task. {TROUBLESHOOTING}"))
            })?),
            None => None,
        };
    let memory = match str_of(&td, "memory") {
        Some(raw) => Some(parse_memory(raw).ok_or_else(|| {
            client(format!(
                "Invalid 'memory' setting for task. {TROUBLESHOOTING}"
            ))
        })?),
        None => None,
    };
    if let Some(c) = cpu {
        if !(128..=196_608).contains(&c) {
            return Err(client(format!(
                "Invalid 'cpu' setting for task. {TROUBLESHOOTING}"
            )));
        }
        td.insert("cpu".into(), Value::String(c.to_string()));
    }
    if let Some(m) = memory {
        if m < 6 {
            return Err(client(format!(
                "Invalid 'memory' setting for task. {TROUBLESHOOTING}"
            )));
        }
        td.insert("memory".into(), Value::String(m.to_string()));
    }

    let network_mode = str_of(&td, "networkMode").unwrap_or("bridge").to_string();
    let mut containers: Vec<Map<String, Value>> = Vec::new();
    for c in td
        .get("containerDefinitions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match c {
            Value::Object(m) => containers.push(m.clone()),
            _ => return Err(client("Container definitions must be objects.")),
        }
    }
    if containers.is_empty() {
        return Err(client("Container list cannot be empty."));
    }
    let mut names = HashSet::new();
    for c in &containers {
        let name = str_of(c, "name").unwrap_or("");
        if name.is_empty() {
            return Err(client("Container.name should not be null or empty."));
        }
        if !valid_container_name(name) {
            return Err(client(format!(
                "Container name '{name}' is invalid. Up to 255 letters (uppercase and lowercase), numbers, hyphens, and underscores are allowed."
            )));
        }
        if !names.insert(name.to_string()) {
            return Err(client(format!(
                "Duplicate container name '{name}'. Container names must be unique within a task definition."
            )));
        }
        if str_of(c, "image").unwrap_or("").trim().is_empty() {
            return Err(client("Container.image should not be null or empty."));
        }
    }

    let shape = Shape {
        network_mode: &network_mode,
        cpu,
        memory,
    };
    let required: Vec<String> = td
        .get("requiresCompatibilities")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let fargate = fargate_problem(&td, &containers, &shape);
    let external = external_problem(&shape);
    for r in &required {
        let problem = match r.as_str() {
            "FARGATE" => &fargate,
            "EXTERNAL" => &external,
            _ => &None,
        };
        if let Some(p) = problem {
            return Err(client(p.clone()));
        }
    }

    let volume_names: HashSet<String> = td
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let mut static_ports: HashSet<(i64, String)> = HashSet::new();
    let mut essential = 0;
    let mut cpu_sum = 0i64;
    let mut attributes: BTreeSet<String> = BTreeSet::new();
    let mut health_checked: HashSet<String> = HashSet::new();
    let mut essential_names: HashSet<String> = HashSet::new();
    for c in &mut containers {
        let name = str_of(c, "name").unwrap_or("").to_string();
        check_container(
            c,
            &name,
            memory,
            &network_mode,
            &volume_names,
            &names,
            &mut static_ports,
        )?;
        if c.get("essential").and_then(Value::as_bool).unwrap_or(true) {
            essential += 1;
            essential_names.insert(name.clone());
        }
        cpu_sum += int_of(c, "cpu").unwrap_or(0);
        if c.contains_key("healthCheck") {
            health_checked.insert(name.clone());
        }
        container_attributes(c, &mut attributes);
    }
    if essential == 0 {
        return Err(client(
            "Task definition doesn't have any essential container.",
        ));
    }
    if let Some(task_cpu) = cpu
        && cpu_sum > task_cpu as i64
    {
        return Err(client(
            "The sum of all container 'cpu' values cannot be greater than the value of the task 'cpu'.",
        ));
    }
    check_dependencies(&containers, &essential_names, &health_checked)?;

    // Launch types this definition is valid for, in the order ECS reports them.
    let mut compat = Vec::new();
    if external.is_none() {
        compat.push("EXTERNAL");
    }
    compat.push("EC2");
    if fargate.is_none() {
        compat.push("FARGATE");
    }
    if required.iter().any(|r| r == "MANAGED_INSTANCES") {
        compat.push("MANAGED_INSTANCES");
    }
    if str_of(&td, "taskRoleArn").is_some() {
        attributes.insert("com.amazonaws.ecs.capability.task-iam-role".into());
    }
    if network_mode == "awsvpc" {
        attributes.insert("ecs.capability.task-eni".into());
    }
    if str_of(&td, "executionRoleArn").is_some() && uses_awslogs(&containers) {
        attributes.insert("ecs.capability.execution-role-awslogs".into());
    }
    td.insert(
        "containerDefinitions".into(),
        Value::Array(containers.into_iter().map(Value::Object).collect()),
    );
    td.entry("volumes").or_insert_with(|| json!([]));
    td.entry("placementConstraints")
        .or_insert_with(|| json!([]));
    td.insert("compatibilities".into(), json!(compat));
    td.insert(
        "requiresAttributes".into(),
        Value::Array(attributes.into_iter().map(|a| json!({"name": a})).collect()),
    );
    Ok(td)
}

#[allow(clippy::too_many_arguments)]
fn check_container(
    c: &mut Map<String, Value>,
    name: &str,
    task_memory: Option<u64>,
    network_mode: &str,
    volumes: &HashSet<String>,
    containers: &HashSet<String>,
    static_ports: &mut HashSet<(i64, String)>,
) -> EcsResult<()> {
    let hard = int_of(c, "memory");
    let soft = int_of(c, "memoryReservation");
    if task_memory.is_none() && hard.is_none() && soft.is_none() {
        return Err(client(format!(
            "Invalid setting for container '{name}'. At least one of 'memory' or 'memoryReservation' must be specified."
        )));
    }
    if let (Some(h), Some(s)) = (hard, soft)
        && h < s
    {
        return Err(client(format!(
            "Invalid setting for container '{name}'. 'memory' must be greater than or equal to 'memoryReservation'."
        )));
    }
    for (field, v) in [("memory", hard), ("memoryReservation", soft)] {
        if let Some(v) = v
            && v < 6
        {
            return Err(client(format!(
                "Invalid '{field}' setting for container '{name}'. The minimum is 6 MiB."
            )));
        }
    }
    if let (Some(h), Some(t)) = (hard, task_memory)
        && h as u64 > t
    {
        return Err(client(format!(
            "Invalid setting for container '{name}'. 'memory' must not be greater than the task 'memory'."
        )));
    }
    if int_of(c, "cpu").is_some_and(|v| v < 0) {
        return Err(client(format!(
            "Invalid 'cpu' setting for container '{name}'."
        )));
    }
    c.entry("cpu").or_insert(json!(0));
    c.entry("essential").or_insert(json!(true));
    for list in [
        "portMappings",
        "environment",
        "mountPoints",
        "volumesFrom",
        "systemControls",
    ] {
        c.entry(list).or_insert_with(|| json!([]));
    }
    normalize_ports(c, name, network_mode, static_ports)?;
    if c.get("links")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty())
        && network_mode != "bridge"
    {
        return Err(client(format!(
            "Links are not supported when networkMode={network_mode}."
        )));
    }
    for mp in c
        .get("mountPoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let source = mp.get("sourceVolume").and_then(Value::as_str).unwrap_or("");
        if !volumes.contains(source) {
            return Err(client(format!(
                "Invalid 'mountPoints' setting for container '{name}': sourceVolume '{source}' is not a volume of this task definition."
            )));
        }
    }
    for vf in c
        .get("volumesFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let source = vf
            .get("sourceContainer")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !containers.contains(source) || source == name {
            return Err(client(format!(
                "Invalid 'volumesFrom' setting for container '{name}': sourceContainer '{source}' is not another container of this task definition."
            )));
        }
    }
    if let Some(Value::Object(hc)) = c.get_mut("healthCheck") {
        check_health(hc, name)?;
    }
    if let Some(log) = c.get("logConfiguration")
        && log.get("logDriver").and_then(Value::as_str) == Some("awslogs")
    {
        let opts = log.get("options");
        let missing: Vec<&str> = ["awslogs-region", "awslogs-group"]
            .into_iter()
            .filter(|k| opts.and_then(|o| o.get(*k)).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(client(format!(
                "Log driver awslogs requires options: {}",
                missing.join(", ")
            )));
        }
    }
    Ok(())
}

fn normalize_ports(
    c: &mut Map<String, Value>,
    name: &str,
    network_mode: &str,
    static_ports: &mut HashSet<(i64, String)>,
) -> EcsResult<()> {
    let Some(Value::Array(mappings)) = c.get_mut("portMappings") else {
        return Ok(());
    };
    if network_mode == "none" && !mappings.is_empty() {
        return Err(client(
            "Port mappings are not supported when networkMode=none.",
        ));
    }
    for pm in mappings.iter_mut() {
        let Value::Object(pm) = pm else { continue };
        let protocol = pm
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("tcp")
            .to_string();
        pm.insert("protocol".into(), Value::String(protocol.clone()));
        if pm.contains_key("containerPortRange") {
            if pm.contains_key("hostPort") || pm.contains_key("containerPort") {
                return Err(client(format!(
                    "Invalid port mapping for container '{name}': containerPortRange cannot be combined with containerPort or hostPort."
                )));
            }
            continue;
        }
        let Some(cp) = int_of(pm, "containerPort") else {
            return Err(client(format!(
                "Invalid port mapping for container '{name}': containerPort is required."
            )));
        };
        if !(1..=65535).contains(&cp) {
            return Err(client(format!(
                "Invalid 'containerPort' setting for container '{name}'."
            )));
        }
        let host = int_of(pm, "hostPort");
        if host.is_some_and(|h| !(0..=65535).contains(&h)) {
            return Err(client(format!(
                "Invalid 'hostPort' setting for container '{name}'."
            )));
        }
        let host = match network_mode {
            "awsvpc" | "host" => {
                if host.is_some_and(|h| h != cp && h != 0) {
                    return Err(client(format!(
                        "When networkMode={network_mode}, the host ports and container ports in port mappings must match."
                    )));
                }
                cp
            }
            _ => host.unwrap_or(0),
        };
        pm.insert("hostPort".into(), json!(host));
        if host != 0 && !static_ports.insert((host, protocol.clone())) {
            return Err(client(format!(
                "Invalid port mappings: host port {host}/{protocol} is mapped more than once in the task definition."
            )));
        }
    }
    Ok(())
}

fn check_health(hc: &mut Map<String, Value>, name: &str) -> EcsResult<()> {
    let command: Vec<&str> = hc
        .get("command")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !matches!(command.first(), Some(&"CMD") | Some(&"CMD-SHELL")) || command.len() < 2 {
        return Err(client(format!(
            "Invalid 'healthCheck' setting for container '{name}': the command must start with CMD or CMD-SHELL followed by the command to run."
        )));
    }
    for (field, lo, hi, default) in [
        ("interval", 5, 300, Some(30)),
        ("timeout", 2, 60, Some(5)),
        ("retries", 1, 10, Some(3)),
        ("startPeriod", 0, 300, None),
    ] {
        match int_of(hc, field) {
            Some(v) if !(lo..=hi).contains(&v) => {
                return Err(client(format!(
                    "Invalid 'healthCheck' setting for container '{name}': '{field}' must be between {lo} and {hi}."
                )));
            }
            Some(_) => {}
            None => {
                if let Some(d) = default {
                    hc.insert(field.into(), json!(d));
                }
            }
        }
    }
    Ok(())
}

fn check_dependencies(
    containers: &[Map<String, Value>],
    essential: &HashSet<String>,
    health: &HashSet<String>,
) -> EcsResult<()> {
    let mut edges: HashMap<String, Vec<String>> = HashMap::new();
    let names: HashSet<&str> = containers
        .iter()
        .filter_map(|c| str_of(c, "name"))
        .collect();
    for c in containers {
        let name = str_of(c, "name").unwrap_or("");
        for dep in c
            .get("dependsOn")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let target = dep
                .get("containerName")
                .and_then(Value::as_str)
                .unwrap_or("");
            let condition = dep.get("condition").and_then(Value::as_str).unwrap_or("");
            if !names.contains(target) || target == name {
                return Err(client(format!(
                    "Invalid 'dependsOn' setting for container '{name}': container '{target}' is not another container of this task definition."
                )));
            }
            if matches!(condition, "COMPLETE" | "SUCCESS") && essential.contains(target) {
                return Err(client(
                    "A dependency container with SUCCESS or COMPLETE condition cannot be an essential container",
                ));
            }
            if condition == "HEALTHY" && !health.contains(target) {
                return Err(client(format!(
                    "Invalid 'dependsOn' setting for container '{name}': condition HEALTHY requires container '{target}' to define a healthCheck."
                )));
            }
            edges
                .entry(name.to_string())
                .or_default()
                .push(target.to_string());
        }
    }
    // A cycle would deadlock the start order.
    fn visit(
        n: &str,
        edges: &HashMap<String, Vec<String>>,
        state: &mut HashMap<String, u8>,
    ) -> bool {
        match state.get(n) {
            Some(1) => return false,
            Some(2) => return true,
            _ => {}
        }
        state.insert(n.to_string(), 1);
        for next in edges.get(n).into_iter().flatten() {
            if !visit(next, edges, state) {
                return false;
            }
        }
        state.insert(n.to_string(), 2);
        true
    }
    let mut state = HashMap::new();
    for n in edges.keys() {
        if !visit(n, &edges, &mut state) {
            return Err(client(
                "Invalid 'dependsOn' settings: the container dependencies form a cycle.",
            ));
        }
    }
    Ok(())
}

fn container_attributes(c: &Map<String, Value>, out: &mut BTreeSet<String>) {
    let api = |v: &str| format!("com.amazonaws.ecs.capability.docker-remote-api.{v}");
    if c.get("dockerLabels")
        .is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty()))
    {
        out.insert(api("1.18"));
    }
    if c.contains_key("memoryReservation") {
        out.insert(api("1.21"));
    }
    if c.contains_key("healthCheck") {
        out.insert(api("1.24"));
        out.insert("ecs.capability.container-health-check".into());
    }
    if c.get("dependsOn")
        .and_then(Value::as_array)
        .is_some_and(|d| !d.is_empty())
    {
        out.insert("ecs.capability.container-ordering".into());
    }
    if let Some(driver) = c
        .get("logConfiguration")
        .and_then(|l| l.get("logDriver"))
        .and_then(Value::as_str)
    {
        out.insert(format!(
            "com.amazonaws.ecs.capability.logging-driver.{driver}"
        ));
        if driver == "awslogs" {
            out.insert(api("1.19"));
        }
    }
    for s in c
        .get("secrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let from = s.get("valueFrom").and_then(Value::as_str).unwrap_or("");
        out.insert(if from.contains(":secretsmanager:") {
            "ecs.capability.secrets.asm.environment-variables".into()
        } else {
            "ecs.capability.secrets.ssm.environment-variables".into()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(v: Value) -> EcsResult<Map<String, Value>> {
        normalize(&v)
    }

    fn msg(v: Value) -> String {
        td(v).unwrap_err().message
    }

    #[test]
    fn seed_definition_gets_ecs_defaults() {
        let out = td(json!({"family": "web", "requiresCompatibilities": ["EC2"], "containerDefinitions": [
            {"name": "web", "image": "localhost:4566/web:1", "memory": 256, "portMappings": [{"containerPort": 3000}]}]}))
        .unwrap();
        let c = &out["containerDefinitions"][0];
        assert_eq!(c["essential"], true);
        assert_eq!(c["cpu"], 0);
        assert_eq!(
            c["portMappings"][0],
            json!({"containerPort": 3000, "hostPort": 0, "protocol": "tcp"})
        );
        assert_eq!(c["environment"], json!([]));
        assert_eq!(out["compatibilities"], json!(["EXTERNAL", "EC2"]));
        assert_eq!(out["volumes"], json!([]));
        assert!(out.get("networkMode").is_none());
    }

    #[test]
    fn fargate_rules() {
        let base = |cpu: Option<&str>, mem: Option<&str>, mode: &str| {
            let mut v = json!({"family": "api", "requiresCompatibilities": ["FARGATE"], "networkMode": mode,
                "containerDefinitions": [{"name": "a", "image": "i"}]});
            if let Some(c) = cpu {
                v["cpu"] = json!(c);
            }
            if let Some(m) = mem {
                v["memory"] = json!(m);
            }
            v
        };
        assert_eq!(
            msg(base(Some("256"), Some("512"), "bridge")),
            "Fargate only supports network mode 'awsvpc'."
        );
        assert_eq!(
            msg(base(None, Some("512"), "awsvpc")),
            "Fargate requires that 'cpu' be defined at the task level."
        );
        assert_eq!(
            msg(base(Some("256"), Some("4096"), "awsvpc")),
            "No Fargate configuration exists for given values."
        );
        let ok = td(base(Some(".25 vcpu"), Some("0.5GB"), "awsvpc")).unwrap();
        assert_eq!(
            (ok["cpu"].as_str(), ok["memory"].as_str()),
            (Some("256"), Some("512"))
        );
        assert_eq!(ok["compatibilities"], json!(["EC2", "FARGATE"]));
        assert!(
            ok["requiresAttributes"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "ecs.capability.task-eni"}))
        );
    }

    #[test]
    fn container_rules() {
        let one = |c: Value| json!({"family": "f", "containerDefinitions": [c]});
        assert_eq!(
            msg(one(json!({"name": "a", "image": "i"}))),
            "Invalid setting for container 'a'. At least one of 'memory' or 'memoryReservation' must be specified."
        );
        assert_eq!(
            msg(one(
                json!({"name": "a", "image": "i", "memory": 64, "memoryReservation": 128})
            )),
            "Invalid setting for container 'a'. 'memory' must be greater than or equal to 'memoryReservation'."
        );
        assert_eq!(
            msg(one(
                json!({"name": "a", "image": "i", "memory": 64, "essential": false})
            )),
            "Task definition doesn't have any essential container."
        );
        assert_eq!(
            msg(json!({"family": "f", "containerDefinitions": []})),
            "Container list cannot be empty."
        );
        assert_eq!(
            msg(json!({"family": "bad name", "containerDefinitions": []})),
            "Family contains invalid characters."
        );
        assert_eq!(
            msg(
                json!({"family": "f", "networkMode": "awsvpc", "containerDefinitions": [{"name": "a", "image": "i", "memory": 64, "portMappings": [{"containerPort": 80, "hostPort": 81}]}]})
            ),
            "When networkMode=awsvpc, the host ports and container ports in port mappings must match."
        );
        let deps = json!({"family": "f", "containerDefinitions": [
            {"name": "a", "image": "i", "memory": 64, "dependsOn": [{"containerName": "b", "condition": "COMPLETE"}]},
            {"name": "b", "image": "i", "memory": 64}]});
        assert_eq!(
            msg(deps),
            "A dependency container with SUCCESS or COMPLETE condition cannot be an essential container"
        );
        let cycle = json!({"family": "f", "containerDefinitions": [
            {"name": "a", "image": "i", "memory": 64, "dependsOn": [{"containerName": "b", "condition": "START"}]},
            {"name": "b", "image": "i", "memory": 64, "dependsOn": [{"containerName": "a", "condition": "START"}]}]});
        assert!(msg(cycle).contains("cycle"));
    }

    #[test]
    fn health_check_defaults() {
        let out = td(
            json!({"family": "f", "containerDefinitions": [{"name": "a", "image": "i", "memory": 64,
            "healthCheck": {"command": ["CMD-SHELL", "true"]}}]}),
        )
        .unwrap();
        let hc = &out["containerDefinitions"][0]["healthCheck"];
        assert_eq!(
            (
                hc["interval"].as_i64(),
                hc["timeout"].as_i64(),
                hc["retries"].as_i64()
            ),
            (Some(30), Some(5), Some(3))
        );
    }
}
