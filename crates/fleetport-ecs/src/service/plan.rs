//! The service scheduler's decision for one service, as a pure function of (desired, observed,
//! now): the service record as it should be written (counts, deployments, rollout states,
//! events) and the actions that converge its tasks — register targets, drain, stop, start.
//! No I/O: [`super::run`] gathers what it observes and applies the answer.

use std::collections::HashMap;

use serde_json::Value;

use super::lb::{TargetGroupInfo, TargetHealth, TargetRef};
use super::{ServiceRecord, events};
use crate::instance::InstanceRecord;
use crate::rollout::{self, Tasks};
use crate::task::TaskRecord;

/// A task without health checks or load balancers counts as proven (for the circuit breaker
/// and the launch back-off) once it has run this long; ECS uses about 40 s.
pub const PROVEN_AFTER_SECS: f64 = 40.0;

/// Without any event to wait for, look again this often while a service is not steady.
pub const SAFETY_REQUEUE_SECS: f64 = 10.0;

/// What the scheduler observed for one service.
pub struct Observed<'a> {
    pub now: f64,
    /// The service's tasks (group `service:<name>`), stopped ones included.
    pub tasks: &'a [TaskRecord],
    /// The cluster's container instances, heartbeats applied.
    pub instances: &'a [InstanceRecord],
    /// Instances that polled after this are connected.
    pub seen_after: f64,
    pub health: &'a dyn Fn(&TargetRef) -> TargetHealth,
    pub groups: &'a dyn Fn(&str) -> Option<TargetGroupInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StopTask {
    pub task_id: String,
    pub reason: String,
    pub code: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Drain {
    pub task_id: String,
    pub targets: Vec<TargetRef>,
    pub until: f64,
    /// The stop reason, kept on the task until the drain ends.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub deployment: String,
    pub count: u32,
    /// DAEMON: the instances (IDs) to start one task on each.
    pub instances: Option<Vec<String>>,
    pub replaced_unhealthy: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub service: ServiceRecord,
    pub register: Vec<(String, Vec<TargetRef>)>,
    /// Tasks to deregister from their target groups, stopped once their drain ends.
    pub drain: Vec<Drain>,
    pub stop: Vec<StopTask>,
    pub start: Option<Start>,
    pub requeue_at: Option<f64>,
}

impl Decision {
    pub fn has_actions(&self) -> bool {
        !self.register.is_empty()
            || !self.drain.is_empty()
            || !self.stop.is_empty()
            || self.start.is_some()
    }
}

/// ECS's reasons for stops the scheduler makes.
pub fn scaling_reason(deployment: &str) -> String {
    format!("Scaling activity initiated by (deployment {deployment})")
}
pub const SCHEDULER_CODE: &str = "ServiceSchedulerInitiated";

/// How a live task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Healthy,
    Other,
    Stopping,
}

struct Live<'a> {
    task: &'a TaskRecord,
    /// Index into the buckets: 0 = PRIMARY, then old deployments, then (REPLICA) tasks on
    /// draining instances.
    bucket: usize,
    standing: Standing,
}

/// Whether an essential container has a health check, and the task's health by ECS's rule.
fn container_health(t: &TaskRecord) -> (bool, &'static str) {
    let checked = t.container_definitions.iter().any(|d| {
        d.get("essential").and_then(Value::as_bool).unwrap_or(true)
            && d.get("healthCheck").is_some()
    });
    (
        checked,
        crate::task::task_health(&t.containers, &t.container_definitions),
    )
}

/// The targets a RUNNING task gives for `load_balancers`, or `None` while its address or host
/// port is not known yet.
pub fn targets_of(
    t: &TaskRecord,
    load_balancers: &[Value],
    instances: &[InstanceRecord],
    groups: &dyn Fn(&str) -> Option<TargetGroupInfo>,
) -> Option<Vec<TargetRef>> {
    let mut out = Vec::new();
    for lb in load_balancers {
        let tg = lb.get("targetGroupArn").and_then(Value::as_str)?;
        let container = lb.get("containerName").and_then(Value::as_str)?;
        let container_port = lb.get("containerPort").and_then(Value::as_u64)?;
        let info = groups(tg)?;
        if info.target_type == "ip" {
            let ip = task_ip(t)?;
            out.push(TargetRef {
                target_group: tg.to_string(),
                id: ip,
                port: u16::try_from(container_port).ok()?,
            });
        } else {
            let arn = t.container_instance_arn.as_deref()?;
            let inst = instances.iter().find(|i| i.arn == arn)?;
            let port = if t.network_mode == "host" {
                container_port
            } else {
                t.containers
                    .iter()
                    .find(|c| c.get("name").and_then(Value::as_str) == Some(container))?
                    .get("networkBindings")
                    .and_then(Value::as_array)?
                    .iter()
                    .find(|b| {
                        b.get("containerPort").and_then(Value::as_u64) == Some(container_port)
                    })?
                    .get("hostPort")
                    .and_then(Value::as_u64)?
            };
            out.push(TargetRef {
                target_group: tg.to_string(),
                id: inst.ec2_instance_id.clone(),
                port: u16::try_from(port).ok()?,
            });
        }
    }
    Some(out)
}

/// An awsvpc task's address, once its interface is attached.
pub fn task_ip(t: &TaskRecord) -> Option<String> {
    t.attachments
        .iter()
        .flat_map(|a| {
            a.get("details")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|d| d.get("name").and_then(Value::as_str) == Some("privateIPv4Address"))
        .and_then(|d| d.get("value").and_then(Value::as_str))
        .map(String::from)
}

fn instance_id_of(t: &TaskRecord) -> Option<&str> {
    t.container_instance_arn
        .as_deref()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
}

/// The scheduler's decision for `svc` given `o`.
pub fn plan(svc: &ServiceRecord, o: &Observed<'_>) -> Decision {
    let now = o.now;
    let mut s = svc.clone();
    let mut d = Decision {
        service: svc.clone(),
        register: Vec::new(),
        drain: Vec::new(),
        stop: Vec::new(),
        start: None,
        requeue_at: None,
    };
    if s.status == super::INACTIVE {
        return d;
    }
    let name = s.name.clone();
    let requeue = |at: f64, d: &mut Decision| {
        d.requeue_at = Some(d.requeue_at.map_or(at, |r: f64| r.min(at)));
    };

    // 1. Stopped tasks not yet looked at: failures for the breaker and the launch back-off.
    let mut newest_stop = s.progress.observed_until;
    for t in o.tasks.iter().filter(|t| t.last_status == "STOPPED") {
        let at = t.stopped_at.unwrap_or(0.0);
        if at <= s.progress.observed_until {
            continue;
        }
        newest_stop = newest_stop.max(at);
        let by_itself = !matches!(
            t.stop_code.as_deref(),
            Some("ServiceSchedulerInitiated" | "UserInitiated" | "SpotInterruption")
        );
        let short = match t.started_at {
            None => true,
            Some(st) => at - st < PROVEN_AFTER_SECS,
        };
        if by_itself
            && short
            && let Some(p) = s
                .deployments
                .iter_mut()
                .find(|dep| Some(dep.id.as_str()) == t.started_by.as_deref())
        {
            p.failed_tasks += 1;
            if p.status == "PRIMARY" {
                s.progress.start_failures += 1;
            }
        }
    }
    s.progress.observed_until = newest_stop;

    // 2. Classify live tasks.
    let draining_instances: Vec<&str> = o
        .instances
        .iter()
        .filter(|i| i.status == "DRAINING")
        .map(|i| i.arn.as_str())
        .collect();
    let n_deps = s.deployments.len();
    let drain_bucket = n_deps.max(1);
    let grace = s.health_check_grace_period as f64;
    let mut live: Vec<Live<'_>> = Vec::new();
    let mut replaced_unhealthy = 0usize;
    let mut proven_primary = false;
    for t in o.tasks.iter().filter(|t| t.last_status != "STOPPED") {
        let dep_index = s
            .deployments
            .iter()
            .position(|dep| Some(dep.id.as_str()) == t.started_by.as_deref());
        let on_draining = t
            .container_instance_arn
            .as_deref()
            .is_some_and(|a| draining_instances.contains(&a));
        let stopping = t.desired_status == "STOPPED" || t.draining_until.is_some();
        let Some(dep_index) = dep_index else {
            // A task of a deployment that is gone (a lost write): stop it as surplus.
            if !stopping {
                d.stop.push(StopTask {
                    task_id: t.id.clone(),
                    reason: scaling_reason(s.primary().map_or("", |p| p.id.as_str())),
                    code: SCHEDULER_CODE.into(),
                });
            }
            continue;
        };
        let bucket = if on_draining && !s.is_daemon() {
            drain_bucket
        } else {
            dep_index
        };
        if on_draining && s.is_daemon() && !stopping {
            // Daemon tasks on a draining instance are stopped, not replaced.
            begin_stop(&mut d, t, &s.deployments[dep_index].id, o, now);
            continue;
        }
        if stopping {
            live.push(Live {
                task: t,
                bucket,
                standing: Standing::Stopping,
            });
            if let Some(until) = t.draining_until
                && t.desired_status != "STOPPED"
            {
                if until <= now {
                    d.stop.push(StopTask {
                        task_id: t.id.clone(),
                        reason: t
                            .drain_reason
                            .clone()
                            .unwrap_or_else(|| scaling_reason(&s.deployments[dep_index].id)),
                        code: SCHEDULER_CODE.into(),
                    });
                } else {
                    requeue(until, &mut d);
                }
            }
            continue;
        }
        let dep = &s.deployments[dep_index];
        let running = t.last_status == "RUNNING";
        let (checked, container) = container_health(t);
        let lbs = &dep.revision.load_balancers;
        let mut lb_healthy = lbs.is_empty();
        let mut unhealthy_target: Option<(TargetRef, String)> = None;
        if running && !lbs.is_empty() {
            if t.targets.is_empty() {
                if let Some(targets) = targets_of(t, lbs, o.instances, o.groups) {
                    d.register.push((t.id.clone(), targets));
                }
            } else {
                lb_healthy = true;
                for target in &t.targets {
                    match (o.health)(target) {
                        TargetHealth::Healthy => {}
                        TargetHealth::Unhealthy { description, .. } => {
                            lb_healthy = false;
                            unhealthy_target.get_or_insert((target.clone(), description));
                        }
                        _ => lb_healthy = false,
                    }
                }
            }
        }
        let container_ok = if checked {
            container == "HEALTHY"
        } else {
            container != "UNHEALTHY"
        };
        let healthy = running && container_ok && lb_healthy;
        let ran_for = t.started_at.map_or(0.0, |st| now - st);
        if dep.status == "PRIMARY"
            && running
            && ((checked || !lbs.is_empty()) && healthy
                || (!checked && lbs.is_empty() && ran_for >= PROVEN_AFTER_SECS))
        {
            proven_primary = true;
        }
        // Unhealthy past the grace period: replaced (the stop counts toward the breaker).
        let past_grace = t.started_at.is_some_and(|st| st + grace <= now);
        if running && (unhealthy_target.is_some() || container == "UNHEALTHY") {
            if past_grace {
                let (message, reason) = match &unhealthy_target {
                    Some((target, description)) => (
                        events::unhealthy_target(
                            &name,
                            &t.id,
                            (o.groups)(&target.target_group)
                                .filter(|g| g.target_type == "instance")
                                .map(|_| target.id.as_str()),
                            target.port,
                            &target.target_group,
                            description,
                        ),
                        format!(
                            "Task failed ELB health checks in (target-group {})",
                            target.target_group
                        ),
                    ),
                    None => (
                        events::unhealthy_container(&name, &t.id),
                        "Task failed container health checks".to_string(),
                    ),
                };
                s.event(message, now);
                s.deployments[dep_index].failed_tasks += 1;
                replaced_unhealthy += 1;
                live.push(Live {
                    task: t,
                    bucket,
                    standing: Standing::Stopping,
                });
                begin_stop_with(&mut d, t, o, now, reason);
                continue;
            }
            if let Some(st) = t.started_at {
                requeue(st + grace, &mut d);
            }
        }
        // A RUNNING task of an older deployment keeps serving unless it is known to be bad:
        // a target reading that is not (yet, or for a moment no longer) "healthy" must not let
        // the rollout stop the tasks that carry the traffic before their replacements do.
        let serving_old = dep.status != "PRIMARY"
            && running
            && container != "UNHEALTHY"
            && unhealthy_target.is_none()
            && (lbs.is_empty() || !t.targets.is_empty());
        let standing = if healthy || serving_old {
            Standing::Healthy
        } else {
            Standing::Other
        };
        live.push(Live {
            task: t,
            bucket,
            standing,
        });
    }
    if proven_primary {
        s.progress.start_failures = 0;
        s.progress.backoff_at_failures = 0;
        if let Some(p) = s.deployments.iter_mut().find(|p| p.status == "PRIMARY")
            && p.config.reset_on_healthy_task
            && p.rollout_state == "IN_PROGRESS"
        {
            p.failed_tasks = 0;
        }
    }

    // 3. The circuit breaker.
    let desired = if s.status == super::ACTIVE {
        if s.is_daemon() {
            daemon_instances(o, &s).len() as u32
        } else {
            s.desired_count
        }
    } else {
        0
    };
    if s.is_daemon() && s.status == super::ACTIVE {
        // A daemon service's desired count is the number of instances it should run on.
        s.desired_count = desired;
    }
    trip_breaker(&mut s, desired, now);

    // 4. The rollout step.
    let n_buckets = s.deployments.len().max(1) + 1;
    let mut buckets = vec![Tasks::default(); n_buckets.max(drain_bucket + 1)];
    for l in &live {
        let b = &mut buckets[l.bucket];
        match l.standing {
            Standing::Healthy => b.healthy += 1,
            Standing::Other => b.other += 1,
            Standing::Stopping => b.stopping += 1,
        }
    }
    let primary_index = s.deployments.iter().position(|p| p.status == "PRIMARY");
    let cfg = &s.deployment_config;
    let observed = rollout::Observed {
        desired,
        minimum_healthy_percent: cfg.minimum_healthy_percent,
        maximum_percent: cfg.maximum_percent,
        primary: primary_index.map(|i| buckets[i]).unwrap_or_default(),
        old: buckets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != primary_index)
            .map(|(_, b)| *b)
            .collect(),
    };
    let step = rollout::plan(&observed);
    // Stops, bucket by bucket.
    let old_indices: Vec<usize> = (0..buckets.len())
        .filter(|i| Some(*i) != primary_index)
        .collect();
    let mut stops: Vec<(usize, rollout::Stop)> = old_indices
        .iter()
        .zip(step.stop_old.iter())
        .map(|(i, st)| (*i, *st))
        .collect();
    if let Some(p) = primary_index {
        stops.push((p, step.stop_primary));
    }
    let primary_id = primary_index
        .map(|i| s.deployments[i].id.clone())
        .unwrap_or_default();
    for (bucket, st) in stops {
        for (standing, n) in [(Standing::Other, st.other), (Standing::Healthy, st.healthy)] {
            if n == 0 {
                continue;
            }
            let mut candidates: Vec<&TaskRecord> = live
                .iter()
                .filter(|l| l.bucket == bucket && l.standing == standing)
                .map(|l| l.task)
                .collect();
            order_victims(&mut candidates, o.tasks);
            for t in candidates.into_iter().take(n as usize) {
                // ECS names the deployment whose scaling stops the task: the PRIMARY.
                let dep = if primary_id.is_empty() {
                    t.started_by.clone().unwrap_or_default()
                } else {
                    primary_id.clone()
                };
                begin_stop(&mut d, t, &dep, o, now);
            }
        }
    }
    // Starts.
    let primary_failed = primary_index.is_some_and(|i| s.deployments[i].rollout_state == "FAILED");
    if step.start > 0 && !primary_failed && s.status == super::ACTIVE {
        if now < s.progress.backoff_until {
            requeue(s.progress.backoff_until, &mut d);
        } else if s.progress.start_failures >= 3
            && s.progress.start_failures > s.progress.backoff_at_failures
        {
            // Each further failure doubles the wait, up to ECS's 15 minutes.
            let exp = (s.progress.start_failures - 3).min(10);
            let delay = (10.0 * f64::from(1u32 << exp)).min(900.0);
            s.progress.backoff_until = now + delay;
            s.progress.backoff_at_failures = s.progress.start_failures;
            s.event(events::throttled(&name), now);
            requeue(s.progress.backoff_until, &mut d);
        } else if s.is_daemon() {
            let free: Vec<String> = daemon_instances(o, &s)
                .into_iter()
                .filter(|i| {
                    !o.tasks.iter().any(|t| {
                        t.last_status != "STOPPED"
                            && t.container_instance_arn.as_deref() == Some(i.arn.as_str())
                    })
                })
                .map(|i| i.id.clone())
                .collect();
            let n = (step.start as usize).min(free.len());
            if n > 0 {
                d.start = Some(Start {
                    deployment: primary_id.clone(),
                    count: n as u32,
                    instances: Some(free.into_iter().take(n).collect()),
                    replaced_unhealthy,
                });
            }
        } else {
            d.start = Some(Start {
                deployment: primary_id.clone(),
                count: step.start,
                instances: None,
                replaced_unhealthy,
            });
        }
    }
    if step.stuck && s.status == super::ACTIVE && !primary_failed {
        s.event(events::stuck(&name), now);
    }

    // 5. Counts, completion, old deployments, steady state.
    let mut running_total = 0;
    let mut pending_total = 0;
    for (i, dep) in s.deployments.iter_mut().enumerate() {
        let mine = o.tasks.iter().filter(|t| {
            t.last_status != "STOPPED" && t.started_by.as_deref() == Some(dep.id.as_str())
        });
        let (mut r, mut p) = (0, 0);
        for t in mine {
            match t.last_status.as_str() {
                "RUNNING" => r += 1,
                "PROVISIONING" | "PENDING" | "ACTIVATING" => p += 1,
                _ => {}
            }
        }
        if (dep.running_count, dep.pending_count) != (r, p) {
            dep.running_count = r;
            dep.pending_count = p;
            dep.updated_at = now;
        }
        running_total += r;
        pending_total += p;
        let want = if Some(i) == primary_index {
            desired
        } else {
            r + p
        };
        if dep.desired_count != want {
            dep.desired_count = want;
            dep.updated_at = now;
        }
    }
    s.running_count = running_total;
    s.pending_count = pending_total;
    if step.completed
        && let Some(i) = primary_index
        && s.deployments[i].rollout_state == "IN_PROGRESS"
        && s.status == super::ACTIVE
    {
        let dep = &mut s.deployments[i];
        dep.rollout_state = "COMPLETED".into();
        dep.rollout_state_reason = format!("ECS deployment {} completed.", dep.id);
        dep.service_deployment_status = if dep.rollback_of.is_some() {
            "ROLLBACK_SUCCESSFUL".into()
        } else {
            "SUCCESSFUL".into()
        };
        dep.finished_at = Some(now);
        dep.updated_at = now;
        let id = dep.id.clone();
        s.event(events::completed(&name, &id), now);
    }
    // Deployments without tasks left are done.
    let mut kept = Vec::new();
    for (i, mut dep) in std::mem::take(&mut s.deployments).into_iter().enumerate() {
        let has_tasks = o.tasks.iter().any(|t| {
            t.last_status != "STOPPED" && t.started_by.as_deref() == Some(dep.id.as_str())
        });
        if Some(i) == primary_index || has_tasks {
            kept.push(dep);
        } else {
            dep.status = "INACTIVE".into();
            dep.updated_at = now;
            if dep.finished_at.is_none() {
                dep.finished_at = Some(now);
                if dep.service_deployment_status == "IN_PROGRESS" {
                    dep.service_deployment_status = "STOPPED".into();
                }
            }
            s.history.insert(0, dep);
        }
    }
    s.deployments = kept;
    s.history.truncate(MAX_HISTORY);
    let steady = s.status == super::ACTIVE
        && step.completed
        && s.deployments.len() == 1
        && s.running_count == desired
        && d.stop.is_empty()
        && d.drain.is_empty()
        && d.register.is_empty();
    if steady {
        if s.progress.steady_since == 0.0
            || now - s.progress.steady_since >= events::REPEAT_AFTER_SECS
        {
            s.event(events::steady(&name), now);
            s.progress.steady_since = now;
        }
        requeue(s.progress.steady_since + events::REPEAT_AFTER_SECS, &mut d);
    } else {
        s.progress.steady_since = 0.0;
        requeue(now + SAFETY_REQUEUE_SECS, &mut d);
    }
    if s.status == super::DRAINING && o.tasks.iter().all(|t| t.last_status == "STOPPED") {
        s.status = super::INACTIVE.into();
        for dep in &mut s.deployments {
            dep.running_count = 0;
            dep.pending_count = 0;
        }
        d.requeue_at = None;
    }
    d.service = s;
    d
}

/// Finished deployments kept per service.
pub const MAX_HISTORY: usize = 50;

/// Instances a DAEMON service runs one task on: ACTIVE, connected, and matching its constraints.
fn daemon_instances<'a>(o: &Observed<'a>, s: &ServiceRecord) -> Vec<&'a InstanceRecord> {
    let constraints =
        crate::placement::parse_constraints(&s.placement_constraints).unwrap_or_default();
    o.instances
        .iter()
        .filter(|i| i.status == "ACTIVE" && i.connected(o.seen_after))
        .filter(|i| {
            constraints.iter().all(|c| match c {
                crate::placement::Constraint::DistinctInstance => true,
                crate::placement::Constraint::MemberOf(q) => {
                    q.matches(&crate::instance::facts(i, &[], o.seen_after))
                }
            })
        })
        .collect()
}

/// Scale-in order: tasks in the zone with the most service tasks, then on the instance with the
/// most, newest first.
fn order_victims(candidates: &mut [&TaskRecord], all: &[TaskRecord]) {
    let mut per_zone: HashMap<&str, usize> = HashMap::new();
    let mut per_instance: HashMap<&str, usize> = HashMap::new();
    for t in all.iter().filter(|t| t.last_status != "STOPPED") {
        *per_zone
            .entry(t.availability_zone.as_deref().unwrap_or(""))
            .or_default() += 1;
        *per_instance
            .entry(instance_id_of(t).unwrap_or(""))
            .or_default() += 1;
    }
    candidates.sort_by(|a, b| {
        let za = per_zone
            .get(a.availability_zone.as_deref().unwrap_or(""))
            .copied()
            .unwrap_or(0);
        let zb = per_zone
            .get(b.availability_zone.as_deref().unwrap_or(""))
            .copied()
            .unwrap_or(0);
        let ia = per_instance
            .get(instance_id_of(a).unwrap_or(""))
            .copied()
            .unwrap_or(0);
        let ib = per_instance
            .get(instance_id_of(b).unwrap_or(""))
            .copied()
            .unwrap_or(0);
        zb.cmp(&za)
            .then(ib.cmp(&ia))
            .then(b.created_at.total_cmp(&a.created_at))
    });
}

fn begin_stop(d: &mut Decision, t: &TaskRecord, deployment: &str, o: &Observed<'_>, now: f64) {
    begin_stop_with(d, t, o, now, scaling_reason(deployment));
}

/// A task with registered targets drains first (deregistered, stopped after the longest
/// deregistration delay of its groups); others stop at once.
fn begin_stop_with(d: &mut Decision, t: &TaskRecord, o: &Observed<'_>, now: f64, reason: String) {
    if !t.targets.is_empty() && t.draining_until.is_none() {
        let delay = t
            .targets
            .iter()
            .filter_map(|x| (o.groups)(&x.target_group))
            .map(|g| g.deregistration_delay)
            .fold(0.0, f64::max);
        d.drain.push(Drain {
            task_id: t.id.clone(),
            targets: t.targets.clone(),
            until: now + delay,
            reason,
        });
        d.requeue_at = Some(d.requeue_at.map_or(now + delay, |r| r.min(now + delay)));
    } else {
        d.stop.push(StopTask {
            task_id: t.id.clone(),
            reason,
            code: SCHEDULER_CODE.into(),
        });
    }
}

/// The circuit breaker: a PRIMARY deployment whose failed tasks reach the threshold fails, and
/// with rollback a new PRIMARY runs the last completed revision.
fn trip_breaker(s: &mut ServiceRecord, desired: u32, now: f64) {
    let Some(pi) = s.deployments.iter().position(|p| p.status == "PRIMARY") else {
        return;
    };
    let p = &s.deployments[pi];
    if !p.config.breaker_enable
        || p.rollout_state != "IN_PROGRESS"
        || p.failed_tasks < p.config.threshold(desired.max(1))
    {
        return;
    }
    let name = s.name.clone();
    let failed_id = p.id.clone();
    let rollback = p.config.breaker_rollback;
    let target = s
        .deployments
        .iter()
        .chain(s.history.iter())
        .find(|x| x.id != failed_id && x.rollout_state == "COMPLETED")
        .cloned();
    {
        let p = &mut s.deployments[pi];
        p.rollout_state = "FAILED".into();
        p.rollout_state_reason = "ECS deployment circuit breaker: tasks failed to start.".into();
        p.updated_at = now;
        p.status_reason = Some("ECS deployment circuit breaker: tasks failed to start.".into());
    }
    s.event(events::failed(&name, &failed_id), now);
    let Some(target) = target.filter(|_| rollback) else {
        let p = &mut s.deployments[pi];
        p.service_deployment_status = "STOPPED".into();
        p.finished_at = Some(now);
        return;
    };
    let reason = format!(
        "ECS deployment circuit breaker: rolling back to deploymentId {}.",
        target.id
    );
    s.roll_back(pi, &target, reason, now);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capacity::Capacity;
    use crate::service::{DeploymentConfig, Progress, Revision};

    const TG: &str = "arn:tg";

    fn revision(lb: bool) -> Revision {
        Revision {
            task_definition: "arn:td:1".into(),
            capacity: Capacity::LaunchType("EC2".into()),
            platform_version: None,
            network_configuration: None,
            load_balancers: if lb {
                vec![json!({"targetGroupArn": TG, "containerName": "web", "containerPort": 80})]
            } else {
                vec![]
            },
            service_registries: vec![],
            container_images: vec![],
        }
    }

    fn service(desired: u32, lb: bool) -> ServiceRecord {
        let mut s = ServiceRecord {
            arn: "arn:svc".into(),
            name: "web".into(),
            cluster: "c".into(),
            cluster_arn: "arn:c".into(),
            status: "ACTIVE".into(),
            desired_count: desired,
            scheduling_strategy: "REPLICA".into(),
            revision: revision(lb),
            deployment_config: DeploymentConfig {
                maximum_percent: 200,
                minimum_healthy_percent: 100,
                breaker_enable: true,
                breaker_rollback: true,
                threshold_type: "BOUNDED_PERCENT".into(),
                threshold_value: 50.0,
                reset_on_healthy_task: true,
                echo: json!({}),
            },
            placement_constraints: vec![],
            placement_strategy: vec![],
            health_check_grace_period: 0,
            propagate_tags: "NONE".into(),
            enable_ecs_managed_tags: false,
            enable_execute_command: false,
            availability_zone_rebalancing: "ENABLED".into(),
            role_arn: String::new(),
            created_at: 0.0,
            created_by: String::new(),
            client_token: None,
            fingerprint: String::new(),
            deployments: vec![],
            history: vec![],
            events: vec![],
            running_count: 0,
            pending_count: 0,
            progress: Progress::default(),
            version: 1,
            deleted_at: None,
        };
        s.deploy(revision(lb), 0.0);
        s
    }

    fn task(id: &str, dep: &str, status: &str, target: bool) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            task_arn: format!("arn:task/{id}"),
            started_by: Some(dep.into()),
            group: "service:web".into(),
            last_status: status.into(),
            desired_status: if status == "STOPPED" {
                "STOPPED"
            } else {
                "RUNNING"
            }
            .into(),
            started_at: (status == "RUNNING").then_some(1.0),
            created_at: 1.0,
            targets: if target {
                vec![TargetRef {
                    target_group: TG.into(),
                    id: format!("i-{id}"),
                    port: 80,
                }]
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    fn decide(s: &ServiceRecord, tasks: &[TaskRecord], now: f64, healthy: bool) -> Decision {
        let health = move |_: &TargetRef| {
            if healthy {
                TargetHealth::Healthy
            } else {
                TargetHealth::Unhealthy {
                    reason: "Target.ResponseCodeMismatch".into(),
                    description: "Health checks failed with these codes: [503]".into(),
                }
            }
        };
        let groups = |_: &str| {
            Some(TargetGroupInfo {
                target_type: "instance".into(),
                has_load_balancer: true,
                deregistration_delay: 5.0,
            })
        };
        plan(
            s,
            &Observed {
                now,
                tasks,
                instances: &[],
                seen_after: 0.0,
                health: &health,
                groups: &groups,
            },
        )
    }

    #[test]
    fn a_new_service_starts_its_tasks_and_reaches_steady_state() {
        let s = service(2, false);
        let d = decide(&s, &[], 10.0, true);
        let start = d.start.expect("starts");
        assert_eq!(
            (start.count, start.deployment.as_str()),
            (2, s.deployments[0].id.as_str())
        );
        let dep = s.deployments[0].id.clone();
        let tasks = [
            task("a", &dep, "RUNNING", false),
            task("b", &dep, "RUNNING", false),
        ];
        let d = decide(&d.service, &tasks, 11.0, true);
        assert!(!d.has_actions());
        let s = d.service;
        assert_eq!(
            (s.running_count, s.deployments[0].rollout_state.as_str()),
            (2, "COMPLETED")
        );
        assert_eq!(
            s.events[0].message,
            "(service web) has reached a steady state."
        );
        assert_eq!(
            s.events[1].message,
            format!("(service web) (deployment {dep}) deployment completed.")
        );
        // Nothing new: no second steady-state event until six hours pass.
        let again = decide(&s, &tasks, 12.0, true);
        assert_eq!(again.service.events.len(), s.events.len());
        let later = decide(&s, &tasks, 11.0 + events::REPEAT_AFTER_SECS, true);
        assert_eq!(later.service.events.len(), s.events.len() + 1);
    }

    #[test]
    fn a_rolling_deployment_starts_first_then_drains_then_stops() {
        let mut s = service(2, true);
        let old = s.deployments[0].id.clone();
        s.deployments[0].rollout_state = "COMPLETED".into();
        s.deploy(revision(true), 5.0);
        let new = s.deployments[0].id.clone();
        let mut tasks = vec![
            task("o1", &old, "RUNNING", true),
            task("o2", &old, "RUNNING", true),
        ];
        // 200/100: both new tasks start while the old ones keep serving.
        let d = decide(&s, &tasks, 10.0, true);
        assert_eq!(d.start.as_ref().map(|x| x.count), Some(2));
        assert!(d.stop.is_empty() && d.drain.is_empty());
        // New tasks running but not registered: they are registered, old ones stay.
        tasks.push(task("n1", &new, "RUNNING", false));
        tasks.push(task("n2", &new, "RUNNING", false));
        let d = decide(&d.service, &tasks, 11.0, true);
        assert!(d.start.is_none() && d.drain.is_empty());
        assert_eq!(d.register.len(), 0, "no instance known for the targets yet");
        // Registered and healthy: the old ones drain (deregistered, stopped after the delay).
        tasks[2].targets = task("n1", &new, "RUNNING", true).targets;
        tasks[3].targets = task("n2", &new, "RUNNING", true).targets;
        let d = decide(&d.service, &tasks, 12.0, true);
        let drained: Vec<&str> = d.drain.iter().map(|x| x.task_id.as_str()).collect();
        assert_eq!(drained, ["o1", "o2"]);
        assert!(
            d.drain
                .iter()
                .all(|x| x.until == 17.0 && x.reason == scaling_reason(&new))
        );
        assert!(d.stop.is_empty());
        for t in &mut tasks[..2] {
            t.draining_until = Some(17.0);
            t.drain_reason = Some(scaling_reason(&new));
        }
        let d = decide(&d.service, &tasks, 13.0, true);
        assert!(d.stop.is_empty() && d.requeue_at.is_some_and(|r| r <= 17.0));
        let d = decide(&d.service, &tasks, 17.5, true);
        let stopped: Vec<&str> = d.stop.iter().map(|x| x.task_id.as_str()).collect();
        assert_eq!(stopped, ["o1", "o2"]);
        // Once stopped, the old deployment is gone and the new one completes.
        for t in &mut tasks[..2] {
            t.last_status = "STOPPED".into();
            t.desired_status = "STOPPED".into();
            t.stop_code = Some(SCHEDULER_CODE.into());
            t.stopped_at = Some(18.0);
        }
        let d = decide(&d.service, &tasks, 18.5, true);
        assert_eq!(d.service.deployments.len(), 1);
        assert_eq!(d.service.deployments[0].rollout_state, "COMPLETED");
        assert_eq!(d.service.history[0].id, old);
        assert_eq!(
            d.service.deployments[0].failed_tasks, 0,
            "scheduler stops are no failures"
        );
    }

    #[test]
    fn failed_starts_trip_the_breaker_and_roll_back() {
        let mut s = service(2, false);
        let good = s.deployments[0].id.clone();
        s.deployments[0].rollout_state = "COMPLETED".into();
        s.deploy(revision(false), 5.0);
        let bad = s.deployments[0].id.clone();
        let mut tasks = vec![
            task("g1", &good, "RUNNING", false),
            task("g2", &good, "RUNNING", false),
        ];
        for (n, at) in [("b1", 6.0), ("b2", 7.0), ("b3", 8.0)] {
            let mut t = task(n, &bad, "STOPPED", false);
            t.stopped_at = Some(at);
            t.stop_code = Some("EssentialContainerExited".into());
            tasks.push(t);
        }
        let d = decide(&s, &tasks, 9.0, true);
        let s2 = &d.service;
        assert_eq!(
            s2.deployments.len(),
            2,
            "the failed deployment has no tasks left"
        );
        assert_eq!(s2.history[0].id, bad);
        assert_eq!(s2.history[0].rollout_state, "FAILED");
        assert_eq!(s2.history[0].failed_tasks, 3);
        let primary = &s2.deployments[0];
        assert_eq!(
            primary.rollout_state_reason,
            format!("ECS deployment circuit breaker: rolling back to deploymentId {good}.")
        );
        let msgs: Vec<&str> = s2.events.iter().map(|e| e.message.as_str()).collect();
        assert!(
            msgs.contains(
                &format!(
                    "(service web) (deployment {bad}) deployment failed: tasks failed to start."
                )
                .as_str()
            )
        );
        assert!(
            msgs.contains(&format!("(service web) rolling back to deployment {good}.").as_str())
        );
        assert_eq!(d.start.map(|x| x.deployment), Some(primary.id.clone()));
    }

    #[test]
    fn an_unhealthy_target_after_the_grace_period_is_replaced() {
        let mut s = service(1, true);
        s.health_check_grace_period = 30;
        let dep = s.deployments[0].id.clone();
        let tasks = [task("a", &dep, "RUNNING", true)];
        // Inside the grace period: left alone, looked at again when it ends.
        let d = decide(&s, &tasks, 10.0, false);
        assert!(d.drain.is_empty() && d.stop.is_empty());
        assert!(d.requeue_at.is_some_and(|r| r <= 31.0));
        let d = decide(&s, &tasks, 40.0, false);
        assert_eq!(d.drain.len(), 1);
        assert_eq!(
            d.drain[0].reason,
            format!("Task failed ELB health checks in (target-group {TG})")
        );
        assert_eq!(
            d.start.as_ref().map(|x| (x.count, x.replaced_unhealthy)),
            Some((1, 1))
        );
        assert!(d.service.events.iter().any(|e| e.message
            == format!("(service web) (task a) (instance i-a) (port 80) is unhealthy in (target-group {TG}) due to (reason Health checks failed with these codes: [503]).")));
    }

    #[test]
    fn a_deleted_service_stops_everything_then_goes_inactive() {
        let mut s = service(2, false);
        let dep = s.deployments[0].id.clone();
        s.status = "DRAINING".into();
        s.desired_count = 0;
        let tasks = [task("a", &dep, "RUNNING", false)];
        let d = decide(&s, &tasks, 10.0, true);
        assert_eq!(d.stop.len(), 1);
        assert!(d.start.is_none());
        assert_eq!(d.service.status, "DRAINING");
        let mut stopped = tasks[0].clone();
        stopped.last_status = "STOPPED".into();
        stopped.stopped_at = Some(11.0);
        stopped.stop_code = Some(SCHEDULER_CODE.into());
        let d = decide(&d.service, &[stopped], 12.0, true);
        assert_eq!(d.service.status, "INACTIVE");
    }

    #[test]
    fn tasks_that_never_start_back_off() {
        let mut s = service(1, false);
        s.deployments[0].config.breaker_enable = false;
        let dep = s.deployments[0].id.clone();
        let mut tasks = Vec::new();
        for (n, at) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
            let mut t = task(n, &dep, "STOPPED", false);
            t.stopped_at = Some(at);
            t.stop_code = Some("TaskFailedToStart".into());
            tasks.push(t);
        }
        let d = decide(&s, &tasks, 4.0, true);
        assert!(d.start.is_none(), "backing off");
        assert_eq!(d.service.progress.start_failures, 3);
        assert_eq!(d.service.progress.backoff_until, 14.0);
        assert_eq!(d.requeue_at, Some(14.0));
        assert_eq!(d.service.events[0].message, events::throttled("web"));
        // Once the back-off has passed, it tries again; a task that runs ends the back-off.
        let later = decide(&d.service, &tasks, 14.5, true);
        assert_eq!(later.start.map(|x| x.count), Some(1));
        let mut ok = task("d", &dep, "RUNNING", false);
        ok.started_at = Some(15.0);
        tasks.push(ok);
        let healed = decide(&later.service, &tasks, 15.0 + PROVEN_AFTER_SECS, true);
        assert_eq!(healed.service.progress.start_failures, 0);
    }

    #[test]
    fn no_progress_possible_is_reported() {
        let mut s = service(2, false);
        s.deployment_config.maximum_percent = 100;
        s.deployment_config.minimum_healthy_percent = 100;
        let old = s.deployments[0].id.clone();
        s.deployments[0].rollout_state = "COMPLETED".into();
        s.deploy(revision(false), 5.0);
        let tasks = [
            task("a", &old, "RUNNING", false),
            task("b", &old, "RUNNING", false),
        ];
        let d = decide(&s, &tasks, 10.0, true);
        assert!(!d.has_actions());
        assert_eq!(d.service.events[0].message, events::stuck("web"));
        // Reported once while it lasts.
        let again = decide(&d.service, &tasks, 11.0, true);
        assert_eq!(again.service.events.len(), d.service.events.len());
    }
}
