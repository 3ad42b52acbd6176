//! The IAM roles a task definition hands to ECS (task and execution roles). ECS asks a
//! [`RoleDirectory`] the binary wires in (IAM) whether a role exists, instead of reading IAM's
//! records; an unknown role is refused as ECS refuses it.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::EcsResult;

/// Answers whether a role exists, and makes the service-linked role ECS works through.
pub trait RoleDirectory: Send + Sync + 'static {
    fn exists(&self, role_arn: &str) -> bool;

    /// Creates `AWSServiceRoleForECS` in `account` unless it exists (AWS does so at the first
    /// CreateCluster).
    fn ensure_service_linked_role<'a>(
        &'a self,
        account: &'a str,
    ) -> fleetport_proto::BoxFuture<'a, Result<(), fleetport_proto::AwsError>> {
        let _ = account;
        Box::pin(async { Ok(()) })
    }
}

pub(crate) type Slot = std::sync::OnceLock<Arc<dyn RoleDirectory>>;

/// A role reference as ECS takes it (an ARN or a bare role name) → its ARN.
pub(crate) fn role_arn(account: &str, reference: &str) -> String {
    if reference.starts_with("arn:") {
        reference.to_string()
    } else {
        format!("arn:aws:iam::{account}:role/{reference}")
    }
}

/// Refuses a task definition naming a role that does not exist ("Role is not valid").
pub(crate) fn check(
    directory: Option<&Arc<dyn RoleDirectory>>,
    account: &str,
    td: &Map<String, Value>,
) -> EcsResult<()> {
    let Some(directory) = directory else {
        return Ok(());
    };
    for member in ["taskRoleArn", "executionRoleArn"] {
        if let Some(reference) = td.get(member).and_then(Value::as_str)
            && !reference.is_empty()
            && !directory.exists(&role_arn(account, reference))
        {
            return Err(crate::error::client("Role is not valid"));
        }
    }
    Ok(())
}
