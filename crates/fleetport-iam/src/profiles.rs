//! Instance profiles (one role each; EC2 instances will take them) and service-linked roles:
//! the roles AWS services create for themselves (`AWSServiceRoleForECS`), trusting the service,
//! with the service's policy attached, and protected from edits.

use fleetport_proto::input;
use fleetport_proto::{AwsError, RequestContext};
use fleetport_store::{ReadTxn, ReadTxnExt};
use http::StatusCode;
use serde_json::{Value, json};

use crate::api::{conflict, err, invalid, limit, now, page, put, read, write};
use crate::roles::role_json;
use crate::{INSTANCE_PROFILES, Iam, ProfileRecord, ROLES, RoleRecord, ids, store_error};

/// Service principal → (role name, attached policy ARN, description).
const SERVICE_LINKED: &[(&str, &str, &str, &str)] = &[
    (
        "ecs.amazonaws.com",
        "AWSServiceRoleForECS",
        "arn:aws:iam::aws:policy/aws-service-role/AmazonECSServiceRolePolicy",
        "Role to enable Amazon ECS to manage your cluster.",
    ),
    (
        "elasticloadbalancing.amazonaws.com",
        "AWSServiceRoleForElasticLoadBalancing",
        "arn:aws:iam::aws:policy/aws-service-role/AWSElasticLoadBalancingServiceRolePolicy",
        "Allows ELB to call AWS services on your behalf.",
    ),
    (
        "replication.ecr.amazonaws.com",
        "AWSServiceRoleForECRReplication",
        "arn:aws:iam::aws:policy/aws-service-role/ECRReplicationServiceRolePolicy",
        "Allows ECR to replicate images across regions and accounts.",
    ),
];

fn get_profile(txn: &dyn ReadTxn, account: &str, name: &str) -> Result<ProfileRecord, AwsError> {
    txn.get_json::<ProfileRecord>(INSTANCE_PROFILES, &crate::holders::key(account, name))
        .map_err(store_error)?
        .ok_or_else(|| {
            err(
                "NoSuchEntity",
                StatusCode::NOT_FOUND,
                format!("Instance Profile {name} cannot be found."),
            )
        })
}

fn profile_json(txn: &dyn ReadTxn, p: &ProfileRecord) -> Result<Value, AwsError> {
    let mut roles = Vec::new();
    for r in &p.roles {
        if let Ok(role) = crate::holders::get::<RoleRecord>(txn, &p.account, r) {
            roles.push(role_json(&role, false));
        }
    }
    let mut v = json!({
        "Path": p.path, "InstanceProfileName": p.name, "InstanceProfileId": p.id, "Arn": p.arn,
        "CreateDate": p.created, "Roles": roles,
    });
    if !p.tags.is_empty() {
        v["Tags"] = json!(p.tags);
    }
    Ok(v)
}

/// The instance profiles that hold a role.
pub(crate) fn profiles_of(
    txn: &dyn ReadTxn,
    account: &str,
    role: &str,
) -> Result<Vec<ProfileRecord>, AwsError> {
    Ok(txn
        .scan_json::<ProfileRecord>(INSTANCE_PROFILES, &format!("{account}/"), None, usize::MAX)
        .map_err(store_error)?
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.roles.iter().any(|r| r.eq_ignore_ascii_case(role)))
        .collect())
}

fn service_linked_role(
    account: &str,
    service: &str,
    role_name: &str,
    policy: &str,
    description: &str,
) -> RoleRecord {
    let path = format!("/aws-service-role/{service}/");
    RoleRecord {
        account: account.to_string(),
        arn: format!("arn:aws:iam::{account}:role{path}{role_name}"),
        name: role_name.to_string(),
        path,
        id: ids::unique_id("AROA"),
        created: now(),
        trust: json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})
        .to_string(),
        description: Some(description.to_string()),
        max_session_duration: 3600,
        tags: Vec::new(),
        attached: vec![policy.to_string()],
        inline: Default::default(),
        service_linked: true,
        boundary: None,
    }
}

impl Iam {
    /// Creates the service-linked role of `service` (`ecs.amazonaws.com`) in `account` unless
    /// a role of its name exists: what AWS services do on their first use.
    pub async fn ensure_service_linked_role(
        &self,
        account: &str,
        service: &str,
    ) -> Result<(), AwsError> {
        let Some((_, role_name, policy, description)) =
            SERVICE_LINKED.iter().find(|(s, ..)| *s == service)
        else {
            return Err(invalid(format!("no service-linked role for {service}")));
        };
        let key = crate::holders::key(account, role_name);
        let exists = read(self, |txn| {
            txn.get(ROLES, &key)
                .map(|v| v.is_some())
                .map_err(store_error)
        })?;
        if exists {
            return Ok(());
        }
        let role = service_linked_role(account, service, role_name, policy, description);
        write(self, move |txn| {
            if txn.get(ROLES, &key).map_err(store_error)?.is_none() {
                put(txn, ROLES, &key, &role)?;
            }
            Ok(())
        })
        .await
    }
}

/// The refusal IAM gives for edits of a service-linked role.
pub(crate) fn protected(role: &RoleRecord) -> Result<(), AwsError> {
    if role.service_linked {
        return Err(AwsError::client(
            "UnmodifiableEntity",
            format!(
                "Cannot perform the operation on the protected role '{}' - this role is only modifiable by AWS",
                role.name
            ),
        ));
    }
    Ok(())
}

pub(crate) async fn dispatch(
    iam: &Iam,
    ctx: &RequestContext,
    operation: &str,
    input: &Value,
) -> Result<Value, AwsError> {
    let account = ctx.principal.account_id.clone();
    let name = input::owned(input, "InstanceProfileName");
    match operation {
        "CreateInstanceProfile" => {
            let path = input::string(input, "Path").unwrap_or("/").to_string();
            crate::api::check_path(&path)?;
            let p = ProfileRecord {
                account: account.clone(),
                arn: format!("arn:aws:iam::{account}:instance-profile{path}{name}"),
                name,
                path,
                id: ids::unique_id("AIPA"),
                created: now(),
                roles: Vec::new(),
                tags: input::items(input, "Tags"),
            };
            write(iam, move |txn| {
                let key = crate::holders::key(&p.account, &p.name);
                if txn
                    .get(INSTANCE_PROFILES, &key)
                    .map_err(store_error)?
                    .is_some()
                {
                    return Err(err(
                        "EntityAlreadyExists",
                        StatusCode::CONFLICT,
                        format!("Instance Profile {} already exists.", p.name),
                    ));
                }
                put(txn, INSTANCE_PROFILES, &key, &p)?;
                Ok(json!({ "InstanceProfile": profile_json(txn, &p)? }))
            })
            .await
        }
        "GetInstanceProfile" => read(iam, |txn| {
            let p = get_profile(txn, &account, &name)?;
            Ok(json!({ "InstanceProfile": profile_json(txn, &p)? }))
        }),
        "ListInstanceProfiles" | "ListInstanceProfilesForRole" => {
            let prefix = input::string(input, "PathPrefix")
                .unwrap_or("/")
                .to_string();
            let role = input::string(input, "RoleName").map(String::from);
            let items = read(iam, |txn| {
                let list = match &role {
                    Some(r) => {
                        crate::holders::get::<RoleRecord>(txn, &account, r)?;
                        profiles_of(txn, &account, r)?
                    }
                    None => txn
                        .scan_json::<ProfileRecord>(
                            INSTANCE_PROFILES,
                            &format!("{account}/"),
                            None,
                            usize::MAX,
                        )
                        .map_err(store_error)?
                        .into_iter()
                        .map(|(_, p)| p)
                        .filter(|p| p.path.starts_with(&prefix))
                        .collect(),
                };
                list.iter().map(|p| profile_json(txn, p)).collect()
            })?;
            page(items, input, "InstanceProfiles")
        }
        "DeleteInstanceProfile" => {
            write(iam, move |txn| {
                let p = get_profile(txn, &account, &name)?;
                if !p.roles.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must remove roles from instance profile first.",
                    ));
                }
                txn.delete(INSTANCE_PROFILES, &crate::holders::key(&account, &name))
                    .map_err(store_error)?;
                Ok(json!({}))
            })
            .await
        }
        "AddRoleToInstanceProfile" | "RemoveRoleFromInstanceProfile" => {
            let role = input::owned(input, "RoleName");
            let add = operation == "AddRoleToInstanceProfile";
            write(iam, move |txn| {
                let mut p = get_profile(txn, &account, &name)?;
                let r = crate::holders::get::<RoleRecord>(txn, &account, &role)?;
                if add {
                    if !p.roles.is_empty() {
                        return Err(limit(
                            "Cannot exceed quota for InstanceSessionsPerInstanceProfile: 1",
                        ));
                    }
                    p.roles.push(r.name);
                } else {
                    if !p.roles.contains(&r.name) {
                        return Err(err(
                            "NoSuchEntity",
                            StatusCode::NOT_FOUND,
                            format!(
                                "The role with name {} cannot be found in instance profile {}.",
                                r.name, p.name
                            ),
                        ));
                    }
                    p.roles.retain(|x| *x != r.name);
                }
                put(
                    txn,
                    INSTANCE_PROFILES,
                    &crate::holders::key(&account, &name),
                    &p,
                )?;
                Ok(json!({}))
            })
            .await
        }
        "CreateServiceLinkedRole" => {
            let service = input::owned(input, "AWSServiceName");
            let Some((_, role_name, policy, description)) =
                SERVICE_LINKED.iter().find(|(s, ..)| *s == service)
            else {
                return Err(invalid(format!(
                    "Service role creation is not supported for {service} by Fleetport; supported: {}",
                    SERVICE_LINKED
                        .iter()
                        .map(|(s, ..)| *s)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if input::string(input, "CustomSuffix").is_some() {
                return Err(invalid(format!(
                    "Custom suffix is not allowed for {service}"
                )));
            }
            let role = service_linked_role(
                &account,
                &service,
                role_name,
                policy,
                input::string(input, "Description").unwrap_or(description),
            );
            let out = role_json(&role, true);
            write(iam, move |txn| {
                let key = crate::holders::key(&role.account, &role.name);
                if txn.get(ROLES, &key).map_err(store_error)?.is_some() {
                    return Err(invalid(format!(
                        "Service role name {} has been taken in this account, please try a different suffix.",
                        role.name
                    )));
                }
                put(txn, ROLES, &key, &role)?;
                Ok(json!({ "Role": out }))
            })
            .await
        }
        "DeleteServiceLinkedRole" => {
            let role = input::owned(input, "RoleName");
            write(iam, move |txn| {
                let r = crate::holders::get::<RoleRecord>(txn, &account, &role)?;
                if !r.service_linked {
                    return Err(invalid(format!("{role} is not a service-linked role.")));
                }
                txn.delete(ROLES, &crate::holders::key(&account, &r.name))
                    .map_err(store_error)?;
                let service = r
                    .path
                    .trim_matches('/')
                    .trim_start_matches("aws-service-role/");
                Ok(json!({"DeletionTaskId": format!(
                    "task/aws-service-role/{service}/{}/{}", r.name, uuid::Uuid::new_v4()
                )}))
            })
            .await
        }
        "GetServiceLinkedRoleDeletionStatus" => {
            let id = input::owned(input, "DeletionTaskId");
            // task/aws-service-role/<service>/<role>/<uuid>: deletion is immediate here, so
            // it has succeeded once the role is gone.
            let parts: Vec<&str> = id.split('/').collect();
            let [_, "aws-service-role", _, role, _] = parts.as_slice() else {
                return Err(invalid(format!("Invalid deletion task id {id}.")));
            };
            let exists = read(iam, |txn| {
                Ok(crate::holders::get::<RoleRecord>(txn, &account, role).is_ok())
            })?;
            Ok(json!({"Status": if exists { "IN_PROGRESS" } else { "SUCCEEDED" }}))
        }
        _ => Err(invalid(format!(
            "The action {operation} is not valid for this web service."
        ))),
    }
}
