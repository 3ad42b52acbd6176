//! IAM groups: members (users) and the managed and inline policies that apply to every member.
//! A group is never a principal: it has no credentials and cannot be named in a `Principal`.

use fleetport_proto::input;
use fleetport_proto::{AwsError, RequestContext};
use fleetport_store::{ReadTxn, ReadTxnExt};
use http::StatusCode;
use serde_json::{Value, json};

use crate::api::{conflict, err, invalid, limit, now, page, put, read, write};
use crate::{GROUPS, GroupRecord, Iam, UserRecord, ids, store_error};

const GROUPS_PER_USER: usize = 10;

/// The groups `user` (by its stored name) belongs to.
pub(crate) fn groups_of(
    txn: &dyn ReadTxn,
    account: &str,
    user: &str,
) -> Result<Vec<GroupRecord>, AwsError> {
    Ok(txn
        .scan_json::<GroupRecord>(GROUPS, &format!("{account}/"), None, usize::MAX)
        .map_err(store_error)?
        .into_iter()
        .map(|(_, g)| g)
        .filter(|g| g.members.iter().any(|m| m == user))
        .collect())
}

fn group_json(g: &GroupRecord) -> Value {
    json!({"Path": g.path, "GroupName": g.name, "GroupId": g.id, "Arn": g.arn, "CreateDate": g.created})
}

fn user_json(u: &UserRecord) -> Value {
    json!({"Path": u.path, "UserName": u.name, "UserId": u.id, "Arn": u.arn, "CreateDate": u.created})
}

pub(crate) async fn dispatch(
    iam: &Iam,
    ctx: &RequestContext,
    operation: &str,
    input: &Value,
) -> Result<Value, AwsError> {
    let account = ctx.principal.account_id.clone();
    let group_name = input::owned(input, "GroupName");
    match operation {
        "CreateGroup" => {
            let path = input::string(input, "Path").unwrap_or("/").to_string();
            crate::api::check_path(&path)?;
            let g = GroupRecord {
                account: account.clone(),
                arn: format!("arn:aws:iam::{account}:group{path}{group_name}"),
                name: group_name,
                path,
                id: ids::unique_id("AGPA"),
                created: now(),
                members: Vec::new(),
                attached: Vec::new(),
                inline: Default::default(),
            };
            let out = group_json(&g);
            write(iam, move |txn| {
                let key = crate::holders::key(&g.account, &g.name);
                if txn.get(GROUPS, &key).map_err(store_error)?.is_some() {
                    return Err(err(
                        "EntityAlreadyExists",
                        StatusCode::CONFLICT,
                        format!("Group with name {} already exists.", g.name),
                    ));
                }
                put(txn, GROUPS, &key, &g)
            })
            .await?;
            Ok(json!({ "Group": out }))
        }
        "GetGroup" => {
            let (g, users) = read(iam, |txn| {
                let g = crate::holders::get::<GroupRecord>(txn, &account, &group_name)?;
                let mut users = Vec::new();
                for m in &g.members {
                    if let Ok(u) = crate::holders::get::<UserRecord>(txn, &account, m) {
                        users.push(user_json(&u));
                    }
                }
                Ok((g, users))
            })?;
            let mut out = page(users, input, "Users")?;
            out["Group"] = group_json(&g);
            Ok(out)
        }
        "ListGroups" => {
            let prefix = input::string(input, "PathPrefix")
                .unwrap_or("/")
                .to_string();
            let groups = read(iam, |txn| {
                txn.scan_json::<GroupRecord>(GROUPS, &format!("{account}/"), None, usize::MAX)
                    .map_err(store_error)
            })?;
            let items = groups
                .into_iter()
                .map(|(_, g)| g)
                .filter(|g| g.path.starts_with(&prefix))
                .map(|g| group_json(&g))
                .collect();
            page(items, input, "Groups")
        }
        "ListGroupsForUser" => {
            let user = input::owned(input, "UserName");
            let items = read(iam, |txn| {
                let u = crate::holders::get::<UserRecord>(txn, &account, &user)?;
                Ok(groups_of(txn, &account, &u.name)?
                    .iter()
                    .map(group_json)
                    .collect())
            })?;
            page(items, input, "Groups")
        }
        "DeleteGroup" => {
            write(iam, move |txn| {
                let g = crate::holders::get::<GroupRecord>(txn, &account, &group_name)?;
                if !g.members.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must remove users from group first.",
                    ));
                }
                if !g.inline.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must delete policies first.",
                    ));
                }
                if !g.attached.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must detach all policies first.",
                    ));
                }
                txn.delete(GROUPS, &crate::holders::key(&account, &group_name))
                    .map_err(store_error)?;
                Ok(())
            })
            .await?;
            Ok(json!({}))
        }
        "AddUserToGroup" | "RemoveUserFromGroup" => {
            let user = input::owned(input, "UserName");
            let add = operation == "AddUserToGroup";
            write(iam, move |txn| {
                let mut g = crate::holders::get::<GroupRecord>(txn, &account, &group_name)?;
                let u = crate::holders::get::<UserRecord>(txn, &account, &user)?;
                if add {
                    if g.members.contains(&u.name) {
                        return Ok(());
                    }
                    if groups_of(txn, &account, &u.name)?.len() >= GROUPS_PER_USER {
                        return Err(limit(format!(
                            "Cannot exceed quota for GroupsPerUser: {GROUPS_PER_USER}"
                        )));
                    }
                    g.members.push(u.name);
                } else {
                    if !g.members.contains(&u.name) {
                        return Err(err(
                            "NoSuchEntity",
                            StatusCode::NOT_FOUND,
                            format!("User {} is not in group {}.", u.name, g.name),
                        ));
                    }
                    g.members.retain(|m| *m != u.name);
                }
                put(txn, GROUPS, &crate::holders::key(&account, &group_name), &g)
            })
            .await?;
            Ok(json!({}))
        }
        _ => Err(invalid(format!(
            "The action {operation} is not valid for this web service."
        ))),
    }
}
