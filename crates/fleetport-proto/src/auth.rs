//! Who signed a request and what it may do: the principal an access key stands for, the
//! [`KeySource`] that knows keys beyond the static ones (IAM's), and the [`Authorizer`] the
//! gateway asks before every call. The gateway owns the one authorisation path; services only
//! say which resources an operation touches (`Service::resources`).

use std::sync::Arc;

use http::StatusCode;

use crate::error::AwsError;

/// What kind of identity signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The account's root user: allowed everything in its account.
    Root,
    /// An IAM user, by name.
    User { name: String },
    /// A session of an assumed role: the role's policies apply.
    AssumedRole {
        role_arn: String,
        role_name: String,
        session: String,
        /// The session's access key ID: its session policies, if any, are kept by it.
        key: String,
    },
}

/// The identity behind an access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub account_id: String,
    /// `arn:aws:iam::A:root`, `arn:aws:iam::A:user/path/name`.
    pub arn: String,
    /// `aws:userid`, GetCallerIdentity's `UserId`: the account ID for root, `AIDA…` for a user.
    pub user_id: String,
    pub kind: PrincipalKind,
}

impl Principal {
    pub fn root(account_id: &str) -> Self {
        Self {
            account_id: account_id.to_string(),
            arn: format!("arn:aws:iam::{account_id}:root"),
            user_id: account_id.to_string(),
            kind: PrincipalKind::Root,
        }
    }

    pub fn is_root(&self) -> bool {
        self.kind == PrincipalKind::Root
    }

    /// A line-based text form, for tokens that carry who they were issued to (the registry's).
    pub fn encode(&self) -> String {
        let kind = match &self.kind {
            PrincipalKind::Root => "root".to_string(),
            PrincipalKind::User { name } => format!("user\n{name}"),
            PrincipalKind::AssumedRole {
                role_arn,
                role_name,
                session,
                key,
            } => format!("role\n{role_arn}\n{role_name}\n{session}\n{key}"),
        };
        format!(
            "{}\n{}\n{}\n{kind}",
            self.account_id, self.arn, self.user_id
        )
    }

    /// The inverse of [`Self::encode`]; None for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let f: Vec<&str> = text.split('\n').collect();
        let kind = match f.get(3..)? {
            ["root"] => PrincipalKind::Root,
            ["user", name] => PrincipalKind::User {
                name: (*name).to_string(),
            },
            ["role", role_arn, role_name, session, key] => PrincipalKind::AssumedRole {
                role_arn: (*role_arn).to_string(),
                role_name: (*role_name).to_string(),
                session: (*session).to_string(),
                key: (*key).to_string(),
            },
            _ => return None,
        };
        Some(Self {
            account_id: f[0].to_string(),
            arn: f[1].to_string(),
            user_id: f[2].to_string(),
            kind,
        })
    }
}

/// An access key's secret and the principal it stands for.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    pub secret: String,
    pub principal: Principal,
    /// Temporary credentials (STS): the token that must come with them, and their expiry.
    pub session: Option<Session>,
}

/// What makes temporary credentials temporary.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 (hex) of the session token: the token itself is not kept.
    pub token_sha256: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds (`aws:TokenIssueTime`).
    pub issued_at: i64,
}

impl Session {
    pub fn token_matches(&self, token: &str) -> bool {
        use sha2::Digest;
        let sent = hex::encode(sha2::Sha256::digest(token.as_bytes()));
        subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), self.token_sha256.as_bytes()).into()
    }
}

/// Keys issued at run time (IAM access keys). Lookups are synchronous and cheap: they run on
/// every request.
pub trait KeySource: Send + Sync + 'static {
    /// The key's secret and principal; `None` for an unknown or inactive key.
    fn resolve(&self, access_key: &str) -> Option<Arc<ResolvedKey>>;

    /// A request signed with `access_key` for `service` in `region` was authenticated (for
    /// GetAccessKeyLastUsed). Called on the request path: must not block.
    fn used(&self, access_key: &str, service: &str, region: &str) {
        let _ = (access_key, service, region);
    }
}

/// One permission a request needs: an IAM action on a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `service:Operation`, e.g. `ecs:CreateCluster`.
    pub action: String,
    /// The resource's ARN, or `*` for actions that take no resource.
    pub resource: String,
    /// The resource's own policy (an ECR repository policy), evaluated with the caller's.
    pub resource_policy: Option<String>,
    /// Condition keys of this access alone (`iam:PassedToService` for `iam:PassRole`).
    pub context: Vec<(String, String)>,
}

/// The facts about the request that policies' conditions may test.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// `aws:RequestedRegion`.
    pub region: String,
    /// `aws:SourceIp`.
    pub source_ip: Option<std::net::IpAddr>,
    /// `aws:SecureTransport`.
    pub secure_transport: bool,
    /// `aws:TokenIssueTime` (temporary credentials only), Unix seconds.
    pub token_issued_at: Option<i64>,
}

/// The outcome of evaluating a principal's policies for one access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No statement allowed it.
    ImplicitDeny,
    /// A `Deny` statement of an identity-based policy matched.
    ExplicitDeny,
    /// A `Deny` statement of the resource's policy matched.
    ExplicitDenyInResourcePolicy,
}

/// Evaluates policies (IAM). Must be fast: it runs on every request a non-root principal signs.
pub trait Authorizer: Send + Sync + 'static {
    fn decide(&self, principal: &Principal, access: &Access, facts: &RequestFacts) -> Decision;

    /// Whether any policy deciding for `principal` tests a resource's tags, so the caller
    /// need not look them up for every request when none does.
    fn uses_resource_tags(&self, principal: &Principal) -> bool {
        let _ = principal;
        true
    }
}

/// The text AWS gives a denied caller.
pub fn denial_message(principal: &Principal, access: &Access, decision: Decision) -> String {
    let why = match decision {
        Decision::ExplicitDeny => "with an explicit deny in an identity-based policy".to_string(),
        Decision::ExplicitDenyInResourcePolicy => {
            "with an explicit deny in a resource-based policy".to_string()
        }
        _ => format!(
            "because no identity-based policy allows the {} action",
            access.action
        ),
    };
    format!(
        "User: {} is not authorized to perform: {} on resource: {} {why}",
        principal.arn, access.action, access.resource
    )
}

/// The denial in the awsJson shape (ECS, ECR, ACM: 400 `AccessDeniedException`).
pub fn json_denial(message: String) -> AwsError {
    AwsError::client("AccessDeniedException", message)
}

/// The denial in the awsQuery shape (IAM, STS, ELBv2: 403 `AccessDenied`).
pub fn query_denial(message: String) -> AwsError {
    AwsError::with_status("AccessDenied", message, StatusCode::FORBIDDEN)
}

/// Checks every access against the authorizer; root is allowed everything in its account.
/// Returns the first denial's message.
pub fn check(
    authorizer: Option<&Arc<dyn Authorizer>>,
    principal: &Principal,
    accesses: &[Access],
    facts: &RequestFacts,
) -> Result<(), String> {
    if principal.is_root() {
        return Ok(());
    }
    for access in accesses {
        let decision = match authorizer {
            Some(a) => a.decide(principal, access, facts),
            // A non-root key without an evaluator behind it gets nothing.
            None => Decision::ImplicitDeny,
        };
        if decision != Decision::Allow {
            return Err(denial_message(principal, access, decision));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip_through_text() {
        for p in [
            Principal::root("123456789012"),
            Principal {
                account_id: "1".into(),
                arn: "arn:aws:sts::1:assumed-role/r/s".into(),
                user_id: "AROAX:s".into(),
                kind: PrincipalKind::AssumedRole {
                    role_arn: "arn:aws:iam::1:role/path/r".into(),
                    role_name: "r".into(),
                    session: "s".into(),
                    key: "ASIAEXAMPLE".into(),
                },
            },
        ] {
            assert_eq!(Principal::decode(&p.encode()), Some(p));
        }
        assert_eq!(Principal::decode("a\nb\nc\nuser"), None);
    }

    #[test]
    fn denial_texts_are_aws_s() {
        let p = Principal {
            account_id: "123456789012".into(),
            arn: "arn:aws:iam::123456789012:user/x".into(),
            user_id: "AIDAEXAMPLE".into(),
            kind: PrincipalKind::User { name: "x".into() },
        };
        let a = Access {
            action: "ecs:CreateCluster".into(),
            resource: "arn:aws:ecs:us-east-1:123456789012:cluster/c".into(),
            resource_policy: None,
            context: Vec::new(),
        };
        assert_eq!(
            denial_message(&p, &a, Decision::ImplicitDeny),
            "User: arn:aws:iam::123456789012:user/x is not authorized to perform: ecs:CreateCluster on resource: arn:aws:ecs:us-east-1:123456789012:cluster/c because no identity-based policy allows the ecs:CreateCluster action"
        );
        assert!(
            denial_message(&p, &a, Decision::ExplicitDeny)
                .ends_with("with an explicit deny in an identity-based policy")
        );
        assert!(
            check(
                None,
                &Principal::root("1"),
                std::slice::from_ref(&a),
                &RequestFacts::default()
            )
            .is_ok()
        );
        assert!(check(None, &p, &[a], &RequestFacts::default()).is_err());
    }
}
