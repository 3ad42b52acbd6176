//! Lifecycle policies: the ECR rule language (tagStatus, tagPrefixList, tagPatternList,
//! imageCountMoreThan / sinceImagePushed, priorities, expire), previews, and enforcement that
//! really deletes images: when a policy is put, and on every registry maintenance pass.
//!
//! Evaluation follows ECR: rules run in priority order (lowest number first); an image is expired
//! by at most one rule; an image selected by a higher-priority rule still counts for later
//! rules but cannot be expired by them; older images are expired first.

use std::collections::HashSet;

use fleetport_proto::AwsError;
use fleetport_store::{Abort, ReadTxnExt, WriteTxnExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Ecr;
use crate::repo::{Failure, MANIFESTS, REPOS, TAGS, now, repo_not_found};
use fleetport_proto::input;

pub const POLICIES: &str = "ecr.lifecycle";
pub const PREVIEWS: &str = "ecr.lifecycle-preview";

#[derive(Debug, Clone, PartialEq)]
pub enum TagSelection {
    Tagged {
        prefixes: Vec<String>,
        patterns: Vec<String>,
    },
    Untagged,
    Any,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Count {
    MoreThan(usize),
    OlderThanDays(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub priority: i64,
    pub tags: TagSelection,
    pub count: Count,
}

/// An image as the evaluator sees it.
#[derive(Debug, Clone)]
pub struct Image {
    pub digest: String,
    pub tags: Vec<String>,
    pub pushed_at: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPolicy {
    text: String,
    #[serde(default)]
    last_evaluated_at: Option<f64>,
}

fn invalid(message: impl std::fmt::Display) -> AwsError {
    AwsError::client(
        "InvalidParameterException",
        format!(
            "Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: '{message}'"
        ),
    )
}

/// Parses and checks a policy document.
pub fn parse(text: &str) -> Result<Vec<Rule>, AwsError> {
    let doc: Value =
        serde_json::from_str(text).map_err(|_| invalid("Lifecycle policy is not valid JSON"))?;
    let rules = doc
        .get("rules")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| invalid("Lifecycle policy must have at least one rule"))?;
    let mut out: Vec<Rule> = Vec::new();
    for r in rules {
        let priority = r
            .get("rulePriority")
            .and_then(Value::as_i64)
            .filter(|p| *p >= 1)
            .ok_or_else(|| invalid("rulePriority must be an integer of at least 1"))?;
        if out.iter().any(|x| x.priority == priority) {
            return Err(invalid(format!(
                "rulePriority {priority} is used by more than one rule"
            )));
        }
        if r.pointer("/action/type").and_then(Value::as_str) != Some("expire") {
            return Err(invalid("action.type must be 'expire'"));
        }
        let sel = r
            .get("selection")
            .ok_or_else(|| invalid("rule has no selection"))?;
        let list = |k: &str| -> Vec<String> {
            sel.get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        let (prefixes, patterns) = (list("tagPrefixList"), list("tagPatternList"));
        let tags = match sel.get("tagStatus").and_then(Value::as_str) {
            Some("tagged") => {
                if prefixes.is_empty() == patterns.is_empty() {
                    return Err(invalid(
                        "a tagged rule needs exactly one of tagPrefixList or tagPatternList",
                    ));
                }
                if patterns
                    .iter()
                    .any(|p| p.matches('*').count() > 4 || p.is_empty())
                {
                    return Err(invalid("a tag pattern may contain at most 4 wildcards"));
                }
                TagSelection::Tagged { prefixes, patterns }
            }
            Some("untagged") | Some("any") if !prefixes.is_empty() || !patterns.is_empty() => {
                return Err(invalid(
                    "tagPrefixList and tagPatternList are only allowed with tagStatus 'tagged'",
                ));
            }
            Some("untagged") => TagSelection::Untagged,
            Some("any") => TagSelection::Any,
            _ => return Err(invalid("tagStatus must be tagged, untagged or any")),
        };
        let number = sel
            .get("countNumber")
            .and_then(Value::as_i64)
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid("countNumber must be at least 1"))?;
        let count = match (
            sel.get("countType").and_then(Value::as_str),
            sel.get("countUnit").and_then(Value::as_str),
        ) {
            (Some("imageCountMoreThan"), None) => Count::MoreThan(number as usize),
            (Some("sinceImagePushed"), Some("days")) => Count::OlderThanDays(number as u64),
            (Some("imageCountMoreThan"), Some(_)) => {
                return Err(invalid("countUnit is not allowed with imageCountMoreThan"));
            }
            (Some("sinceImagePushed"), _) => {
                return Err(invalid("sinceImagePushed needs countUnit 'days'"));
            }
            _ => {
                return Err(invalid(
                    "countType must be imageCountMoreThan or sinceImagePushed",
                ));
            }
        };
        out.push(Rule {
            priority,
            tags,
            count,
        });
    }
    out.sort_by_key(|r| r.priority);
    if let Some(pos) = out.iter().position(|r| r.tags == TagSelection::Any)
        && pos != out.len() - 1
    {
        return Err(invalid(
            "a rule with tagStatus 'any' must have the highest rulePriority",
        ));
    }
    Ok(out)
}

/// `*` matches any run of characters.
fn wildcard(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == text;
    }
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn selects(sel: &TagSelection, image: &Image) -> bool {
    match sel {
        TagSelection::Any => true,
        TagSelection::Untagged => image.tags.is_empty(),
        // Each prefix or pattern must be matched by some tag of the image.
        TagSelection::Tagged { prefixes, patterns } => {
            !image.tags.is_empty()
                && prefixes
                    .iter()
                    .all(|p| image.tags.iter().any(|t| t.starts_with(p.as_str())))
                && patterns
                    .iter()
                    .all(|p| image.tags.iter().any(|t| wildcard(p, t)))
        }
    }
}

/// The images the rules expire, with the priority of the rule that expires each.
pub fn evaluate(rules: &[Rule], images: &[Image], now: f64) -> Vec<(String, i64)> {
    let mut claimed: HashSet<&str> = HashSet::new();
    let mut expired: Vec<(String, i64)> = Vec::new();
    for rule in rules {
        let mut selected: Vec<&Image> = images
            .iter()
            .filter(|i| selects(&rule.tags, i) && !expired.iter().any(|(d, _)| *d == i.digest))
            .collect();
        // Newest first; ties broken by digest so results are stable.
        selected.sort_by(|a, b| {
            b.pushed_at
                .total_cmp(&a.pushed_at)
                .then_with(|| a.digest.cmp(&b.digest))
        });
        let doomed: Vec<&Image> = match rule.count {
            Count::MoreThan(n) => selected.iter().skip(n).copied().collect(),
            Count::OlderThanDays(days) => selected
                .iter()
                .filter(|i| i.pushed_at < now - days as f64 * 86_400.0)
                .copied()
                .collect(),
        };
        for image in doomed {
            if !claimed.contains(image.digest.as_str()) {
                expired.push((image.digest.clone(), rule.priority));
            }
        }
        claimed.extend(selected.iter().map(|i| i.digest.as_str()));
    }
    expired
}

impl Ecr {
    fn images_of(&self, repo: &str) -> Result<Vec<Image>, AwsError> {
        let (manifests, tags) = fleetport_store::read(&*self.store, |t| {
            let m = t.scan_json::<crate::repo::ManifestRecord>(
                MANIFESTS,
                &format!("{repo}@"),
                None,
                usize::MAX,
            )?;
            let tg =
                t.scan_json::<crate::repo::TagRecord>(TAGS, &format!("{repo}:"), None, usize::MAX)?;
            Ok::<_, Failure>((m, tg))
        })
        .map_err(|f| f.0)?;
        Ok(manifests
            .into_iter()
            .map(|(_, m)| Image {
                tags: tags
                    .iter()
                    .filter(|(_, t)| t.digest == m.digest)
                    .map(|(k, _)| k[repo.len() + 1..].to_string())
                    .collect(),
                digest: m.digest,
                pushed_at: m.pushed_at,
            })
            .collect())
    }

    fn stored_policy(&self, repo: &str) -> Result<(bool, Option<StoredPolicy>), AwsError> {
        fleetport_store::read(&*self.store, |t| {
            Ok::<_, Failure>((
                t.get(REPOS, repo)?.is_some(),
                t.get_json::<StoredPolicy>(POLICIES, repo)?,
            ))
        })
        .map_err(|f| f.0)
    }

    fn policy_not_found(&self, repo: &str) -> AwsError {
        AwsError::client(
            "LifecyclePolicyNotFoundException",
            format!(
                "Lifecycle policy does not exist for the repository with name '{repo}' in the registry with id '{}'",
                self.scope.account
            ),
        )
    }

    pub(crate) async fn put_lifecycle_policy(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let text = input::owned(&input, "lifecyclePolicyText");
        parse(&text)?;
        let (exists, _) = self.stored_policy(&name)?;
        if !exists {
            return Err(repo_not_found(&name, &self.scope.account));
        }
        let (repo, stored) = (
            name.clone(),
            StoredPolicy {
                text: text.clone(),
                last_evaluated_at: None,
            },
        );
        fleetport_store::write(&*self.store, move |txn| {
            txn.put_json(POLICIES, &repo, &stored)?;
            Ok::<_, Abort<Failure>>(())
        })
        .await
        .map_err(|f: Failure| f.0)?;
        // Apply right away (real ECR does it within a day); maintenance passes repeat it.
        if let Err(e) = self.apply_lifecycle(&name).await {
            tracing::warn!(repository = %name, error = %e.message, "lifecycle policy application failed");
        }
        Ok(
            json!({"registryId": self.scope.account, "repositoryName": name, "lifecyclePolicyText": text}),
        )
    }

    pub(crate) fn get_lifecycle_policy(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let (exists, policy) = self.stored_policy(&name)?;
        if !exists {
            return Err(repo_not_found(&name, &self.scope.account));
        }
        let p = policy.ok_or_else(|| self.policy_not_found(&name))?;
        let mut out = json!({"registryId": self.scope.account, "repositoryName": name, "lifecyclePolicyText": p.text});
        if let Some(t) = p.last_evaluated_at {
            out["lastEvaluatedAt"] = json!(t);
        }
        Ok(out)
    }

    pub(crate) async fn delete_lifecycle_policy(&self, input: Value) -> Result<Value, AwsError> {
        let out = self.get_lifecycle_policy(input)?;
        let repo = input::owned(&out, "repositoryName");
        fleetport_store::write(&*self.store, move |txn| {
            txn.delete(POLICIES, &repo)?;
            Ok::<_, Abort<Failure>>(())
        })
        .await
        .map_err(|f: Failure| f.0)?;
        Ok(out)
    }

    pub(crate) async fn start_lifecycle_policy_preview(
        &self,
        input: Value,
    ) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let (exists, stored) = self.stored_policy(&name)?;
        if !exists {
            return Err(repo_not_found(&name, &self.scope.account));
        }
        let text = match input.get("lifecyclePolicyText").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => stored
                .map(|p| p.text)
                .ok_or_else(|| self.policy_not_found(&name))?,
        };
        let rules = parse(&text)?;
        let images = self.images_of(&name)?;
        let expiring = evaluate(&rules, &images, now());
        let results: Vec<Value> = expiring
            .iter()
            .filter_map(|(digest, priority)| {
                let image = images.iter().find(|i| &i.digest == digest)?;
                let mut r = json!({"imageDigest": digest, "imagePushedAt": image.pushed_at, "action": {"type": "EXPIRE"}, "appliedRulePriority": priority});
                if !image.tags.is_empty() {
                    r["imageTags"] = json!(image.tags);
                }
                Some(r)
            })
            .collect();
        let preview = json!({"lifecyclePolicyText": text, "previewResults": results});
        let repo = name.clone();
        fleetport_store::write(&*self.store, move |txn| {
            txn.put_json(PREVIEWS, &repo, &preview)?;
            Ok::<_, Abort<Failure>>(())
        })
        .await
        .map_err(|f: Failure| f.0)?;
        // The preview is computed at once; like ECR, this call reports it as started.
        Ok(
            json!({"registryId": self.scope.account, "repositoryName": name, "lifecyclePolicyText": text, "status": "IN_PROGRESS"}),
        )
    }

    pub(crate) fn get_lifecycle_policy_preview(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let preview = fleetport_store::read(&*self.store, |t| {
            Ok::<_, Failure>(t.get_json::<Value>(PREVIEWS, &name)?)
        })
        .map_err(|f| f.0)?;
        let Some(p) = preview else {
            return Err(AwsError::client(
                "LifecyclePolicyPreviewNotFoundException",
                format!(
                    "There is no lifecycle policy preview for the repository with name '{name}' in the registry with id '{}'",
                    self.scope.account
                ),
            ));
        };
        let results = p
            .get("previewResults")
            .cloned()
            .unwrap_or_else(|| json!([]));
        let count = results.as_array().map_or(0, Vec::len);
        Ok(json!({
            "registryId": self.scope.account,
            "repositoryName": name,
            "lifecyclePolicyText": p["lifecyclePolicyText"],
            "status": "COMPLETE",
            "previewResults": results,
            "summary": {"expiringImageTotalCount": count},
        }))
    }

    /// Deletes the images a repository's lifecycle policy expires; returns how many.
    pub async fn apply_lifecycle(&self, repo: &str) -> Result<usize, AwsError> {
        let (_, Some(policy)) = self.stored_policy(repo)? else {
            return Ok(0);
        };
        let rules = parse(&policy.text)?;
        let images = self.images_of(repo)?;
        let expiring: Vec<String> = evaluate(&rules, &images, now())
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        let n = expiring.len();
        let repo_name = repo.to_string();
        fleetport_store::write(&*self.store, move |txn| {
            for d in &expiring {
                crate::repo::delete_image(txn, &repo_name, d)?;
            }
            if let Some(mut p) = txn.get_json::<StoredPolicy>(POLICIES, &repo_name)? {
                p.last_evaluated_at = Some(now());
                txn.put_json(POLICIES, &repo_name, &p)?;
            }
            Ok::<_, Abort<Failure>>(())
        })
        .await
        .map_err(|f: Failure| f.0)?;
        if n > 0 {
            tracing::info!(
                repository = repo,
                images = n,
                "lifecycle policy expired images"
            );
        }
        Ok(n)
    }

    /// Applies every repository's lifecycle policy (a maintenance pass).
    pub async fn apply_all_lifecycles(&self) {
        let repos: Vec<String> = match fleetport_store::read(&*self.store, |t| {
            Ok::<_, Failure>(t.scan(POLICIES, "", None, usize::MAX)?)
        }) {
            Ok(r) => r.into_iter().map(|r| r.key).collect(),
            Err(_) => return,
        };
        for repo in repos {
            if let Err(e) = self.apply_lifecycle(&repo).await {
                tracing::warn!(repository = %repo, error = %e.message, "lifecycle policy application failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(d: &str, tags: &[&str], pushed: f64) -> Image {
        Image {
            digest: d.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            pushed_at: pushed,
        }
    }

    #[test]
    fn wildcards() {
        assert!(
            wildcard("prod*", "prod-1")
                && wildcard("*-rc", "v1-rc")
                && wildcard("a*b*c", "axxbyyc")
        );
        assert!(
            !wildcard("prod*", "dev") && !wildcard("a*b", "ab-c") && wildcard("exact", "exact")
        );
    }

    #[test]
    fn count_and_age_rules_with_priorities() {
        let policy = r#"{"rules":[
            {"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["prod"],"countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}},
            {"rulePriority":2,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}},
            {"rulePriority":3,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":3},"action":{"type":"expire"}}]}"#;
        let rules = parse(policy).unwrap();
        let day = 86_400.0;
        let now = 100.0 * day;
        let images = vec![
            img("p1", &["prod-1"], 1.0 * day),
            img("p2", &["prod-2"], 2.0 * day),
            img("p3", &["prod-3"], 3.0 * day),
            img("u-old", &[], 10.0 * day),
            img("u-new", &[], now - 100.0),
            img("d1", &["dev-1"], 0.5 * day),
            img("d2", &["dev-2"], 60.0 * day),
        ];
        let mut out = evaluate(&rules, &images, now);
        out.sort();
        // prod keeps its 2 newest (p1 expires); untagged older than a day goes. 'any' keeps the 3
        // newest of what remains (u-new, d2, p3); of the rest it may not expire p2, which rule 1
        // selected, so only d1 goes.
        assert_eq!(
            out,
            vec![("d1".into(), 3), ("p1".into(), 1), ("u-old".into(), 2)]
        );
    }

    #[test]
    fn bad_policies() {
        for bad in [
            "not json",
            r#"{"rules":[]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","tagPrefixList":["a"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countNumber":1},"action":{"type":"expire"}}]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}}]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPatternList":["a*b*c*d*e*f"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
