//! The service API: CreateService, UpdateService, DeleteService, DescribeServices, ListServices,
//! ListServicesByNamespace, and the service deployment and revision operations. Handlers check
//! the request as ECS does, write desired state and wake the scheduler; they start no task.

use fleetport_proto::{AwsError, input, paging};
use fleetport_store::{Abort, ReadTxn, ReadTxnExt, WriteTxnExt};
use serde_json::{Value, json};

use super::{
    ACTIVE, COLLECTION, DRAINING, Deployment, DeploymentConfig, INACTIVE, Progress, Revision,
    ServiceRecord, key, new_deployment_id, new_number,
};
use crate::Ecs;
use crate::capacity::{self, Capacity};
use crate::cluster::ClusterRecord;
use crate::error::{EcsResult, client, invalid, store};

fn not_found() -> AwsError {
    AwsError::client("ServiceNotFoundException", "Service not found.")
}

fn not_active() -> AwsError {
    AwsError::client("ServiceNotActiveException", "Service was not ACTIVE.")
}

fn int(input: &Value, member: &str) -> Option<i64> {
    input.get(member).and_then(Value::as_i64)
}

/// `service/<cluster>/<name>` (or the old `service/<name>`) or a bare name → the name.
fn service_name(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

const STRATEGIES_LATER: &str = "Fleetport supports the ROLLING deployment strategy; BLUE_GREEN, LINEAR and CANARY are not available yet.";

/// Reads `deploymentConfiguration` over `base` (UpdateService keeps what it does not name).
fn deployment_config(
    input: &Value,
    daemon: bool,
    base: Option<&DeploymentConfig>,
) -> EcsResult<DeploymentConfig> {
    let dc = input.get("deploymentConfiguration");
    let mut cfg = base.cloned().unwrap_or(DeploymentConfig {
        maximum_percent: if daemon { 100 } else { 200 },
        minimum_healthy_percent: if daemon { 0 } else { 100 },
        breaker_enable: false,
        breaker_rollback: false,
        threshold_type: "BOUNDED_PERCENT".into(),
        threshold_value: 50.0,
        reset_on_healthy_task: true,
        echo: json!({}),
    });
    let Some(dc) = dc else { return Ok(cfg) };
    if let Some(strategy) = input::string(dc, "strategy")
        && strategy != "ROLLING"
    {
        return Err(invalid(STRATEGIES_LATER));
    }
    if let Some(m) = int(dc, "maximumPercent") {
        if !(0..=2000).contains(&m) {
            return Err(invalid("maximumPercent must be between 0 and 2000."));
        }
        cfg.maximum_percent = m as u32;
    }
    if let Some(m) = int(dc, "minimumHealthyPercent") {
        if !(0..=100).contains(&m) {
            return Err(invalid("minimumHealthyPercent must be between 0 and 100."));
        }
        cfg.minimum_healthy_percent = m as u32;
    }
    if daemon && cfg.maximum_percent > 100 {
        return Err(invalid(
            "The daemon scheduling strategy does not support values above 100 for maximumPercent on a deployment configuration. Change the maximumPercent value to 100, and try again",
        ));
    }
    if let Some(cb) = dc.get("deploymentCircuitBreaker") {
        cfg.breaker_enable = cb.get("enable").and_then(Value::as_bool).unwrap_or(false);
        cfg.breaker_rollback = cb.get("rollback").and_then(Value::as_bool).unwrap_or(false);
        if let Some(r) = cb.get("resetOnHealthyTask").and_then(Value::as_bool) {
            cfg.reset_on_healthy_task = r;
        }
        if let Some(t) = cb.get("thresholdConfiguration") {
            let ty = input::string(t, "type").unwrap_or("BOUNDED_PERCENT");
            if !matches!(ty, "COUNT" | "BOUNDED_PERCENT" | "UNBOUNDED_PERCENT") {
                return Err(invalid(format!(
                    "Invalid thresholdConfiguration type '{ty}'."
                )));
            }
            let v = t.get("value").and_then(Value::as_f64).unwrap_or(50.0);
            if v <= 0.0 {
                return Err(invalid(
                    "The circuit breaker threshold value must be greater than 0.",
                ));
            }
            cfg.threshold_type = ty.into();
            cfg.threshold_value = v;
        }
    }
    let mut echo = serde_json::Map::new();
    for k in ["alarms", "strategy", "bakeTimeInMinutes", "lifecycleHooks"] {
        if let Some(v) = dc.get(k) {
            echo.insert(k.into(), v.clone());
        }
    }
    cfg.echo = Value::Object(echo);
    Ok(cfg)
}

/// Checks the load balancers of a service against its task definition and the target groups.
fn check_load_balancers(
    lbs: &[Value],
    td: &Value,
    mode: &str,
    groups: &dyn super::lb::LoadBalancing,
) -> EcsResult<Vec<Value>> {
    if lbs.len() > 5 {
        return Err(invalid("A service can have at most 5 load balancers."));
    }
    let defs = td
        .get("containerDefinitions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for lb in lbs {
        if lb.get("loadBalancerName").is_some() {
            return Err(invalid(
                "Classic Load Balancers are not supported by Fleetport; use a target group of an Application or Network Load Balancer.",
            ));
        }
        let Some(tg) = input::string(lb, "targetGroupArn") else {
            return Err(invalid("targetGroupArn can not be blank."));
        };
        let container = input::string(lb, "containerName").unwrap_or("");
        if container.is_empty() {
            return Err(invalid("Container Name can not be blank."));
        }
        let Some(port) = int(lb, "containerPort") else {
            return Err(invalid("Container Port can not be blank."));
        };
        let Some(def) = defs
            .iter()
            .find(|d| d.get("name").and_then(Value::as_str) == Some(container))
        else {
            return Err(invalid(format!(
                "The container {container} does not exist in the task definition."
            )));
        };
        let has_port = def
            .get("portMappings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|pm| pm.get("containerPort").and_then(Value::as_i64) == Some(port));
        if !has_port {
            return Err(invalid(format!(
                "The container {container} did not have a container port {port} defined."
            )));
        }
        let Some(info) = groups.target_group(tg) else {
            return Err(invalid(format!(
                "The target group with targetGroupArn {tg} does not exist."
            )));
        };
        if !info.has_load_balancer {
            return Err(invalid(format!(
                "The target group with targetGroupArn {tg} does not have an associated load balancer."
            )));
        }
        let wants = if mode == "awsvpc" { "ip" } else { "instance" };
        if info.target_type != wants {
            return Err(invalid(format!(
                "The provided target group {tg} has target type {}, which is incompatible with the {mode} network mode specified in the task definition.",
                info.target_type
            )));
        }
        if seen.contains(&tg) {
            return Err(invalid(format!("Duplicate targetGroupArn found: {tg}")));
        }
        seen.push(tg);
        out.push(json!({"targetGroupArn": tg, "containerName": container, "containerPort": port}));
    }
    Ok(out)
}

/// The members of a request that make up a revision, before they are checked.
struct Wanted {
    capacity: Capacity,
    platform_version: Option<String>,
    network: Option<Value>,
    load_balancers: Vec<Value>,
    registries: Vec<Value>,
}

/// What a deployment would run, checked: capacity, network and load balancers against `td`.
fn revision(
    cluster: &ClusterRecord,
    td: &Value,
    wanted: Wanted,
    groups: &dyn super::lb::LoadBalancing,
) -> EcsResult<Revision> {
    let Wanted {
        capacity,
        platform_version,
        network,
        load_balancers: lbs,
        registries,
    } = wanted;
    let t = crate::task::template(cluster, td, capacity.launch_type(), &json!({}), 0.0, true)?;
    let mode = t.task.network_mode.clone();
    if mode == "awsvpc" {
        crate::task::awsvpc_subnet(&mode, network.as_ref())?;
        if let Some(ip) = network
            .as_ref()
            .and_then(|n| n.pointer("/awsvpcConfiguration/assignPublicIp"))
            .and_then(Value::as_str)
            && ip != "ENABLED"
            && ip != "DISABLED"
        {
            return Err(invalid("assignPublicIp must be ENABLED or DISABLED."));
        }
    } else if network.is_some() {
        return Err(invalid(
            "Network Configuration is not valid for the given networkMode of this task definition.",
        ));
    }
    if let Some(pv) = &platform_version {
        if capacity.launch_type() != crate::task::MANAGED {
            return Err(invalid(
                "The platformVersion parameter is only valid for the FARGATE launch type.",
            ));
        }
        if pv != "LATEST" && pv != "1.4.0" {
            return Err(AwsError::client(
                "PlatformUnknownException",
                format!("The specified platform version {pv} does not exist."),
            ));
        }
    }
    if !registries.is_empty() {
        return Err(invalid(
            "Service discovery (serviceRegistries) is not available in Fleetport yet.",
        ));
    }
    let load_balancers = check_load_balancers(&lbs, td, &mode, groups)?;
    Ok(Revision {
        task_definition: td
            .get("taskDefinitionArn")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        capacity,
        platform_version,
        network_configuration: network,
        load_balancers,
        service_registries: Vec::new(),
        container_images: Vec::new(),
    })
}

fn check_placement(input: &Value, daemon: bool) -> EcsResult<(Vec<Value>, Vec<Value>)> {
    let constraints = input::items(input, "placementConstraints");
    let strategy = input::items(input, "placementStrategy");
    if constraints.len() > 10 {
        return Err(invalid(
            "A service can have at most 10 placement constraints.",
        ));
    }
    if strategy.len() > 5 {
        return Err(invalid(
            "A service can have at most 5 placement strategies.",
        ));
    }
    if daemon && !strategy.is_empty() {
        return Err(invalid(
            "The daemon scheduling strategy does not support placement strategies. Remove the placement strategy and try again",
        ));
    }
    crate::placement::parse_constraints(&constraints)?;
    let strategy = crate::placement::parse_strategies(&json!({"placementStrategy": strategy}))
        .map(|_| input::items(input, "placementStrategy"))?;
    Ok((constraints, strategy))
}

fn check_misc(input: &Value) -> EcsResult<()> {
    if let Some(g) = input.get("healthCheckGracePeriodSeconds") {
        match g.as_i64() {
            Some(v) if (0..=2_147_483_647).contains(&v) => {}
            _ => {
                return Err(invalid(
                    "healthCheckGracePeriodSeconds must be between 0 and 2147483647.",
                ));
            }
        }
    }
    if let Some(p) = input::string(input, "propagateTags")
        && !matches!(p, "TASK_DEFINITION" | "SERVICE" | "NONE")
    {
        return Err(invalid(format!("Invalid propagateTags value '{p}'.")));
    }
    if let Some(r) = input::string(input, "availabilityZoneRebalancing")
        && !matches!(r, "ENABLED" | "DISABLED")
    {
        return Err(invalid(format!(
            "Invalid availabilityZoneRebalancing value '{r}'."
        )));
    }
    if let Some(c) = input.get("deploymentController") {
        let ty = input::string(c, "type").unwrap_or("ECS");
        if ty != "ECS" {
            return Err(invalid(format!(
                "Fleetport supports the ECS deployment controller; {ty} is not available."
            )));
        }
    }
    Ok(())
}

impl ServiceRecord {
    /// Starts a new PRIMARY deployment of `revision`; the previous ones keep draining as ACTIVE.
    pub fn deploy(&mut self, revision: Revision, now: f64) {
        let sources: Vec<String> = self.deployments.iter().map(|d| d.id.clone()).collect();
        for d in &mut self.deployments {
            if d.status == "PRIMARY" {
                d.status = "ACTIVE".into();
                d.updated_at = now;
            }
            if d.finished_at.is_none() && d.service_deployment_status == "IN_PROGRESS" {
                d.service_deployment_status = "STOPPED".into();
                d.status_reason = Some("Superseded by a newer service deployment.".into());
                d.finished_at = Some(now);
            }
        }
        let number = new_number();
        let id = format!("ecs-svc/{number}");
        self.deployments.insert(
            0,
            Deployment {
                rollout_state_reason: format!("ECS deployment {id} in progress."),
                id,
                status: "PRIMARY".into(),
                revision: revision.clone(),
                desired_count: if self.is_daemon() {
                    0
                } else {
                    self.desired_count
                },
                running_count: 0,
                pending_count: 0,
                failed_tasks: 0,
                created_at: now,
                updated_at: now,
                rollout_state: "IN_PROGRESS".into(),
                service_deployment_id: new_deployment_id(),
                service_deployment_status: "IN_PROGRESS".into(),
                status_reason: None,
                finished_at: None,
                sources,
                rollback_of: None,
                config: self.deployment_config.clone(),
            },
        );
        self.revision = revision;
        self.progress.start_failures = 0;
        self.progress.backoff_at_failures = 0;
        self.progress.backoff_until = 0.0;
        self.progress.steady_since = 0.0;
    }
}

impl ServiceRecord {
    /// Rolls the PRIMARY deployment `failed` (index) back to `target`'s revision: a new PRIMARY
    /// that belongs to the same service deployment, whose status becomes ROLLBACK_IN_PROGRESS.
    pub fn roll_back(&mut self, failed: usize, target: &Deployment, reason: String, now: f64) {
        let failed_id = self.deployments[failed].id.clone();
        let sd = self.deployments[failed].service_deployment_id.clone();
        let status_reason = self.deployments[failed].status_reason.clone();
        self.deploy(target.revision.clone(), now);
        // deploy() moved the failed one to ACTIVE and marked it superseded; it is rolling back.
        if let Some(old) = self.deployments.iter_mut().find(|d| d.id == failed_id) {
            old.service_deployment_status = "ROLLBACK_IN_PROGRESS".into();
            old.finished_at = None;
            old.status_reason = status_reason;
        }
        let new = &mut self.deployments[0];
        new.service_deployment_id = sd;
        new.service_deployment_status = "ROLLBACK_IN_PROGRESS".into();
        new.rollback_of = Some(failed_id);
        new.rollout_state_reason = reason.clone();
        // Kept for the service deployment's `rollback.reason` after the rollout completes.
        new.status_reason = Some(reason);
        let name = self.name.clone();
        self.event(super::events::rolling_back(&name, &target.id), now);
    }
}

impl Ecs {
    fn service_arn(&self, cluster: &str, name: &str) -> String {
        self.scope.arn(&format!("service/{cluster}/{name}"))
    }

    fn task_definition(&self, txn: &dyn ReadTxn, reference: &str) -> EcsResult<Value> {
        if reference.is_empty() {
            return Err(invalid("taskDefinition can not be blank."));
        }
        let td = self
            .find_task_definition(txn, reference)
            .map_err(store)?
            .ok_or_else(|| client("TaskDefinition not found."))?;
        if td.get("status").and_then(Value::as_str) != Some("ACTIVE") {
            return Err(invalid("TaskDefinition is inactive"));
        }
        Ok(td)
    }

    pub async fn create_service(&self, input: Value) -> EcsResult<Value> {
        let name = input::owned(&input, "serviceName");
        if !crate::arn::valid_name(&name) {
            return Err(invalid(
                "Service name must be 1-255 characters: letters, numbers, hyphens and underscores.",
            ));
        }
        if let Some(t) = input::string(&input, "clientToken")
            && (t.is_empty() || t.len() > 36)
        {
            return Err(invalid("clientToken must be 1-36 characters."));
        }
        let daemon = match input::string(&input, "schedulingStrategy").unwrap_or("REPLICA") {
            "REPLICA" => false,
            "DAEMON" => true,
            other => return Err(invalid(format!("Invalid schedulingStrategy '{other}'."))),
        };
        check_misc(&input)?;
        let desired = match (daemon, int(&input, "desiredCount")) {
            (true, Some(_)) => {
                return Err(invalid(
                    "The daemon scheduling strategy does not support a desired count for services. Remove the desired count value and try again",
                ));
            }
            (true, None) => 0,
            (false, None) => {
                return Err(invalid(
                    "desiredCount is required for services with the REPLICA scheduling strategy.",
                ));
            }
            (false, Some(n)) if !(0..=5000).contains(&n) => {
                return Err(invalid("The desired count must be between 0 and 5000."));
            }
            (false, Some(n)) => n as u32,
        };
        let config = deployment_config(&input, daemon, None)?;
        let (constraints, strategy) = check_placement(&input, daemon)?;
        let tags = crate::tags::parse(&input, "tags")?;
        let groups = self.lb.get();
        let now = crate::now();
        let (cluster, rev) = crate::error::read(&*self.store, |txn| {
            let cluster = self.active_cluster(txn, input::string(&input, "cluster"))?;
            let td =
                self.task_definition(txn, input::string(&input, "taskDefinition").unwrap_or(""))?;
            let strategy_items = input
                .get("capacityProviderStrategy")
                .map(|_| input::items(&input, "capacityProviderStrategy"));
            if daemon
                && (strategy_items.is_some()
                    || (input.get("launchType").is_none()
                        && !cluster.default_capacity_provider_strategy.is_empty()))
            {
                return Err(invalid(
                    "Specifying a capacity provider strategy is not supported when you create a service using the DAEMON scheduling strategy.",
                ));
            }
            let cap = capacity::resolve(
                input::string(&input, "launchType"),
                strategy_items,
                &cluster,
                false,
            )?;
            if daemon && cap.launch_type() == crate::task::MANAGED {
                return Err(invalid(
                    "The daemon scheduling strategy is not supported with the FARGATE launch type.",
                ));
            }
            let wanted = Wanted {
                capacity: cap,
                platform_version: input::string(&input, "platformVersion").map(String::from),
                network: input.get("networkConfiguration").cloned(),
                load_balancers: input::items(&input, "loadBalancers"),
                registries: input::items(&input, "serviceRegistries"),
            };
            let rev = revision(&cluster, &td, wanted, &*groups)?;
            Ok((cluster, rev))
        })?;
        let mut fp = input.clone();
        if let Value::Object(o) = &mut fp {
            o.remove("clientToken");
            o.remove("cluster");
        }
        let mut svc = ServiceRecord {
            arn: self.service_arn(&cluster.name, &name),
            name: name.clone(),
            cluster: cluster.name.clone(),
            cluster_arn: cluster.arn.clone(),
            status: ACTIVE.into(),
            desired_count: desired,
            scheduling_strategy: if daemon { "DAEMON" } else { "REPLICA" }.into(),
            revision: rev.clone(),
            deployment_config: config,
            placement_constraints: constraints,
            placement_strategy: strategy,
            health_check_grace_period: int(&input, "healthCheckGracePeriodSeconds").unwrap_or(0)
                as u64,
            propagate_tags: input::string(&input, "propagateTags").unwrap_or("NONE").into(),
            enable_ecs_managed_tags: input
                .get("enableECSManagedTags")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            enable_execute_command: input
                .get("enableExecuteCommand")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            availability_zone_rebalancing: input::string(&input, "availabilityZoneRebalancing")
                .unwrap_or("ENABLED")
                .into(),
            role_arn: input::string(&input, "role").map(String::from).unwrap_or_else(|| {
                format!(
                    "arn:aws:iam::{}:role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS",
                    self.scope.account
                )
            }),
            created_at: now,
            created_by: format!("arn:aws:iam::{}:root", self.scope.account),
            client_token: input::string(&input, "clientToken").map(String::from),
            fingerprint: fp.to_string(),
            deployments: Vec::new(),
            history: Vec::new(),
            events: Vec::new(),
            running_count: 0,
            pending_count: 0,
            progress: Progress::default(),
            version: 1,
            deleted_at: None,
        };
        svc.deploy(rev, now);
        let k = key(&cluster.name, &name);
        let saved = crate::error::write(&*self.store, move |txn| {
            crate::task::recheck_cluster(txn, &svc.cluster)?;
            if let Some(old) = txn.get_json::<ServiceRecord>(COLLECTION, &k)? {
                match old.status.as_str() {
                    ACTIVE => {
                        let same_token =
                            old.client_token.is_some() && old.client_token == svc.client_token;
                        if same_token || old.fingerprint == svc.fingerprint {
                            return Ok(old);
                        }
                        return Err(Abort::Domain(invalid(
                            "Creation of service was not idempotent.",
                        )));
                    }
                    DRAINING => {
                        return Err(Abort::Domain(invalid(
                            "Unable to Start a service that is still Draining.",
                        )));
                    }
                    _ => {
                        crate::tags::set(txn, &old.arn, &[])?;
                    }
                }
            }
            txn.put_json(COLLECTION, &k, &svc)?;
            if !tags.is_empty() {
                crate::tags::merge(txn, &svc.arn, &tags)?;
            }
            Ok(svc)
        })
        .await?;
        self.nudge();
        Ok(json!({"service": saved.render(&self.scope, None)}))
    }

    fn load_service(
        &self,
        txn: &dyn ReadTxn,
        input: &Value,
    ) -> EcsResult<(ClusterRecord, ServiceRecord)> {
        let cluster = self.active_cluster(txn, input::string(input, "cluster"))?;
        let name = service_name(input::string(input, "service").unwrap_or(""));
        let svc = txn
            .get_json::<ServiceRecord>(COLLECTION, &key(&cluster.name, name))
            .map_err(store)?
            .ok_or_else(not_found)?;
        Ok((cluster, svc))
    }

    pub async fn update_service(&self, input: Value) -> EcsResult<Value> {
        check_misc(&input)?;
        let groups = self.lb.get();
        let now = crate::now();
        let svc = crate::error::read(&*self.store, |txn| {
            let (cluster, mut svc) = self.load_service(txn, &input)?;
            if svc.status != ACTIVE {
                return Err(not_active());
            }
            let daemon = svc.is_daemon();
            if let Some(n) = int(&input, "desiredCount") {
                if daemon {
                    return Err(invalid(
                        "The daemon scheduling strategy does not support a desired count for services. Remove the desired count value and try again",
                    ));
                }
                if !(0..=5000).contains(&n) {
                    return Err(invalid("The desired count must be between 0 and 5000."));
                }
                svc.desired_count = n as u32;
            }
            svc.deployment_config =
                deployment_config(&input, daemon, Some(&svc.deployment_config))?;
            if input.get("placementConstraints").is_some()
                || input.get("placementStrategy").is_some()
            {
                let (c, s) = check_placement(&input, daemon)?;
                if input.get("placementConstraints").is_some() {
                    svc.placement_constraints = c;
                }
                if input.get("placementStrategy").is_some() {
                    svc.placement_strategy = s;
                }
            }
            if let Some(g) = int(&input, "healthCheckGracePeriodSeconds") {
                svc.health_check_grace_period = g as u64;
            }
            if let Some(p) = input::string(&input, "propagateTags") {
                svc.propagate_tags = p.into();
            }
            for (member, field) in [
                ("enableECSManagedTags", &mut svc.enable_ecs_managed_tags),
                ("enableExecuteCommand", &mut svc.enable_execute_command),
            ] {
                if let Some(b) = input.get(member).and_then(Value::as_bool) {
                    *field = b;
                }
            }
            if let Some(r) = input::string(&input, "availabilityZoneRebalancing") {
                svc.availability_zone_rebalancing = r.into();
            }
            // Capacity: applies to the next deployment (ECS starts none for it).
            let mut cap = svc.revision.capacity.clone();
            if let Some(items) = input.get("capacityProviderStrategy") {
                let items = items.as_array().cloned().unwrap_or_default();
                if daemon && !items.is_empty() {
                    return Err(invalid(
                        "Specifying a capacity provider strategy is not supported when you create a service using the DAEMON scheduling strategy.",
                    ));
                }
                cap = if items.is_empty() {
                    Capacity::LaunchType("EC2".into())
                } else {
                    Capacity::Strategy(capacity::parse_strategy(&items, &cluster)?)
                };
            }
            let td_ref = input::string(&input, "taskDefinition");
            let td = match td_ref {
                Some(r) => self.task_definition(txn, r)?,
                None => self
                    .find_task_definition(txn, &svc.revision.task_definition)
                    .map_err(store)?
                    .ok_or_else(|| client("TaskDefinition not found."))?,
            };
            let network = match input.get("networkConfiguration") {
                Some(n) => Some(n.clone()),
                None => svc.revision.network_configuration.clone(),
            };
            let lbs = match input.get("loadBalancers") {
                Some(_) => input::items(&input, "loadBalancers"),
                None => svc.revision.load_balancers.clone(),
            };
            let platform = input::string(&input, "platformVersion")
                .map(String::from)
                .or_else(|| svc.revision.platform_version.clone());
            let registries = input::items(&input, "serviceRegistries");
            let wanted = Wanted {
                capacity: cap,
                platform_version: platform,
                network,
                load_balancers: lbs,
                registries,
            };
            let rev = revision(&cluster, &td, wanted, &*groups)?;
            let deploying = input.get("forceNewDeployment").and_then(Value::as_bool) == Some(true)
                || td_ref.is_some_and(|_| rev.task_definition != svc.revision.task_definition)
                || rev.network_configuration != svc.revision.network_configuration
                || rev.platform_version != svc.revision.platform_version
                || rev.load_balancers != svc.revision.load_balancers;
            if deploying {
                svc.deploy(rev, now);
            } else {
                svc.revision.capacity = rev.capacity;
                // The running deployment follows the new settings (percents, breaker).
                let config = svc.deployment_config.clone();
                if let Some(p) = svc.deployments.iter_mut().find(|d| d.status == "PRIMARY") {
                    p.desired_count = svc.desired_count;
                    p.config = config;
                }
            }
            Ok(svc)
        })?;
        let k = key(&svc.cluster, &svc.name);
        let read_version = svc.version;
        let saved = crate::error::write(&*self.store, move |txn| {
            let Some(current) = txn.get_json::<ServiceRecord>(COLLECTION, &k)? else {
                return Err(Abort::Domain(not_found()));
            };
            if current.status != ACTIVE {
                return Err(Abort::Domain(not_active()));
            }
            // The scheduler may have written since the read: keep its observations and apply
            // this request's settings over them.
            let mut next = svc;
            if current.version != read_version {
                next.events = current.events;
                next.progress.observed_until = current.progress.observed_until;
                next.running_count = current.running_count;
                next.pending_count = current.pending_count;
                for d in &mut next.deployments {
                    if let Some(c) = current.deployments.iter().find(|c| c.id == d.id) {
                        d.running_count = c.running_count;
                        d.pending_count = c.pending_count;
                        d.failed_tasks = c.failed_tasks;
                        d.rollout_state = c.rollout_state.clone();
                        d.rollout_state_reason = c.rollout_state_reason.clone();
                    }
                }
                // Deployments the scheduler finished meanwhile stay finished.
                next.deployments.retain(|d| {
                    d.status == "PRIMARY" || current.deployments.iter().any(|c| c.id == d.id)
                });
                next.history = current.history;
            }
            next.version = current.version + 1;
            txn.put_json(COLLECTION, &k, &next)?;
            Ok(next)
        })
        .await?;
        self.nudge();
        Ok(json!({"service": saved.render(&self.scope, None)}))
    }

    pub async fn delete_service(&self, input: Value) -> EcsResult<Value> {
        let force = input.get("force").and_then(Value::as_bool).unwrap_or(false);
        let (svc, _) = crate::error::read(&*self.store, |txn| {
            let (c, s) = self.load_service(txn, &input)?;
            Ok((s, c))
        })?;
        let k = key(&svc.cluster, &svc.name);
        let now = crate::now();
        let saved = crate::error::write(&*self.store, move |txn| {
            let Some(mut s) = txn.get_json::<ServiceRecord>(COLLECTION, &k)? else {
                return Err(Abort::Domain(not_found()));
            };
            if s.status != ACTIVE {
                return Ok(s);
            }
            if !s.is_daemon() && s.desired_count > 0 && !force {
                return Err(Abort::Domain(invalid(
                    "The service cannot be stopped while it is scaled above 0.",
                )));
            }
            s.status = DRAINING.into();
            s.desired_count = 0;
            s.deleted_at = Some(now);
            s.version += 1;
            txn.put_json(COLLECTION, &k, &s)?;
            Ok(s)
        })
        .await?;
        self.nudge();
        Ok(json!({"service": saved.render(&self.scope, None)}))
    }

    pub fn describe_services(&self, input: Value) -> EcsResult<Value> {
        let names = input::strings(&input, "services");
        if names.is_empty() || names.len() > 10 {
            return Err(invalid("services must name between 1 and 10 services."));
        }
        let with_tags = input::includes(&input, "include", "TAGS");
        crate::error::read(&*self.store, |txn| {
            let cluster = self.active_cluster(txn, input::string(&input, "cluster"))?;
            let mut services = Vec::new();
            let mut failures = Vec::new();
            for r in &names {
                let name = service_name(r);
                match txn
                    .get_json::<ServiceRecord>(COLLECTION, &key(&cluster.name, name))
                    .map_err(store)?
                {
                    Some(s) => {
                        let tags = if with_tags {
                            Some(crate::tags::to_json(&crate::tags::get(txn, &s.arn).map_err(store)?))
                        } else {
                            None
                        };
                        services.push(s.render(&self.scope, tags));
                    }
                    None => failures.push(json!({
                        "arn": if r.starts_with("arn:") { r.clone() } else { self.service_arn(&cluster.name, name) },
                        "reason": "MISSING"
                    })),
                }
            }
            Ok(json!({"services": services, "failures": failures}))
        })
    }

    pub fn list_services(&self, input: Value) -> EcsResult<Value> {
        let limit = paging::max_results(&input, 10, 100)?;
        let after = paging::decode_token(&input)?;
        let launch_type = input::string(&input, "launchType").map(String::from);
        let strategy = input::string(&input, "schedulingStrategy").map(String::from);
        let all = crate::error::read(&*self.store, |txn| {
            let cluster = self.active_cluster(txn, input::string(&input, "cluster"))?;
            txn.scan_json::<ServiceRecord>(
                COLLECTION,
                &format!("{}/", cluster.name),
                None,
                usize::MAX,
            )
            .map_err(store)
        })?;
        let items: Vec<(String, String)> = all
            .into_iter()
            .filter(|(_, s)| s.status == ACTIVE)
            .filter(|(_, s)| {
                launch_type.as_deref().is_none_or(|l| {
                    s.revision.capacity.launch_type() == l
                        && matches!(s.revision.capacity, Capacity::LaunchType(_))
                })
            })
            .filter(|(_, s)| {
                strategy
                    .as_deref()
                    .is_none_or(|x| s.scheduling_strategy == x)
            })
            .map(|(k, s)| (k, s.arn))
            .collect();
        let (arns, token) = paging::page(items, after.as_deref(), limit, false);
        Ok(paging::with_token(json!({"serviceArns": arns}), token))
    }

    pub fn list_services_by_namespace(&self, input: Value) -> EcsResult<Value> {
        paging::max_results(&input, 10, 100)?;
        let ns = input::string(&input, "namespace").unwrap_or("");
        Err(AwsError::client(
            "NamespaceNotFoundException",
            format!("The namespace {ns} was not found. Fleetport has no Cloud Map namespaces yet."),
        ))
    }

    /// A service deployment ARN → (cluster, service, deployment id).
    fn parse_deployment_arn<'a>(
        &self,
        arn: &'a str,
        kind: &str,
    ) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = self
            .scope
            .resource_of(arn)?
            .strip_prefix(kind)?
            .strip_prefix('/')?;
        let mut parts = rest.splitn(3, '/');
        Some((parts.next()?, parts.next()?, parts.next()?))
    }

    /// One service deployment: the deployment it targeted and, if it was rolled back, the
    /// deployment that rolled it back (whose state is the service deployment's state).
    fn render_service_deployment(
        &self,
        s: &ServiceRecord,
        (d, rollback): (&Deployment, Option<&Deployment>),
        full: bool,
    ) -> Value {
        let latest = rollback.unwrap_or(d);
        let mut o = json!({
            "serviceDeploymentArn": s.deployment_arn(&self.scope, d),
            "serviceArn": s.arn,
            "clusterArn": s.cluster_arn,
            "createdAt": d.created_at,
            "startedAt": d.created_at,
            "targetServiceRevisionArn": s.revision_arn(&self.scope, d),
            "status": latest.service_deployment_status,
        });
        if let Some(f) = latest.finished_at {
            o["finishedAt"] = json!(f);
        }
        if let Some(r) = &d.status_reason {
            o["statusReason"] = json!(r);
        }
        if full {
            o["updatedAt"] = json!(latest.updated_at);
            o["targetServiceRevision"] = json!({
                "arn": s.revision_arn(&self.scope, d),
                "requestedTaskCount": d.desired_count,
                "runningTaskCount": d.running_count,
                "pendingTaskCount": d.pending_count,
            });
            o["sourceServiceRevisions"] = Value::Array(
                d.sources
                    .iter()
                    .filter_map(|id| {
                        s.deployments
                            .iter()
                            .chain(s.history.iter())
                            .find(|x| &x.id == id)
                    })
                    .map(|x| {
                        json!({
                            "arn": s.revision_arn(&self.scope, x),
                            "requestedTaskCount": x.desired_count,
                            "runningTaskCount": x.running_count,
                            "pendingTaskCount": x.pending_count,
                        })
                    })
                    .collect(),
            );
            o["deploymentConfiguration"] = d.config.render();
            o["deploymentCircuitBreaker"] = json!({
                "status": if !d.config.breaker_enable { "DISABLED" } else if d.rollout_state == "FAILED" { "TRIGGERED" } else if d.finished_at.is_some() { "MONITORING_COMPLETE" } else { "MONITORING" },
                "failureCount": d.failed_tasks,
                "threshold": d.config.threshold(d.desired_count.max(1)),
            });
            o["alarms"] = json!({"status": "DISABLED"});
            if let Some(r) = rollback {
                o["rollback"] = json!({
                    "reason": r.status_reason.as_deref().unwrap_or(&r.rollout_state_reason),
                    "startedAt": r.created_at,
                    "serviceRevisionArn": s.revision_arn(&self.scope, r),
                });
            }
            if latest.service_deployment_status == "STOPPED" {
                o["stoppedAt"] = json!(latest.finished_at);
            }
        }
        o
    }

    /// The service's deployments, newest first, one per service deployment: the deployment it
    /// targeted, with the rollback deployment if there was one.
    fn service_deployments(s: &ServiceRecord) -> Vec<(&Deployment, Option<&Deployment>)> {
        let all: Vec<&Deployment> = s.deployments.iter().chain(s.history.iter()).collect();
        let mut out: Vec<(&Deployment, Option<&Deployment>)> = Vec::new();
        for d in all.iter().filter(|d| d.rollback_of.is_none()) {
            if out
                .iter()
                .any(|(x, _)| x.service_deployment_id == d.service_deployment_id)
            {
                continue;
            }
            let rollback = all
                .iter()
                .find(|r| {
                    r.rollback_of.is_some() && r.service_deployment_id == d.service_deployment_id
                })
                .copied();
            out.push((d, rollback));
        }
        out.sort_by(|a, b| b.0.created_at.total_cmp(&a.0.created_at));
        out
    }

    pub fn list_service_deployments(&self, input: Value) -> EcsResult<Value> {
        let limit = paging::max_results(&input, 20, 100)?;
        let after = paging::decode_token(&input)?;
        let statuses = input::strings(&input, "status");
        let before = input.pointer("/createdAt/before").and_then(Value::as_f64);
        let since = input.pointer("/createdAt/after").and_then(Value::as_f64);
        let svc = crate::error::read(&*self.store, |txn| Ok(self.load_service(txn, &input)?.1))?;
        let items: Vec<(String, Value)> = Self::service_deployments(&svc)
            .into_iter()
            .filter(|(d, r)| {
                statuses.is_empty() || statuses.contains(&r.unwrap_or(d).service_deployment_status)
            })
            .filter(|(d, _)| before.is_none_or(|b| d.created_at < b))
            .filter(|(d, _)| since.is_none_or(|a| d.created_at > a))
            .enumerate()
            // Newest first: the key orders by position in that list.
            .map(|(i, d)| {
                (
                    format!("{i:08}"),
                    self.render_service_deployment(&svc, d, false),
                )
            })
            .collect();
        let (page, token) = paging::page(items, after.as_deref(), limit, false);
        Ok(paging::with_token(
            json!({"serviceDeployments": page}),
            token,
        ))
    }

    pub fn describe_service_deployments(&self, input: Value) -> EcsResult<Value> {
        let arns = input::strings(&input, "serviceDeploymentArns");
        if arns.is_empty() || arns.len() > 20 {
            return Err(invalid(
                "serviceDeploymentArns must name between 1 and 20 service deployments.",
            ));
        }
        crate::error::read(&*self.store, |txn| {
            let mut found = Vec::new();
            let mut failures = Vec::new();
            for arn in &arns {
                let hit = match self.parse_deployment_arn(arn, "service-deployment") {
                    Some((c, s, id)) => txn
                        .get_json::<ServiceRecord>(COLLECTION, &key(c, s))
                        .map_err(store)?
                        .and_then(|svc| {
                            Self::service_deployments(&svc)
                                .into_iter()
                                .find(|(d, _)| d.service_deployment_id == id)
                                .map(|pair| self.render_service_deployment(&svc, pair, true))
                        }),
                    None => None,
                };
                match hit {
                    Some(v) => found.push(v),
                    None => failures.push(json!({"arn": arn, "reason": "MISSING"})),
                }
            }
            Ok(json!({"serviceDeployments": found, "failures": failures}))
        })
    }

    pub fn describe_service_revisions(&self, input: Value) -> EcsResult<Value> {
        let arns = input::strings(&input, "serviceRevisionArns");
        if arns.is_empty() || arns.len() > 20 {
            return Err(invalid(
                "serviceRevisionArns must name between 1 and 20 service revisions.",
            ));
        }
        crate::error::read(&*self.store, |txn| {
            let mut found = Vec::new();
            let mut failures = Vec::new();
            for arn in &arns {
                let hit = match self.parse_deployment_arn(arn, "service-revision") {
                    Some((c, s, n)) => txn
                        .get_json::<ServiceRecord>(COLLECTION, &key(c, s))
                        .map_err(store)?
                        .and_then(|svc| {
                            svc.deployments
                                .iter()
                                .chain(svc.history.iter())
                                .find(|d| d.number() == n)
                                .map(|d| {
                                    let mut o = serde_json::Map::new();
                                    o.insert("serviceRevisionArn".into(), json!(arn));
                                    o.insert("serviceArn".into(), json!(svc.arn));
                                    o.insert("clusterArn".into(), json!(svc.cluster_arn));
                                    o.insert(
                                        "taskDefinition".into(),
                                        json!(d.revision.task_definition),
                                    );
                                    d.revision.capacity.render_into(&mut o);
                                    o.insert(
                                        "loadBalancers".into(),
                                        json!(d.revision.load_balancers),
                                    );
                                    o.insert("serviceRegistries".into(), json!([]));
                                    if let Some(n) = &d.revision.network_configuration {
                                        o.insert("networkConfiguration".into(), n.clone());
                                    }
                                    o.insert(
                                        "containerImages".into(),
                                        json!(d.revision.container_images),
                                    );
                                    o.insert("guardDutyEnabled".into(), json!(false));
                                    o.insert("createdAt".into(), json!(d.created_at));
                                    Value::Object(o)
                                })
                        }),
                    None => None,
                };
                match hit {
                    Some(v) => found.push(v),
                    None => failures.push(json!({"arn": arn, "reason": "MISSING"})),
                }
            }
            Ok(json!({"serviceRevisions": found, "failures": failures}))
        })
    }

    pub async fn stop_service_deployment(&self, input: Value) -> EcsResult<Value> {
        let arn = input::owned(&input, "serviceDeploymentArn");
        let stop_type = input::string(&input, "stopType")
            .unwrap_or("ROLLBACK")
            .to_string();
        if stop_type != "ROLLBACK" && stop_type != "ABORT" {
            return Err(invalid("stopType must be ROLLBACK or ABORT."));
        }
        let missing = || {
            AwsError::client(
                "ServiceDeploymentNotFoundException",
                "The service deployment does not exist.",
            )
        };
        let (c, s, id) = self
            .parse_deployment_arn(&arn, "service-deployment")
            .map(|(c, s, i)| (c.to_string(), s.to_string(), i.to_string()))
            .ok_or_else(missing)?;
        let now = crate::now();
        let out_arn = arn.clone();
        crate::error::write(&*self.store, move |txn| {
            let k = key(&c, &s);
            let Some(mut svc) = txn.get_json::<ServiceRecord>(COLLECTION, &k)? else {
                return Err(Abort::Domain(missing()));
            };
            let Some(pi) = svc
                .deployments
                .iter()
                .position(|d| d.service_deployment_id == id && d.status == "PRIMARY")
            else {
                if svc
                    .deployments
                    .iter()
                    .chain(svc.history.iter())
                    .any(|d| d.service_deployment_id == id)
                {
                    return Err(Abort::Domain(AwsError::client(
                        "ConflictException",
                        "The service deployment is not in progress.",
                    )));
                }
                return Err(Abort::Domain(missing()));
            };
            let p = &svc.deployments[pi];
            if p.finished_at.is_some() || p.rollout_state != "IN_PROGRESS" {
                return Err(Abort::Domain(AwsError::client(
                    "ConflictException",
                    "The service deployment is not in progress.",
                )));
            }
            if p.rollback_of.is_some() {
                return Ok(());
            }
            let target = svc
                .deployments
                .iter()
                .chain(svc.history.iter())
                .find(|x| x.id != p.id && x.rollout_state == "COMPLETED")
                .cloned();
            let reason = "Service deployment stopped by StopServiceDeployment.".to_string();
            {
                let p = &mut svc.deployments[pi];
                p.rollout_state = "FAILED".into();
                p.rollout_state_reason = reason.clone();
                p.status_reason = Some(reason);
                p.updated_at = now;
            }
            match (stop_type.as_str(), target) {
                ("ROLLBACK", Some(target)) => {
                    let reason = format!(
                        "Service deployment rolled back by StopServiceDeployment to deploymentId {}.",
                        target.id
                    );
                    svc.roll_back(pi, &target, reason, now);
                }
                _ => {
                    let p = &mut svc.deployments[pi];
                    p.service_deployment_status = "STOPPED".into();
                    p.finished_at = Some(now);
                }
            }
            svc.version += 1;
            txn.put_json(COLLECTION, &k, &svc)?;
            Ok(())
        })
        .await?;
        self.nudge();
        Ok(json!({"serviceDeploymentArn": out_arn}))
    }

    /// Forgets INACTIVE services once their retention has passed.
    pub(crate) fn inactive_expired(s: &ServiceRecord, now: f64) -> bool {
        s.status == INACTIVE
            && s.deleted_at
                .is_some_and(|d| now - d > super::INACTIVE_RETENTION_SECS)
    }
}
