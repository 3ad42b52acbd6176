//! The ECR image and repository-settings operations: ListImages, BatchGetImage,
//! BatchDeleteImage, PutImage, BatchCheckLayerAvailability, PutImageTagMutability,
//! PutImageScanningConfiguration, DescribeRegistry and repository tags. Images are the same
//! records `docker push` creates; PutImage goes through the same validation.

use fleetport_proto::AwsError;
use fleetport_store::{Abort, ReadTxnExt, WriteTxnExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Ecr;
use crate::blobs::parse_digest;
use crate::repo::{
    Failure, MANIFESTS, ManifestRecord, REPOS, RepoRecord, TAGS, TagRecord, ecr_store_error,
    repo_not_found,
};
use fleetport_proto::{input, paging};

pub const RESOURCE_TAGS: &str = "ecr.tags";
/// How long a GetDownloadUrlForLayer URL works.
const DOWNLOAD_URL_SECS: i64 = 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceTag {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value")]
    pub value: String,
}

fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::client("InvalidParameterException", message)
}

/// An `imageIds` entry: by digest, by tag, or both (which must agree).
#[derive(Debug, Clone)]
struct ImageId {
    digest: Option<String>,
    tag: Option<String>,
}

impl ImageId {
    fn parse(v: &Value) -> Self {
        let get = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        ImageId {
            digest: get("imageDigest"),
            tag: get("imageTag"),
        }
    }

    fn json(&self) -> Value {
        let mut o = json!({});
        if let Some(d) = &self.digest {
            o["imageDigest"] = json!(d);
        }
        if let Some(t) = &self.tag {
            o["imageTag"] = json!(t);
        }
        o
    }
}

/// A repository's images and tags, read in one snapshot.
struct Contents {
    manifests: Vec<ManifestRecord>,
    tags: Vec<(String, String)>,
}

impl Contents {
    fn tags_of(&self, digest: &str) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, d)| d == digest)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Resolves an image id to the manifest, or an ECR failure code and reason.
    fn find(&self, id: &ImageId) -> Result<&ManifestRecord, (&'static str, String)> {
        let by_tag = id.tag.as_ref().map(|t| {
            self.tags
                .iter()
                .find(|(x, _)| x == t)
                .map(|(_, d)| d.clone())
        });
        let digest = match (&id.digest, by_tag) {
            (Some(d), Some(Some(td))) if *d != td => {
                return Err((
                    "ImageTagDoesNotMatchDigest",
                    "Invalid image tag for the given image digest".into(),
                ));
            }
            (Some(d), _) => d.clone(),
            (None, Some(Some(td))) => td,
            (None, _) => return Err(("ImageNotFound", "Requested image not found".into())),
        };
        if parse_digest(&digest).is_none() {
            return Err(("InvalidImageDigest", "Invalid request parameters: image digest should satisfy the regex '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+'".into()));
        }
        self.manifests
            .iter()
            .find(|m| m.digest == digest)
            .ok_or(("ImageNotFound", "Requested image not found".into()))
    }
}

impl Ecr {
    fn existing_repo(&self, name: &str) -> Result<RepoRecord, AwsError> {
        self.find_repository(name)
            .map_err(ecr_store_error)?
            .ok_or_else(|| repo_not_found(name, &self.scope.account))
    }

    fn contents(&self, repo: &str) -> Result<Contents, AwsError> {
        fleetport_store::read(&*self.store, |t| {
            let manifests =
                t.scan_json::<ManifestRecord>(MANIFESTS, &format!("{repo}@"), None, usize::MAX)?;
            let tags = t.scan_json::<TagRecord>(TAGS, &format!("{repo}:"), None, usize::MAX)?;
            Ok::<_, Failure>(Contents {
                manifests: manifests.into_iter().map(|(_, m)| m).collect(),
                tags: tags
                    .into_iter()
                    .map(|(k, t)| (k[repo.len() + 1..].to_string(), t.digest))
                    .collect(),
            })
        })
        .map_err(|f| f.0)
    }

    pub(crate) fn list_images(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        self.existing_repo(&name)?;
        let status = input
            .pointer("/filter/tagStatus")
            .and_then(Value::as_str)
            .unwrap_or("ANY");
        let c = self.contents(&name)?;
        let mut ids: Vec<(String, Value)> = Vec::new();
        for m in &c.manifests {
            let tags = c.tags_of(&m.digest);
            if tags.is_empty() {
                if status != "TAGGED" {
                    ids.push((m.digest.clone(), json!({"imageDigest": m.digest})));
                }
            } else if status != "UNTAGGED" {
                for t in tags {
                    ids.push((
                        format!("{}:{t}", m.digest),
                        json!({"imageDigest": m.digest, "imageTag": t}),
                    ));
                }
            }
        }
        page(ids, &input, "imageIds")
    }

    fn image_detail(&self, repo: &str, m: &ManifestRecord, c: &Contents) -> Value {
        let mut tags = c.tags_of(&m.digest);
        tags.sort();
        let mut d = json!({
            "registryId": self.scope.account,
            "repositoryName": repo,
            "imageDigest": m.digest,
            "imageSizeInBytes": m.image_size,
            "imagePushedAt": m.pushed_at,
            "imageManifestMediaType": m.media_type,
        });
        if !tags.is_empty() {
            d["imageTags"] = json!(tags);
        }
        d
    }

    pub(crate) fn describe_images(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        self.existing_repo(&name)?;
        let c = self.contents(&name)?;
        if let Some(ids) = input
            .get("imageIds")
            .and_then(Value::as_array)
            .filter(|l| !l.is_empty())
        {
            if input.get("maxResults").is_some() || input.get("nextToken").is_some() {
                return Err(invalid(
                    "maxResults and nextToken cannot be combined with imageIds.",
                ));
            }
            let mut details = Vec::new();
            for raw in ids {
                let id = ImageId::parse(raw);
                let m = c.find(&id).map_err(|_| {
                    AwsError::client(
                        "ImageNotFoundException",
                        format!(
                            "The image with imageId {{imageDigest:'{}', imageTag:'{}'}} does not exist within the repository with name '{name}' in the registry with id '{}'",
                            id.digest.as_deref().unwrap_or("null"),
                            id.tag.as_deref().unwrap_or("null"),
                            self.scope.account
                        ),
                    )
                })?;
                details.push(self.image_detail(&name, m, &c));
            }
            return Ok(json!({ "imageDetails": details }));
        }
        let status = input
            .pointer("/filter/tagStatus")
            .and_then(Value::as_str)
            .unwrap_or("ANY");
        let items: Vec<(String, Value)> = c
            .manifests
            .iter()
            .filter(|m| {
                let tagged = !c.tags_of(&m.digest).is_empty();
                match status {
                    "TAGGED" => tagged,
                    "UNTAGGED" => !tagged,
                    _ => true,
                }
            })
            .map(|m| (m.digest.clone(), self.image_detail(&name, m, &c)))
            .collect();
        page(items, &input, "imageDetails")
    }

    pub(crate) fn batch_get_image(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        self.existing_repo(&name)?;
        let accepted: Vec<String> = input::strings(&input, "acceptedMediaTypes");
        let c = self.contents(&name)?;
        let mut images = Vec::new();
        let mut failures = Vec::new();
        for raw in input
            .get("imageIds")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = ImageId::parse(raw);
            match c.find(&id) {
                Ok(m) if accepted.is_empty() || accepted.contains(&m.media_type) => {
                    let manifest = String::from_utf8_lossy(&m.bytes()).into_owned();
                    let image_id = ImageId { digest: Some(m.digest.clone()), tag: id.tag.clone() };
                    images.push(json!({
                        "registryId": self.scope.account,
                        "repositoryName": name,
                        "imageId": image_id.json(),
                        "imageManifest": manifest,
                        "imageManifestMediaType": m.media_type,
                    }));
                }
                Ok(_) => failures.push(json!({"imageId": id.json(), "failureCode": "UnsupportedImageType",
                    "failureReason": "The image's manifest media type is not among the acceptedMediaTypes"})),
                Err((code, reason)) => failures.push(json!({"imageId": id.json(), "failureCode": code, "failureReason": reason})),
            }
        }
        Ok(json!({"images": images, "failures": failures}))
    }

    pub(crate) async fn batch_delete_image(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        self.existing_repo(&name)?;
        let ids: Vec<ImageId> = input
            .get("imageIds")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(ImageId::parse)
            .collect();
        let c = self.contents(&name)?;
        // Images a manifest list or index in this repository still names cannot be deleted.
        let mut referenced_by: Vec<(String, String)> = Vec::new();
        for m in &c.manifests {
            if let Ok(doc) = serde_json::from_slice::<Value>(&m.bytes()) {
                for child in doc
                    .get("manifests")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(d) = child.get("digest").and_then(Value::as_str) {
                        referenced_by.push((d.to_string(), m.digest.clone()));
                    }
                }
            }
        }
        let mut deleted = Vec::new();
        let mut failures = Vec::new();
        let mut tag_deletes: Vec<String> = Vec::new();
        let mut image_deletes: Vec<String> = Vec::new();
        for id in ids {
            match c.find(&id) {
                Ok(m) => {
                    let tags = c.tags_of(&m.digest);
                    let deletes_image = id.digest.is_some()
                        || tags
                            .iter()
                            .all(|x| Some(x) == id.tag.as_ref() || tag_deletes.contains(x));
                    let lists: Vec<&str> = referenced_by
                        .iter()
                        .filter(|(child, _)| *child == m.digest)
                        .map(|(_, l)| l.as_str())
                        .collect();
                    if deletes_image && !lists.is_empty() {
                        failures.push(json!({"imageId": id.json(), "failureCode": "ImageReferencedByManifestList",
                            "failureReason": format!("Requested image referenced by manifest list: [{}]", lists.join(", "))}));
                        continue;
                    }
                    match (&id.tag, &id.digest) {
                        // A tag alone removes that tag; the image goes with its last tag, as on ECR.
                        (Some(t), None) => {
                            tag_deletes.push(t.clone());
                            if tags.iter().all(|x| x == t || tag_deletes.contains(x)) {
                                image_deletes.push(m.digest.clone());
                            }
                        }
                        _ => {
                            tag_deletes.extend(tags);
                            image_deletes.push(m.digest.clone());
                        }
                    }
                    deleted.push(
                        ImageId {
                            digest: Some(m.digest.clone()),
                            tag: id.tag.clone(),
                        }
                        .json(),
                    );
                }
                Err((code, reason)) => failures.push(
                    json!({"imageId": id.json(), "failureCode": code, "failureReason": reason}),
                ),
            }
        }
        let repo = name.clone();
        fleetport_store::write(&*self.store, move |txn| {
            for t in &tag_deletes {
                txn.delete(TAGS, &format!("{repo}:{t}"))?;
            }
            for d in &image_deletes {
                txn.delete(MANIFESTS, &format!("{repo}@{d}"))?;
            }
            Ok::<_, Abort<Failure>>(())
        })
        .await
        .map_err(|f: Failure| f.0)?;
        Ok(json!({"imageIds": deleted, "failures": failures}))
    }

    pub(crate) async fn put_image(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let repo = self.existing_repo(&name)?;
        let manifest = input::owned(&input, "imageManifest");
        let tag = input
            .get("imageTag")
            .and_then(Value::as_str)
            .map(String::from);
        let digest = input
            .get("imageDigest")
            .and_then(Value::as_str)
            .map(String::from);
        let media_type = input
            .get("imageManifestMediaType")
            .and_then(Value::as_str)
            .map(String::from);
        let actual = crate::blobs::digest_of(manifest.as_bytes());
        if let Some(d) = &digest
            && *d != actual
        {
            return Err(AwsError::client(
                "ImageDigestDoesNotMatchException",
                format!(
                    "The provided image digest '{d}' does not match the digest of the manifest '{actual}'."
                ),
            ));
        }
        if let Some(t) = &tag
            && let Ok(Some(existing)) = self.resolve(&name, t)
            && existing.digest == actual
        {
            return Err(AwsError::client(
                "ImageAlreadyExistsException",
                format!(
                    "Image with digest '{actual}' and tag '{t}' already exists in the repository with name '{name}' in registry with id '{}'",
                    self.scope.account
                ),
            ));
        }
        let reference = tag.clone().unwrap_or_else(|| actual.clone());
        match self
            .store_manifest(
                &repo,
                &reference,
                &[],
                media_type.clone(),
                bytes::Bytes::from(manifest.clone()),
            )
            .await
        {
            Ok(_) => {}
            Err((_, "MANIFEST_BLOB_UNKNOWN", m)) => {
                return Err(AwsError::client("LayersNotFoundException", m));
            }
            Err((_, "TAG_INVALID", m)) if m.contains("immutable") => {
                return Err(AwsError::client("ImageTagAlreadyExistsException", m));
            }
            Err((_, "DIGEST_INVALID", m)) => {
                return Err(AwsError::client("ImageDigestDoesNotMatchException", m));
            }
            Err((status, _, m)) if status.is_server_error() => {
                return Err(AwsError::with_status("ServerException", m, status));
            }
            Err((_, _, m)) => return Err(invalid(m)),
        }
        let stored = self.resolve(&name, &actual).map_err(ecr_store_error)?;
        let media = stored
            .map(|m| m.media_type)
            .or(media_type)
            .unwrap_or_default();
        Ok(json!({"image": {
            "registryId": self.scope.account,
            "repositoryName": name,
            "imageId": ImageId { digest: Some(actual), tag }.json(),
            "imageManifest": manifest,
            "imageManifestMediaType": media,
        }}))
    }

    pub(crate) async fn batch_check_layer_availability(
        &self,
        input: Value,
    ) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        self.existing_repo(&name)?;
        let mut layers = Vec::new();
        let mut failures = Vec::new();
        for d in input
            .get("layerDigests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if parse_digest(d).is_none() {
                failures.push(json!({"layerDigest": d, "failureCode": "InvalidLayerDigest", "failureReason": "Invalid layer digest"}));
                continue;
            }
            let size = if self.holds(&name, d) {
                self.blobs.size(d).await
            } else {
                None
            };
            match size {
                Some(size) => layers.push(json!({"layerDigest": d, "layerAvailability": "AVAILABLE", "layerSize": size})),
                None => failures.push(json!({"layerDigest": d, "failureCode": "MissingLayerDigest", "failureReason": "Requested layer not found"})),
            }
        }
        Ok(json!({"layers": layers, "failures": failures}))
    }

    /// GetDownloadUrlForLayer: a URL that fetches one layer of one repository without registry
    /// credentials for an hour, standing in for ECR's presigned S3 URL. As on ECR, only blobs an
    /// image of the repository references are handed out.
    pub(crate) async fn get_download_url_for_layer(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let digest = input::owned(&input, "layerDigest");
        self.existing_repo(&name)?;
        if parse_digest(&digest).is_none() {
            return Err(AwsError::client(
                "InvalidParameterException",
                format!(
                    "Invalid parameter at 'layerDigest' failed to satisfy constraint: 'not a valid sha256 digest: {digest}'"
                ),
            ));
        }
        let referenced = self
            .referenced(&format!("{name}@"))
            .map_err(crate::repo::ecr_store_error)?;
        if !referenced.contains(&digest) || self.blobs.size(&digest).await.is_none() {
            return Err(AwsError::client(
                "LayersNotFoundException",
                format!(
                    "The image layer '{digest}' does not exist in the repository with name '{name}' in the registry with id '{}'",
                    self.scope.account
                ),
            ));
        }
        let expires = crate::now_secs() + DOWNLOAD_URL_SECS;
        let signature = self.token_key.sign_download(&name, &digest, expires);
        Ok(json!({
            "downloadUrl": format!(
                "http://{}/v2/{name}/blobs/{digest}?X-Fleetport-Registry={}@{}&X-Fleetport-Expires={expires}&X-Fleetport-Signature={signature}",
                self.registry_host, self.scope.account, self.scope.region
            ),
            "layerDigest": digest,
        }))
    }

    /// Applies `change` to a repository record in one transaction.
    async fn update_repo(
        &self,
        name: String,
        change: impl FnOnce(&mut RepoRecord) + Send + 'static,
    ) -> Result<RepoRecord, AwsError> {
        let account = self.scope.account.clone();
        fleetport_store::write(&*self.store, move |txn| {
            let Some(mut r) = txn.get_json::<RepoRecord>(REPOS, &name)? else {
                return Err(Abort::Domain(Failure(repo_not_found(&name, &account))));
            };
            change(&mut r);
            txn.put_json(REPOS, &name, &r)?;
            Ok(r)
        })
        .await
        .map_err(|f: Failure| f.0)
    }

    pub(crate) async fn put_image_tag_mutability(&self, input: Value) -> Result<Value, AwsError> {
        let mutability = input::owned(&input, "imageTagMutability");
        let m = mutability.clone();
        let r = self
            .update_repo(input::owned(&input, "repositoryName"), move |r| {
                r.image_tag_mutability = m
            })
            .await?;
        Ok(
            json!({"registryId": self.scope.account, "repositoryName": r.name, "imageTagMutability": mutability}),
        )
    }

    pub(crate) async fn put_image_scanning_configuration(
        &self,
        input: Value,
    ) -> Result<Value, AwsError> {
        let scan = input
            .pointer("/imageScanningConfiguration/scanOnPush")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let r = self
            .update_repo(input::owned(&input, "repositoryName"), move |r| {
                r.scan_on_push = scan
            })
            .await?;
        Ok(
            json!({"registryId": self.scope.account, "repositoryName": r.name, "imageScanningConfiguration": {"scanOnPush": scan}}),
        )
    }

    pub(crate) fn describe_registry(&self) -> Result<Value, AwsError> {
        Ok(json!({"registryId": self.scope.account, "replicationConfiguration": {"rules": []}}))
    }

    /// The repository a tagging ARN names, if it exists.
    fn tagged_repo(&self, arn: &str) -> Result<String, AwsError> {
        let prefix = format!(
            "arn:aws:ecr:{}:{}:repository/",
            self.scope.region, self.scope.account
        );
        let Some(name) = arn.strip_prefix(&prefix) else {
            return Err(invalid(format!(
                "Invalid parameter at 'resourceArn' failed to satisfy constraint: '{arn}' is not a repository ARN of this registry"
            )));
        };
        self.existing_repo(name)?;
        Ok(arn.to_string())
    }

    pub(crate) async fn set_repository_tags(
        &self,
        arn: String,
        tags: Vec<ResourceTag>,
    ) -> Result<(), AwsError> {
        fleetport_store::write(&*self.store, move |txn| {
            if tags.is_empty() {
                txn.delete(RESOURCE_TAGS, &arn)?;
            } else {
                txn.put_json(RESOURCE_TAGS, &arn, &tags)?;
            }
            Ok::<_, Abort<Failure>>(())
        })
        .await
        .map_err(|f: Failure| f.0)
    }

    pub(crate) fn repository_tags(&self, arn: &str) -> Result<Vec<ResourceTag>, AwsError> {
        fleetport_store::read(&*self.store, |t| {
            Ok::<_, Failure>(
                t.get_json::<Vec<ResourceTag>>(RESOURCE_TAGS, arn)?
                    .unwrap_or_default(),
            )
        })
        .map_err(|f| f.0)
    }

    pub(crate) async fn tag_resource(&self, input: Value) -> Result<Value, AwsError> {
        let arn = self.tagged_repo(&input::owned(&input, "resourceArn"))?;
        let mut tags = self.repository_tags(&arn)?;
        for t in parse_tags(&input)? {
            match tags.iter_mut().find(|x| x.key == t.key) {
                Some(x) => x.value = t.value,
                None => tags.push(t),
            }
        }
        if tags.len() > 50 {
            return Err(AwsError::client(
                "TooManyTagsException",
                "A repository can have at most 50 tags.",
            ));
        }
        self.set_repository_tags(arn, tags).await?;
        Ok(json!({}))
    }

    pub(crate) async fn untag_resource(&self, input: Value) -> Result<Value, AwsError> {
        let arn = self.tagged_repo(&input::owned(&input, "resourceArn"))?;
        let keys: Vec<String> = input::strings(&input, "tagKeys");
        let mut tags = self.repository_tags(&arn)?;
        tags.retain(|t| !keys.contains(&t.key));
        self.set_repository_tags(arn, tags).await?;
        Ok(json!({}))
    }

    pub(crate) fn list_tags_for_resource(&self, input: Value) -> Result<Value, AwsError> {
        let arn = self.tagged_repo(&input::owned(&input, "resourceArn"))?;
        Ok(json!({"tags": self.repository_tags(&arn)?}))
    }
}

/// ECR tags (`Key`/`Value`): unique keys, `aws:` reserved, at most 50.
pub(crate) fn parse_tags(input: &Value) -> Result<Vec<ResourceTag>, AwsError> {
    let mut out: Vec<ResourceTag> = Vec::new();
    for t in input
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = t.get("Key").and_then(Value::as_str).unwrap_or_default();
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(AwsError::client(
                "InvalidTagParameterException",
                "Tag keys beginning with 'aws:' are reserved.",
            ));
        }
        if out.iter().any(|x| x.key == key) {
            return Err(AwsError::client(
                "InvalidTagParameterException",
                format!("Duplicate tag key '{key}'."),
            ));
        }
        out.push(ResourceTag {
            key: key.into(),
            value: t
                .get("Value")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
        });
    }
    if out.len() > 50 {
        return Err(AwsError::client(
            "TooManyTagsException",
            "A repository can have at most 50 tags.",
        ));
    }
    Ok(out)
}

/// `maxResults` (1–1000, default 100) / `nextToken` paging over (sort key, item).
fn page(mut items: Vec<(String, Value)>, input: &Value, member: &str) -> Result<Value, AwsError> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let limit = paging::max_results(input, 100, 1000)?;
    let after = paging::decode_token(input)?;
    let (page, token) = paging::page(items, after.as_deref(), limit, false);
    Ok(paging::with_token(json!({ member: page }), token))
}
