//! Registry maintenance: lifecycle policy enforcement, then garbage collection of blobs that no manifest in any repository references any more (after
//! BatchDeleteImage, manifest deletes or DeleteRepository). Safe while pushes are in flight: a
//! blob is only removed once it is older than a grace period, since layers are uploaded before
//! the manifest that references them.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use fleetport_store::ReadTxnExt;

use crate::Ecr;
use crate::repo::{MANIFESTS, ManifestRecord};

/// What one collection pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub blobs: u64,
    pub bytes: u64,
}

impl Ecr {
    /// Digests of every blob (config and layers) named by a stored manifest whose key starts with
    /// `prefix` (`""` for the whole registry, `"<repo>@"` for one repository).
    pub(crate) fn referenced(
        &self,
        prefix: &str,
    ) -> Result<HashSet<String>, fleetport_store::StoreError> {
        let manifests: Vec<(String, ManifestRecord)> = fleetport_store::read(&*self.store, |t| {
            t.scan_json(MANIFESTS, prefix, None, usize::MAX)
        })?;
        let refs = manifests
            .iter()
            .flat_map(|(_, m)| m.blob_digests())
            .collect();
        Ok(refs)
    }

    /// Removes unreferenced blobs older than `grace`.
    pub async fn collect_garbage(&self, grace: Duration) -> Result<Collected, String> {
        let listed = self.blobs.list().await.map_err(|e| e.to_string())?;
        // Read references after listing, so a manifest committed meanwhile is seen.
        let refs = self.referenced("").map_err(|e| e.to_string())?;
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let cutoff_secs = cutoff
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut out = Collected::default();
        for (digest, modified) in listed {
            if refs.contains(&digest) || modified > cutoff {
                continue;
            }
            // Released in the store first: a manifest committing meanwhile either marked the
            // blob used (then it stays) or finds it released and is refused.
            let d = digest.clone();
            let released = fleetport_store::write(&*self.store, move |txn| {
                crate::holds::release(txn, &d, cutoff_secs).map_err(fleetport_store::Abort::Store)
            })
            .await;
            match released {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    let e: fleetport_store::StoreError = e;
                    tracing::warn!(digest, error = %e, "could not release a blob");
                    continue;
                }
            }
            match self.blobs.remove(&digest).await {
                Ok(size) => {
                    out.blobs += 1;
                    out.bytes += size;
                }
                Err(e) => {
                    tracing::warn!(digest, error = %e, "could not remove an unreferenced blob")
                }
            }
        }
        if out.blobs > 0 {
            tracing::info!(
                blobs = out.blobs,
                bytes = out.bytes,
                "registry garbage collected"
            );
        }
        Ok(out)
    }

    /// Runs [`Self::collect_garbage`] every `interval` until the task is dropped.
    pub async fn run_gc(self, interval: Duration, grace: Duration) {
        // The first pass waits one interval: nothing can be unreferenced at start-up that was not before.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Lifecycle expiry first, so the blobs of images it removes are collected in this pass.
            self.apply_all_lifecycles().await;
            let expired = self.blobs.expire_sessions();
            if expired > 0 {
                tracing::info!(sessions = expired, "expired idle upload sessions");
            }
            if let Err(e) = self.collect_garbage(grace).await {
                tracing::warn!(error = %e, "registry garbage collection failed");
            }
        }
    }
}
