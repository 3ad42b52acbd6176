//! The IAM operations Fleetport serves: users, access keys, customer-managed policies and their
//! versions, attachments and inline policies of users — with IAM's quotas, error codes and
//! texts. Policy documents go out RFC 3986 URL-encoded, as IAM sends them.

use fleetport_proto::input;
use fleetport_proto::{AwsError, RequestContext};
use fleetport_store::{Abort, ReadTxn, ReadTxnExt, WriteTxn, WriteTxnExt};
use http::StatusCode;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::policy::{self, Kind};
use crate::{
    Iam, KEYS, KeyRecord, POLICIES, PolicyRecord, PolicyVersion, USERS, UserRecord, ids, managed,
    store_error,
};

const ACCESS_KEYS_PER_USER: usize = 2;
const VERSIONS_PER_POLICY: usize = 5;
const MANAGED_POLICY_SIZE: usize = 6144;

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub(crate) fn encode_document(doc: &str) -> String {
    utf8_percent_encode(doc, ENCODE).to_string()
}

pub(crate) fn now() -> f64 {
    fleetport_proto::clock::epoch_seconds()
}

pub(crate) fn err(code: &str, status: StatusCode, message: impl Into<String>) -> AwsError {
    AwsError::with_status(code, message, status)
}

pub(crate) fn no_such_policy(arn: &str) -> AwsError {
    err(
        "NoSuchEntity",
        StatusCode::NOT_FOUND,
        format!("Policy {arn} does not exist or is not attachable."),
    )
}

pub(crate) fn conflict(message: impl Into<String>) -> AwsError {
    err("DeleteConflict", StatusCode::CONFLICT, message)
}

pub(crate) fn limit(message: impl Into<String>) -> AwsError {
    err("LimitExceeded", StatusCode::CONFLICT, message)
}

pub(crate) fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::client("InvalidInput", message)
}

pub(crate) fn malformed(e: policy::Malformed) -> AwsError {
    AwsError::client("MalformedPolicyDocument", e.0)
}

/// Operations that change IAM's state (the evaluation snapshot is rebuilt after them).
pub(crate) fn writes(operation: &str) -> bool {
    !(operation.starts_with("Get") || operation.starts_with("List"))
}

/// The resource an operation is authorised against.
pub(crate) fn resource(ctx: &RequestContext, operation: &str, input: &Value) -> String {
    let account = &ctx.principal.account_id;
    if let Some(arn) = input::string(input, "PolicyArn") {
        return arn.to_string();
    }
    if operation == "CreatePolicy" {
        let path = input::string(input, "Path").unwrap_or("/");
        return format!(
            "arn:aws:iam::{account}:policy{path}{}",
            input::string(input, "PolicyName").unwrap_or_default()
        );
    }
    if let Some(name) = input::string(input, "InstanceProfileName") {
        return format!("arn:aws:iam::{account}:instance-profile/{name}");
    }
    if let Some(name) = input::string(input, "GroupName") {
        return format!("arn:aws:iam::{account}:group/{name}");
    }
    if let Some(name) = input::string(input, "RoleName") {
        return format!("arn:aws:iam::{account}:role/{name}");
    }
    match input::string(input, "UserName") {
        Some(name) => format!("arn:aws:iam::{account}:user/{name}"),
        None if operation.contains("User") || operation.contains("AccessKey") => {
            ctx.principal.arn.clone()
        }
        None => "*".to_string(),
    }
}

pub(crate) fn check_path(path: &str) -> Result<(), AwsError> {
    let ok = path == "/"
        || (path.starts_with('/')
            && path.ends_with('/')
            && path.len() <= 512
            && path.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(AwsError::client(
            "ValidationError",
            format!(
                "1 validation error detected: Value '{path}' at 'path' failed to satisfy constraint: Member must satisfy regular expression pattern: (\\u002F)|(\\u002F[\\u0021-\\u007E]+\\u002F)"
            ),
        ))
    }
}

/// A policy ARN's account and name, or the InvalidInput IAM gives.
pub(crate) fn parse_policy_arn(arn: &str) -> Result<(String, String), AwsError> {
    let bad = || invalid(format!("ARN {arn} is not valid."));
    let rest = arn.strip_prefix("arn:aws:iam::").ok_or_else(bad)?;
    let (account, resource) = rest.split_once(':').ok_or_else(bad)?;
    let path_name = resource.strip_prefix("policy/").ok_or_else(bad)?;
    let name = path_name.rsplit('/').next().unwrap_or_default();
    if name.is_empty() {
        return Err(bad());
    }
    Ok((account.to_string(), name.to_string()))
}

fn user_json(u: &UserRecord, full: bool) -> Value {
    let mut v = json!({
        "Path": u.path, "UserName": u.name, "UserId": u.id, "Arn": u.arn, "CreateDate": u.created,
    });
    if full && !u.tags.is_empty() {
        v["Tags"] = json!(u.tags);
    }
    if full && let Some(b) = &u.boundary {
        v["PermissionsBoundary"] = boundary_json(b);
    }
    v
}

pub(crate) fn boundary_json(arn: &str) -> Value {
    json!({"PermissionsBoundaryType": "PermissionsBoundaryPolicy", "PermissionsBoundaryArn": arn})
}

/// CreateUser's and CreateRole's `PermissionsBoundary`: a policy that exists.
pub(crate) fn boundary_input(
    txn: &dyn ReadTxn,
    account: &str,
    arn: Option<&str>,
) -> Result<Option<String>, AwsError> {
    let Some(arn) = arn else {
        return Ok(None);
    };
    parse_policy_arn(arn)?;
    if managed::find(arn).is_none() && customer_policy(txn, account, arn).is_err() {
        return Err(no_such_policy(arn));
    }
    Ok(Some(arn.to_string()))
}

fn policy_json(p: &PolicyRecord, attachments: usize, full: bool) -> Value {
    let mut v = json!({
        "PolicyName": p.name, "PolicyId": p.id, "Arn": p.arn, "Path": p.path,
        "DefaultVersionId": p.default_version, "AttachmentCount": attachments,
        "PermissionsBoundaryUsageCount": 0, "IsAttachable": true,
        "CreateDate": p.created, "UpdateDate": p.updated,
    });
    if full {
        if let Some(d) = &p.description {
            v["Description"] = json!(d);
        }
        if !p.tags.is_empty() {
            v["Tags"] = json!(p.tags);
        }
    }
    v
}

fn managed_json(m: &managed::Managed, attachments: usize) -> Value {
    let created = m
        .created
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_second() as f64)
        .unwrap_or(0.0);
    json!({
        "PolicyName": m.name, "PolicyId": format!("ANPA{}", &stable_id(m.name)), "Arn": m.arn(),
        "Path": m.path, "DefaultVersionId": m.version, "AttachmentCount": attachments,
        "PermissionsBoundaryUsageCount": 0, "IsAttachable": true,
        "CreateDate": created, "UpdateDate": created,
    })
}

/// A fixed ID for an AWS managed policy (the same in every account, as on AWS).
fn stable_id(name: &str) -> String {
    const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..17)
        .map(|i| BASE32[((h >> ((i * 3) % 60)) & 31) as usize] as char)
        .collect()
}

fn attachments(txn: &dyn ReadTxn, account: &str, arn: &str) -> Result<usize, AwsError> {
    crate::entities::attachments(txn, account, arn)
}

/// The name an operation acts on: the given `UserName`, or the signer's own.
fn subject(ctx: &RequestContext, input: &Value) -> Result<Option<String>, AwsError> {
    if let Some(n) = input::string(input, "UserName") {
        return Ok(Some(n.to_string()));
    }
    match &ctx.principal.kind {
        fleetport_proto::auth::PrincipalKind::User { name } => Ok(Some(name.clone())),
        fleetport_proto::auth::PrincipalKind::Root => Ok(None),
        fleetport_proto::auth::PrincipalKind::AssumedRole { .. } => Err(AwsError::client(
            "ValidationError",
            "Must specify userName when calling with non-User credentials",
        )),
    }
}

struct Failed(AwsError);

impl From<fleetport_store::StoreError> for Failed {
    fn from(e: fleetport_store::StoreError) -> Self {
        Failed(store_error(e))
    }
}

pub(crate) async fn write<T: Send + 'static>(
    iam: &Iam,
    f: impl FnOnce(&mut dyn WriteTxn) -> Result<T, AwsError> + Send + 'static,
) -> Result<T, AwsError> {
    fleetport_store::write(&*iam.inner.store, move |txn| {
        f(txn).map_err(|e| Abort::Domain(Failed(e)))
    })
    .await
    .map_err(|Failed(e)| e)
}

pub(crate) fn read<T>(
    iam: &Iam,
    f: impl FnOnce(&dyn ReadTxn) -> Result<T, AwsError>,
) -> Result<T, AwsError> {
    fleetport_store::read(&*iam.inner.store, |txn| f(txn).map_err(Failed)).map_err(|Failed(e)| e)
}

pub(crate) fn put<T: serde::Serialize>(
    txn: &mut dyn WriteTxn,
    collection: &str,
    key: &str,
    value: &T,
) -> Result<(), AwsError> {
    txn.put_json(collection, key, value).map_err(store_error)
}

/// `Marker`/`MaxItems` paging over items already in order; the marker is the index.
pub(crate) fn page(items: Vec<Value>, input: &Value, member: &str) -> Result<Value, AwsError> {
    let max = input
        .get("MaxItems")
        .and_then(Value::as_i64)
        .unwrap_or(100)
        .clamp(1, 1000) as usize;
    let start = match input::string(input, "Marker") {
        None => 0,
        Some(m) => m.parse::<usize>().map_err(|_| invalid("Invalid Marker."))?,
    };
    let end = (start + max).min(items.len());
    let slice: Vec<Value> = items
        .get(start..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut out = json!({ member: slice, "IsTruncated": end < items.len() });
    if end < items.len() {
        out["Marker"] = json!(end.to_string());
    }
    Ok(out)
}

pub(crate) fn validate_document(doc: &str) -> Result<(), AwsError> {
    policy::parse(doc, Kind::Identity).map_err(malformed)?;
    Ok(())
}

/// IAM's name pattern (`[\w+=,.@-]+`), which the model states and the gateway's generic
/// validation does not check.
pub(crate) fn check_names(input: &Value) -> Result<(), AwsError> {
    for (member, field) in [
        ("UserName", "userName"),
        ("PolicyName", "policyName"),
        ("RoleName", "roleName"),
        ("GroupName", "groupName"),
        ("RoleSessionName", "roleSessionName"),
    ] {
        if let Some(v) = input::string(input, member)
            && !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        {
            return Err(AwsError::client(
                "ValidationError",
                format!(
                    "1 validation error detected: Value '{v}' at '{field}' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]+"
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) async fn dispatch(
    iam: &Iam,
    ctx: &RequestContext,
    operation: &str,
    input: &Value,
) -> Result<Value, AwsError> {
    check_names(input)?;
    let account = ctx.principal.account_id.clone();
    if let Some(out) = crate::holders::dispatch(iam, &account, operation, input).await {
        return out;
    }
    match operation {
        "CreateUser" => {
            let name = input::owned(input, "UserName");
            let path = input::string(input, "Path").unwrap_or("/").to_string();
            check_path(&path)?;
            let tags = input::items(input, "Tags");
            let user = UserRecord {
                account: account.clone(),
                arn: format!("arn:aws:iam::{account}:user{path}{name}"),
                name,
                path,
                id: ids::unique_id("AIDA"),
                created: now(),
                tags,
                attached: Vec::new(),
                inline: Default::default(),
                boundary: None,
            };
            let boundary = input::string(input, "PermissionsBoundary").map(String::from);
            let out = write(iam, move |txn| {
                let mut user = user;
                user.boundary = boundary_input(txn, &user.account, boundary.as_deref())?;
                let key = crate::holders::key(&user.account, &user.name);
                if txn.get(USERS, &key).map_err(store_error)?.is_some() {
                    return Err(err(
                        "EntityAlreadyExists",
                        StatusCode::CONFLICT,
                        format!("User with name {} already exists.", user.name),
                    ));
                }
                put(txn, USERS, &key, &user)?;
                Ok(user_json(&user, true))
            })
            .await?;
            Ok(json!({ "User": out }))
        }
        "GetUser" => match subject(ctx, input)? {
            Some(name) => read(iam, |txn| {
                let u = crate::holders::get::<UserRecord>(txn, &account, &name)?;
                Ok(json!({ "User": user_json(&u, true) }))
            }),
            None => Ok(json!({"User": {
                "Path": "/", "UserName": "root", "UserId": account,
                "Arn": ctx.principal.arn, "CreateDate": 0.0,
            }})),
        },
        "ListUsers" => {
            let prefix = input::string(input, "PathPrefix")
                .unwrap_or("/")
                .to_string();
            let users = read(iam, |txn| {
                txn.scan_json::<UserRecord>(USERS, &format!("{account}/"), None, usize::MAX)
                    .map_err(store_error)
            })?;
            let items = users
                .into_iter()
                .map(|(_, u)| u)
                .filter(|u| u.path.starts_with(&prefix))
                .map(|u| user_json(&u, false))
                .collect();
            page(items, input, "Users")
        }
        "DeleteUser" => {
            let name = input::owned(input, "UserName");
            write(iam, move |txn| {
                let u = crate::holders::get::<UserRecord>(txn, &account, &name)?;
                let has_keys = txn
                    .scan_json::<KeyRecord>(KEYS, "", None, usize::MAX)
                    .map_err(store_error)?
                    .iter()
                    .any(|(_, k)| k.account == u.account && k.user == u.name);
                if has_keys {
                    return Err(conflict(
                        "Cannot delete entity, must delete access keys first.",
                    ));
                }
                if !crate::groups::groups_of(txn, &account, &u.name)?.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must remove users from group first.",
                    ));
                }
                if !u.inline.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must delete policies first.",
                    ));
                }
                if !u.attached.is_empty() {
                    return Err(conflict(
                        "Cannot delete entity, must detach all policies first.",
                    ));
                }
                txn.delete(USERS, &crate::holders::key(&account, &name))
                    .map_err(store_error)?;
                Ok(())
            })
            .await?;
            Ok(json!({}))
        }
        "CreateAccessKey" => {
            let user = subject(ctx, input)?;
            let id = ids::access_key_id("AKIA", &account);
            let secret = ids::secret();
            let sealed = iam
                .inner
                .sealer
                .seal(&id, secret.as_bytes())
                .map_err(|_| AwsError::server_exception())?;
            let record = KeyRecord {
                id: id.clone(),
                account: account.clone(),
                user: user.clone().unwrap_or_default(),
                secret: sealed,
                status: "Active".into(),
                created: now(),
                last_used: None,
            };
            let created = record.created;
            let user_name = record.user.clone();
            write(iam, move |txn| {
                if let Some(name) = &user {
                    crate::holders::get::<UserRecord>(txn, &record.account, name)?;
                }
                let existing = txn
                    .scan_json::<KeyRecord>(KEYS, "", None, usize::MAX)
                    .map_err(store_error)?
                    .into_iter()
                    .filter(|(_, k)| k.account == record.account && k.user == record.user)
                    .count();
                if existing >= ACCESS_KEYS_PER_USER {
                    return Err(limit(format!(
                        "Cannot exceed quota for AccessKeysPerUser: {ACCESS_KEYS_PER_USER}"
                    )));
                }
                put(txn, KEYS, &record.id, &record)
            })
            .await?;
            Ok(json!({"AccessKey": {
                "UserName": user_name, "AccessKeyId": id, "Status": "Active",
                "SecretAccessKey": secret, "CreateDate": created,
            }}))
        }
        "ListAccessKeys" => {
            let user = subject(ctx, input)?.unwrap_or_default();
            let keys = read(iam, |txn| {
                if !user.is_empty() {
                    crate::holders::get::<UserRecord>(txn, &account, &user)?;
                }
                txn.scan_json::<KeyRecord>(KEYS, "", None, usize::MAX)
                    .map_err(store_error)
            })?;
            let items = keys
                .into_iter()
                .map(|(_, k)| k)
                .filter(|k| k.account == account && k.user == user)
                .map(|k| {
                    json!({"UserName": k.user, "AccessKeyId": k.id, "Status": k.status,
                           "CreateDate": k.created})
                })
                .collect();
            page(items, input, "AccessKeyMetadata")
        }
        "UpdateAccessKey" | "DeleteAccessKey" => {
            let user = subject(ctx, input)?.unwrap_or_default();
            let id = input::owned(input, "AccessKeyId");
            let status = input::string(input, "Status").map(String::from);
            let delete = operation == "DeleteAccessKey";
            write(iam, move |txn| {
                if !user.is_empty() {
                    crate::holders::get::<UserRecord>(txn, &account, &user)?;
                }
                let found = txn
                    .get_json::<KeyRecord>(KEYS, &id)
                    .map_err(store_error)?
                    .filter(|k| k.account == account && k.user == user);
                let Some(mut k) = found else {
                    return Err(err(
                        "NoSuchEntity",
                        StatusCode::NOT_FOUND,
                        format!("The Access Key with id {id} cannot be found"),
                    ));
                };
                if delete {
                    txn.delete(KEYS, &id).map_err(store_error)?;
                    return Ok(());
                }
                match status.as_deref() {
                    Some(s @ ("Active" | "Inactive")) => k.status = s.to_string(),
                    Some(other) => {
                        return Err(invalid(format!(
                            "Status {other} is not valid: must be Active or Inactive."
                        )));
                    }
                    None => {}
                }
                put(txn, KEYS, &id, &k)
            })
            .await?;
            Ok(json!({}))
        }
        "GetAccessKeyLastUsed" => {
            let id = input::owned(input, "AccessKeyId");
            let k = read(iam, |txn| {
                txn.get_json::<KeyRecord>(KEYS, &id).map_err(store_error)
            })?
            .filter(|k| k.account == account)
            .ok_or_else(|| {
                err(
                    "NoSuchEntity",
                    StatusCode::NOT_FOUND,
                    format!("The Access Key with id {id} cannot be found"),
                )
            })?;
            let last = iam.pending_use(&id).or(k.last_used);
            let used = match &last {
                Some(l) => {
                    json!({"LastUsedDate": l.at, "ServiceName": l.service, "Region": l.region})
                }
                None => json!({"ServiceName": "N/A", "Region": "N/A"}),
            };
            let mut out = json!({ "AccessKeyLastUsed": used });
            if !k.user.is_empty() {
                out["UserName"] = json!(k.user);
            }
            Ok(out)
        }
        "CreatePolicy" => {
            let name = input::owned(input, "PolicyName");
            let path = input::string(input, "Path").unwrap_or("/").to_string();
            check_path(&path)?;
            let doc = input::owned(input, "PolicyDocument");
            validate_document(&doc)?;
            if doc.chars().filter(|c| !c.is_whitespace()).count() > MANAGED_POLICY_SIZE {
                return Err(limit(format!(
                    "Cannot exceed quota for PolicySize: {MANAGED_POLICY_SIZE}"
                )));
            }
            let t = now();
            let record = PolicyRecord {
                account: account.clone(),
                arn: format!("arn:aws:iam::{account}:policy{path}{name}"),
                name,
                path,
                id: ids::unique_id("ANPA"),
                description: input::string(input, "Description").map(String::from),
                versions: vec![PolicyVersion {
                    id: "v1".into(),
                    document: doc,
                    created: t,
                }],
                default_version: "v1".into(),
                next_version: 2,
                created: t,
                updated: t,
                tags: input::items(input, "Tags"),
            };
            let out = policy_json(&record, 0, true);
            write(iam, move |txn| {
                let key = crate::holders::key(&record.account, &record.name);
                if txn.get(POLICIES, &key).map_err(store_error)?.is_some() {
                    return Err(err(
                        "EntityAlreadyExists",
                        StatusCode::CONFLICT,
                        format!(
                            "A policy called {} already exists. Duplicate names are not allowed.",
                            record.name
                        ),
                    ));
                }
                put(txn, POLICIES, &key, &record)
            })
            .await?;
            Ok(json!({ "Policy": out }))
        }
        "GetPolicy" => {
            let arn = input::owned(input, "PolicyArn");
            parse_policy_arn(&arn)?;
            read(iam, |txn| {
                let n = attachments(txn, &account, &arn)?;
                if let Some(m) = managed::find(&arn) {
                    let mut v = managed_json(&m, n);
                    v["Description"] = json!(format!("AWS managed policy {}", m.name));
                    return Ok(json!({ "Policy": v }));
                }
                let p = customer_policy(txn, &account, &arn)?;
                Ok(json!({ "Policy": policy_json(&p, n, true) }))
            })
        }
        "ListPolicies" => {
            let scope = input::string(input, "Scope").unwrap_or("All").to_string();
            let only_attached = input
                .get("OnlyAttached")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let prefix = input::string(input, "PathPrefix")
                .unwrap_or("/")
                .to_string();
            let items = read(iam, |txn| {
                let mut out = Vec::new();
                if scope != "Local" {
                    for m in managed::catalog() {
                        let n = attachments(txn, &account, &m.arn())?;
                        if m.path.starts_with(&prefix) && (!only_attached || n > 0) {
                            out.push(managed_json(&m, n));
                        }
                    }
                }
                if scope != "AWS" {
                    for (_, p) in txn
                        .scan_json::<PolicyRecord>(
                            POLICIES,
                            &format!("{account}/"),
                            None,
                            usize::MAX,
                        )
                        .map_err(store_error)?
                    {
                        let n = attachments(txn, &account, &p.arn)?;
                        if p.path.starts_with(&prefix) && (!only_attached || n > 0) {
                            out.push(policy_json(&p, n, false));
                        }
                    }
                }
                Ok(out)
            })?;
            page(items, input, "Policies")
        }
        "DeletePolicy" => {
            let arn = input::owned(input, "PolicyArn");
            parse_policy_arn(&arn)?;
            write(iam, move |txn| {
                let p = customer_policy(txn, &account, &arn)?;
                if attachments(txn, &account, &arn)? > 0 {
                    return Err(conflict("Cannot delete a policy attached to entities."));
                }
                if p.versions.len() > 1 {
                    return Err(conflict(
                        "This policy has more than one version. Before you delete a policy, you must delete the policy's versions. The default version is deleted with the policy.",
                    ));
                }
                txn.delete(POLICIES, &crate::holders::key(&account, &p.name))
                    .map_err(store_error)?;
                Ok(())
            })
            .await?;
            Ok(json!({}))
        }
        "CreatePolicyVersion" => {
            let arn = input::owned(input, "PolicyArn");
            parse_policy_arn(&arn)?;
            let doc = input::owned(input, "PolicyDocument");
            validate_document(&doc)?;
            let set_default = input
                .get("SetAsDefault")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let version = write(iam, move |txn| {
                let mut p = customer_policy(txn, &account, &arn)?;
                if p.versions.len() >= VERSIONS_PER_POLICY {
                    return Err(limit(
                        "A managed policy can have up to 5 versions. Before you create a new version, you must delete an existing version.",
                    ));
                }
                let t = now();
                let v = PolicyVersion {
                    id: format!("v{}", p.next_version),
                    document: doc,
                    created: t,
                };
                p.next_version += 1;
                p.updated = t;
                if set_default {
                    p.default_version = v.id.clone();
                }
                let out = json!({"VersionId": v.id, "IsDefaultVersion": set_default, "CreateDate": t});
                p.versions.push(v);
                put(txn, POLICIES, &crate::holders::key(&account, &p.name), &p)?;
                Ok(out)
            })
            .await?;
            Ok(json!({ "PolicyVersion": version }))
        }
        "GetPolicyVersion" => {
            let arn = input::owned(input, "PolicyArn");
            let version = input::owned(input, "VersionId");
            parse_policy_arn(&arn)?;
            let no_version = || {
                err(
                    "NoSuchEntity",
                    StatusCode::NOT_FOUND,
                    format!("Policy {arn} version {version} does not exist or is not attachable."),
                )
            };
            if let Some(m) = managed::find(&arn) {
                if m.version != version {
                    return Err(no_version());
                }
                let created = m
                    .created
                    .parse::<jiff::Timestamp>()
                    .map(|t| t.as_second() as f64)
                    .unwrap_or(0.0);
                return Ok(json!({"PolicyVersion": {
                    "Document": encode_document(m.document), "VersionId": m.version,
                    "IsDefaultVersion": true, "CreateDate": created,
                }}));
            }
            read(iam, |txn| {
                let p = customer_policy(txn, &account, &arn)?;
                let v = p
                    .versions
                    .iter()
                    .find(|v| v.id == version)
                    .ok_or_else(no_version)?;
                Ok(json!({"PolicyVersion": {
                    "Document": encode_document(&v.document), "VersionId": v.id,
                    "IsDefaultVersion": v.id == p.default_version, "CreateDate": v.created,
                }}))
            })
        }
        "ListPolicyVersions" => {
            let arn = input::owned(input, "PolicyArn");
            parse_policy_arn(&arn)?;
            let items = if let Some(m) = managed::find(&arn) {
                vec![json!({"VersionId": m.version, "IsDefaultVersion": true})]
            } else {
                read(iam, |txn| {
                    let p = customer_policy(txn, &account, &arn)?;
                    Ok(p.versions
                        .iter()
                        .rev()
                        .map(|v| {
                            json!({"VersionId": v.id, "IsDefaultVersion": v.id == p.default_version,
                                   "CreateDate": v.created})
                        })
                        .collect())
                })?
            };
            page(items, input, "Versions")
        }
        "DeletePolicyVersion" | "SetDefaultPolicyVersion" => {
            let arn = input::owned(input, "PolicyArn");
            let version = input::owned(input, "VersionId");
            parse_policy_arn(&arn)?;
            let delete = operation == "DeletePolicyVersion";
            write(iam, move |txn| {
                let mut p = customer_policy(txn, &account, &arn)?;
                if !p.versions.iter().any(|v| v.id == version) {
                    return Err(err(
                        "NoSuchEntity",
                        StatusCode::NOT_FOUND,
                        format!(
                            "Policy {arn} version {version} does not exist or is not attachable."
                        ),
                    ));
                }
                if delete {
                    if p.default_version == version {
                        return Err(conflict("Cannot delete the default version of a policy."));
                    }
                    p.versions.retain(|v| v.id != version);
                } else {
                    p.default_version = version;
                }
                put(txn, POLICIES, &crate::holders::key(&account, &p.name), &p)
            })
            .await?;
            Ok(json!({}))
        }
        "ListEntitiesForPolicy"
        | "TagUser"
        | "UntagUser"
        | "ListUserTags"
        | "TagRole"
        | "UntagRole"
        | "ListRoleTags" => crate::entities::dispatch(iam, ctx, operation, input).await,
        op if op.contains("InstanceProfile") || op.contains("ServiceLinkedRole") => {
            crate::profiles::dispatch(iam, ctx, operation, input).await
        }
        op if op.contains("Group") => crate::groups::dispatch(iam, ctx, operation, input).await,
        _ => crate::roles::dispatch(iam, ctx, operation, input).await,
    }
}

pub(crate) fn customer_policy(
    txn: &dyn ReadTxn,
    account: &str,
    arn: &str,
) -> Result<PolicyRecord, AwsError> {
    let (arn_account, name) = parse_policy_arn(arn)?;
    if arn_account != account {
        return Err(no_such_policy(arn));
    }
    txn.get_json::<PolicyRecord>(POLICIES, &crate::holders::key(account, &name))
        .map_err(store_error)?
        .filter(|p| p.arn == arn)
        .ok_or_else(|| no_such_policy(arn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_url_encoded_as_rfc_3986() {
        assert_eq!(
            encode_document(r#"{"A": "b*c~d"}"#),
            "%7B%22A%22%3A%20%22b%2Ac~d%22%7D"
        );
        assert!(parse_policy_arn("arn:aws:iam::aws:policy/service-role/X").is_ok());
        assert!(parse_policy_arn("arn:aws:iam::1:role/X").is_err());
        assert_eq!(stable_id("AdministratorAccess").len(), 17);
    }
}
