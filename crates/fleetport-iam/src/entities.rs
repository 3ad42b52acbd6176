//! Who uses a managed policy (ListEntitiesForPolicy, and the AttachmentCount policies report),
//! and the tags of users and roles.

use fleetport_proto::input;
use fleetport_proto::{AwsError, RequestContext};
use fleetport_store::{ReadTxn, ReadTxnExt};
use http::StatusCode;
use serde_json::{Value, json};

use crate::api::{err, invalid, page, parse_policy_arn, put, read, write};
use crate::{GROUPS, GroupRecord, Iam, ROLES, RoleRecord, USERS, UserRecord, store_error};

const MAX_TAGS: usize = 50;

fn scan<T: serde::de::DeserializeOwned>(
    txn: &dyn ReadTxn,
    collection: &str,
    account: &str,
) -> Result<Vec<T>, AwsError> {
    Ok(txn
        .scan_json::<T>(collection, &format!("{account}/"), None, usize::MAX)
        .map_err(store_error)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// How many users, groups and roles of the account have the policy attached.
pub(crate) fn attachments(txn: &dyn ReadTxn, account: &str, arn: &str) -> Result<usize, AwsError> {
    let users = scan::<UserRecord>(txn, USERS, account)?;
    let groups = scan::<GroupRecord>(txn, GROUPS, account)?;
    let roles = scan::<RoleRecord>(txn, ROLES, account)?;
    Ok(users
        .iter()
        .filter(|u| u.attached.iter().any(|a| a == arn))
        .count()
        + groups
            .iter()
            .filter(|g| g.attached.iter().any(|a| a == arn))
            .count()
        + roles
            .iter()
            .filter(|r| r.attached.iter().any(|a| a == arn))
            .count())
}

/// Tags merged as IAM merges them: a key given again replaces its value.
fn merge_tags(existing: &mut Vec<Value>, new: Vec<Value>) -> Result<(), AwsError> {
    for t in new {
        let key = t
            .get("Key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        existing.retain(|e| e.get("Key").and_then(Value::as_str) != Some(&key));
        existing.push(t);
    }
    if existing.len() > MAX_TAGS {
        return Err(err(
            "LimitExceeded",
            StatusCode::CONFLICT,
            format!("The number of tags has reached the maximum limit of {MAX_TAGS}."),
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
    match operation {
        "ListEntitiesForPolicy" => {
            let arn = input::owned(input, "PolicyArn");
            parse_policy_arn(&arn)?;
            let filter = input::string(input, "EntityFilter")
                .unwrap_or("")
                .to_string();
            let prefix = input::string(input, "PathPrefix")
                .unwrap_or("/")
                .to_string();
            let wants = |kind: &str| {
                filter.is_empty()
                    || filter == kind
                    || filter == "LocalManagedPolicy"
                    || filter == "AWSManagedPolicy"
            };
            let (users, groups, roles) = read(iam, |txn| {
                if crate::managed::find(&arn).is_none() {
                    crate::api::customer_policy(txn, &account, &arn)?;
                }
                Ok((
                    scan::<UserRecord>(txn, USERS, &account)?,
                    scan::<GroupRecord>(txn, GROUPS, &account)?,
                    scan::<RoleRecord>(txn, ROLES, &account)?,
                ))
            })?;
            let has = |a: &[String]| a.contains(&arn);
            let mut out = page(Vec::new(), input, "PolicyUsers")?;
            out["PolicyUsers"] = json!(
                users
                    .iter()
                    .filter(|u| wants("User") && has(&u.attached) && u.path.starts_with(&prefix))
                    .map(|u| json!({"UserName": u.name, "UserId": u.id}))
                    .collect::<Vec<_>>()
            );
            out["PolicyGroups"] = json!(
                groups
                    .iter()
                    .filter(|g| wants("Group") && has(&g.attached) && g.path.starts_with(&prefix))
                    .map(|g| json!({"GroupName": g.name, "GroupId": g.id}))
                    .collect::<Vec<_>>()
            );
            out["PolicyRoles"] = json!(
                roles
                    .iter()
                    .filter(|r| wants("Role") && has(&r.attached) && r.path.starts_with(&prefix))
                    .map(|r| json!({"RoleName": r.name, "RoleId": r.id}))
                    .collect::<Vec<_>>()
            );
            Ok(out)
        }
        "TagUser" | "UntagUser" | "ListUserTags" => {
            let name = input::owned(input, "UserName");
            let key = crate::holders::key(&account, &name);
            let missing = move || {
                err(
                    "NoSuchEntity",
                    StatusCode::NOT_FOUND,
                    format!("The user with name {name} cannot be found."),
                )
            };
            if operation == "ListUserTags" {
                let u = read(iam, |txn| {
                    txn.get_json::<UserRecord>(USERS, &key).map_err(store_error)
                })?
                .ok_or_else(missing)?;
                return page(u.tags, input, "Tags");
            }
            let tags = input::items(input, "Tags");
            let remove = input::strings(input, "TagKeys");
            write(iam, move |txn| {
                let mut u = txn
                    .get_json::<UserRecord>(USERS, &key)
                    .map_err(store_error)?
                    .ok_or_else(missing)?;
                merge_tags(&mut u.tags, tags)?;
                u.tags.retain(|t| {
                    !remove
                        .iter()
                        .any(|k| t.get("Key").and_then(Value::as_str) == Some(k))
                });
                put(txn, USERS, &key, &u)?;
                Ok(json!({}))
            })
            .await
        }
        "TagRole" | "UntagRole" | "ListRoleTags" => {
            let name = input::owned(input, "RoleName");
            let key = crate::holders::key(&account, &name);
            let missing = move || {
                err(
                    "NoSuchEntity",
                    StatusCode::NOT_FOUND,
                    format!("The role with name {name} cannot be found."),
                )
            };
            if operation == "ListRoleTags" {
                let r = read(iam, |txn| {
                    txn.get_json::<RoleRecord>(ROLES, &key).map_err(store_error)
                })?
                .ok_or_else(missing)?;
                return page(r.tags, input, "Tags");
            }
            let tags = input::items(input, "Tags");
            let remove = input::strings(input, "TagKeys");
            write(iam, move |txn| {
                let mut r = txn
                    .get_json::<RoleRecord>(ROLES, &key)
                    .map_err(store_error)?
                    .ok_or_else(missing)?;
                merge_tags(&mut r.tags, tags)?;
                r.tags.retain(|t| {
                    !remove
                        .iter()
                        .any(|k| t.get("Key").and_then(Value::as_str) == Some(k))
                });
                put(txn, ROLES, &key, &r)?;
                Ok(json!({}))
            })
            .await
        }
        _ => Err(invalid(format!(
            "The action {operation} is not valid for this web service."
        ))),
    }
}
