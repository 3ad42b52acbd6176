//! STS: who the caller is (GetCallerIdentity, which no policy can deny) and which account a key
//! belongs to (GetAccessKeyInfo). Temporary credentials (AssumeRole, GetSessionToken) come with
//! roles.

use fleetport_proto::model::{self, ServiceModel};
use fleetport_proto::{AwsError, BoxFuture, RequestContext, Service};
use serde_json::{Value, json};

use crate::ids;

/// The STS service.
#[derive(Debug, Clone, Default)]
pub struct Sts;

impl Service for Sts {
    fn model(&self) -> &'static ServiceModel {
        model::sts()
    }

    fn constraint_error_code(&self) -> &'static str {
        "ValidationError"
    }

    fn implements(&self, operation: &str) -> bool {
        matches!(operation, "GetCallerIdentity" | "GetAccessKeyInfo")
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
                _ => Err(AwsError::client("InvalidAction", operation.to_string())),
            }
        })
    }
}
