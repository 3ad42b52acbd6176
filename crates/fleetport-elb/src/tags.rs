//! Tags on load balancers, target groups, listeners and rules: AddTags, RemoveTags,
//! DescribeTags, and the `Tags` member of the Create calls.

use serde_json::{Value, json};

use crate::Elb;
use crate::error::{
    ElbResult, code, lb_not_found, listener_not_found, rule_not_found, tg_not_found, validation,
};
use crate::state::ElbState;

const MAX_TAGS: usize = 50;

pub fn parse(input: &Value) -> ElbResult<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for t in input
        .get("Tags")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let key = t.get("Key").and_then(Value::as_str).unwrap_or_default();
        let value = t.get("Value").and_then(Value::as_str).unwrap_or_default();
        if key.starts_with("aws:") {
            return Err(validation("Tag keys starting with 'aws:' are reserved"));
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err(code(
                "DuplicateTagKeys",
                format!("Tag key '{key}' is duplicated"),
            ));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Adds or overwrites `new` on `arn`, within the per-resource limit.
pub fn merge(s: &mut ElbState, arn: &str, new: &[(String, String)]) -> ElbResult<()> {
    let tags = s.tags.entry(arn.to_string()).or_default();
    for (k, v) in new {
        match tags.iter_mut().find(|(tk, _)| tk == k) {
            Some(slot) => slot.1 = v.clone(),
            None => tags.push((k.clone(), v.clone())),
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(code(
            "TooManyTags",
            format!("A resource can have at most {MAX_TAGS} tags"),
        ));
    }
    if tags.is_empty() {
        s.tags.remove(arn);
    }
    Ok(())
}

fn check_exists(s: &ElbState, arn: &str) -> ElbResult<()> {
    let found = s.lb(arn).is_some()
        || s.tg(arn).is_some()
        || s.listener(arn).is_some()
        || s.rules.iter().any(|r| r.arn == arn);
    if found {
        return Ok(());
    }
    Err(if arn.contains(":targetgroup/") {
        tg_not_found()
    } else if arn.contains(":listener-rule/") {
        rule_not_found()
    } else if arn.contains(":listener/") {
        listener_not_found()
    } else {
        lb_not_found()
    })
}

impl Elb {
    pub(crate) async fn add_tags(&self, input: Value) -> ElbResult<Value> {
        let arns = fleetport_proto::input::strings(&input, "ResourceArns");
        let new = parse(&input)?;
        self.change(move |s| {
            for a in &arns {
                check_exists(s, a)?;
                merge(s, a, &new)?;
            }
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) async fn remove_tags(&self, input: Value) -> ElbResult<Value> {
        let arns = fleetport_proto::input::strings(&input, "ResourceArns");
        let keys = fleetport_proto::input::strings(&input, "TagKeys");
        self.change(move |s| {
            for a in &arns {
                check_exists(s, a)?;
                if let Some(tags) = s.tags.get_mut(a) {
                    tags.retain(|(k, _)| !keys.contains(k));
                    if tags.is_empty() {
                        s.tags.remove(a);
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub(crate) fn describe_tags(&self, input: Value) -> ElbResult<Value> {
        let s = self.snapshot();
        let arns = fleetport_proto::input::strings(&input, "ResourceArns");
        let mut out = Vec::new();
        for a in &arns {
            check_exists(&s, a)?;
            let tags: Vec<Value> = s
                .tags
                .get(a)
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| json!({"Key": k, "Value": v}))
                        .collect()
                })
                .unwrap_or_default();
            out.push(json!({"ResourceArn": a, "Tags": tags}));
        }
        Ok(json!({"TagDescriptions": out}))
    }
}
