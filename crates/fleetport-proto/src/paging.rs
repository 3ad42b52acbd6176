//! `maxResults`/`nextToken` paging shared by the awsJson services. Tokens are opaque to clients:
//! the last key of the previous page, base64-encoded, so a page never repeats or skips an item
//! that still exists.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::AwsError;

fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::client("InvalidParameterException", message)
}

/// `maxResults` within 1..=`max`, or `default` when absent.
pub fn max_results(input: &Value, default: usize, max: i64) -> Result<usize, AwsError> {
    match input.get("maxResults").and_then(Value::as_i64) {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        Some(_) => Err(invalid(format!("maxResults must be between 1 and {max}."))),
    }
}

/// The key after which the requested page starts, from `nextToken`.
pub fn decode_token(input: &Value) -> Result<Option<String>, AwsError> {
    let Some(token) = input.get("nextToken").and_then(Value::as_str) else {
        return Ok(None);
    };
    decode_key(token)
        .map(Some)
        .ok_or_else(|| invalid("Invalid nextToken."))
}

/// The key a token (from [`encode_token`]) carries, or None when it is not one of ours.
pub fn decode_key(token: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

pub fn encode_token(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Cuts `items` (in key order, or reverse key order when `descending`) into the page that
/// follows `after`, returning the page and the token for the next one.
pub fn page<T>(
    items: Vec<(String, T)>,
    after: Option<&str>,
    limit: usize,
    descending: bool,
) -> (Vec<T>, Option<String>) {
    let follows = |k: &str| after.is_none_or(|a| if descending { k < a } else { k > a });
    let mut rest: Vec<(String, T)> = items.into_iter().filter(|(k, _)| follows(k)).collect();
    let more = rest.len() > limit;
    rest.truncate(limit);
    let token = if more {
        rest.last().map(|(k, _)| encode_token(k))
    } else {
        None
    };
    (rest.into_iter().map(|(_, v)| v).collect(), token)
}

/// Adds `nextToken` to an output document when there is a next page.
pub fn with_token(mut out: Value, token: Option<String>) -> Value {
    if let (Some(t), Value::Object(o)) = (token, &mut out) {
        o.insert("nextToken".into(), Value::String(t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages_follow_tokens_both_ways() {
        let items = || (1..=5).map(|i| (format!("k{i}"), i)).collect::<Vec<_>>();
        let (p1, t1) = page(items(), None, 2, false);
        assert_eq!(p1, [1, 2]);
        let after = decode_token(&json!({"nextToken": t1.unwrap()})).unwrap();
        let (p2, _) = page(items(), after.as_deref(), 2, false);
        assert_eq!(p2, [3, 4]);
        let (d, t) = page(items().into_iter().rev().collect(), Some("k3"), 5, true);
        assert_eq!((d, t), (vec![2, 1], None));
        assert!(decode_token(&json!({"nextToken": "%%"})).is_err());
        assert!(max_results(&json!({"maxResults": 101}), 100, 100).is_err());
    }
}
