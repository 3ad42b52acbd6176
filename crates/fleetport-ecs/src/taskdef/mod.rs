//! Task definitions: RegisterTaskDefinition, DescribeTaskDefinition, ListTaskDefinitions,
//! ListTaskDefinitionFamilies, DeregisterTaskDefinition, DeleteTaskDefinitions.
//!
//! Stored as the TaskDefinition document ECS returns, keyed `<family>:<revision, 10 digits>` so a
//! key scan lists a family's revisions in order. Revisions come from a per-family counter written
//! in the same transaction, so concurrent registrations get gap-free, unique numbers.

pub mod rules;

use fleetport_proto::{AwsError, RequestContext};
use fleetport_store::{Abort, ReadTxn, ReadTxnExt, WriteTxnExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{EcsResult, client, store};
use fleetport_proto::{input, paging};

use crate::{Ecs, now, tags};

pub const COLLECTION: &str = "ecs.taskdef";
pub const FAMILIES: &str = "ecs.family";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Family {
    last_revision: u64,
}

pub fn key(family: &str, revision: u64) -> String {
    format!("{family}:{revision:010}")
}

fn status(td: &Value) -> &str {
    td.get("status").and_then(Value::as_str).unwrap_or("")
}

/// A reference as ECS accepts it: `family`, `family:revision` or the full ARN.
enum Reference {
    Latest(String),
    Revision(String, u64),
}

/// The largest task definition ECS registers, in JSON (its service quota: 64 KiB).
pub const MAX_TASK_DEFINITION_BYTES: usize = 64 * 1024;

impl Ecs {
    fn parse_reference(&self, reference: &str) -> Option<Reference> {
        let rest = if reference.starts_with("arn:") {
            self.scope
                .resource_of(reference)?
                .strip_prefix("task-definition/")?
        } else {
            reference
        };
        match rest.split_once(':') {
            Some((family, rev)) => {
                let rev: u64 = rev.parse().ok().filter(|r| *r > 0)?;
                crate::arn::valid_name(family).then(|| Reference::Revision(family.to_string(), rev))
            }
            None => crate::arn::valid_name(rest).then(|| Reference::Latest(rest.to_string())),
        }
    }

    /// Finds a task definition: a bare family means its latest ACTIVE revision.
    pub fn find_task_definition(
        &self,
        txn: &dyn ReadTxn,
        reference: &str,
    ) -> Result<Option<Value>, fleetport_store::StoreError> {
        match self.parse_reference(reference) {
            None => Ok(None),
            Some(Reference::Revision(f, r)) => txn.get_json(COLLECTION, &key(&f, r)),
            Some(Reference::Latest(f)) => {
                let all = txn.scan_json::<Value>(COLLECTION, &format!("{f}:"), None, usize::MAX)?;
                Ok(all
                    .into_iter()
                    .rev()
                    .map(|(_, v)| v)
                    .find(|v| status(v) == "ACTIVE"))
            }
        }
    }

    pub async fn register_task_definition(
        &self,
        ctx: &RequestContext,
        input: Value,
    ) -> EcsResult<Value> {
        let size = serde_json::to_vec(&input).map_or(usize::MAX, |v| v.len());
        if size > MAX_TASK_DEFINITION_BYTES {
            return Err(crate::error::client(format!(
                "Task definition size ({size} bytes) exceeds the maximum of {MAX_TASK_DEFINITION_BYTES} bytes (64 KiB) in JSON."
            )));
        }
        let mut td = rules::normalize(&input)?;
        crate::roles::check(self.roles.get(), &self.scope.account, &td)?;
        let new_tags = tags::parse(&input, "tags")?;
        let family = td
            .get("family")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        td.insert("status".into(), json!("ACTIVE"));
        td.insert("registeredAt".into(), json!(now()));
        td.insert("registeredBy".into(), json!(ctx.principal_arn()));
        let scope = self.scope.clone();
        let (td, tags_out) = crate::error::write(&*self.store, move |txn| {
            let mut fam = txn
                .get_json::<Family>(FAMILIES, &family)?
                .unwrap_or_default();
            fam.last_revision += 1;
            let rev = fam.last_revision;
            let arn = scope.task_definition_arn(&family, rev);
            td.insert("taskDefinitionArn".into(), json!(arn));
            td.insert("revision".into(), json!(rev));
            let td = Value::Object(td);
            txn.put_json(FAMILIES, &family, &fam)?;
            txn.put_json(COLLECTION, &key(&family, rev), &td)?;
            tags::set(txn, &arn, &new_tags)?;
            Ok::<_, Abort<AwsError>>((td, new_tags))
        })
        .await?;
        let mut out = json!({ "taskDefinition": td });
        if !tags_out.is_empty()
            && let Value::Object(o) = &mut out
        {
            o.insert("tags".into(), tags::to_json(&tags_out));
        }
        Ok(out)
    }

    pub fn describe_task_definition(&self, input: Value) -> EcsResult<Value> {
        let reference = input::string(&input, "taskDefinition").unwrap_or_default();
        let with_tags = input::includes(&input, "include", "TAGS");
        crate::error::read(&*self.store, |txn| {
            let td = self
                .find_task_definition(txn, reference)
                .map_err(store)?
                .ok_or_else(|| client("Unable to describe task definition."))?;
            let mut out = Map::new();
            if with_tags {
                let arn = td
                    .get("taskDefinitionArn")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                out.insert(
                    "tags".into(),
                    tags::to_json(&tags::get(txn, arn).map_err(store)?),
                );
            }
            out.insert("taskDefinition".into(), td);
            Ok(Value::Object(out))
        })
    }

    pub fn list_task_definitions(&self, input: Value) -> EcsResult<Value> {
        let wanted = input::string(&input, "status")
            .unwrap_or("ACTIVE")
            .to_string();
        let prefix = match input.get("familyPrefix").and_then(Value::as_str) {
            Some(f) => format!("{f}:"),
            None => String::new(),
        };
        let descending = input.get("sort").and_then(Value::as_str) == Some("DESC");
        let limit = paging::max_results(&input, 100, 100)?;
        let after = paging::decode_token(&input)?;
        let all = crate::error::read(&*self.store, |txn| {
            txn.scan_json::<Value>(COLLECTION, &prefix, None, usize::MAX)
                .map_err(store)
        })?;
        let mut items: Vec<(String, Value)> = all
            .into_iter()
            .filter(|(_, td)| status(td) == wanted)
            .map(|(k, td)| {
                (
                    k,
                    td.get("taskDefinitionArn").cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        if descending {
            items.reverse();
        }
        let (arns, token) = paging::page(items, after.as_deref(), limit, descending);
        Ok(paging::with_token(
            json!({ "taskDefinitionArns": arns }),
            token,
        ))
    }

    pub fn list_task_definition_families(&self, input: Value) -> EcsResult<Value> {
        let prefix = input::owned(&input, "familyPrefix");
        let wanted = input::string(&input, "status").unwrap_or("ALL").to_string();
        let limit = paging::max_results(&input, 100, 100)?;
        let after = paging::decode_token(&input)?;
        let all = crate::error::read(&*self.store, |txn| {
            txn.scan_json::<Value>(COLLECTION, &prefix, None, usize::MAX)
                .map_err(store)
        })?;
        // A family is ACTIVE while any revision is ACTIVE.
        let mut families: Vec<(String, bool)> = Vec::new();
        for (_, td) in &all {
            let fam = td.get("family").and_then(Value::as_str).unwrap_or_default();
            let active = status(td) == "ACTIVE";
            match families.last_mut() {
                Some((f, a)) if f == fam => *a |= active,
                _ => families.push((fam.to_string(), active)),
            }
        }
        families.sort();
        let items: Vec<(String, String)> = families
            .into_iter()
            .filter(|(_, active)| match wanted.as_str() {
                "ACTIVE" => *active,
                "INACTIVE" => !*active,
                _ => true,
            })
            .map(|(f, _)| (f.clone(), f))
            .collect();
        let (names, token) = paging::page(items, after.as_deref(), limit, false);
        Ok(paging::with_token(json!({ "families": names }), token))
    }

    pub async fn deregister_task_definition(&self, input: Value) -> EcsResult<Value> {
        let reference = input::owned(&input, "taskDefinition");
        let k = match self.parse_reference(&reference) {
            Some(Reference::Revision(f, r)) => key(&f, r),
            Some(Reference::Latest(_)) => {
                return Err(client(
                    "A revision must be specified: use family:revision or the full task definition ARN.",
                ));
            }
            None => return Err(client("The specified task definition does not exist.")),
        };
        let td = crate::error::write(&*self.store, move |txn| {
            let Some(mut td) = txn.get_json::<Value>(COLLECTION, &k)? else {
                return Err(Abort::Domain(client(
                    "The specified task definition does not exist.",
                )));
            };
            if status(&td) == "ACTIVE"
                && let Value::Object(o) = &mut td
            {
                o.insert("status".into(), json!("INACTIVE"));
                o.insert("deregisteredAt".into(), json!(now()));
                txn.put_json(COLLECTION, &k, &td)?;
            }
            Ok::<_, Abort<AwsError>>(td)
        })
        .await?;
        Ok(json!({ "taskDefinition": td }))
    }

    pub async fn delete_task_definitions(&self, input: Value) -> EcsResult<Value> {
        let refs = input::strings(&input, "taskDefinitions");
        let resolved: Vec<(String, Option<String>)> = refs
            .iter()
            .map(|r| match self.parse_reference(r) {
                Some(Reference::Revision(f, rev)) => (r.clone(), Some(key(&f, rev))),
                _ => (r.clone(), None),
            })
            .collect();
        let scope = self.scope.clone();
        crate::error::write(&*self.store, move |txn| {
            let mut done = Vec::new();
            let mut failures = Vec::new();
            for (reference, k) in resolved {
                let arn_of = |r: &str| if r.starts_with("arn:") { r.to_string() } else { scope.arn(&format!("task-definition/{r}")) };
                let found = match &k {
                    Some(k) => txn.get_json::<Value>(COLLECTION, k)?,
                    None => None,
                };
                let Some(mut td) = found else {
                    failures.push(json!({"arn": arn_of(&reference), "reason": "TASK_DEFINITION_NOT_FOUND",
                        "detail": "The specified task definition does not exist. Specify a valid family:revision or ARN and try again."}));
                    continue;
                };
                if status(&td) == "ACTIVE" {
                    failures.push(json!({"arn": td["taskDefinitionArn"], "reason": "TASK_DEFINITION_IS_ACTIVE",
                        "detail": "The specified task definition is still in ACTIVE status. Deregister it before deleting it."}));
                    continue;
                }
                if status(&td) == "INACTIVE"
                    && let (Value::Object(o), Some(k)) = (&mut td, &k)
                {
                    o.insert("status".into(), json!("DELETE_IN_PROGRESS"));
                    o.insert("deleteRequestedAt".into(), json!(now()));
                    txn.put_json(COLLECTION, k, &td)?;
                }
                done.push(td);
            }
            Ok::<_, Abort<AwsError>>(json!({"taskDefinitions": done, "failures": failures}))
        })
        .await
    }
}
