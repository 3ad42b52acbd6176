//! Where verified blobs are published and read back: `blobs/sha256/<hex>` in the registry's
//! directory (the single-machine default), or the same keys in an S3-compatible object store
//! (`--blob-store s3://bucket/prefix?endpoint=…`) that every control-plane replica shares, so
//! an image pushed through one replica pulls through any. Uploads are spooled and verified on
//! the receiving replica ([`crate::blobs`]) and only then published: with a rename on disk, or
//! one PUT (multipart above 8 MiB) to the object store, which makes an object visible only once
//! complete. Reads stream both ways in bounded chunks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::blobs::parse_digest;

/// Blobs at most this large go up in one PUT; larger ones in parts of this size.
const PART: usize = 8 << 20;
/// Parts of one blob in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// An S3-compatible object store and the key prefix this registry's blobs live under.
#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// What the banner shows: the URL without its options' values beyond the endpoint.
    label: String,
}

impl Remote {
    /// `s3://bucket[/prefix][?endpoint=http://host:port&region=…]`. Credentials come from the
    /// standard `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` variables
    /// (else from the instance's role, as the SDKs find it).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or("--blob-store must be an s3://bucket[/prefix][?endpoint=…] URL")?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err("--blob-store names no bucket: s3://bucket[/prefix]".into());
        }
        // Only the credential and region variables: the rest of the environment (an
        // AWS_ENDPOINT_URL meant for the CLI, pointing at Fleetport itself) is not for this.
        let mut builder = object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = var("AWS_SESSION_TOKEN") {
                builder = builder.with_token(token);
            }
        }
        if let Some(region) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            builder = builder.with_region(region);
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            builder = match k {
                "endpoint" => builder
                    .with_endpoint(v)
                    .with_allow_http(v.starts_with("http://"))
                    .with_virtual_hosted_style_request(false),
                "region" => builder.with_region(v),
                other => {
                    return Err(format!(
                        "--blob-store: unknown option {other:?} (endpoint and region are known)"
                    ));
                }
            };
        }
        let store = builder.build().map_err(|e| format!("--blob-store: {e}"))?;
        let endpoint = query
            .split('&')
            .find_map(|p| p.strip_prefix("endpoint="))
            .map(|e| format!(" at {e}"))
            .unwrap_or_default();
        Ok(Self {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_string(),
            label: format!("s3://{location}{endpoint}"),
        })
    }

    /// The bucket, prefix and endpoint, for the banner.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The same store under a deeper prefix (one per account and region).
    pub fn within(&self, sub: &str) -> Self {
        let prefix = match (self.prefix.as_str(), sub.trim_matches('/')) {
            ("", s) => s.to_string(),
            (p, "") => p.to_string(),
            (p, s) => format!("{p}/{s}"),
        };
        Self {
            store: self.store.clone(),
            prefix,
            label: self.label.clone(),
        }
    }

    /// Fails unless the bucket answers (a listing of this prefix), so a wrong setting shows at
    /// start and not at the first push.
    pub async fn check(&self) -> Result<(), String> {
        let prefix = object_store::path::Path::from(self.prefix.as_str());
        match self.store.list(Some(&prefix)).next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(format!("the blob store does not answer: {e}")),
        }
    }

    fn key(&self, hex: &str) -> object_store::path::Path {
        let key = if self.prefix.is_empty() {
            format!("blobs/sha256/{hex}")
        } else {
            format!("{}/blobs/sha256/{hex}", self.prefix)
        };
        object_store::path::Path::from(key)
    }
}

/// Where published blobs are.
#[derive(Debug)]
pub enum Shelf {
    /// The `blobs/sha256` directory under the registry's root.
    Local(PathBuf),
    Remote(Remote),
}

fn not_found() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, "blob unknown")
}

impl Shelf {
    /// The size of a published blob, if present.
    pub async fn size(&self, digest: &str) -> Option<u64> {
        let hex = parse_digest(digest)?;
        match self {
            Shelf::Local(dir) => tokio::fs::metadata(dir.join(hex))
                .await
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len()),
            Shelf::Remote(r) => r.store.head(&r.key(hex)).await.ok().map(|m| m.size),
        }
    }

    /// `length` bytes of a blob from `start`, in chunks of at most 1 MiB (from disk) or as the
    /// object store sends them.
    pub async fn read(
        &self,
        digest: &str,
        start: u64,
        length: u64,
    ) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let hex = parse_digest(digest).ok_or_else(not_found)?;
        match self {
            Shelf::Local(dir) => {
                use tokio::io::AsyncSeekExt;
                let mut file = tokio::fs::File::open(dir.join(hex)).await?;
                file.seek(std::io::SeekFrom::Start(start)).await?;
                Ok(file_stream(file, length).boxed())
            }
            Shelf::Remote(r) => {
                if length == 0 {
                    return Ok(futures_util::stream::empty().boxed());
                }
                let options = object_store::GetOptions {
                    range: Some(object_store::GetRange::Bounded(start..start + length)),
                    ..Default::default()
                };
                let got = r
                    .store
                    .get_opts(&r.key(hex), options)
                    .await
                    .map_err(std::io::Error::from)?;
                Ok(got
                    .into_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::from))
                    .boxed())
            }
        }
    }

    /// A whole small blob (an image config), if present and at most `max` bytes.
    pub async fn read_small(&self, digest: &str, max: u64) -> Option<Vec<u8>> {
        let size = self.size(digest).await.filter(|s| *s <= max)?;
        let mut stream = self.read(digest, 0, size).await.ok()?;
        let mut out = Vec::with_capacity(usize::try_from(size).ok()?);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.ok()?);
        }
        Some(out)
    }

    /// Publishes a verified upload (`file`, `size` bytes) as `hex`. On disk: fsynced and renamed
    /// into place; in the object store: uploaded, visible once complete. Either way the spooled
    /// file is gone afterwards, and nothing partial is ever visible.
    pub async fn publish(&self, file: &Path, hex: &str, size: u64) -> std::io::Result<()> {
        match self {
            Shelf::Local(dir) => {
                let f = tokio::fs::OpenOptions::new().write(true).open(file).await?;
                f.sync_all().await?;
                drop(f);
                // Concurrent pushes of one blob are safe: both files hold the same bytes and
                // the rename is atomic.
                tokio::fs::rename(file, dir.join(hex)).await?;
                if let Ok(d) = tokio::fs::File::open(dir).await {
                    let _ = d.sync_all().await;
                }
                Ok(())
            }
            Shelf::Remote(r) => {
                let key = r.key(hex);
                if r.store.head(&key).await.is_ok_and(|m| m.size == size) {
                    // Already there (pushed through another replica): same digest, same bytes.
                    return tokio::fs::remove_file(file).await;
                }
                let put = upload(r, &key, file, size).await;
                let _ = tokio::fs::remove_file(file).await;
                put
            }
        }
    }

    /// Every published blob with the time it was published.
    pub async fn list(&self) -> std::io::Result<Vec<(String, std::time::SystemTime)>> {
        let mut out = Vec::new();
        match self {
            Shelf::Local(dir) => {
                let mut entries = tokio::fs::read_dir(dir).await?;
                while let Some(entry) = entries.next_entry().await? {
                    let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
                    if parse_digest(&digest).is_some() {
                        out.push((digest, entry.metadata().await?.modified()?));
                    }
                }
            }
            Shelf::Remote(r) => {
                let prefix = r.key("");
                let mut listing = r.store.list(Some(&prefix));
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(std::io::Error::from)?;
                    if let Some(name) = meta.location.filename() {
                        let digest = format!("sha256:{name}");
                        if parse_digest(&digest).is_some() {
                            out.push((digest, meta.last_modified.into()));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes a blob; returns its size (0 if it was not there).
    pub async fn remove(&self, digest: &str) -> std::io::Result<u64> {
        let Some(hex) = parse_digest(digest) else {
            return Ok(0);
        };
        let size = self.size(digest).await.unwrap_or(0);
        match self {
            Shelf::Local(dir) => match tokio::fs::remove_file(dir.join(hex)).await {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                r => r.map(|()| size),
            },
            Shelf::Remote(r) => match r.store.delete(&r.key(hex)).await {
                Err(object_store::Error::NotFound { .. }) => Ok(0),
                r => r.map(|()| size).map_err(std::io::Error::from),
            },
        }
    }
}

/// Streams a spooled file to the object store: one PUT when small, else a multipart upload
/// with a few parts in flight (aborted on any failure, so no parts are left behind).
async fn upload(
    r: &Remote,
    key: &object_store::path::Path,
    file: &Path,
    size: u64,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(file).await?;
    if size <= PART as u64 {
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(PART));
        f.read_to_end(&mut buf).await?;
        r.store
            .put(key, object_store::PutPayload::from(buf))
            .await
            .map_err(std::io::Error::from)?;
        return Ok(());
    }
    let multipart = r
        .store
        .put_multipart(key)
        .await
        .map_err(std::io::Error::from)?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(multipart, PART);
    let mut buf = vec![0u8; 1 << 20];
    let sent: std::io::Result<()> = async {
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(std::io::Error::from)?;
            writer.write(&buf[..n]);
        }
    }
    .await;
    match sent {
        Ok(()) => writer
            .finish()
            .await
            .map(|_| ())
            .map_err(std::io::Error::from),
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// Streams `length` bytes from `file` in 1 MiB reads, so memory stays bounded for any size.
fn file_stream(
    file: tokio::fs::File,
    length: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold((file, length), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = left.min(1 << 20) as usize;
        let mut buf = vec![0u8; want];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_store_urls_are_checked() {
        assert!(
            Remote::parse(
                "s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1"
            )
            .is_ok()
        );
        for bad in ["file:///tmp", "s3://", "s3:///x", "s3://b?colour=red"] {
            assert!(Remote::parse(bad).is_err(), "{bad}");
        }
        let r = Remote::parse("s3://bucket/base/?endpoint=http://127.0.0.1:9").unwrap();
        assert_eq!(
            r.within("123456789012/eu-west-1").key("ab").as_ref(),
            "base/123456789012/eu-west-1/blobs/sha256/ab"
        );
        let r = Remote::parse("s3://bucket").unwrap();
        assert_eq!(r.within("").key("ab").as_ref(), "blobs/sha256/ab");
    }
}
