//! ELB's error vocabulary (awsQuery codes as the model names them on the wire) and the
//! `Marker`/`NextMarker` paging of its Describe calls.

use fleetport_proto::{AwsError, paging};
use fleetport_store::StoreError;
use serde_json::Value;

pub type ElbResult<T> = Result<T, AwsError>;

pub fn validation(message: impl Into<String>) -> AwsError {
    AwsError::client("ValidationError", message)
}

pub fn code(code: &str, message: impl Into<String>) -> AwsError {
    AwsError::client(code, message)
}

pub fn lb_not_found() -> AwsError {
    code(
        "LoadBalancerNotFound",
        "One or more load balancers not found",
    )
}

pub fn tg_not_found() -> AwsError {
    code("TargetGroupNotFound", "One or more target groups not found")
}

pub fn listener_not_found() -> AwsError {
    code("ListenerNotFound", "One or more listeners not found")
}

pub fn rule_not_found() -> AwsError {
    code("RuleNotFound", "One or more rules not found")
}

pub fn invalid_config(message: impl Into<String>) -> AwsError {
    code("InvalidConfigurationRequest", message)
}

pub fn certificate_not_found(arn: &str) -> AwsError {
    code(
        "CertificateNotFound",
        format!("Certificate '{arn}' not found"),
    )
}

pub fn store_error(e: StoreError) -> AwsError {
    tracing::error!(error = %e, "state store failure");
    AwsError::with_status(
        "InternalFailure",
        "The request processing has failed because of an unknown error.",
        http::StatusCode::INTERNAL_SERVER_ERROR,
    )
}

/// One page of `items` (already in their listing order, each with a stable key) after
/// `Marker`, at most `PageSize` (1–400, default 400) long, as `{member: [...], NextMarker}`.
pub fn page(input: &Value, member: &str, items: Vec<(String, Value)>) -> ElbResult<Value> {
    let size = match input.get("PageSize").and_then(Value::as_i64) {
        None => 400,
        Some(n) if (1..=400).contains(&n) => n as usize,
        Some(_) => return Err(validation("PageSize must be between 1 and 400")),
    };
    let start = match input.get("Marker").and_then(Value::as_str) {
        None => 0,
        Some(m) => {
            let after = paging::decode_key(m).ok_or_else(|| validation("Invalid Marker"))?;
            items
                .iter()
                .position(|(k, _)| *k == after)
                .map(|i| i + 1)
                .ok_or_else(|| validation("Invalid Marker"))?
        }
    };
    let mut rest: Vec<(String, Value)> = items.into_iter().skip(start).collect();
    let more = rest.len() > size;
    rest.truncate(size);
    let marker = more
        .then(|| rest.last().map(|(k, _)| paging::encode_token(k)))
        .flatten();
    let mut out = serde_json::Map::new();
    out.insert(
        member.to_string(),
        Value::Array(rest.into_iter().map(|(_, v)| v).collect()),
    );
    if let Some(m) = marker {
        out.insert("NextMarker".into(), Value::String(m));
    }
    Ok(Value::Object(out))
}

/// Load balancer, target group and listener names: 1–32 of `[A-Za-z0-9-]`, no hyphen at
/// either end.
pub fn check_name(kind: &str, member: &str, name: &str) -> ElbResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(validation(format!(
            "{kind} name '{name}' cannot be longer than '32' characters, must contain only alphanumeric characters or hyphens, and must not begin or end with a hyphen (member '{member}')"
        )))
    }
}

/// Sixteen hex digits, as the ids in ELB ARNs.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}
