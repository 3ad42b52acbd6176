//! STS: who the caller is (GetCallerIdentity, which no policy can deny), which account a key
//! belongs to (GetAccessKeyInfo), and temporary credentials: AssumeRole (the role's trust
//! policy and the caller's own policies decided as AWS does within one account) and
//! GetSessionToken. Temporary keys are `ASIA…` with a session token the verifier requires until
//! the session expires.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fleetport_proto::auth::{Decision, Principal, PrincipalKind, RequestFacts};
use fleetport_proto::model::{self, ServiceModel};
use fleetport_proto::{AwsError, BoxFuture, RequestContext, Service};
use fleetport_store::WriteTxn;
use http::StatusCode;
use serde_json::{Value, json};

use crate::policy::{self, Kind, Named, ResourceVerdict};
use crate::{
    EXPIRED_KEPT_SECS, Iam, SESSIONS, SessionRecord, StoredPrincipal, api, ids, roles, store_error,
};

/// Role chaining (AssumeRole with a role's session) is capped at one hour.
const CHAINED_MAX_SECS: i64 = 3600;

/// The STS service (it issues sessions into IAM's state).
#[derive(Debug, Clone)]
pub struct Sts(pub Iam);

fn access_denied(message: String) -> AwsError {
    AwsError::with_status("AccessDenied", message, StatusCode::FORBIDDEN)
}

fn validation(message: impl Into<String>) -> AwsError {
    AwsError::client("ValidationError", message)
}

impl Service for Sts {
    fn model(&self) -> &'static ServiceModel {
        model::sts()
    }

    fn constraint_error_code(&self) -> &'static str {
        "ValidationError"
    }

    fn implements(&self, operation: &str) -> bool {
        matches!(
            operation,
            "GetCallerIdentity" | "GetAccessKeyInfo" | "AssumeRole" | "GetSessionToken"
        )
    }

    /// AssumeRole is decided with the role's trust policy (inside the call), and
    /// GetSessionToken needs no permission, as on AWS.
    fn resources(&self, _ctx: &RequestContext, operation: &str, _input: &Value) -> Vec<String> {
        match operation {
            "AssumeRole" | "GetSessionToken" | "GetCallerIdentity" => Vec::new(),
            _ => vec!["*".to_string()],
        }
    }

    fn call<'a>(
        &'a self,
        ctx: &'a RequestContext,
        operation: &'a str,
        input: Value,
    ) -> BoxFuture<'a, Result<Value, AwsError>> {
        Box::pin(async move {
            match operation {
                "GetCallerIdentity" => Ok(json!({
                    "UserId": ctx.principal.user_id,
                    "Account": ctx.principal.account_id,
                    "Arn": ctx.principal.arn,
                })),
                "GetAccessKeyInfo" => {
                    let key = fleetport_proto::input::owned(&input, "AccessKeyId");
                    // A key that is itself a 12-digit number names its account (as LocalStack
                    // reads such keys); others carry it in their characters 4–12.
                    let account = if key.len() == 12 && key.bytes().all(|b| b.is_ascii_digit()) {
                        Some(key.clone())
                    } else {
                        ids::account_of_key(&key)
                    };
                    let account = account.ok_or_else(|| {
                        AwsError::client(
                            "InvalidParameterValue",
                            format!("The access key ID {key} is not valid."),
                        )
                    })?;
                    Ok(json!({ "Account": account }))
                }
                "AssumeRole" => self.assume_role(ctx, &input).await,
                "GetSessionToken" => self.get_session_token(ctx, &input).await,
                _ => Err(AwsError::client("InvalidAction", operation.to_string())),
            }
        })
    }
}

/// New temporary credentials: (key ID, secret, token, sealed secret, token hash).
fn credentials(
    iam: &Iam,
    account: &str,
) -> Result<(String, String, String, String, String), AwsError> {
    let id = ids::access_key_id("ASIA", account);
    let secret = ids::secret();
    let mut raw = Vec::with_capacity(96);
    while raw.len() < 96 {
        raw.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    let token = format!("IQoJb3JpZ2luX2Vj{}", STANDARD.encode(&raw));
    let sealed = iam
        .inner
        .sealer
        .seal(&id, secret.as_bytes())
        .map_err(|_| AwsError::server_exception())?;
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    Ok((id, secret, token, sealed, hash))
}

/// AssumeRole's session policies: the inline `Policy` (at most 2,048 characters) and the
/// managed `PolicyArns`, as documents.
fn session_policies(iam: &Iam, account: &str, input: &Value) -> Result<Vec<String>, AwsError> {
    let mut docs = Vec::new();
    if let Some(doc) = fleetport_proto::input::string(input, "Policy") {
        if doc.chars().filter(|c| !c.is_whitespace()).count() > 2048 {
            return Err(AwsError::client(
                "PackedPolicyTooLarge",
                "Packed size of consumed policies exceeds 100 percent of the allowed value.",
            ));
        }
        policy::parse(doc, Kind::Identity)
            .map_err(|e| AwsError::client("MalformedPolicyDocument", e.0))?;
        docs.push(doc.to_string());
    }
    for item in fleetport_proto::input::items(input, "PolicyArns") {
        let arn = item.get("arn").and_then(Value::as_str).unwrap_or_default();
        let doc = match crate::managed::find(arn) {
            Some(m) => Some(m.document.to_string()),
            None => api::read(iam, |txn| Ok(api::customer_policy(txn, account, arn).ok()))?
                .and_then(|p| p.default_document().map(String::from)),
        };
        docs.push(doc.ok_or_else(|| {
            AwsError::client(
                "MalformedPolicyDocument",
                format!("Policy {arn} does not exist or is not attachable."),
            )
        })?);
    }
    Ok(docs)
}

/// AssumeRole's `Tags` (the model caps them at 50), keys unique regardless of case.
fn session_tags(input: &Value) -> Result<Vec<(String, String)>, AwsError> {
    let mut tags: Vec<(String, String)> = Vec::new();
    for t in fleetport_proto::input::items(input, "Tags") {
        let key = t.get("Key").and_then(Value::as_str).unwrap_or_default();
        let value = t.get("Value").and_then(Value::as_str).unwrap_or_default();
        if tags.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) {
            return Err(AwsError::client(
                "InvalidParameterValue",
                "Duplicate tag keys found. Please note that Tag keys are case insensitive.",
            ));
        }
        tags.push((key.to_string(), value.to_string()));
    }
    Ok(tags)
}

/// Stores a session (and forgets sessions long expired) in one transaction.
async fn store_session(iam: &Iam, record: SessionRecord) -> Result<(), AwsError> {
    api::write(iam, move |txn: &mut dyn WriteTxn| {
        let now = fleetport_proto::clock::unix_secs();
        let stale: Vec<String> = fleetport_store::ReadTxnExt::scan_json::<SessionRecord>(
            txn,
            SESSIONS,
            "",
            None,
            usize::MAX,
        )
        .map_err(store_error)?
        .into_iter()
        .filter(|(_, s)| s.expires + EXPIRED_KEPT_SECS <= now)
        .map(|(k, _)| k)
        .collect();
        for k in stale {
            txn.delete(SESSIONS, &k).map_err(store_error)?;
        }
        api::put(txn, SESSIONS, &record.id.clone(), &record)
    })
    .await?;
    iam.refresh().map_err(store_error)
}

impl Sts {
    async fn assume_role(&self, ctx: &RequestContext, input: &Value) -> Result<Value, AwsError> {
        let iam = &self.0;
        api::check_names(input)?;
        let role_arn = fleetport_proto::input::owned(input, "RoleArn");
        let session = fleetport_proto::input::owned(input, "RoleSessionName");
        let caller = &ctx.principal;
        let denied = || {
            access_denied(format!(
                "User: {} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                caller.arn
            ))
        };
        if !role_arn.starts_with("arn:aws:iam::") || !role_arn.contains(":role/") {
            return Err(validation(format!(
                "{role_arn} is invalid: the role ARN must look like arn:aws:iam::<account>:role/<name>"
            )));
        }
        // The role's own account: another account's role is assumed across accounts.
        let account = role_arn
            .strip_prefix("arn:aws:iam::")
            .and_then(|r| r.split(':').next())
            .unwrap_or_default()
            .to_string();
        let role = api::read(iam, |txn| roles::role_by_arn(txn, &account, &role_arn))?
            .ok_or_else(denied)?;
        let facts = RequestFacts {
            region: ctx.region.clone(),
            ..RequestFacts::default()
        };
        // What a trust policy's conditions may test besides the global keys.
        let mut context = vec![("sts:rolesessionname".to_string(), session.clone())];
        if let Some(external) = input.get("ExternalId").and_then(Value::as_str) {
            context.push(("sts:externalid".to_string(), external.to_string()));
        }
        let tags = session_tags(input)?;
        for (k, v) in &tags {
            context.push((format!("aws:requesttag/{k}"), v.clone()));
            context.push(("aws:tagkeys".to_string(), k.clone()));
        }
        let request = policy::Request {
            principal: caller,
            principal_tags: &[],
            action: "sts:AssumeRole",
            resource: &role_arn,
            facts: &facts,
            now: fleetport_proto::clock::unix_secs(),
            context: &context,
        };
        // Within one account, the trust policy (a resource policy) that names the caller is
        // enough; one that names only the account needs the caller's own allow too. Across
        // accounts both sides must allow: the role's trust policy and the caller's own
        // policies (an account's root has every permission of its own).
        let trust = policy::parse(&role.trust, Kind::Trust)
            .map(|p| policy::evaluate_resource(&p, &request))
            .unwrap_or(ResourceVerdict::Silent);
        let identity = if caller.is_root() {
            Decision::Allow
        } else {
            fleetport_proto::auth::Authorizer::decide(
                iam,
                caller,
                &fleetport_proto::auth::Access {
                    action: "sts:AssumeRole".into(),
                    resource: role_arn.clone(),
                    resource_policy: None,
                    context: Vec::new(),
                },
                &facts,
            )
        };
        let same_account = caller.account_id == account;
        let allowed = match (trust, identity) {
            (ResourceVerdict::Deny, _) | (_, Decision::ExplicitDeny) => false,
            (ResourceVerdict::Allow(Named::Directly), _) if same_account => true,
            (ResourceVerdict::Allow(_), Decision::Allow) => true,
            _ => false,
        };
        if !allowed {
            return Err(denied());
        }
        // Passing session tags is its own permission, which the trust policy must grant.
        if !tags.is_empty() {
            let tagging = policy::Request {
                action: "sts:TagSession",
                ..request
            };
            let granted = policy::parse(&role.trust, Kind::Trust)
                .map(|p| policy::evaluate_resource(&p, &tagging))
                .unwrap_or(ResourceVerdict::Silent);
            if !matches!(granted, ResourceVerdict::Allow(_)) {
                return Err(access_denied(format!(
                    "User: {} is not authorized to perform: sts:TagSession on resource: {role_arn}",
                    caller.arn
                )));
            }
        }
        let chained = matches!(caller.kind, PrincipalKind::AssumedRole { .. });
        let duration = input
            .get("DurationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        if chained && duration > CHAINED_MAX_SECS {
            return Err(validation(
                "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
            ));
        }
        if duration > role.max_session_duration {
            return Err(validation(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            ));
        }
        let session_policies = session_policies(iam, &account, input)?;
        let (id, secret, token, sealed, hash) = credentials(iam, &account)?;
        let now = fleetport_proto::clock::unix_secs();
        let arn = format!(
            "arn:aws:sts::{account}:assumed-role/{}/{session}",
            role.name
        );
        let assumed_id = format!("{}:{session}", role.id);
        store_session(
            iam,
            SessionRecord {
                id: id.clone(),
                account: account.clone(),
                arn: arn.clone(),
                user_id: assumed_id.clone(),
                principal: StoredPrincipal::AssumedRole {
                    role_arn: role.arn.clone(),
                    role_name: role.name.clone(),
                    session: session.clone(),
                },
                secret: sealed,
                token_sha256: hash,
                issued: now,
                expires: now + duration,
                session_policies,
                tags,
            },
        )
        .await?;
        Ok(json!({
            "Credentials": {
                "AccessKeyId": id, "SecretAccessKey": secret, "SessionToken": token,
                "Expiration": (now + duration) as f64,
            },
            "AssumedRoleUser": {"AssumedRoleId": assumed_id, "Arn": arn},
            "PackedPolicySize": 0,
        }))
    }

    async fn get_session_token(
        &self,
        ctx: &RequestContext,
        input: &Value,
    ) -> Result<Value, AwsError> {
        let iam = &self.0;
        let caller: &Principal = &ctx.principal;
        let stored = match &caller.kind {
            PrincipalKind::Root => StoredPrincipal::Root,
            PrincipalKind::User { name } => StoredPrincipal::User { name: name.clone() },
            PrincipalKind::AssumedRole { .. } => {
                return Err(access_denied(
                    "Cannot call GetSessionToken with session credentials".into(),
                ));
            }
        };
        if iam.resolve_session(&ctx.access_key) {
            return Err(access_denied(
                "Cannot call GetSessionToken with session credentials".into(),
            ));
        }
        let (default, max) = if caller.is_root() {
            (3600, 3600)
        } else {
            (43_200, 129_600)
        };
        let duration = input
            .get("DurationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(default);
        if duration > max {
            return Err(validation(format!(
                "The requested DurationSeconds exceeds the {max} seconds allowed for these credentials."
            )));
        }
        let account = caller.account_id.clone();
        let (id, secret, token, sealed, hash) = credentials(iam, &account)?;
        let now = fleetport_proto::clock::unix_secs();
        store_session(
            iam,
            SessionRecord {
                id: id.clone(),
                account,
                arn: caller.arn.clone(),
                user_id: caller.user_id.clone(),
                principal: stored,
                secret: sealed,
                token_sha256: hash,
                issued: now,
                expires: now + duration,
                session_policies: Vec::new(),
                tags: Vec::new(),
            },
        )
        .await?;
        Ok(json!({"Credentials": {
            "AccessKeyId": id, "SecretAccessKey": secret, "SessionToken": token,
            "Expiration": (now + duration) as f64,
        }}))
    }
}
