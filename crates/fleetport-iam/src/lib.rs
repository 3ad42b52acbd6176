//! IAM and STS for Fleetport: users, their access keys, customer-managed policies with versions,
//! the AWS managed policies (`managed`), attachments and inline policies — and the evaluation
//! every signed call goes through (`policy`), offered to the gateway as its
//! [`Authorizer`] and [`KeySource`].
//!
//! IAM is global: records are keyed by account, never by region. Access-key secrets are kept
//! sealed with the data directory's key (`fleetport_store::seal`), not hashed: SigV4 needs the
//! secret itself to check a signature. What evaluation reads — each key's secret and principal,
//! each user's compiled policies — is held in memory as one snapshot, rebuilt after every IAM
//! write, so a request costs a map lookup and the statement matching, no store read.

mod api;
mod entities;
mod groups;
mod holders;
pub mod ids;
pub mod managed;
pub mod policy;
mod profiles;
mod roles;
mod sts;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fleetport_proto::auth::{
    Access, Authorizer, Decision, KeySource, Principal, PrincipalKind, RequestFacts, ResolvedKey,
};
use fleetport_proto::model::{self, ServiceModel};
use fleetport_proto::{AwsError, BoxFuture, RequestContext, Service};
use fleetport_store::seal::Sealer;
use fleetport_store::{ReadTxnExt, Store, StoreError, WriteTxnExt};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use sts::Sts;

pub(crate) const USERS: &str = "iam.user";
pub(crate) const KEYS: &str = "iam.access-key";
pub(crate) const POLICIES: &str = "iam.policy";
pub(crate) const ROLES: &str = "iam.role";
pub(crate) const GROUPS: &str = "iam.group";
pub(crate) const INSTANCE_PROFILES: &str = "iam.instance-profile";

/// An instance profile (`iam.instance-profile`, key `account/lowercased name`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProfileRecord {
    pub account: String,
    pub name: String,
    pub path: String,
    pub id: String,
    pub arn: String,
    pub created: f64,
    /// Role names (at most one).
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub tags: Vec<Value>,
}

/// A group (`iam.group`, key `account/lowercased name`) and its members' user names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GroupRecord {
    pub account: String,
    pub name: String,
    pub path: String,
    pub id: String,
    pub arn: String,
    pub created: f64,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub attached: Vec<String>,
    #[serde(default)]
    pub inline: BTreeMap<String, String>,
}
pub(crate) const SESSIONS: &str = "iam.session";

/// A role (`iam.role`, key `account/lowercased name`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RoleRecord {
    pub account: String,
    pub name: String,
    pub path: String,
    pub id: String,
    pub arn: String,
    pub created: f64,
    /// The trust policy document.
    pub trust: String,
    #[serde(default)]
    pub description: Option<String>,
    pub max_session_duration: i64,
    #[serde(default)]
    pub tags: Vec<Value>,
    #[serde(default)]
    pub attached: Vec<String>,
    #[serde(default)]
    pub inline: BTreeMap<String, String>,
    /// Created by CreateServiceLinkedRole: only its service may change it.
    #[serde(default)]
    pub service_linked: bool,
    /// The permissions boundary (a managed policy ARN).
    #[serde(default)]
    pub boundary: Option<String>,
}

/// Who temporary credentials stand for, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub(crate) enum StoredPrincipal {
    Root,
    User {
        name: String,
    },
    AssumedRole {
        role_arn: String,
        role_name: String,
        session: String,
    },
}

/// Temporary credentials from STS (`iam.session`, key: the `ASIA…` key ID). The secret is
/// sealed; of the token only its SHA-256 is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionRecord {
    pub id: String,
    pub account: String,
    pub arn: String,
    pub user_id: String,
    pub principal: StoredPrincipal,
    pub secret: String,
    pub token_sha256: String,
    pub issued: i64,
    pub expires: i64,
    /// Session policies (AssumeRole's `Policy` and `PolicyArns`, resolved to documents): the
    /// session may do only what they and the role's policies both allow.
    #[serde(default)]
    pub session_policies: Vec<String>,
    /// Session tags (AssumeRole's `Tags`): the session's `aws:PrincipalTag`s, over the role's.
    #[serde(default)]
    pub tags: Vec<(String, String)>,
}

/// How long expired sessions stay known, so that their use is answered "expired", not
/// "invalid".
pub(crate) const EXPIRED_KEPT_SECS: i64 = 3600;

/// An IAM user as stored (`iam.user`, key `account/lowercased name`: names are unique
/// case-insensitively).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserRecord {
    pub account: String,
    pub name: String,
    pub path: String,
    pub id: String,
    pub arn: String,
    pub created: f64,
    #[serde(default)]
    pub tags: Vec<Value>,
    /// Managed policy ARNs, in attachment order.
    #[serde(default)]
    pub attached: Vec<String>,
    /// Inline policies by name.
    #[serde(default)]
    pub inline: BTreeMap<String, String>,
    /// The permissions boundary (a managed policy ARN).
    #[serde(default)]
    pub boundary: Option<String>,
}

/// An access key (`iam.access-key`, key: the key ID).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyRecord {
    pub id: String,
    pub account: String,
    pub user: String,
    /// Sealed with the data directory's key, bound to the key ID.
    pub secret: String,
    /// `Active` or `Inactive`.
    pub status: String,
    pub created: f64,
    #[serde(default)]
    pub last_used: Option<LastUsed>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LastUsed {
    pub at: f64,
    pub service: String,
    pub region: String,
}

/// A customer-managed policy (`iam.policy`, key `account/path+name`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PolicyRecord {
    pub account: String,
    pub name: String,
    pub path: String,
    pub id: String,
    pub arn: String,
    #[serde(default)]
    pub description: Option<String>,
    pub versions: Vec<PolicyVersion>,
    pub default_version: String,
    /// The number the next version gets (versions are never renumbered).
    pub next_version: u32,
    pub created: f64,
    pub updated: f64,
    #[serde(default)]
    pub tags: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PolicyVersion {
    pub id: String,
    pub document: String,
    pub created: f64,
}

impl PolicyRecord {
    pub fn default_document(&self) -> Option<&str> {
        self.versions
            .iter()
            .find(|v| v.id == self.default_version)
            .map(|v| v.document.as_str())
    }
}

/// What evaluation reads, rebuilt after every IAM write.
#[derive(Default)]
struct Snapshot {
    /// Active keys: secret and principal.
    keys: HashMap<String, Arc<ResolvedKey>>,
    /// Compiled identity policies by principal ARN.
    policies: HashMap<String, Arc<Vec<policy::Policy>>>,
    /// Compiled session policies by session key.
    session_policies: HashMap<String, Arc<Vec<policy::Policy>>>,
    /// Compiled permissions boundaries by user or role ARN.
    boundaries: HashMap<String, Arc<Vec<policy::Policy>>>,
    /// Tags of users and roles by ARN, for `aws:PrincipalTag/<key>` (a role's for its sessions).
    tags: HashMap<String, Arc<Vec<(String, String)>>>,
    /// Users, roles (by ARN) and sessions (by key) one of whose policies tests resource tags.
    tests_resource_tags: std::collections::HashSet<String>,
}

fn any_tests_tags(policies: &[policy::Policy]) -> bool {
    policies.iter().any(policy::Policy::tests_resource_tags)
}

/// `[{"Key": k, "Value": v}]` as IAM stores tags → pairs.
fn tag_pairs(tags: &[Value]) -> Arc<Vec<(String, String)>> {
    Arc::new(
        tags.iter()
            .filter_map(|t| {
                Some((
                    t.get("Key")?.as_str()?.to_string(),
                    t.get("Value")?.as_str()?.to_string(),
                ))
            })
            .collect(),
    )
}

/// The IAM service. Cheap to clone.
#[derive(Clone)]
pub struct Iam {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    snapshot: RwLock<Arc<Snapshot>>,
    refreshing: parking_lot::Mutex<()>,
    /// Last uses of users' keys not yet written to their records ([`Iam::flush_last_used`]):
    /// the request path only notes them in memory.
    uses: parking_lot::Mutex<HashMap<String, LastUsed>>,
}

impl std::fmt::Debug for Iam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iam").finish_non_exhaustive()
    }
}

pub(crate) fn store_error(e: StoreError) -> AwsError {
    tracing::error!(error = %e, "IAM store");
    AwsError::server_exception()
}

impl Iam {
    /// Opens IAM over the store and builds the evaluation snapshot.
    pub fn open(store: Arc<dyn Store>, sealer: Arc<Sealer>) -> Result<Self, StoreError> {
        let iam = Self {
            inner: Arc::new(Inner {
                store,
                sealer,
                snapshot: RwLock::new(Arc::default()),
                refreshing: parking_lot::Mutex::new(()),
                uses: parking_lot::Mutex::default(),
            }),
        };
        iam.refresh()?;
        Ok(iam)
    }

    /// Rebuilds the snapshot from the store (after every write, and after a reset empties it).
    pub fn refresh(&self) -> Result<(), StoreError> {
        // One rebuild at a time: a slower one that read older state must not publish last.
        let _one = self.inner.refreshing.lock();
        let sealer = self.inner.sealer.clone();
        let snapshot = fleetport_store::read(&*self.inner.store, |txn| {
            let users: Vec<UserRecord> = txn
                .scan_json::<UserRecord>(USERS, "", None, usize::MAX)?
                .into_iter()
                .map(|(_, u)| u)
                .collect();
            let customer: HashMap<String, PolicyRecord> = txn
                .scan_json::<PolicyRecord>(POLICIES, "", None, usize::MAX)?
                .into_iter()
                .map(|(_, p)| (p.arn.clone(), p))
                .collect();
            let roles: Vec<RoleRecord> = txn
                .scan_json::<RoleRecord>(ROLES, "", None, usize::MAX)?
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            let groups: Vec<GroupRecord> = txn
                .scan_json::<GroupRecord>(GROUPS, "", None, usize::MAX)?
                .into_iter()
                .map(|(_, g)| g)
                .collect();
            let sessions: Vec<SessionRecord> = txn
                .scan_json::<SessionRecord>(SESSIONS, "", None, usize::MAX)?
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            let keys: Vec<KeyRecord> = txn
                .scan_json::<KeyRecord>(KEYS, "", None, usize::MAX)?
                .into_iter()
                .map(|(_, k)| k)
                .collect();
            let mut snap = Snapshot::default();
            let mut principals: HashMap<(String, String), Principal> = HashMap::new();
            let compile = |attached: &[String], inline: &BTreeMap<String, String>| {
                let mut compiled = Vec::new();
                for arn in attached {
                    let doc = match managed::find(arn) {
                        Some(m) => Some(m.document.to_string()),
                        None => customer
                            .get(arn)
                            .and_then(|p| p.default_document().map(String::from)),
                    };
                    if let Some(p) =
                        doc.and_then(|d| policy::parse(&d, policy::Kind::Identity).ok())
                    {
                        compiled.push(p);
                    }
                }
                for doc in inline.values() {
                    if let Ok(p) = policy::parse(doc, policy::Kind::Identity) {
                        compiled.push(p);
                    }
                }
                Arc::new(compiled)
            };
            for u in &users {
                let principal = user_principal(u);
                // A user's policies and those of each of its groups.
                let mut attached = u.attached.clone();
                let mut inline: BTreeMap<String, String> = u
                    .inline
                    .iter()
                    .map(|(k, v)| (format!("user/{k}"), v.clone()))
                    .collect();
                for g in groups
                    .iter()
                    .filter(|g| g.account == u.account && g.members.contains(&u.name))
                {
                    attached.extend(g.attached.iter().cloned());
                    inline.extend(
                        g.inline
                            .iter()
                            .map(|(k, v)| (format!("group/{}/{k}", g.name), v.clone())),
                    );
                }
                snap.policies
                    .insert(principal.arn.clone(), compile(&attached, &inline));
                if let Some(b) = &u.boundary {
                    snap.boundaries.insert(
                        principal.arn.clone(),
                        compile(std::slice::from_ref(b), &BTreeMap::new()),
                    );
                }
                if !u.tags.is_empty() {
                    snap.tags.insert(principal.arn.clone(), tag_pairs(&u.tags));
                }
                principals.insert((u.account.clone(), u.name.clone()), principal);
            }
            for r in &roles {
                snap.policies
                    .insert(r.arn.clone(), compile(&r.attached, &r.inline));
                if !r.tags.is_empty() {
                    snap.tags.insert(r.arn.clone(), tag_pairs(&r.tags));
                }
                if let Some(b) = &r.boundary {
                    snap.boundaries.insert(
                        r.arn.clone(),
                        compile(std::slice::from_ref(b), &BTreeMap::new()),
                    );
                }
            }
            let now = fleetport_proto::clock::unix_secs();
            for s in sessions
                .iter()
                .filter(|s| s.expires + EXPIRED_KEPT_SECS > now)
            {
                let kind = match &s.principal {
                    StoredPrincipal::Root => PrincipalKind::Root,
                    StoredPrincipal::User { name } => PrincipalKind::User { name: name.clone() },
                    StoredPrincipal::AssumedRole {
                        role_arn,
                        role_name,
                        session,
                    } => PrincipalKind::AssumedRole {
                        role_arn: role_arn.clone(),
                        role_name: role_name.clone(),
                        session: session.clone(),
                        key: s.id.clone(),
                    },
                };
                if let (false, StoredPrincipal::AssumedRole { role_arn, .. }) =
                    (s.tags.is_empty(), &s.principal)
                {
                    // Session tags win over the role's tags of the same key (case-insensitive).
                    let mut tags: Vec<(String, String)> = snap
                        .tags
                        .get(role_arn)
                        .map(|t| t.to_vec())
                        .unwrap_or_default();
                    tags.retain(|(k, _)| !s.tags.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)));
                    tags.extend(s.tags.iter().cloned());
                    snap.tags.insert(s.id.clone(), Arc::new(tags));
                }
                if !s.session_policies.is_empty() {
                    let compiled = s
                        .session_policies
                        .iter()
                        .filter_map(|d| policy::parse(d, policy::Kind::Identity).ok())
                        .collect();
                    snap.session_policies
                        .insert(s.id.clone(), Arc::new(compiled));
                }
                let secret = match sealer.open(&s.id, &s.secret) {
                    Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                    Err(e) => {
                        tracing::warn!(key = %s.id, error = %e, "cannot unseal a session's secret");
                        continue;
                    }
                };
                snap.keys.insert(
                    s.id.clone(),
                    Arc::new(ResolvedKey {
                        secret,
                        principal: Principal {
                            account_id: s.account.clone(),
                            arn: s.arn.clone(),
                            user_id: s.user_id.clone(),
                            kind,
                        },
                        session: Some(fleetport_proto::auth::Session {
                            token_sha256: s.token_sha256.clone(),
                            expires_at: s.expires,
                            issued_at: s.issued,
                        }),
                    }),
                );
            }
            for k in keys.iter().filter(|k| k.status == "Active") {
                // A key made for no user (CreateAccessKey signed by root) is a root key.
                let principal = if k.user.is_empty() {
                    Principal::root(&k.account)
                } else {
                    match principals.get(&(k.account.clone(), k.user.clone())) {
                        Some(p) => p.clone(),
                        None => continue,
                    }
                };
                let secret = match sealer.open(&k.id, &k.secret) {
                    Ok(s) => String::from_utf8_lossy(&s).into_owned(),
                    Err(e) => {
                        tracing::warn!(key = %k.id, error = %e, "cannot unseal an access key's secret");
                        continue;
                    }
                };
                snap.keys.insert(
                    k.id.clone(),
                    Arc::new(ResolvedKey {
                        secret,
                        principal,
                        session: None,
                    }),
                );
            }
            snap.tests_resource_tags = snap
                .policies
                .iter()
                .chain(&snap.boundaries)
                .chain(&snap.session_policies)
                .filter(|(_, p)| any_tests_tags(p))
                .map(|(holder, _)| holder.clone())
                .collect();
            Ok::<_, StoreError>(snap)
        })?;
        *self.inner.snapshot.write() = Arc::new(snapshot);
        Ok(())
    }

    /// Whether the role an ARN names exists.
    pub fn role_exists(&self, arn: &str) -> bool {
        let Some(account) = arn
            .strip_prefix("arn:aws:iam::")
            .and_then(|r| r.split(':').next())
        else {
            return false;
        };
        api::read(self, |txn| roles::role_by_arn(txn, account, arn))
            .ok()
            .flatten()
            .is_some()
    }

    /// Whether a key is temporary (issued by STS).
    pub(crate) fn resolve_session(&self, access_key: &str) -> bool {
        self.snapshot()
            .keys
            .get(access_key)
            .is_some_and(|k| k.session.is_some())
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.read().clone()
    }
}

pub(crate) fn user_principal(u: &UserRecord) -> Principal {
    Principal {
        account_id: u.account.clone(),
        arn: u.arn.clone(),
        user_id: u.id.clone(),
        kind: PrincipalKind::User {
            name: u.name.clone(),
        },
    }
}

impl KeySource for Iam {
    fn resolve(&self, access_key: &str) -> Option<Arc<ResolvedKey>> {
        self.snapshot().keys.get(access_key).cloned()
    }

    fn used(&self, access_key: &str, service: &str, region: &str) {
        // Only users' long-term keys have a last use; temporary keys do not.
        if !access_key.starts_with("AKIA") {
            return;
        }
        let at = fleetport_proto::clock::epoch_seconds();
        let mut uses = self.inner.uses.lock();
        // The common case, the same key again for the same service and region, allocates nothing.
        if let Some(u) = uses.get_mut(access_key)
            && u.service == service
            && u.region == region
        {
            u.at = at;
            return;
        }
        uses.insert(
            access_key.to_string(),
            LastUsed {
                at,
                service: service.to_string(),
                region: region.to_string(),
            },
        );
    }
}

impl Iam {
    /// The last use of a key: noted since the last flush, else as stored.
    pub(crate) fn pending_use(&self, access_key: &str) -> Option<LastUsed> {
        self.inner.uses.lock().get(access_key).cloned()
    }

    /// Writes the noted last uses into the keys' records (in one transaction); keys deleted
    /// since are skipped. Called every few seconds and at shutdown.
    pub async fn flush_last_used(&self) -> Result<(), StoreError> {
        let noted = std::mem::take(&mut *self.inner.uses.lock());
        if noted.is_empty() {
            return Ok(());
        }
        fleetport_store::write::<_, StoreError>(&*self.inner.store, move |txn| {
            for (id, used) in noted {
                if let Some(mut k) = txn.get_json::<KeyRecord>(KEYS, &id)? {
                    k.last_used = Some(used);
                    txn.put_json(KEYS, &id, &k)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Flushes last uses every `every` until aborted.
    pub async fn run_last_used(self, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.flush_last_used().await {
                tracing::warn!(error = %e, "could not record access keys' last use");
            }
        }
    }
}

impl Authorizer for Iam {
    fn uses_resource_tags(&self, principal: &Principal) -> bool {
        let snapshot = self.snapshot();
        match &principal.kind {
            PrincipalKind::Root => false,
            PrincipalKind::User { .. } => snapshot.tests_resource_tags.contains(&principal.arn),
            PrincipalKind::AssumedRole { role_arn, key, .. } => {
                snapshot.tests_resource_tags.contains(role_arn)
                    || snapshot.tests_resource_tags.contains(key)
            }
        }
    }

    fn decide(&self, principal: &Principal, access: &Access, facts: &RequestFacts) -> Decision {
        if principal.is_root() {
            return Decision::Allow;
        }
        // A role's sessions have the role's policies.
        let holder = match &principal.kind {
            PrincipalKind::AssumedRole { role_arn, .. } => role_arn,
            _ => &principal.arn,
        };
        let snapshot = self.snapshot();
        let policies = snapshot.policies.get(holder).cloned().unwrap_or_default();
        let session = match &principal.kind {
            PrincipalKind::AssumedRole { key, .. } => snapshot.session_policies.get(key).cloned(),
            _ => None,
        };
        // A session's own tags (keyed by its access key), else the user's or role's.
        let tags = match &principal.kind {
            PrincipalKind::AssumedRole { key, .. } => snapshot.tags.get(key),
            _ => None,
        }
        .or_else(|| snapshot.tags.get(holder))
        .cloned()
        .unwrap_or_default();
        let request = policy::Request {
            principal,
            principal_tags: &tags,
            action: &access.action,
            resource: &access.resource,
            facts,
            now: fleetport_proto::clock::unix_secs(),
            context: &access.context,
        };
        let mut identity = policy::evaluate(policies.iter(), &request);
        // A permissions boundary caps what identity policies grant.
        if let Some(boundary) = snapshot.boundaries.get(holder) {
            identity = match (identity, policy::evaluate(boundary.iter(), &request)) {
                (Decision::ExplicitDeny, _) | (_, Decision::ExplicitDeny) => Decision::ExplicitDeny,
                (Decision::Allow, Decision::Allow) => Decision::Allow,
                _ => Decision::ImplicitDeny,
            };
        }
        let resource = access
            .resource_policy
            .as_deref()
            .and_then(|text| policy::parse(text, policy::Kind::Resource).ok())
            .map_or(policy::ResourceVerdict::Silent, |p| {
                policy::evaluate_resource(&p, &request)
            });
        // Within one account: an explicit deny anywhere wins; otherwise an allow on either side
        // is enough.
        let decision = match (identity, resource) {
            (Decision::ExplicitDeny, _) => Decision::ExplicitDeny,
            (_, policy::ResourceVerdict::Deny) => Decision::ExplicitDenyInResourcePolicy,
            (Decision::Allow, _) | (_, policy::ResourceVerdict::Allow(_)) => Decision::Allow,
            _ => Decision::ImplicitDeny,
        };
        // Session policies narrow a session: it may do only what they allow too.
        match (decision, session) {
            (Decision::Allow, Some(session)) => match policy::evaluate(session.iter(), &request) {
                Decision::Allow => Decision::Allow,
                Decision::ExplicitDeny => Decision::ExplicitDeny,
                _ => Decision::ImplicitDeny,
            },
            (d, _) => d,
        }
    }
}

const IMPLEMENTED: &[&str] = &[
    "CreateUser",
    "GetUser",
    "ListUsers",
    "DeleteUser",
    "CreateAccessKey",
    "ListAccessKeys",
    "UpdateAccessKey",
    "DeleteAccessKey",
    "GetAccessKeyLastUsed",
    "CreatePolicy",
    "GetPolicy",
    "DeletePolicy",
    "ListPolicies",
    "CreatePolicyVersion",
    "GetPolicyVersion",
    "ListPolicyVersions",
    "DeletePolicyVersion",
    "SetDefaultPolicyVersion",
    "AttachUserPolicy",
    "DetachUserPolicy",
    "ListAttachedUserPolicies",
    "PutUserPolicy",
    "GetUserPolicy",
    "ListUserPolicies",
    "DeleteUserPolicy",
    "CreateRole",
    "GetRole",
    "ListRoles",
    "DeleteRole",
    "UpdateAssumeRolePolicy",
    "UpdateRole",
    "AttachRolePolicy",
    "DetachRolePolicy",
    "ListAttachedRolePolicies",
    "PutRolePolicy",
    "GetRolePolicy",
    "ListRolePolicies",
    "DeleteRolePolicy",
    "CreateGroup",
    "GetGroup",
    "ListGroups",
    "ListGroupsForUser",
    "DeleteGroup",
    "AddUserToGroup",
    "RemoveUserFromGroup",
    "AttachGroupPolicy",
    "DetachGroupPolicy",
    "ListAttachedGroupPolicies",
    "PutGroupPolicy",
    "GetGroupPolicy",
    "ListGroupPolicies",
    "DeleteGroupPolicy",
    "CreateInstanceProfile",
    "GetInstanceProfile",
    "ListInstanceProfiles",
    "ListInstanceProfilesForRole",
    "DeleteInstanceProfile",
    "AddRoleToInstanceProfile",
    "RemoveRoleFromInstanceProfile",
    "CreateServiceLinkedRole",
    "DeleteServiceLinkedRole",
    "GetServiceLinkedRoleDeletionStatus",
    "ListEntitiesForPolicy",
    "TagUser",
    "UntagUser",
    "ListUserTags",
    "TagRole",
    "UntagRole",
    "ListRoleTags",
    "PutUserPermissionsBoundary",
    "DeleteUserPermissionsBoundary",
    "PutRolePermissionsBoundary",
    "DeleteRolePermissionsBoundary",
];

impl Service for Iam {
    fn model(&self) -> &'static ServiceModel {
        model::iam()
    }

    fn constraint_error_code(&self) -> &'static str {
        "ValidationError"
    }

    fn implements(&self, operation: &str) -> bool {
        IMPLEMENTED.contains(&operation)
    }

    fn call<'a>(
        &'a self,
        ctx: &'a RequestContext,
        operation: &'a str,
        input: Value,
    ) -> BoxFuture<'a, Result<Value, AwsError>> {
        Box::pin(async move {
            let out = api::dispatch(self, ctx, operation, &input).await;
            if out.is_ok() && api::writes(operation) {
                self.refresh().map_err(store_error)?;
            }
            out
        })
    }

    fn resources(&self, ctx: &RequestContext, operation: &str, input: &Value) -> Vec<String> {
        vec![api::resource(ctx, operation, input)]
    }
}
