//! Repositories, images (manifests stored as the exact pushed bytes, keyed by digest) and tags
//! (pointers to digests), plus the ECR API operations over them.
//!
//! Store collections: `ecr.repo` (name), `ecr.manifest` (`<repo>@<digest>`), `ecr.tag`
//! (`<repo>:<tag>`). OCI names contain neither `@` nor `:`, so prefix scans are exact.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use fleetport_proto::AwsError;
use fleetport_store::{Abort, ReadTxnExt, WriteTxnExt};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::blobs::{digest_of, parse_digest};
use crate::registry::{is_manifest_type, tag_ok, valid_name};
use crate::{Ecr, now_secs};

pub const REPOS: &str = "ecr.repo";
pub const MANIFESTS: &str = "ecr.manifest";
pub const TAGS: &str = "ecr.tag";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoRecord {
    pub name: String,
    pub arn: String,
    pub created_at: f64,
    pub image_tag_mutability: String,
    pub scan_on_push: bool,
    pub encryption: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRecord {
    pub digest: String,
    pub media_type: String,
    /// The manifest exactly as pushed, base64.
    pub body: String,
    /// Compressed size of the layers (what ECR reports as imageSizeInBytes).
    pub image_size: u64,
    pub pushed_at: f64,
    /// OS/architecture from the image config, or of each entry of a manifest list or index.
    #[serde(default)]
    pub platforms: Vec<Platform>,
    /// The manifest this one refers to (`subject`), for the referrers API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `artifactType`, else the config media type: what the referrers API reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
}

/// Where an image can run, as its config (or an index entry) declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    fn from_json(v: &Value) -> Option<Self> {
        Some(Platform {
            os: v.get("os")?.as_str()?.to_string(),
            architecture: v.get("architecture")?.as_str()?.to_string(),
            variant: v.get("variant").and_then(Value::as_str).map(String::from),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
}

pub(crate) type RegistryError = (StatusCode, &'static str, String);

fn internal<E: std::fmt::Display>(e: E) -> RegistryError {
    tracing::error!(error = %e, "registry store failure");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        "internal error".to_string(),
    )
}

pub(crate) use fleetport_proto::clock::epoch_seconds as now;

pub(crate) fn ecr_store_error(e: fleetport_store::StoreError) -> AwsError {
    tracing::error!(error = %e, "state store failure");
    AwsError::server_exception()
}

pub(crate) struct Failure(pub AwsError);
impl From<fleetport_store::StoreError> for Failure {
    fn from(e: fleetport_store::StoreError) -> Self {
        Failure(ecr_store_error(e))
    }
}

pub(crate) fn repo_not_found(name: &str, account: &str) -> AwsError {
    AwsError::client(
        "RepositoryNotFoundException",
        format!(
            "The repository with name '{name}' does not exist in the registry with id '{account}'"
        ),
    )
}

impl Ecr {
    pub(crate) fn find_repository(
        &self,
        name: &str,
    ) -> Result<Option<RepoRecord>, fleetport_store::StoreError> {
        fleetport_store::read(&*self.store, |t| t.get_json(REPOS, name))
    }

    pub(crate) fn repository_names(&self) -> Result<Vec<String>, fleetport_store::StoreError> {
        fleetport_store::read(&*self.store, |t| {
            Ok(t.scan(REPOS, "", None, usize::MAX)?
                .into_iter()
                .map(|r| r.key)
                .collect())
        })
    }

    pub(crate) fn tag_names(&self, repo: &str) -> Result<Vec<String>, fleetport_store::StoreError> {
        let prefix = format!("{repo}:");
        fleetport_store::read(&*self.store, |t| {
            Ok(t.scan(TAGS, &prefix, None, usize::MAX)?
                .into_iter()
                .map(|r| r.key[prefix.len()..].to_string())
                .collect())
        })
    }

    /// A manifest by tag or digest.
    pub(crate) fn resolve(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<ManifestRecord>, fleetport_store::StoreError> {
        fleetport_store::read(&*self.store, |t| {
            let digest = if parse_digest(reference).is_some() {
                reference.to_string()
            } else {
                match t.get_json::<TagRecord>(TAGS, &format!("{repo}:{reference}"))? {
                    Some(tag) => tag.digest,
                    None => return Ok(None),
                }
            };
            t.get_json(MANIFESTS, &format!("{repo}@{digest}"))
        })
    }

    /// Validates and stores a pushed manifest; returns its digest.
    pub(crate) async fn store_manifest(
        &self,
        repo: &RepoRecord,
        reference: &str,
        extra_tags: &[String],
        content_type: Option<String>,
        bytes: Bytes,
    ) -> Result<String, RegistryError> {
        let invalid = |m: &str| (StatusCode::BAD_REQUEST, "MANIFEST_INVALID", m.to_string());
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|_| invalid("The manifest is not valid JSON."))?;
        if doc.get("schemaVersion").and_then(Value::as_i64) != Some(2) {
            return Err(invalid(
                "Only schema version 2 manifests (Docker v2 and OCI) are accepted.",
            ));
        }
        let media_type = doc
            .get("mediaType")
            .and_then(Value::as_str)
            .map(String::from)
            .or(content_type)
            .ok_or_else(|| invalid("The manifest has no media type."))?;
        if !is_manifest_type(&media_type) {
            return Err(invalid(&format!(
                "Unsupported manifest media type '{media_type}'."
            )));
        }
        let digest = digest_of(&bytes);
        let mut tags = Vec::new();
        if parse_digest(reference).is_some() {
            if reference != digest {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    format!("The manifest digest is {digest}, not {reference}."),
                ));
            }
        } else {
            tags.push(reference.to_string());
        }
        // OCI 1.1 lets one PUT name several tags (`?tag=a&tag=b`); all are checked before any is set.
        tags.extend(extra_tags.iter().filter(|t| **t != reference).cloned());
        if let Some(bad) = tags.iter().find(|t| !tag_ok(t)) {
            return Err((
                StatusCode::BAD_REQUEST,
                "TAG_INVALID",
                format!("Invalid tag '{bad}'."),
            ));
        }
        // Every blob and child manifest the manifest names must already be in the registry.
        let mut image_size = 0u64;
        let mut blobs: Vec<String> = Vec::new();
        let mut layers: Vec<String> = Vec::new();
        if let Some(c) = doc
            .get("config")
            .and_then(|c| c.get("digest"))
            .and_then(Value::as_str)
        {
            blobs.push(c.to_string());
        }
        for layer in doc
            .get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(d) = layer.get("digest").and_then(Value::as_str) {
                blobs.push(d.to_string());
                layers.push(d.to_string());
            }
        }
        let unknown = |d: &str| {
            (
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                format!("blob unknown to registry: {d}"),
            )
        };
        for d in &blobs {
            if parse_digest(d).is_none() || !self.holds(&repo.name, d) {
                return Err(unknown(d));
            }
            let Some(size) = self.blobs.size(d).await else {
                return Err(unknown(d));
            };
            // The size ECR reports is what is stored, never what a manifest claims.
            if layers.contains(d) {
                image_size = image_size.saturating_add(size);
            }
        }
        for child in doc
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let d = child.get("digest").and_then(Value::as_str).unwrap_or("");
            let Some(found) = self.resolve(&repo.name, d).map_err(internal)? else {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_BLOB_UNKNOWN",
                    format!("manifest unknown to registry: {d}"),
                ));
            };
            // ECR reports a list's size as the largest of its images.
            image_size = image_size.max(found.image_size);
        }
        let platforms = self.platforms_of(&doc).await;
        let record = ManifestRecord {
            digest: digest.clone(),
            media_type,
            body: STANDARD.encode(&bytes),
            image_size,
            pushed_at: now(),
            platforms,
            subject: doc
                .pointer("/subject/digest")
                .and_then(Value::as_str)
                .map(String::from),
            artifact_type: doc
                .get("artifactType")
                .or_else(|| doc.pointer("/config/mediaType"))
                .and_then(Value::as_str)
                .map(String::from),
            annotations: doc.get("annotations").filter(|a| a.is_object()).cloned(),
        };
        let repo = repo.clone();
        let out = fleetport_store::write(&*self.store, move |txn| {
            // Checked again where it commits: garbage collection may have released a blob since.
            for d in &blobs {
                if !crate::holds::held(txn, &repo.name, d)? {
                    return Err(Abort::Domain(StoreOr((
                        StatusCode::BAD_REQUEST,
                        "MANIFEST_BLOB_UNKNOWN",
                        format!("blob unknown to registry: {d}"),
                    ))));
                }
                crate::holds::link(txn, &repo.name, d)?;
            }
            let key = format!("{}@{}", repo.name, record.digest);
            if txn.get(MANIFESTS, &key)?.is_none() {
                txn.put_json(MANIFESTS, &key, &record)?;
            }
            for tag in &tags {
                let tag_key = format!("{}:{tag}", repo.name);
                if let Some(existing) = txn.get_json::<TagRecord>(TAGS, &tag_key)?
                    && existing.digest != record.digest
                    && repo.image_tag_mutability.starts_with("IMMUTABLE")
                {
                    return Err(Abort::Domain(StoreOr((
                        StatusCode::BAD_REQUEST,
                        "TAG_INVALID",
                        format!(
                            "The image tag '{tag}' already exists in the '{}' repository and cannot be overwritten because the repository is immutable.",
                            repo.name
                        ),
                    ))));
                }
                txn.put_json(TAGS, &tag_key, &TagRecord { digest: record.digest.clone() })?;
            }
            Ok(record.digest.clone())
        })
        .await;
        out.map_err(|e: StoreOr| e.0)
    }

    /// The platforms a manifest declares: from an index's entries, or from an image's config blob.
    async fn platforms_of(&self, doc: &Value) -> Vec<Platform> {
        if let Some(entries) = doc.get("manifests").and_then(Value::as_array) {
            return entries
                .iter()
                .filter_map(|e| e.get("platform").and_then(Platform::from_json))
                .collect();
        }
        let Some(config) = doc.pointer("/config/digest").and_then(Value::as_str) else {
            return Vec::new();
        };
        // Image configs are small JSON documents; anything huge is not worth reading here.
        match self
            .blobs
            .read_small(config, 1 << 20)
            .await
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            Some(cfg) => Platform::from_json(&cfg).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// The platforms an image (by tag or digest) can run on, for placement and pull checks.
    /// `None` when the repository or image does not exist.
    pub async fn image_platforms(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Vec<Platform>>, fleetport_store::StoreError> {
        Ok(self.resolve(repo, reference)?.map(|m| m.platforms))
    }

    /// Manifests in `repo` whose `subject` is `digest`, as OCI descriptors.
    pub(crate) fn referrers(
        &self,
        repo: &str,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Value>, fleetport_store::StoreError> {
        let all: Vec<(String, ManifestRecord)> = fleetport_store::read(&*self.store, |t| {
            t.scan_json(MANIFESTS, &format!("{repo}@"), None, usize::MAX)
        })?;
        Ok(all
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| m.subject.as_deref() == Some(digest))
            .filter(|m| artifact_type.is_none() || m.artifact_type.as_deref() == artifact_type)
            .map(|m| {
                let mut d =
                    json!({"mediaType": m.media_type, "digest": m.digest, "size": m.bytes().len()});
                if let Some(t) = &m.artifact_type {
                    d["artifactType"] = json!(t);
                }
                if let Some(a) = &m.annotations {
                    d["annotations"] = a.clone();
                }
                d
            })
            .collect())
    }

    /// Deletes a tag, or an image by digest with every tag pointing at it.
    pub(crate) async fn remove_reference(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<bool, fleetport_store::StoreError> {
        let repo = repo.to_string();
        let reference = reference.to_string();
        let r: Result<bool, StoreOr> = fleetport_store::write(&*self.store, move |txn| {
            if parse_digest(&reference).is_none() {
                return Ok(txn.delete(TAGS, &format!("{repo}:{reference}"))?);
            }
            Ok(delete_image(txn, &repo, &reference)?)
        })
        .await;
        r.map_err(|e| fleetport_store::StoreError::Backend(e.0.2))
    }

    pub(crate) fn render_repo(&self, r: &RepoRecord) -> Value {
        json!({
            "repositoryArn": r.arn,
            "registryId": self.scope.account,
            "repositoryName": r.name,
            "repositoryUri": format!("{}/{}", self.registry_host, r.name),
            "createdAt": r.created_at,
            "imageTagMutability": r.image_tag_mutability,
            "imageScanningConfiguration": {"scanOnPush": r.scan_on_push},
            "encryptionConfiguration": r.encryption,
        })
    }

    pub(crate) async fn create_repository(&self, input: Value) -> Result<Value, AwsError> {
        let name = input
            .get("repositoryName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !valid_name(&name) || name.len() < 2 {
            return Err(AwsError::client(
                "InvalidParameterException",
                "Invalid parameter at 'repositoryName' failed to satisfy constraint: 'must satisfy regular expression '(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*''",
            ));
        }
        let record = RepoRecord {
            arn: format!(
                "arn:aws:ecr:{}:{}:repository/{name}",
                self.scope.region, self.scope.account
            ),
            name: name.clone(),
            created_at: now(),
            image_tag_mutability: input
                .get("imageTagMutability")
                .and_then(Value::as_str)
                .unwrap_or("MUTABLE")
                .to_string(),
            scan_on_push: input
                .pointer("/imageScanningConfiguration/scanOnPush")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            encryption: input
                .get("encryptionConfiguration")
                .cloned()
                .unwrap_or_else(|| json!({"encryptionType": "AES256"})),
        };
        let tags = crate::images::parse_tags(&input)?;
        let account = self.scope.account.clone();
        let stored = fleetport_store::write(&*self.store, move |txn| {
            if txn.get(REPOS, &record.name)?.is_some() {
                return Err(Abort::Domain(Failure(AwsError::client(
                    "RepositoryAlreadyExistsException",
                    format!("The repository with name '{}' already exists in the registry with id '{account}'", record.name),
                ))));
            }
            txn.put_json(REPOS, &record.name, &record)?;
            if !tags.is_empty() {
                txn.put_json(crate::images::RESOURCE_TAGS, &record.arn, &tags)?;
            }
            Ok(record)
        })
        .await
        .map_err(|f: Failure| f.0)?;
        Ok(json!({ "repository": self.render_repo(&stored) }))
    }

    pub(crate) fn describe_repositories(&self, input: Value) -> Result<Value, AwsError> {
        let names: Vec<String> = input
            .get("repositoryNames")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let all: Vec<RepoRecord> = fleetport_store::read(&*self.store, |t| {
            Ok::<_, Failure>(
                t.scan_json::<RepoRecord>(REPOS, "", None, usize::MAX)?
                    .into_iter()
                    .map(|(_, r)| r)
                    .collect(),
            )
        })
        .map_err(|f| f.0)?;
        let mut out = Vec::new();
        if names.is_empty() {
            out = all.iter().map(|r| self.render_repo(r)).collect();
        } else {
            for n in &names {
                match all.iter().find(|r| &r.name == n) {
                    Some(r) => out.push(self.render_repo(r)),
                    None => return Err(repo_not_found(n, &self.scope.account)),
                }
            }
        }
        Ok(json!({ "repositories": out }))
    }

    pub(crate) async fn delete_repository(&self, input: Value) -> Result<Value, AwsError> {
        let name = input
            .get("repositoryName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let force = input.get("force").and_then(Value::as_bool).unwrap_or(false);
        let account = self.scope.account.clone();
        let record = fleetport_store::write(&*self.store, move |txn| {
            let Some(record) = txn.get_json::<RepoRecord>(REPOS, &name)? else {
                return Err(Abort::Domain(Failure(repo_not_found(&name, &account))));
            };
            let images = txn.scan(MANIFESTS, &format!("{name}@"), None, usize::MAX)?;
            if !images.is_empty() && !force {
                return Err(Abort::Domain(Failure(AwsError::client(
                    "RepositoryNotEmptyException",
                    format!("The repository with name '{name}' in registry with id '{account}' cannot be deleted because it still contains images"),
                ))));
            }
            for m in images {
                txn.delete(MANIFESTS, &m.key)?;
            }
            for t in txn.scan(TAGS, &format!("{name}:"), None, usize::MAX)? {
                txn.delete(TAGS, &t.key)?;
            }
            crate::holds::unlink_repository(txn, &name)?;
            txn.delete(REPOS, &name)?;
            txn.delete(crate::images::RESOURCE_TAGS, &record.arn)?;
            txn.delete(crate::policy::POLICIES, &name)?;
            txn.delete(crate::lifecycle::POLICIES, &name)?;
            txn.delete(crate::lifecycle::PREVIEWS, &name)?;
            Ok(record)
        })
        .await
        .map_err(|f: Failure| f.0)?;
        Ok(json!({ "repository": self.render_repo(&record) }))
    }

    pub(crate) fn get_authorization_token(
        &self,
        principal: &fleetport_proto::auth::Principal,
    ) -> Result<Value, AwsError> {
        let expires = now_secs() + crate::token::VALIDITY_SECS;
        let who = (!principal.is_root()).then(|| principal.encode());
        let token = self.token_key.issue(
            &self.scope.account,
            &self.scope.region,
            expires,
            who.as_deref(),
        );
        Ok(json!({"authorizationData": [{
            "authorizationToken": STANDARD.encode(format!("AWS:{token}")),
            "expiresAt": expires as f64,
            "proxyEndpoint": format!("http://{}", self.registry_host),
        }]}))
    }
}

/// Deletes an image (by digest) and every tag pointing at it, inside a write transaction.
pub(crate) fn delete_image(
    txn: &mut dyn fleetport_store::WriteTxn,
    repo: &str,
    digest: &str,
) -> Result<bool, fleetport_store::StoreError> {
    for t in txn.scan(TAGS, &format!("{repo}:"), None, usize::MAX)? {
        let tag: TagRecord = serde_json::from_slice(&t.value)
            .map_err(|e| fleetport_store::StoreError::Backend(e.to_string()))?;
        if tag.digest == digest {
            txn.delete(TAGS, &t.key)?;
        }
    }
    txn.delete(MANIFESTS, &format!("{repo}@{digest}"))
}

/// A registry-side write failure carried through the store's transaction helper.
struct StoreOr(RegistryError);
impl From<fleetport_store::StoreError> for StoreOr {
    fn from(e: fleetport_store::StoreError) -> Self {
        StoreOr(internal(e))
    }
}
impl From<RegistryError> for StoreOr {
    fn from(e: RegistryError) -> Self {
        StoreOr(e)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleetport_store::sqlite::SqliteStore;
    use serde_json::json;

    use super::*;

    /// A registry over a fresh store in a temporary directory (kept alive by the first value).
    fn registry() -> (tempfile::TempDir, Arc<SqliteStore>, Ecr) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let ecr = Ecr::open(
            store.clone(),
            dir.path(),
            "us-east-1",
            "000000000000",
            "localhost:4566",
            std::time::Duration::from_secs(60),
            None,
        )
        .unwrap();
        (dir, store, ecr)
    }

    /// Pushes `manifest` to `repository` as `tag`.
    async fn push(
        ecr: &Ecr,
        repository: &str,
        tag: &str,
        manifest: &Value,
    ) -> Result<String, RegistryError> {
        let repo = ecr.find_repository(repository).unwrap().unwrap();
        ecr.store_manifest(
            &repo,
            tag,
            &[],
            None,
            bytes::Bytes::from(manifest.to_string()),
        )
        .await
    }

    async fn put_blob(ecr: &Ecr, bytes: &[u8]) -> String {
        let id = ecr.blobs.start("plat").await.unwrap();
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
            bytes::Bytes::copy_from_slice(bytes),
        )]);
        ecr.blobs.append(&id, "plat", None, body).await.unwrap();
        let digest = digest_of(bytes);
        ecr.finish_upload(&id, "plat", &digest).await.unwrap();
        digest
    }

    #[tokio::test]
    async fn platforms_are_recorded_for_images_and_indexes() {
        let (_dir, _store, ecr) = registry();
        ecr.create_repository(json!({"repositoryName": "plat"}))
            .await
            .unwrap();
        let mut digests = Vec::new();
        for arch in ["amd64", "arm64"] {
            let config = put_blob(
                &ecr,
                json!({"os": "linux", "architecture": arch, "rootfs": {}})
                    .to_string()
                    .as_bytes(),
            )
            .await;
            let layer = put_blob(&ecr, arch.as_bytes()).await;
            let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 5}]});
            digests.push(push(&ecr, "plat", arch, &manifest).await.unwrap());
        }
        let arm = ecr.image_platforms("plat", "arm64").await.unwrap().unwrap();
        assert_eq!(
            arm.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["linux/arm64"]
        );
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digests[0], "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digests[1], "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]});
        push(&ecr, "plat", "multi", &index).await.unwrap();
        let multi = ecr.image_platforms("plat", "multi").await.unwrap().unwrap();
        assert_eq!(
            multi.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["linux/amd64", "linux/arm64/v8"]
        );
        assert_eq!(ecr.image_platforms("plat", "missing").await.unwrap(), None);
    }

    #[tokio::test]
    async fn manifests_see_only_their_repositorys_blobs_and_report_stored_sizes() {
        let (_dir, _store, ecr) = registry();
        for name in ["plat", "other"] {
            ecr.create_repository(json!({"repositoryName": name}))
                .await
                .unwrap();
        }
        let config = put_blob(&ecr, br#"{"os":"linux","architecture":"amd64"}"#).await;
        let layer = put_blob(&ecr, b"12345").await;
        // Claims a size that would wrap a sum around; the stored size is what counts.
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": u64::MAX},
                       {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": u64::MAX}]});
        let refused = push(&ecr, "other", "v1", &manifest).await.unwrap_err();
        assert_eq!(refused.1, "MANIFEST_BLOB_UNKNOWN");
        push(&ecr, "plat", "v1", &manifest).await.unwrap();
        let found = ecr.resolve("plat", "v1").unwrap().unwrap();
        assert_eq!(found.image_size, 10);
    }

    #[tokio::test]
    async fn a_released_blob_cannot_be_committed_and_a_used_one_is_not_released() {
        let (_dir, store, ecr) = registry();
        ecr.create_repository(json!({"repositoryName": "plat"}))
            .await
            .unwrap();
        let config = put_blob(&ecr, br#"{"os":"linux","architecture":"amd64"}"#).await;
        let release = |cutoff: f64| {
            let (store, d) = (store.clone(), config.clone());
            async move {
                fleetport_store::write(&*store, move |txn| {
                    crate::holds::release(txn, &d, cutoff)
                        .map_err(Abort::<fleetport_store::StoreError>::Store)
                })
                .await
                .unwrap()
            }
        };
        let now = fleetport_proto::clock::epoch_seconds();
        // Used within the grace period (cutoff in the past): kept.
        assert!(!release(now - 3600.0).await);
        // Not used since the cutoff: released, and then no manifest may name it (the push that
        // saw it present must upload it again).
        assert!(release(now + 1.0).await);
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
            "layers": []});
        let refused = push(&ecr, "plat", "v1", &manifest).await.unwrap_err();
        assert_eq!(refused.1, "MANIFEST_BLOB_UNKNOWN");
    }

    #[tokio::test]
    async fn blobs_named_by_older_manifests_are_recorded_at_start() {
        let (_dir, store, ecr) = registry();
        ecr.create_repository(json!({"repositoryName": "plat"}))
            .await
            .unwrap();
        let config = put_blob(&ecr, br#"{"os":"linux","architecture":"amd64"}"#).await;
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
            "layers": []});
        push(&ecr, "plat", "v1", &manifest).await.unwrap();
        // As an older build left it: the manifest, but no record of who holds its blobs.
        fleetport_store::write(&*store, |txn| {
            for r in txn.scan(crate::holds::BLOB_LINKS, "", None, usize::MAX)? {
                txn.delete(crate::holds::BLOB_LINKS, &r.key)?;
            }
            Ok::<_, Abort<fleetport_store::StoreError>>(())
        })
        .await
        .unwrap();
        assert!(!ecr.holds("plat", &config));
        ecr.link_existing().await.unwrap();
        assert!(ecr.holds("plat", &config));
    }
}
