//! Resource tags: TagResource, UntagResource, ListTagsForResource, and the tag rules every ECS
//! resource shares (≤50 per resource, unique keys, `aws:` reserved).

use fleetport_store::{Abort, ReadTxn, ReadTxnExt, WriteTxn, WriteTxnExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{EcsResult, invalid};
use fleetport_proto::AwsError;

pub const COLLECTION: &str = "ecs.tags";
const MAX_TAGS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// Reads and checks the `tags` member of a request.
pub fn parse(input: &Value, member: &str) -> EcsResult<Vec<Tag>> {
    let Some(items) = input.get(member).and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    let mut tags: Vec<Tag> = Vec::with_capacity(items.len());
    for item in items {
        let key = item
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("Tag keys must not be empty."))?;
        let value = item.get("value").and_then(Value::as_str).unwrap_or("");
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(invalid(
                "Tag keys beginning with 'aws:' are reserved for AWS use.",
            ));
        }
        if tags.iter().any(|t| t.key == key) {
            return Err(invalid(format!(
                "Duplicate tag key '{key}'. Tag keys must be unique."
            )));
        }
        tags.push(Tag {
            key: key.into(),
            value: value.into(),
        });
    }
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!(
            "A resource can have at most {MAX_TAGS} tags."
        )));
    }
    Ok(tags)
}

pub fn to_json(tags: &[Tag]) -> Value {
    Value::Array(
        tags.iter()
            .map(|t| json!({"key": t.key, "value": t.value}))
            .collect(),
    )
}

pub fn get(txn: &dyn ReadTxn, arn: &str) -> Result<Vec<Tag>, fleetport_store::StoreError> {
    Ok(txn
        .get_json::<Vec<Tag>>(COLLECTION, arn)?
        .unwrap_or_default())
}

pub fn set(
    txn: &mut dyn WriteTxn,
    arn: &str,
    tags: &[Tag],
) -> Result<(), fleetport_store::StoreError> {
    if tags.is_empty() {
        txn.delete(COLLECTION, arn).map(|_| ())
    } else {
        txn.put_json(COLLECTION, arn, &tags)
    }
}

/// Merges `new` into the resource's tags (same key: new value), enforcing the per-resource limit.
pub fn merge(txn: &mut dyn WriteTxn, arn: &str, new: &[Tag]) -> Result<(), Abort<AwsError>> {
    let mut tags = get(txn, arn)?;
    for t in new {
        match tags.iter_mut().find(|x| x.key == t.key) {
            Some(existing) => existing.value = t.value.clone(),
            None => tags.push(t.clone()),
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(Abort::Domain(invalid(format!(
            "A resource can have at most {MAX_TAGS} tags."
        ))));
    }
    set(txn, arn, &tags)?;
    Ok(())
}

impl crate::Ecs {
    /// The tagging key of a resource ARN that exists, or ResourceNotFoundException.
    fn taggable(&self, txn: &dyn ReadTxn, arn: &str) -> EcsResult<String> {
        let not_found =
            || crate::error::resource_not_found("The specified resource could not be found.");
        let resource = self
            .scope
            .resource_of(arn)
            .ok_or_else(|| invalid(format!("Invalid resource ARN: '{arn}'.")))?;
        let exists = if let Some(name) = resource.strip_prefix("cluster/") {
            txn.get(crate::cluster::COLLECTION, name)
                .map_err(crate::error::store)?
                .is_some()
        } else if let Some(rest) = resource.strip_prefix("service/") {
            let k = match rest.split_once('/') {
                Some((cluster, name)) => crate::service::key(cluster, name),
                None => crate::service::key("default", rest),
            };
            txn.get_json::<crate::service::ServiceRecord>(crate::service::COLLECTION, &k)
                .map_err(crate::error::store)?
                .is_some_and(|s| s.status != crate::service::INACTIVE)
        } else if let Some(rest) = resource.strip_prefix("task/") {
            txn.get(crate::cluster::TASKS, rest)
                .map_err(crate::error::store)?
                .is_some()
        } else if resource.starts_with("task-definition/") {
            self.find_task_definition(txn, arn)
                .map_err(crate::error::store)?
                .is_some()
                && resource.contains(':')
        } else {
            false
        };
        if exists {
            Ok(arn.to_string())
        } else {
            Err(not_found())
        }
    }

    pub async fn tag_resource(&self, input: Value) -> EcsResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "resourceArn");
        let new = parse(&input, "tags")?;
        let ecs = self.clone();
        crate::error::write(&*self.store, move |txn| {
            let arn = ecs.taggable(txn, &arn).map_err(Abort::Domain)?;
            merge(txn, &arn, &new)
        })
        .await?;
        Ok(json!({}))
    }

    pub async fn untag_resource(&self, input: Value) -> EcsResult<Value> {
        let arn = fleetport_proto::input::owned(&input, "resourceArn");
        let keys = fleetport_proto::input::strings(&input, "tagKeys");
        let ecs = self.clone();
        crate::error::write(&*self.store, move |txn| {
            let arn = ecs.taggable(txn, &arn).map_err(Abort::Domain)?;
            let mut tags = get(txn, &arn)?;
            tags.retain(|t| !keys.contains(&t.key));
            set(txn, &arn, &tags)?;
            Ok::<_, Abort<AwsError>>(())
        })
        .await?;
        Ok(json!({}))
    }

    pub fn list_tags_for_resource(&self, input: Value) -> EcsResult<Value> {
        let arn = fleetport_proto::input::string(&input, "resourceArn").unwrap_or_default();
        crate::error::read(&*self.store, |txn| {
            let arn = self.taggable(txn, arn)?;
            Ok(json!({ "tags": to_json(&get(txn, &arn).map_err(crate::error::store)?) }))
        })
    }
}
