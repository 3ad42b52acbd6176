//! Repository policies: SetRepositoryPolicy, GetRepositoryPolicy, DeleteRepositoryPolicy.
//! Stored and returned as ECR does (the JSON text as given, checked for shape and size), and
//! handed to IAM's evaluation with every API or registry request on the repository
//! ([`Ecr::policy_of_arn`]): within the account, a repository policy that allows a principal is
//! enough, and one that denies wins.

use fleetport_proto::AwsError;
use fleetport_store::{Abort, ReadTxnExt, WriteTxnExt};
use serde_json::{Value, json};

use crate::Ecr;
use crate::repo::{Failure, REPOS, RepoRecord, repo_not_found};
use fleetport_proto::input;

pub const POLICIES: &str = "ecr.policy";
const MAX_POLICY: usize = 10240;

fn not_found(name: &str, account: &str) -> AwsError {
    AwsError::client(
        "RepositoryPolicyNotFoundException",
        format!(
            "Repository policy does not exist for the repository with name '{name}' in the registry with id '{account}'"
        ),
    )
}

/// A policy document must be a JSON object with a non-empty `Statement`.
fn check_policy(text: &str) -> Result<(), AwsError> {
    let invalid = |m: &str| {
        AwsError::client(
            "InvalidParameterException",
            format!("Invalid parameter at 'PolicyText' failed to satisfy constraint: '{m}'"),
        )
    };
    if text.len() > MAX_POLICY {
        return Err(invalid(
            "Policy exceeds the maximum size of 10240 characters",
        ));
    }
    let doc: Value =
        serde_json::from_str(text).map_err(|_| invalid("Invalid repository policy provided"))?;
    match doc.get("Statement") {
        Some(Value::Array(s)) if !s.is_empty() => Ok(()),
        Some(Value::Object(_)) => Ok(()),
        _ => Err(invalid("Invalid repository policy provided")),
    }
}

impl Ecr {
    /// The policy of the repository an ARN of this registry names.
    pub(crate) fn policy_of_arn(&self, arn: &str) -> Option<String> {
        let name = arn.strip_prefix(&format!(
            "arn:aws:ecr:{}:{}:repository/",
            self.scope.region, self.scope.account
        ))?;
        fleetport_store::read(&*self.store, |t| t.get_json::<String>(POLICIES, name))
            .map_err(|e: fleetport_store::StoreError| {
                tracing::warn!(error = %e, "could not read a repository policy")
            })
            .ok()
            .flatten()
    }

    pub(crate) async fn set_repository_policy(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let text = input::owned(&input, "policyText");
        check_policy(&text)?;
        let account = self.scope.account.clone();
        let stored = text.clone();
        let repo = name.clone();
        fleetport_store::write(&*self.store, move |txn| {
            if txn.get_json::<RepoRecord>(REPOS, &repo)?.is_none() {
                return Err(Abort::Domain(Failure(repo_not_found(&repo, &account))));
            }
            txn.put_json(POLICIES, &repo, &stored)?;
            Ok(())
        })
        .await
        .map_err(|f: Failure| f.0)?;
        Ok(json!({"registryId": self.scope.account, "repositoryName": name, "policyText": text}))
    }

    pub(crate) fn get_repository_policy(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let (repo, policy) = fleetport_store::read(&*self.store, |t| {
            Ok::<_, Failure>((
                t.get(REPOS, &name)?.is_some(),
                t.get_json::<String>(POLICIES, &name)?,
            ))
        })
        .map_err(|f| f.0)?;
        if !repo {
            return Err(repo_not_found(&name, &self.scope.account));
        }
        let text = policy.ok_or_else(|| not_found(&name, &self.scope.account))?;
        Ok(json!({"registryId": self.scope.account, "repositoryName": name, "policyText": text}))
    }

    pub(crate) async fn delete_repository_policy(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let account = self.scope.account.clone();
        let repo = name.clone();
        let text = fleetport_store::write(&*self.store, move |txn| {
            if txn.get(REPOS, &repo)?.is_none() {
                return Err(Abort::Domain(Failure(repo_not_found(&repo, &account))));
            }
            let Some(text) = txn.get_json::<String>(POLICIES, &repo)? else {
                return Err(Abort::Domain(Failure(not_found(&repo, &account))));
            };
            txn.delete(POLICIES, &repo)?;
            Ok(text)
        })
        .await
        .map_err(|f: Failure| f.0)?;
        Ok(json!({"registryId": self.scope.account, "repositoryName": name, "policyText": text}))
    }
}
