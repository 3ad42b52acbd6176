//! IAM roles: trust policies (checked as IAM checks them: principals required, no resource,
//! named users and roles must exist), their managed and inline policies, and the settings STS
//! reads when a role is assumed.

use fleetport_proto::input;
use fleetport_proto::{AwsError, RequestContext};
use fleetport_store::{ReadTxn, ReadTxnExt};
use http::StatusCode;
use serde_json::{Value, json};

use crate::api::{
    conflict, encode_document, err, invalid, limit, malformed, now, page, put, read, write,
};
use crate::policy::{self, Kind};
use crate::{Iam, ROLES, RoleRecord, USERS, UserRecord, ids, store_error};

const TRUST_POLICY_SIZE: usize = 2048;

/// The role an ARN names, if it exists in `account`.
pub(crate) fn role_by_arn(
    txn: &dyn ReadTxn,
    account: &str,
    arn: &str,
) -> Result<Option<RoleRecord>, AwsError> {
    let Some(name) = arn
        .strip_prefix(&format!("arn:aws:iam::{account}:role/"))
        .and_then(|rest| rest.rsplit('/').next())
    else {
        return Ok(None);
    };
    Ok(txn
        .get_json::<RoleRecord>(ROLES, &crate::holders::key(account, name))
        .map_err(store_error)?
        .filter(|r| r.arn == arn))
}

/// A trust policy as IAM accepts it: grammar, size, and principals that exist.
fn check_trust(txn: &dyn ReadTxn, account: &str, doc: &str) -> Result<(), AwsError> {
    if doc.chars().filter(|c| !c.is_whitespace()).count() > TRUST_POLICY_SIZE {
        return Err(limit(format!(
            "Cannot exceed quota for ACLSizePerRole: {TRUST_POLICY_SIZE}"
        )));
    }
    let parsed = policy::parse(doc, Kind::Trust).map_err(malformed)?;
    for st in &parsed.statements {
        let Some(p) = &st.principals else { continue };
        for arn in &p.aws {
            let exists =
                if let Some(rest) = arn.strip_prefix(&format!("arn:aws:iam::{account}:user/")) {
                    let name = rest.rsplit('/').next().unwrap_or_default();
                    txn.get_json::<UserRecord>(USERS, &crate::holders::key(account, name))
                        .map_err(store_error)?
                        .is_some_and(|u| u.arn == *arn)
                } else if arn.starts_with(&format!("arn:aws:iam::{account}:role/")) {
                    role_by_arn(txn, account, arn)?.is_some()
                } else {
                    // `*`, account IDs and `…:root` (of any account) need no lookup.
                    arn == "*"
                        || (arn.len() == 12 && arn.bytes().all(|b| b.is_ascii_digit()))
                        || (arn.starts_with("arn:aws:iam::") && arn.ends_with(":root"))
                };
            if !exists {
                return Err(AwsError::client(
                    "MalformedPolicyDocument",
                    format!("Invalid principal in policy: \"AWS\":\"{arn}\""),
                ));
            }
        }
    }
    Ok(())
}

pub(crate) fn role_json(r: &RoleRecord, full: bool) -> Value {
    let mut v = json!({
        "Path": r.path, "RoleName": r.name, "RoleId": r.id, "Arn": r.arn, "CreateDate": r.created,
        "AssumeRolePolicyDocument": encode_document(&r.trust),
        "MaxSessionDuration": r.max_session_duration,
    });
    if let Some(d) = &r.description {
        v["Description"] = json!(d);
    }
    if full && let Some(b) = &r.boundary {
        v["PermissionsBoundary"] = crate::api::boundary_json(b);
    }
    if full {
        if !r.tags.is_empty() {
            v["Tags"] = json!(r.tags);
        }
        v["RoleLastUsed"] = json!({});
    }
    v
}

pub(crate) async fn dispatch(
    iam: &Iam,
    ctx: &RequestContext,
    operation: &str,
    input: &Value,
) -> Result<Value, AwsError> {
    let account = ctx.principal.account_id.clone();
    match operation {
        "CreateRole" => {
            let name = input::owned(input, "RoleName");
            let path = input::string(input, "Path").unwrap_or("/").to_string();
            crate::api::check_path(&path)?;
            let trust = input::owned(input, "AssumeRolePolicyDocument");
            let max = input
                .get("MaxSessionDuration")
                .and_then(Value::as_i64)
                .unwrap_or(3600);
            let role = RoleRecord {
                account: account.clone(),
                arn: format!("arn:aws:iam::{account}:role{path}{name}"),
                name,
                path,
                id: ids::unique_id("AROA"),
                created: now(),
                trust,
                description: input::string(input, "Description").map(String::from),
                max_session_duration: max,
                tags: input::items(input, "Tags"),
                attached: Vec::new(),
                inline: Default::default(),
                service_linked: false,
                boundary: None,
            };
            let boundary = input::string(input, "PermissionsBoundary").map(String::from);
            let out = write(iam, move |txn| {
                let mut role = role;
                role.boundary =
                    crate::api::boundary_input(txn, &role.account, boundary.as_deref())?;
                let key = crate::holders::key(&role.account, &role.name);
                if txn.get(ROLES, &key).map_err(store_error)?.is_some() {
                    return Err(err(
                        "EntityAlreadyExists",
                        StatusCode::CONFLICT,
                        format!("Role with name {} already exists.", role.name),
                    ));
                }
                check_trust(txn, &role.account, &role.trust)?;
                put(txn, ROLES, &key, &role)?;
                Ok(role_json(&role, true))
            })
            .await?;
            Ok(json!({ "Role": out }))
        }
        "GetRole" => {
            let name = input::owned(input, "RoleName");
            read(iam, |txn| {
                Ok(
                    json!({ "Role": role_json(&crate::holders::get::<RoleRecord>(txn, &account, &name)?, true) }),
                )
            })
        }
        "ListRoles" => {
            let prefix = input::string(input, "PathPrefix")
                .unwrap_or("/")
                .to_string();
            let roles = read(iam, |txn| {
                txn.scan_json::<RoleRecord>(ROLES, &format!("{account}/"), None, usize::MAX)
                    .map_err(store_error)
            })?;
            let items = roles
                .into_iter()
                .map(|(_, r)| r)
                .filter(|r| r.path.starts_with(&prefix))
                .map(|r| role_json(&r, false))
                .collect();
            page(items, input, "Roles")
        }
        "DeleteRole" => {
            let name = input::owned(input, "RoleName");
            write(iam, move |txn| {
                let r = crate::holders::get::<RoleRecord>(txn, &account, &name)?;
                crate::profiles::protected(&r)?;
                if !crate::profiles::profiles_of(txn, &account, &r.name)?.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must remove roles from instance profile first.",
                    ));
                }
                if !r.inline.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must delete policies first.",
                    ));
                }
                if !r.attached.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must detach all policies first.",
                    ));
                }
                txn.delete(ROLES, &crate::holders::key(&account, &name))
                    .map_err(store_error)?;
                Ok(())
            })
            .await?;
            Ok(json!({}))
        }
        "UpdateAssumeRolePolicy" | "UpdateRole" => {
            let name = input::owned(input, "RoleName");
            let trust = input::string(input, "PolicyDocument").map(String::from);
            let description = input::string(input, "Description").map(String::from);
            let max = input.get("MaxSessionDuration").and_then(Value::as_i64);
            write(iam, move |txn| {
                let mut r = crate::holders::get::<RoleRecord>(txn, &account, &name)?;
                crate::profiles::protected(&r)?;
                if let Some(t) = trust {
                    check_trust(txn, &account, &t)?;
                    r.trust = t;
                }
                if description.is_some() {
                    r.description = description;
                }
                if let Some(m) = max {
                    r.max_session_duration = m;
                }
                put(txn, ROLES, &crate::holders::key(&account, &name), &r)
            })
            .await?;
            Ok(json!({}))
        }
        _ => Err(invalid(format!(
            "The action {operation} is not valid for this web service."
        ))),
    }
}
