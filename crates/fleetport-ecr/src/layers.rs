//! ECR's layer-upload API (InitiateLayerUpload, UploadLayerPart, CompleteLayerUpload): the same
//! upload sessions and blob store as `/v2/` uploads, driven through awsJson with base64 parts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fleetport_proto::AwsError;
use serde_json::{Value, json};

use crate::Ecr;
use crate::blobs::BlobError;
use fleetport_proto::input;

/// The part size ECR announces to clients.
const PART_SIZE: u64 = 10 * 1024 * 1024;

fn upload_not_found(id: &str) -> AwsError {
    AwsError::client(
        "UploadNotFoundException",
        format!("The upload with id '{id}' was not found for this repository."),
    )
}

impl Ecr {
    pub(crate) async fn initiate_layer_upload(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        self.find_repository(&name)
            .map_err(crate::repo::ecr_store_error)?
            .ok_or_else(|| crate::repo::repo_not_found(&name, &self.scope.account))?;
        let id = self.blobs.start(&name).await.map_err(|e| match e {
            BlobError::TooManyUploads(_) => {
                AwsError::client("LimitExceededException", e.to_string())
            }
            _ => AwsError::internal(),
        })?;
        Ok(json!({"uploadId": id, "partSize": PART_SIZE}))
    }

    pub(crate) async fn upload_layer_part(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let id = input::owned(&input, "uploadId");
        let first = input
            .get("partFirstByte")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let last = input
            .get("partLastByte")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let blob = STANDARD
            .decode(input::owned(&input, "layerPartBlob"))
            .map_err(|_| {
                AwsError::client(
                    "InvalidParameterException",
                    "layerPartBlob is not valid base64.",
                )
            })?;
        let offset = self
            .blobs
            .offset(&id, &name)
            .map_err(|_| upload_not_found(&id))?;
        let invalid_part = |message: String| {
            AwsError::client(
                "InvalidLayerPartException",
                format!("{message} Last valid byte received: {}", offset as i64 - 1),
            )
        };
        if blob.is_empty() || last < first || last - first + 1 != blob.len() as u64 {
            return Err(invalid_part(format!(
                "The part covers bytes {first}-{last} but carries {} bytes.",
                blob.len()
            )));
        }
        let stream =
            futures_util::stream::once(
                async move { Ok::<_, std::io::Error>(bytes::Bytes::from(blob)) },
            );
        match self
            .blobs
            .append(&id, &name, Some(first), Box::pin(stream))
            .await
        {
            Ok(written) => Ok(json!({
                "registryId": self.scope.account,
                "repositoryName": name,
                "uploadId": id,
                "lastByteReceived": written.saturating_sub(1),
            })),
            Err(BlobError::OutOfOrder { .. }) => Err(invalid_part(format!(
                "The part must start at byte {offset}, not {first}."
            ))),
            Err(BlobError::UploadUnknown) => Err(upload_not_found(&id)),
            Err(e @ BlobError::UploadsTooLarge(_)) => {
                Err(AwsError::client("LimitExceededException", e.to_string()))
            }
            Err(_) => Err(AwsError::internal()),
        }
    }

    pub(crate) async fn complete_layer_upload(&self, input: Value) -> Result<Value, AwsError> {
        let name = input::owned(&input, "repositoryName");
        let id = input::owned(&input, "uploadId");
        let digests: Vec<String> = input::strings(&input, "layerDigests");
        let [digest] = digests.as_slice() else {
            return Err(AwsError::client(
                "InvalidParameterException",
                "Exactly one layer digest is expected.",
            ));
        };
        let written = self
            .blobs
            .offset(&id, &name)
            .map_err(|_| upload_not_found(&id))?;
        if written == 0 {
            return Err(AwsError::client(
                "EmptyUploadException",
                format!("The upload with id '{id}' contains no data."),
            ));
        }
        if self.holds(&name, digest) {
            let _ = self.blobs.cancel(&id, &name).await;
            return Err(AwsError::client(
                "LayerAlreadyExistsException",
                format!("The layer '{digest}' already exists in the repository."),
            ));
        }
        // Verified against the uploaded bytes even when another repository has the blob: only
        // then does this repository hold it.
        match self.finish_upload(&id, &name, digest).await {
            Ok(_) => Ok(
                json!({"registryId": self.scope.account, "repositoryName": name, "uploadId": id, "layerDigest": digest}),
            ),
            Err(BlobError::DigestMismatch | BlobError::BadDigest) => Err(AwsError::client(
                "InvalidLayerException",
                format!(
                    "The layer digest calculation performed by Amazon ECR upon receipt of the image layer does not match the digest specified: {digest}"
                ),
            )),
            Err(BlobError::UploadUnknown) => Err(upload_not_found(&id)),
            Err(_) => Err(AwsError::internal()),
        }
    }
}
