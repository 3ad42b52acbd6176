//! Reading members out of a request document that the gateway has already validated against
//! the model (so types are right; only presence varies).

use serde_json::Value;

/// A string member, if present.
pub fn string<'a>(input: &'a Value, member: &str) -> Option<&'a str> {
    input.get(member).and_then(Value::as_str)
}

/// A string member as an owned value, empty when absent.
pub fn owned(input: &Value, member: &str) -> String {
    string(input, member).unwrap_or_default().to_string()
}

/// A list-of-strings member, empty when absent.
pub fn strings(input: &Value, member: &str) -> Vec<String> {
    input
        .get(member)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

/// A list member's items, empty when absent.
pub fn items(input: &Value, member: &str) -> Vec<Value> {
    input
        .get(member)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Whether a list-of-strings member contains `value` (e.g. `include: ["TAGS"]`).
pub fn includes(input: &Value, member: &str, value: &str) -> bool {
    input
        .get(member)
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(value)))
}
