//! Amazon ECR for Fleetport: a real OCI/Docker registry under `/v2/` (content-addressed blob
//! store on disk, manifests and tags in the state store) and the ECR control API
//! (`AmazonEC2ContainerRegistry_V20150921`). Registry auth is ECR's: Basic `AWS:<token>` with
//! tokens from GetAuthorizationToken. Depends only on `fleetport-proto` and `fleetport-store`.

pub mod blobs;
pub mod gc;
mod holds;
pub mod images;
pub mod layers;
pub mod lifecycle;
pub mod policy;
pub mod registry;
pub mod repo;
pub mod shelf;
pub mod token;

use std::path::Path;
use std::sync::Arc;

use fleetport_proto::model::{self, ServiceModel};
use fleetport_proto::{AwsError, BoxFuture, RequestContext, Service};
use fleetport_store::Store;
use serde_json::Value;

use crate::blobs::FsBlobs;
use crate::token::TokenKey;

#[derive(Debug, Clone)]
pub struct Scope {
    pub region: String,
    pub account: String,
}

/// The ECR service and registry. Cheap to clone.
#[derive(Clone)]
pub struct Ecr {
    store: Arc<dyn Store>,
    blobs: Arc<FsBlobs>,
    scope: Scope,
    /// `host:port` users put in image names (`localhost:4566/web:1`).
    registry_host: String,
    token_key: TokenKey,
    /// Decides what a token's principal may do in the registry (IAM, wired by the binary).
    authorizer: Arc<std::sync::OnceLock<Arc<dyn fleetport_proto::auth::Authorizer>>>,
}

impl std::fmt::Debug for Ecr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ecr")
            .field("scope", &self.scope)
            .field("registry_host", &self.registry_host)
            .finish_non_exhaustive()
    }
}

const IMPLEMENTED: &[&str] = &[
    "GetAuthorizationToken",
    "CreateRepository",
    "DescribeRepositories",
    "DeleteRepository",
    "DescribeImages",
    "ListImages",
    "BatchGetImage",
    "BatchDeleteImage",
    "PutImage",
    "BatchCheckLayerAvailability",
    "GetDownloadUrlForLayer",
    "PutImageTagMutability",
    "PutImageScanningConfiguration",
    "DescribeRegistry",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "InitiateLayerUpload",
    "UploadLayerPart",
    "CompleteLayerUpload",
    "SetRepositoryPolicy",
    "GetRepositoryPolicy",
    "DeleteRepositoryPolicy",
    "PutLifecyclePolicy",
    "GetLifecyclePolicy",
    "DeleteLifecyclePolicy",
    "StartLifecyclePolicyPreview",
    "GetLifecyclePolicyPreview",
];

pub use fleetport_proto::clock::unix_secs as now_secs;

impl Ecr {
    /// `data_dir` holds the token key, the uploads in progress and, unless `blob_store` names
    /// the object store shared by the replicas, the blobs.
    pub fn open(
        store: Arc<dyn Store>,
        data_dir: &Path,
        region: &str,
        account: &str,
        registry_host: &str,
        upload_ttl: std::time::Duration,
        blob_store: Option<shelf::Remote>,
    ) -> std::io::Result<Self> {
        let root = data_dir.join("registry");
        fleetport_store::datadir::prepare(&root)?;
        let blobs = Arc::new(FsBlobs::open(&root, upload_ttl, blob_store)?);
        // Kept so that tokens survive restarts.
        let token_key = TokenKey::new(fleetport_store::datadir::key(
            data_dir,
            "registry-token.key",
        )?);
        Ok(Self {
            store,
            blobs,
            scope: Scope {
                region: region.into(),
                account: account.into(),
            },
            registry_host: registry_host.into(),
            token_key,
            authorizer: Arc::default(),
        })
    }

    /// The policy evaluation registry requests go through (set once, at start).
    pub fn set_authorizer(&self, authorizer: Arc<dyn fleetport_proto::auth::Authorizer>) {
        let _ = self.authorizer.set(authorizer);
    }

    async fn dispatch(
        &self,
        ctx: &RequestContext,
        operation: &str,
        input: Value,
    ) -> Result<Value, AwsError> {
        match operation {
            "GetAuthorizationToken" => self.get_authorization_token(&ctx.principal),
            "CreateRepository" => self.create_repository(input).await,
            "DescribeRepositories" => self.describe_repositories(input),
            "DeleteRepository" => self.delete_repository(input).await,
            "DescribeImages" => self.describe_images(input),
            "ListImages" => self.list_images(input),
            "BatchGetImage" => self.batch_get_image(input),
            "BatchDeleteImage" => self.batch_delete_image(input).await,
            "PutImage" => self.put_image(input).await,
            "BatchCheckLayerAvailability" => self.batch_check_layer_availability(input).await,
            "GetDownloadUrlForLayer" => self.get_download_url_for_layer(input).await,
            "PutImageTagMutability" => self.put_image_tag_mutability(input).await,
            "PutImageScanningConfiguration" => self.put_image_scanning_configuration(input).await,
            "DescribeRegistry" => self.describe_registry(),
            "TagResource" => self.tag_resource(input).await,
            "UntagResource" => self.untag_resource(input).await,
            "ListTagsForResource" => self.list_tags_for_resource(input),
            "InitiateLayerUpload" => self.initiate_layer_upload(input).await,
            "UploadLayerPart" => self.upload_layer_part(input).await,
            "CompleteLayerUpload" => self.complete_layer_upload(input).await,
            "SetRepositoryPolicy" => self.set_repository_policy(input).await,
            "GetRepositoryPolicy" => self.get_repository_policy(input),
            "DeleteRepositoryPolicy" => self.delete_repository_policy(input).await,
            "PutLifecyclePolicy" => self.put_lifecycle_policy(input).await,
            "GetLifecyclePolicy" => self.get_lifecycle_policy(input),
            "DeleteLifecyclePolicy" => self.delete_lifecycle_policy(input).await,
            "StartLifecyclePolicyPreview" => self.start_lifecycle_policy_preview(input).await,
            "GetLifecyclePolicyPreview" => self.get_lifecycle_policy_preview(input),
            _ => Err(AwsError::client(
                "UnknownOperationException",
                format!("Unknown operation {operation}"),
            )),
        }
    }
}

impl Service for Ecr {
    fn model(&self) -> &'static ServiceModel {
        model::ecr()
    }

    fn constraint_error_code(&self) -> &'static str {
        "InvalidParameterException"
    }

    fn implements(&self, operation: &str) -> bool {
        IMPLEMENTED.contains(&operation)
    }

    fn call<'a>(
        &'a self,
        ctx: &'a RequestContext,
        operation: &'a str,
        input: Value,
    ) -> BoxFuture<'a, Result<Value, AwsError>> {
        Box::pin(self.dispatch(ctx, operation, input))
    }

    /// Repository actions are authorised on the repository's ARN; registry-wide ones (and
    /// GetAuthorizationToken) on `*`.
    fn resources(&self, ctx: &RequestContext, operation: &str, input: &Value) -> Vec<String> {
        let arn = |name: &str| {
            format!(
                "arn:aws:ecr:{}:{}:repository/{name}",
                ctx.region, ctx.account_id
            )
        };
        if let Some(name) = input.get("repositoryName").and_then(Value::as_str) {
            return vec![arn(name)];
        }
        if operation == "DescribeRepositories"
            && let Some(names) = input.get("repositoryNames").and_then(Value::as_array)
            && !names.is_empty()
        {
            return names.iter().filter_map(Value::as_str).map(arn).collect();
        }
        vec!["*".to_string()]
    }

    fn resource_policy(&self, resource: &str) -> Option<String> {
        self.policy_of_arn(resource)
    }

    fn resource_tags(&self, resource: &str) -> Vec<(String, String)> {
        self.repository_tags(resource)
            .map(|tags| tags.into_iter().map(|t| (t.key, t.value)).collect())
            .unwrap_or_default()
    }
}
