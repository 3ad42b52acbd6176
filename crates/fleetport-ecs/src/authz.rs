//! Which resources an ECS action is authorised on (the "resource types" of ECS's actions in the
//! Service Authorization Reference): clusters, services, tasks, container instances and task
//! definitions by their ARNs; list, register and account-wide actions on `*`.

use serde_json::Value;

use crate::Ecs;

fn strings(input: &Value, member: &str) -> Vec<String> {
    match input.get(member) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

impl Ecs {
    /// The ARN for a reference (a name or already an ARN) of a resource in a cluster.
    fn in_cluster(&self, kind: &str, cluster: &str, reference: &str) -> String {
        if reference.starts_with("arn:") {
            reference.to_string()
        } else {
            self.scope.arn(&format!("{kind}/{cluster}/{reference}"))
        }
    }

    fn cluster_ref(&self, input: &Value) -> String {
        let reference = input
            .get("cluster")
            .and_then(Value::as_str)
            .unwrap_or("default");
        self.scope
            .cluster_name(reference)
            .unwrap_or(reference)
            .to_string()
    }

    pub(crate) fn authz_resources(&self, operation: &str, input: &Value) -> Vec<String> {
        let cluster = self.cluster_ref(input);
        let cluster_arn = self.scope.cluster_arn(&cluster);
        let many = |member: &str, kind: &str| -> Vec<String> {
            strings(input, member)
                .iter()
                .map(|r| self.in_cluster(kind, &cluster, r))
                .collect()
        };
        let out = match operation {
            "CreateCluster" => vec![
                self.scope.cluster_arn(
                    input
                        .get("clusterName")
                        .and_then(Value::as_str)
                        .unwrap_or("default"),
                ),
            ],
            "DescribeClusters" => {
                let names = strings(input, "clusters");
                if names.is_empty() {
                    vec![self.scope.cluster_arn("default")]
                } else {
                    names
                        .iter()
                        .map(|r| {
                            self.scope
                                .cluster_name(r)
                                .map_or_else(|| r.clone(), |n| self.scope.cluster_arn(n))
                        })
                        .collect()
                }
            }
            "DeleteCluster"
            | "UpdateCluster"
            | "UpdateClusterSettings"
            | "PutClusterCapacityProviders"
            | "ListContainerInstances"
            | "RegisterContainerInstance"
            | "ListServices" => vec![cluster_arn],
            "CreateService" => many("serviceName", "service"),
            "UpdateService" | "DeleteService" => many("service", "service"),
            "DescribeServices" => many("services", "service"),
            "DescribeTasks" => many("tasks", "task"),
            "StopTask" => many("task", "task"),
            "DescribeContainerInstances" | "UpdateContainerInstancesState" => {
                many("containerInstances", "container-instance")
            }
            "DeregisterContainerInstance" => many("containerInstance", "container-instance"),
            "RunTask" | "StartTask" => {
                let reference = input
                    .get("taskDefinition")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                // A bare family means its latest ACTIVE revision, which is what is authorised.
                let found = fleetport_store::read(&*self.store, |txn| {
                    self.find_task_definition(txn, reference)
                })
                .ok()
                .flatten();
                match found.and_then(|td| {
                    td.get("taskDefinitionArn")
                        .and_then(Value::as_str)
                        .map(String::from)
                }) {
                    Some(arn) => vec![arn],
                    None => vec!["*".to_string()],
                }
            }
            _ => vec!["*".to_string()],
        };
        if out.is_empty() {
            vec!["*".to_string()]
        } else {
            out
        }
    }
}

/// A task definition that names a task or execution role, or a service that names its `role`,
/// hands that role to ECS: the caller needs `iam:PassRole` on it, with `iam:PassedToService`
/// naming the service that will use it (the key AWS's ECS policies condition it on).
pub(crate) fn pass_roles(
    account: &str,
    operation: &str,
    input: &Value,
) -> Vec<fleetport_proto::auth::Access> {
    // Task definitions hand their roles to the tasks (`ecs-tasks`); a service's `role` is the
    // one ECS itself uses to register targets with a classic load balancer (`ecs`).
    let (members, service): (&[&str], &str) = match operation {
        "RegisterTaskDefinition" => (
            &["taskRoleArn", "executionRoleArn"],
            "ecs-tasks.amazonaws.com",
        ),
        "CreateService" => (&["role"], "ecs.amazonaws.com"),
        _ => return Vec::new(),
    };
    members
        .iter()
        .filter_map(|m| input.get(*m).and_then(Value::as_str))
        .filter(|arn| !arn.is_empty())
        .map(|arn| fleetport_proto::auth::Access {
            action: "iam:PassRole".into(),
            // ECS also takes a role's bare name.
            resource: crate::roles::role_arn(account, arn),
            resource_policy: None,
            context: vec![("iam:PassedToService".into(), service.into())],
        })
        .collect()
}
