//! Which repository holds which blob. Blob files are shared by the whole registry (content
//! addressed), but a blob is served, mounted from, or referenced by a manifest only through a
//! repository that holds it: one that uploaded it, mounted it from a repository holding it, or
//! has a manifest naming it. The record `<digest>|<repository>` in `ecr.bloblink` says so, with
//! the time it was last made or used.
//!
//! Garbage collection deletes a blob only after deleting, in one store transaction, every record
//! of it not used within the grace period; a manifest commits only if, in its own transaction,
//! its repository still holds each blob it names (and marks them used). Store writes are
//! serialised, so a blob a push found present is either kept or the manifest is refused, never
//! committed naming a deleted file.

use fleetport_store::{ReadTxn, ReadTxnExt, StoreError, WriteTxn, WriteTxnExt};
use serde::{Deserialize, Serialize};

use crate::Ecr;
use crate::blobs::BlobError;
use crate::repo::{MANIFESTS, ManifestRecord};

pub(crate) const BLOB_LINKS: &str = "ecr.bloblink";

/// A use older than this is refreshed when the blob is checked again (HEAD during a push), so
/// that the collector sees the blob as in use.
const REFRESH_SECS: f64 = 60.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Link {
    /// Unix seconds of the last upload, mount, check or manifest that used it here.
    pub at: f64,
}

fn key(digest: &str, repository: &str) -> String {
    format!("{digest}|{repository}")
}

fn now() -> f64 {
    fleetport_proto::clock::epoch_seconds()
}

/// Records (or refreshes) that `repository` holds `digest`.
pub(crate) fn link(
    txn: &mut dyn WriteTxn,
    repository: &str,
    digest: &str,
) -> Result<(), StoreError> {
    txn.put_json(BLOB_LINKS, &key(digest, repository), &Link { at: now() })
}

/// Whether `repository` holds `digest`, inside a transaction.
pub(crate) fn held(txn: &dyn ReadTxn, repository: &str, digest: &str) -> Result<bool, StoreError> {
    Ok(txn.get(BLOB_LINKS, &key(digest, repository))?.is_some())
}

/// Forgets every blob `repository` holds (it is being deleted).
pub(crate) fn unlink_repository(
    txn: &mut dyn WriteTxn,
    repository: &str,
) -> Result<(), StoreError> {
    let suffix = format!("|{repository}");
    let all = txn.scan(BLOB_LINKS, "", None, usize::MAX)?;
    for r in all.into_iter().filter(|r| r.key.ends_with(&suffix)) {
        txn.delete(BLOB_LINKS, &r.key)?;
    }
    Ok(())
}

/// Deletes the records of `digest` if none was used after `cutoff`; true if the blob is free to
/// delete (the caller has already checked no manifest names it).
pub(crate) fn release(
    txn: &mut dyn WriteTxn,
    digest: &str,
    cutoff: f64,
) -> Result<bool, StoreError> {
    let records: Vec<(String, Link)> =
        txn.scan_json(BLOB_LINKS, &format!("{digest}|"), None, usize::MAX)?;
    if records.iter().any(|(_, l)| l.at > cutoff) {
        return Ok(false);
    }
    for (k, _) in records {
        txn.delete(BLOB_LINKS, &k)?;
    }
    Ok(true)
}

impl Ecr {
    /// Records, for state from before these records, that each repository holds the blobs its
    /// manifests name; idempotent, run at start, writing only what is missing.
    pub async fn link_existing(&self) -> Result<(), StoreError> {
        fleetport_store::write(&*self.store, |txn| {
            let manifests: Vec<(String, ManifestRecord)> =
                txn.scan_json(MANIFESTS, "", None, usize::MAX)?;
            for (k, m) in manifests {
                let Some((repository, _)) = k.split_once('@') else {
                    continue;
                };
                for d in m.blob_digests() {
                    if !held(txn, repository, &d)? {
                        link(txn, repository, &d)?;
                    }
                }
            }
            Ok::<_, fleetport_store::Abort<StoreError>>(())
        })
        .await
    }

    /// Whether `repository` holds `digest`.
    pub(crate) fn holds(&self, repository: &str, digest: &str) -> bool {
        fleetport_store::read(&*self.store, |t| held(t, repository, digest)).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading blob records");
            false
        })
    }

    /// Like [`Self::holds`], and marks the blob as used now (at most once a minute per blob and
    /// repository): a push checks its layers with HEAD before it commits the manifest.
    pub(crate) async fn holds_and_touch(&self, repository: &str, digest: &str) -> bool {
        let stale = fleetport_store::read(&*self.store, |t| {
            let l: Option<Link> = t.get_json(BLOB_LINKS, &key(digest, repository))?;
            Ok::<_, StoreError>(l.map(|l| now() - l.at > REFRESH_SECS))
        });
        match stale {
            Ok(Some(false)) => true,
            Ok(Some(true)) => {
                let (repo, d) = (repository.to_string(), digest.to_string());
                let _ = fleetport_store::write(&*self.store, move |txn| {
                    link(txn, &repo, &d).map_err(fleetport_store::Abort::Store)
                })
                .await
                .map_err(|e: StoreError| tracing::warn!(error = %e, "refreshing a blob record"));
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(error = %e, "reading blob records");
                false
            }
        }
    }

    /// Records that `repository` holds `digest`.
    pub(crate) async fn link_blob(&self, repository: &str, digest: &str) -> Result<(), StoreError> {
        let (repo, d) = (repository.to_string(), digest.to_string());
        fleetport_store::write(&*self.store, move |txn| {
            link(txn, &repo, &d).map_err(fleetport_store::Abort::Store)
        })
        .await
    }

    /// Completes an upload session and records that its repository holds the blob.
    pub(crate) async fn finish_upload(
        &self,
        id: &str,
        repository: &str,
        digest: &str,
    ) -> Result<u64, BlobError> {
        let size = self.blobs.finish(id, repository, digest).await?;
        self.link_blob(repository, digest)
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))?;
        Ok(size)
    }
}
