//! Service events in ECS's exact wording (`(service <name>) …`), newest first, capped, and with
//! identical messages suppressed while their condition lasts, as ECS does.

use super::{Event, ServiceRecord};

/// DescribeServices shows at most this many events.
pub const MAX_EVENTS: usize = 100;

/// An identical message is written again only after this long (ECS repeats e.g. the
/// steady-state event about every six hours).
pub const REPEAT_AFTER_SECS: f64 = 6.0 * 3600.0;

/// Messages that report a lasting condition: not written again while it persists.
fn is_condition(message: &str) -> bool {
    message.contains("was unable to place a task")
        || message.contains("is unable to consistently start tasks")
        || message.contains("was unable to stop or start tasks during a deployment")
        || message.contains("has reached a steady state")
}

impl ServiceRecord {
    /// Adds an event unless the same condition was already reported and has not been resolved
    /// (a steady state or a new deployment resolves conditions) within six hours.
    pub fn event(&mut self, message: String, now: f64) {
        if is_condition(&message) {
            for e in &self.events {
                if now - e.created_at >= REPEAT_AFTER_SECS {
                    break;
                }
                if e.message == message {
                    return;
                }
                // Anything after a steady state (or a steady state after a condition) means
                // the earlier condition was resolved.
                if e.message.ends_with("has reached a steady state.")
                    || e.message.contains("deployment completed")
                {
                    break;
                }
            }
        }
        self.events.insert(
            0,
            Event {
                id: uuid::Uuid::new_v4().to_string(),
                created_at: now,
                message,
            },
        );
        self.events.truncate(MAX_EVENTS);
    }

    pub fn prefix(&self) -> String {
        format!("(service {})", self.name)
    }
}

fn task_list(ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("(task {id})"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn started(svc: &str, ids: &[String], replaced_unhealthy: usize) -> String {
    let mut m = format!(
        "(service {svc}) has started {} tasks: {}.",
        ids.len(),
        task_list(ids)
    );
    if replaced_unhealthy > 0 {
        m.push_str(&format!(
            " Amazon ECS replaced {replaced_unhealthy} tasks due to an unhealthy status."
        ));
    }
    m
}

pub fn stopped_running(svc: &str, ids: &[String]) -> String {
    format!(
        "(service {svc}) has stopped {} running tasks: {}.",
        ids.len(),
        task_list(ids)
    )
}

pub fn stopped_pending(svc: &str, n: usize) -> String {
    format!("(service {svc}) stopped {n} pending tasks.")
}

pub fn draining(svc: &str, n: usize) -> String {
    format!("(service {svc}) has begun draining connections on {n} tasks.")
}

pub fn registered(svc: &str, n: usize, tg: &str) -> String {
    format!("(service {svc}) registered {n} targets in (target-group {tg})")
}

pub fn deregistered(svc: &str, n: usize, tg: &str) -> String {
    format!("(service {svc}) deregistered {n} targets in (target-group {tg})")
}

pub fn steady(svc: &str) -> String {
    format!("(service {svc}) has reached a steady state.")
}

pub fn completed(svc: &str, deployment: &str) -> String {
    format!("(service {svc}) (deployment {deployment}) deployment completed.")
}

pub fn failed(svc: &str, deployment: &str) -> String {
    format!("(service {svc}) (deployment {deployment}) deployment failed: tasks failed to start.")
}

pub fn rolling_back(svc: &str, target: &str) -> String {
    format!("(service {svc}) rolling back to deployment {target}.")
}

pub fn unhealthy_target(
    svc: &str,
    task: &str,
    instance: Option<&str>,
    port: u16,
    tg: &str,
    description: &str,
) -> String {
    let instance = instance
        .map(|i| format!(" (instance {i})"))
        .unwrap_or_default();
    format!(
        "(service {svc}) (task {task}){instance} (port {port}) is unhealthy in (target-group {tg}) due to (reason {description})."
    )
}

pub fn unhealthy_container(svc: &str, task: &str) -> String {
    format!("(service {svc}) (task {task}) failed container health checks.")
}

pub fn throttled(svc: &str) -> String {
    format!(
        "(service {svc}) is unable to consistently start tasks successfully. For more information, see the Troubleshooting section of the Amazon ECS Developer Guide."
    )
}

pub fn stuck(svc: &str) -> String {
    format!(
        "(service {svc}) was unable to stop or start tasks during a deployment because of the service deployment configuration. Update the minimumHealthyPercent or maximumPercent value and try again."
    )
}

/// ECS's "unable to place" event for placement failures (`reason` per instance, as RunTask's
/// `failures` give them); the first instance stands for "the closest matching" one.
pub fn unable_to_place(svc: &str, failures: &[(String, String)]) -> String {
    const TAIL: &str =
        "For more information, see the Troubleshooting section of the Amazon ECS Developer Guide.";
    let Some((arn, reason)) = failures
        .iter()
        .find(|(_, r)| r != "INACTIVE")
        .or(failures.first())
    else {
        return format!(
            "(service {svc}) was unable to place a task because no container instance met all of its requirements. Reason: No Container Instances were found in your cluster. {TAIL}"
        );
    };
    let id = arn.rsplit('/').next().unwrap_or(arn);
    let what = match reason.as_str() {
        "RESOURCE:MEMORY" => "has insufficient memory available.".to_string(),
        "RESOURCE:CPU" => "has insufficient CPU units available.".to_string(),
        "RESOURCE:PORTS" | "RESOURCE:PORTS_UDP" => {
            "is already using a port required by your task.".to_string()
        }
        "ATTRIBUTE" => "is missing an attribute required by your task.".to_string(),
        "INACTIVE" => "is not in an ACTIVE state.".to_string(),
        other => format!("encountered error \"{other}\"."),
    };
    format!(
        "(service {svc}) was unable to place a task because no container instance met all of its requirements. The closest matching (container-instance {id}) {what} {TAIL}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_follow_ecs() {
        assert_eq!(
            started("web", &["a".into(), "b".into()], 0),
            "(service web) has started 2 tasks: (task a) (task b)."
        );
        assert_eq!(
            unable_to_place("web", &[("arn:…/c/i1".into(), "RESOURCE:MEMORY".into())]),
            "(service web) was unable to place a task because no container instance met all of its requirements. The closest matching (container-instance i1) has insufficient memory available. For more information, see the Troubleshooting section of the Amazon ECS Developer Guide."
        );
        assert_eq!(
            unhealthy_target(
                "web",
                "t1",
                Some("i-1"),
                32768,
                "tg",
                "Health checks failed with these codes: [404]"
            ),
            "(service web) (task t1) (instance i-1) (port 32768) is unhealthy in (target-group tg) due to (reason Health checks failed with these codes: [404])."
        );
    }
}
