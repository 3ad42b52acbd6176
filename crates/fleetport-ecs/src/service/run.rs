//! The service scheduler's executor: observes each service (its tasks, the cluster's
//! instances, target health), asks [`super::plan`] what to do, and applies it — load balancer
//! calls first, then one transaction that writes the tasks and the service only if the service
//! is still the version it read (an UpdateService in between makes it look again).
//!
//! It runs when something changes (a task report, an API write, an instance, a target's
//! health) and at the instants the decisions name (a drain ending, a grace period, a back-off),
//! so nothing waits on a fixed polling interval. Everything it needs is in the store: after a
//! crash it resumes where it was.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetport_store::{Abort, ReadTxnExt, WriteTxnExt};
use serde_json::{Value, json};

use super::lb::{LoadBalancing, TargetRef};
use super::plan::{self, Decision, Observed, Start};
use super::{COLLECTION, INACTIVE, ServiceRecord, events, key};
use crate::Ecs;
use crate::error::{EcsResult, store};
use crate::instance::tasks_of_cluster;
use crate::placement::{self, Strategy};
use crate::task::{Placement, TaskRecord, place_tasks};

/// When nothing is due, look at every service again after this long anyway.
const IDLE_SECS: f64 = 60.0;

enum Applied {
    Done(Vec<String>),
    /// The service changed since it was read.
    Conflict,
}

impl Ecs {
    /// Wires the load balancers the scheduler registers service tasks with.
    pub fn set_load_balancing(&self, lb: Arc<dyn LoadBalancing>) {
        self.lb.set(lb);
    }

    /// Wakes the scheduler: desired or observed state changed (here, or on another replica:
    /// the binary calls this when it applies their changes).
    pub fn nudge(&self) {
        self.changed.notify_one();
    }

    /// Converges every service until aborted.
    pub async fn run_scheduler(self) {
        let mut health = self.lb.get().changes();
        let mut following_health = true;
        let mut due = 0.0;
        loop {
            let wait = (due - crate::now()).clamp(0.0, IDLE_SECS);
            if wait > 0.0 {
                let health_changed = async {
                    if following_health {
                        health.changed().await.is_ok()
                    } else {
                        std::future::pending::<bool>().await
                    }
                };
                let still_following = tokio::select! {
                    () = self.changed.notified() => true,
                    ok = health_changed => ok,
                    () = tokio::time::sleep(Duration::from_secs_f64(wait)) => true,
                };
                // Without load balancers wired the channel is closed: stop listening to it.
                following_health &= still_following;
            }
            due = match self.schedule_round().await {
                Ok(next) => next.unwrap_or(crate::now() + IDLE_SECS),
                Err(e) => {
                    tracing::warn!(error = %e.message, "service scheduler round failed");
                    crate::now() + 1.0
                }
            };
        }
    }

    /// One pass over every service; returns when the next one is due.
    pub async fn schedule_round(&self) -> EcsResult<Option<f64>> {
        let now = crate::now();
        let services: Vec<ServiceRecord> = crate::error::read(&*self.store, |txn| {
            Ok(txn
                .scan_json::<ServiceRecord>(COLLECTION, "", None, usize::MAX)
                .map_err(store)?
                .into_iter()
                .map(|(_, s)| s)
                .collect())
        })?;
        let mut next: Option<f64> = None;
        let mut soonest = |t: f64| next = Some(next.map_or(t, |n: f64| n.min(t)));
        for svc in services {
            if Self::inactive_expired(&svc, now) {
                self.forget_service(&svc).await?;
                continue;
            }
            if svc.status == INACTIVE {
                if let Some(d) = svc.deleted_at {
                    soonest(d + super::INACTIVE_RETENTION_SECS + 1.0);
                }
                continue;
            }
            match self.reconcile(&svc).await {
                Ok(Some(t)) => soonest(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(service = %svc.arn, error = %e.message, "could not converge service");
                    soonest(crate::now() + 1.0);
                }
            }
        }
        Ok(next)
    }

    async fn forget_service(&self, svc: &ServiceRecord) -> EcsResult<()> {
        let k = key(&svc.cluster, &svc.name);
        let arn = svc.arn.clone();
        crate::error::write(&*self.store, move |txn| {
            if let Some(s) = txn.get_json::<ServiceRecord>(COLLECTION, &k)?
                && s.status == INACTIVE
            {
                txn.delete(COLLECTION, &k)?;
                crate::tags::set(txn, &arn, &[])?;
            }
            Ok(())
        })
        .await
    }

    /// Observes one service, decides, applies. Returns when it wants to look again.
    async fn reconcile(&self, svc: &ServiceRecord) -> EcsResult<Option<f64>> {
        let now = crate::now();
        let group = format!("service:{}", svc.name);
        let (tasks, instances) = crate::error::read(&*self.store, |txn| {
            let tasks: Vec<TaskRecord> = tasks_of_cluster(txn, &svc.cluster)
                .map_err(store)?
                .into_iter()
                .filter(|t| t.group == group)
                .collect();
            let instances =
                crate::task::live_instances(txn, &self.agents, &svc.cluster).map_err(store)?;
            Ok((tasks, instances))
        })?;
        // Decided in a block: the observation borrows closures that must not live across
        // the awaits below.
        let decision = {
            let lb = self.lb.get();
            let health = |t: &TargetRef| lb.health(t);
            let groups = |arn: &str| lb.target_group(arn);
            let observed = Observed {
                now,
                tasks: &tasks,
                instances: &instances,
                seen_after: self.seen_after(),
                health: &health,
                groups: &groups,
            };
            plan::plan(svc, &observed)
        };
        if !decision.has_actions() && decision.service == *svc {
            return Ok(decision.requeue_at);
        }
        let requeue = decision.requeue_at;
        // Only built when debug logging is on: it asks for every drained target's health again.
        for dr in decision
            .drain
            .iter()
            .filter(|_| tracing::enabled!(tracing::Level::DEBUG))
        {
            let lb = self.lb.get();
            let health: Vec<String> = dr
                .targets
                .iter()
                .map(|t| format!("{}:{} {:?}", t.id, t.port, lb.health(t)))
                .collect();
            tracing::debug!(service = %svc.arn, task = %dr.task_id, reason = %dr.reason, ?health, "draining a task");
        }
        match self.apply(svc, decision, &tasks, now).await? {
            Applied::Done(hosts) => {
                self.wake(hosts.iter().map(String::as_str));
                Ok(requeue)
            }
            Applied::Conflict => Ok(Some(crate::now())),
        }
    }

    async fn apply(
        &self,
        read: &ServiceRecord,
        d: Decision,
        tasks: &[TaskRecord],
        now: f64,
    ) -> EcsResult<Applied> {
        let lb = self.lb.get();
        let Decision {
            service: mut s,
            register,
            drain,
            stop,
            start,
            ..
        } = d;
        let name = s.name.clone();
        // Load balancers first: a target is recorded on its task only once registered, and a
        // task stops only after its targets were deregistered.
        let mut registered: Vec<(String, Vec<TargetRef>)> = Vec::new();
        for (task, targets) in register {
            match lb.register(&targets).await {
                Ok(()) => registered.push((task, targets)),
                Err(e) => {
                    tracing::warn!(service = %s.arn, error = %e.message, "could not register targets")
                }
            }
        }
        for (tg, n) in per_group(registered.iter().flat_map(|(_, t)| t.iter())) {
            s.event(events::registered(&name, n, &tg), now);
        }
        let mut drained = Vec::new();
        for dr in drain {
            match lb.deregister(&dr.targets).await {
                Ok(()) => drained.push(dr),
                Err(e) => {
                    tracing::warn!(service = %s.arn, error = %e.message, "could not deregister targets")
                }
            }
        }
        if !drained.is_empty() {
            s.event(events::draining(&name, drained.len()), now);
            for (tg, n) in per_group(drained.iter().flat_map(|d| d.targets.iter())) {
                s.event(events::deregistered(&name, n, &tg), now);
            }
        }
        let placement = match &start {
            Some(st) => match self.service_placement(&s, st, tasks, now) {
                Ok(p) => Some(p),
                Err(e) => {
                    s.event(
                        format!(
                            "(service {name}) was unable to place a task. Reason: {}.",
                            e.message.trim_end_matches('.')
                        ),
                        now,
                    );
                    None
                }
            },
            None => None,
        };
        let replaced = start.as_ref().map_or(0, |s| s.replaced_unhealthy);
        let scope = self.scope.clone();
        let agents = self.agents.clone();
        let k = key(&s.cluster, &s.name);
        let read_version = read.version;
        let cluster = s.cluster.clone();
        crate::error::write(&*self.store, move |txn| {
            let Some(current) = txn.get_json::<ServiceRecord>(COLLECTION, &k)? else {
                return Ok(Applied::Conflict);
            };
            if current.version != read_version {
                return Ok(Applied::Conflict);
            }
            let mut hosts = Vec::new();
            let task_key = |id: &str| format!("{cluster}/{id}");
            for (id, targets) in &registered {
                if let Some(mut t) =
                    txn.get_json::<TaskRecord>(crate::cluster::TASKS, &task_key(id))?
                    && t.desired_status == "RUNNING"
                {
                    t.targets = targets.clone();
                    t.version += 1;
                    txn.put_json(crate::cluster::TASKS, &task_key(id), &t)?;
                }
            }
            for dr in &drained {
                if let Some(mut t) =
                    txn.get_json::<TaskRecord>(crate::cluster::TASKS, &task_key(&dr.task_id))?
                {
                    t.draining_until = Some(dr.until);
                    t.drain_reason = Some(dr.reason.clone());
                    t.version += 1;
                    txn.put_json(crate::cluster::TASKS, &task_key(&dr.task_id), &t)?;
                }
            }
            let (mut running, mut pending) = (Vec::new(), 0usize);
            for st in &stop {
                if let Some(mut t) =
                    txn.get_json::<TaskRecord>(crate::cluster::TASKS, &task_key(&st.task_id))?
                    && t.request_stop(&st.code, st.reason.clone(), now)
                {
                    if t.last_status == "RUNNING" {
                        running.push(t.id.clone());
                    } else {
                        pending += 1;
                    }
                    txn.put_json(crate::cluster::TASKS, &task_key(&st.task_id), &t)?;
                    hosts.push(t.host().to_string());
                }
            }
            if !running.is_empty() {
                s.event(events::stopped_running(&name, &running), now);
            }
            if pending > 0 {
                s.event(events::stopped_pending(&name, pending), now);
            }
            if let Some(p) = &placement {
                crate::task::recheck_cluster(txn, &p.template.cluster)?;
                let (placed, failures) = match place_tasks(txn, &scope, &agents, p) {
                    Ok(r) => r,
                    // No instances at all: nothing was written; report it as ECS does.
                    Err(Abort::Domain(_)) => (Vec::new(), Vec::new()),
                    Err(e) => return Err(e),
                };
                if !placed.is_empty() {
                    let ids: Vec<String> = placed.iter().map(|t| t.id.clone()).collect();
                    s.event(events::started(&name, &ids, replaced), now);
                    hosts.extend(placed.iter().map(|t| t.host().to_string()));
                }
                if placed.len() < p.count {
                    let reasons: Vec<(String, String)> = failures
                        .iter()
                        .map(|f| {
                            (
                                f.get("arn")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_string(),
                                f.get("reason")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_string(),
                            )
                        })
                        .collect();
                    s.event(events::unable_to_place(&name, &reasons), now);
                }
            }
            s.version = current.version + 1;
            txn.put_json(COLLECTION, &k, &s)?;
            Ok(Applied::Done(hosts))
        })
        .await
    }

    /// The placement request for a service's new tasks.
    fn service_placement(
        &self,
        s: &ServiceRecord,
        start: &Start,
        tasks: &[TaskRecord],
        now: f64,
    ) -> EcsResult<Placement> {
        let dep = s
            .deployments
            .iter()
            .find(|d| d.id == start.deployment)
            .ok_or_else(|| crate::error::invalid("The deployment is gone."))?;
        let (cluster, td, svc_tags, td_tags) = crate::error::read(&*self.store, |txn| {
            let cluster = crate::cluster::named(txn, &s.cluster)
                .map_err(store)?
                .ok_or_else(crate::error::cluster_not_found)?;
            let td = self
                .find_task_definition(txn, &dep.revision.task_definition)
                .map_err(store)?
                .ok_or_else(|| crate::error::client("TaskDefinition not found."))?;
            let svc_tags = crate::tags::get(txn, &s.arn).map_err(store)?;
            let td_tags = crate::tags::get(txn, &dep.revision.task_definition).map_err(store)?;
            Ok((cluster, td, svc_tags, td_tags))
        })?;
        let cap = &dep.revision.capacity;
        let crate::task::Template {
            mut task,
            need,
            constraints: td_constraints,
        } = crate::task::template(&cluster, &td, cap.launch_type(), &json!({}), now, false)?;
        task.group = format!("service:{}", s.name);
        task.started_by = Some(dep.id.clone());
        let mut tags: Vec<Value> = match s.propagate_tags.as_str() {
            "SERVICE" => svc_tags
                .iter()
                .map(|t| json!({"key": t.key, "value": t.value}))
                .collect(),
            "TASK_DEFINITION" => td_tags
                .iter()
                .map(|t| json!({"key": t.key, "value": t.value}))
                .collect(),
            _ => Vec::new(),
        };
        if s.enable_ecs_managed_tags {
            tags.push(json!({"key": "aws:ecs:clusterName", "value": s.cluster}));
            tags.push(json!({"key": "aws:ecs:serviceName", "value": s.name}));
        }
        task.tags = tags;
        let subnet = crate::task::awsvpc_subnet(
            &task.network_mode,
            dep.revision.network_configuration.as_ref(),
        )?;
        let mut strategies =
            placement::parse_strategies(&json!({"placementStrategy": s.placement_strategy}))?;
        if strategies.is_empty() && !s.is_daemon() {
            // ECS's default for services: spread over zones, then over instances.
            strategies = vec![
                Strategy::Spread("attribute:ecs.availability-zone".into()),
                Strategy::Spread("instanceId".into()),
            ];
        }
        let mut constraint_items = s.placement_constraints.clone();
        constraint_items.extend(td_constraints);
        let constraints = placement::parse_constraints(&constraint_items)?;
        let mut held: BTreeMap<String, u32> = BTreeMap::new();
        for t in tasks
            .iter()
            .filter(|t| t.last_status != "STOPPED" && t.desired_status == "RUNNING")
        {
            if let Some(p) = &t.capacity_provider_name {
                *held.entry(p.clone()).or_default() += 1;
            }
        }
        let held: Vec<(String, u32)> = held.into_iter().collect();
        Ok(Placement {
            template: task,
            count: start.count as usize,
            targets: start.instances.clone(),
            need,
            strategies,
            constraints,
            subnet,
            seed: now.to_bits(),
            seen_after: self.seen_after(),
            providers: cap.split(start.count, &held),
        })
    }
}

fn per_group<'a>(targets: impl Iterator<Item = &'a TargetRef>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in targets {
        *out.entry(t.target_group.clone()).or_default() += 1;
    }
    out
}
