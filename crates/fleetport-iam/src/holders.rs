//! The policies of users, groups and roles, handled once for the three: managed policies
//! attached (Attach/Detach/ListAttached…Policies) and inline ones embedded
//! (Put/Get/List/Delete…Policy), with IAM's quotas and texts.

use std::collections::BTreeMap;

use fleetport_proto::AwsError;
use fleetport_proto::input;
use fleetport_store::{ReadTxn, ReadTxnExt};
use http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::{
    customer_policy, encode_document, err, limit, no_such_policy, page, parse_policy_arn, put,
    read, validate_document, write,
};
use crate::{GROUPS, GroupRecord, Iam, ROLES, RoleRecord, USERS, UserRecord, managed, store_error};

/// An IAM identity that holds policies.
pub(crate) trait Holder: Serialize + DeserializeOwned + Send + 'static {
    /// As in the operation names: `User`, `Group`, `Role`.
    const KIND: &'static str;
    const COLLECTION: &'static str;
    const MAX_MANAGED: usize;
    /// The quota on its inline policies together, in characters without whitespace.
    const INLINE_TOTAL: usize;
    fn name(&self) -> &str;
    fn attached(&mut self) -> &mut Vec<String>;
    fn inline(&mut self) -> &mut BTreeMap<String, String>;
    /// Its permissions boundary; None for groups, which have none.
    fn boundary(&mut self) -> Option<&mut Option<String>> {
        None
    }
    /// Whether the caller may change its policies (service-linked roles refuse).
    fn editable(&self) -> Result<(), AwsError> {
        Ok(())
    }
}

impl Holder for UserRecord {
    const KIND: &'static str = "User";
    const COLLECTION: &'static str = USERS;
    const MAX_MANAGED: usize = 10;
    const INLINE_TOTAL: usize = 2048;
    fn name(&self) -> &str {
        &self.name
    }
    fn boundary(&mut self) -> Option<&mut Option<String>> {
        Some(&mut self.boundary)
    }
    fn attached(&mut self) -> &mut Vec<String> {
        &mut self.attached
    }
    fn inline(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.inline
    }
}

impl Holder for GroupRecord {
    const KIND: &'static str = "Group";
    const COLLECTION: &'static str = GROUPS;
    const MAX_MANAGED: usize = 10;
    const INLINE_TOTAL: usize = 5120;
    fn name(&self) -> &str {
        &self.name
    }
    fn attached(&mut self) -> &mut Vec<String> {
        &mut self.attached
    }
    fn inline(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.inline
    }
}

impl Holder for RoleRecord {
    const KIND: &'static str = "Role";
    const COLLECTION: &'static str = ROLES;
    const MAX_MANAGED: usize = 10;
    const INLINE_TOTAL: usize = 10_240;
    fn name(&self) -> &str {
        &self.name
    }
    fn boundary(&mut self) -> Option<&mut Option<String>> {
        Some(&mut self.boundary)
    }
    fn attached(&mut self) -> &mut Vec<String> {
        &mut self.attached
    }
    fn inline(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.inline
    }
    fn editable(&self) -> Result<(), AwsError> {
        crate::profiles::protected(self)
    }
}

/// Users, groups and roles are keyed alike: their names are unique case-insensitively.
pub(crate) fn key(account: &str, name: &str) -> String {
    format!("{account}/{}", name.to_lowercase())
}

pub(crate) fn get<H: Holder>(txn: &dyn ReadTxn, account: &str, name: &str) -> Result<H, AwsError> {
    txn.get_json::<H>(H::COLLECTION, &key(account, name))
        .map_err(store_error)?
        .ok_or_else(|| {
            err(
                "NoSuchEntity",
                StatusCode::NOT_FOUND,
                format!(
                    "The {} with name {name} cannot be found.",
                    H::KIND.to_lowercase()
                ),
            )
        })
}

/// Answers the seven policy operations of users, groups and roles; None for other operations.
pub(crate) async fn dispatch(
    iam: &Iam,
    account: &str,
    operation: &str,
    input: &Value,
) -> Option<Result<Value, AwsError>> {
    for kind in ["User", "Group", "Role"] {
        if !operation.contains(kind) {
            continue;
        }
        let generic = operation.replacen(kind, "", 1);
        if !matches!(
            generic.as_str(),
            "AttachPolicy"
                | "DetachPolicy"
                | "ListAttachedPolicies"
                | "PutPolicy"
                | "GetPolicy"
                | "ListPolicies"
                | "DeletePolicy"
                | "PutPermissionsBoundary"
                | "DeletePermissionsBoundary"
        ) {
            continue;
        }
        return Some(match kind {
            "User" => handle::<UserRecord>(iam, account, &generic, input).await,
            "Group" => handle::<GroupRecord>(iam, account, &generic, input).await,
            _ => handle::<RoleRecord>(iam, account, &generic, input).await,
        });
    }
    None
}

async fn handle<H: Holder>(
    iam: &Iam,
    account: &str,
    generic: &str,
    input: &Value,
) -> Result<Value, AwsError> {
    let account = account.to_string();
    let name = input::owned(input, &format!("{}Name", H::KIND));
    match generic {
        "AttachPolicy" | "DetachPolicy" => {
            let arn = input::owned(input, "PolicyArn");
            parse_policy_arn(&arn)?;
            let attach = generic == "AttachPolicy";
            write(iam, move |txn| {
                let mut h = get::<H>(txn, &account, &name)?;
                h.editable()?;
                if attach {
                    let exists = managed::find(&arn).is_some()
                        || customer_policy(txn, &account, &arn).is_ok();
                    if !exists {
                        return Err(no_such_policy(&arn));
                    }
                    if h.attached().contains(&arn) {
                        return Ok(json!({}));
                    }
                    if h.attached().len() >= H::MAX_MANAGED {
                        return Err(limit(format!(
                            "Cannot exceed quota for PoliciesPer{}: {}",
                            H::KIND,
                            H::MAX_MANAGED
                        )));
                    }
                    h.attached().push(arn);
                } else {
                    if !h.attached().contains(&arn) {
                        return Err(err(
                            "NoSuchEntity",
                            StatusCode::NOT_FOUND,
                            format!("Policy {arn} was not found."),
                        ));
                    }
                    h.attached().retain(|a| *a != arn);
                }
                put(txn, H::COLLECTION, &key(&account, &name), &h)?;
                Ok(json!({}))
            })
            .await
        }
        "ListAttachedPolicies" => {
            let prefix = input::string(input, "PathPrefix")
                .unwrap_or("/")
                .to_string();
            let items = read(iam, |txn| {
                let mut h = get::<H>(txn, &account, &name)?;
                Ok(h.attached()
                    .iter()
                    .filter(|arn| {
                        let path = arn.split_once(":policy").map_or("", |(_, p)| p);
                        path.starts_with(&prefix)
                    })
                    .map(|arn| {
                        json!({"PolicyName": arn.rsplit('/').next().unwrap_or_default(), "PolicyArn": arn})
                    })
                    .collect())
            })?;
            page(items, input, "AttachedPolicies")
        }
        "PutPolicy" => {
            let policy_name = input::owned(input, "PolicyName");
            let doc = input::owned(input, "PolicyDocument");
            validate_document(&doc)?;
            write(iam, move |txn| {
                let mut h = get::<H>(txn, &account, &name)?;
                h.editable()?;
                h.inline().insert(policy_name, doc);
                let total: usize = h
                    .inline()
                    .values()
                    .map(|d| d.chars().filter(|c| !c.is_whitespace()).count())
                    .sum();
                if total > H::INLINE_TOTAL {
                    return Err(limit(format!(
                        "Maximum policy size of {} bytes exceeded for {} {}",
                        H::INLINE_TOTAL,
                        H::KIND.to_lowercase(),
                        h.name()
                    )));
                }
                put(txn, H::COLLECTION, &key(&account, &name), &h)?;
                Ok(json!({}))
            })
            .await
        }
        "GetPolicy" => {
            let policy_name = input::owned(input, "PolicyName");
            read(iam, |txn| {
                let mut h = get::<H>(txn, &account, &name)?;
                let doc = h
                    .inline()
                    .get(&policy_name)
                    .cloned()
                    .ok_or_else(|| no_such_inline::<H>(&policy_name))?;
                let mut out =
                    json!({"PolicyName": policy_name, "PolicyDocument": encode_document(&doc)});
                out[format!("{}Name", H::KIND)] = json!(h.name());
                Ok(out)
            })
        }
        "PutPermissionsBoundary" | "DeletePermissionsBoundary" => {
            let arn = input::string(input, "PermissionsBoundary").map(String::from);
            if let Some(a) = &arn {
                parse_policy_arn(a)?;
            }
            write(iam, move |txn| {
                let mut h = get::<H>(txn, &account, &name)?;
                h.editable()?;
                if let Some(a) = &arn
                    && managed::find(a).is_none()
                    && customer_policy(txn, &account, a).is_err()
                {
                    return Err(no_such_policy(a));
                }
                let Some(slot) = h.boundary() else {
                    return Err(crate::api::invalid("Groups have no permissions boundary."));
                };
                if arn.is_none() && slot.is_none() {
                    return Err(err(
                        "NoSuchEntity",
                        StatusCode::NOT_FOUND,
                        format!(
                            "The {} {name} has no permissions boundary.",
                            H::KIND.to_lowercase()
                        ),
                    ));
                }
                *slot = arn;
                put(txn, H::COLLECTION, &key(&account, &name), &h)?;
                Ok(json!({}))
            })
            .await
        }
        "ListPolicies" => {
            let items = read(iam, |txn| {
                let mut h = get::<H>(txn, &account, &name)?;
                Ok(h.inline().keys().map(|k| json!(k)).collect())
            })?;
            page(items, input, "PolicyNames")
        }
        _ => {
            let policy_name = input::owned(input, "PolicyName");
            write(iam, move |txn| {
                let mut h = get::<H>(txn, &account, &name)?;
                h.editable()?;
                if h.inline().remove(&policy_name).is_none() {
                    return Err(no_such_inline::<H>(&policy_name));
                }
                put(txn, H::COLLECTION, &key(&account, &name), &h)?;
                Ok(json!({}))
            })
            .await
        }
    }
}

fn no_such_inline<H: Holder>(policy_name: &str) -> AwsError {
    err(
        "NoSuchEntity",
        StatusCode::NOT_FOUND,
        format!(
            "The {} policy with name {policy_name} cannot be found.",
            H::KIND.to_lowercase()
        ),
    )
}
