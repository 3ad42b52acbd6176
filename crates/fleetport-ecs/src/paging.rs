//! `maxResults`/`nextToken` paging. Tokens are opaque to clients: the last key of the previous
//! page, base64-encoded, so a page never repeats or skips an item that still exists.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::error::{EcsResult, invalid};

pub fn max_results(input: &Value, default: usize) -> EcsResult<usize> {
    match input.get("maxResults").and_then(Value::as_i64) {
        None => Ok(default),
        Some(n) if (1..=100).contains(&n) => Ok(n as usize),
        Some(_) => Err(invalid("maxResults must be between 1 and 100.")),
    }
}

pub fn decode_token(input: &Value) -> EcsResult<Option<String>> {
    let Some(token) = input.get("nextToken").and_then(Value::as_str) else {
        return Ok(None);
    };
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| invalid("Invalid nextToken."))
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
