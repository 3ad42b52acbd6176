//! The content-addressed blob store, shared by every repository. Uploads stream into a temporary
//! file while being hashed; a blob becomes visible only after its digest is verified, when it
//! is published on its [`Shelf`] (renamed into `blobs/sha256/<hex>` on disk, or uploaded to the
//! shared object store). A crash or a bad upload never leaves a visible partial blob.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::shelf::{Remote, Shelf};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob upload unknown")]
    UploadUnknown,
    #[error("the upload session expired after a period without data; start a new upload")]
    UploadExpired,
    #[error("digest did not match the uploaded content")]
    DigestMismatch,
    #[error("unsupported or malformed digest")]
    BadDigest,
    #[error("chunk out of order: expected offset {expected}")]
    OutOfOrder { expected: u64 },
    #[error("the client stopped sending the body: {0}")]
    ClientAborted(String),
    #[error("too many uploads in progress (at most {0}); finish or cancel some first")]
    TooManyUploads(usize),
    #[error("uploads in progress would hold more than {0} bytes")]
    UploadsTooLarge(u64),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
}

struct Session {
    repository: String,
    hasher: Sha256,
    written: u64,
    /// Last time data arrived; sessions idle longer than the TTL expire.
    touched: std::time::Instant,
}

#[derive(Debug)]
pub struct FsBlobs {
    root: PathBuf,
    /// Where verified blobs are published and read from.
    shelf: Shelf,
    sessions: Mutex<HashMap<String, SessionHandle>>,
    upload_ttl: std::time::Duration,
    limits: UploadLimits,
    /// Bytes written by sessions still open (their files in `uploads/`).
    pending: std::sync::atomic::AtomicU64,
}

/// How many upload sessions may be open at once, and how many bytes they may hold together.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    pub sessions: usize,
    pub bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            sessions: 1024,
            bytes: 64 << 30,
        }
    }
}

/// A session taken out of the map for one request. Dropped without being handed back (the
/// request was cancelled mid-body, or failed), it discards the session and its file: the hash
/// state may no longer match the file, and a `Busy` entry would block the session forever.
struct Lease<'a> {
    blobs: &'a FsBlobs,
    id: String,
    session: Option<Box<Session>>,
}

impl Lease<'_> {
    fn session(&mut self) -> &mut Session {
        // Present from creation until `put_back` or `into_inner`, which consume the lease.
        self.session.as_mut().unwrap_or_else(|| unreachable!())
    }

    fn put_back(mut self) {
        if let Some(s) = self.session.take() {
            self.blobs.put_back(&self.id, s);
        }
    }

    fn into_inner(mut self) -> Box<Session> {
        self.session.take().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.blobs.discard(&self.id, s.written);
        }
    }
}

/// A session is moved out of the map while a chunk is being written, so two requests can never
/// write one session at once; its owner and committed offset stay visible for status requests.
enum SessionHandle {
    Idle(Box<Session>),
    Busy { repository: String, written: u64 },
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionHandle::Idle(_) => "Idle",
            SessionHandle::Busy { .. } => "Busy",
        })
    }
}

/// `sha256:<64 lowercase hex>` → the hex part.
pub fn parse_digest(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl FsBlobs {
    /// `upload_ttl`: how long an upload session may go without data before it expires.
    /// `remote`: the object store blobs are published to, instead of `root/blobs`.
    pub fn open(
        root: &Path,
        upload_ttl: std::time::Duration,
        remote: Option<Remote>,
    ) -> std::io::Result<Self> {
        let shelf = match remote {
            Some(r) => Shelf::Remote(r),
            None => {
                let dir = root.join("blobs/sha256");
                std::fs::create_dir_all(&dir)?;
                Shelf::Local(dir)
            }
        };
        let uploads = root.join("uploads");
        // Upload sessions do not survive a restart (their hash state is in memory): clear leftovers.
        let _ = std::fs::remove_dir_all(&uploads);
        std::fs::create_dir_all(&uploads)?;
        Ok(Self {
            root: root.to_path_buf(),
            shelf,
            sessions: Mutex::new(HashMap::new()),
            upload_ttl,
            limits: UploadLimits::default(),
            pending: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Sets the bounds on open upload sessions.
    pub fn with_limits(mut self, limits: UploadLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Forgets a session and deletes its file.
    fn discard(&self, id: &str, written: u64) {
        self.sessions.lock().remove(id);
        self.pending
            .fetch_sub(written, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(self.upload_path(id));
    }

    /// Open sessions, and bytes they hold.
    pub fn uploads_in_progress(&self) -> (usize, u64) {
        (
            self.sessions.lock().len(),
            self.pending.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The size of a stored blob, if present.
    pub async fn size(&self, digest: &str) -> Option<u64> {
        self.shelf.size(digest).await
    }

    /// `length` bytes of a stored blob from `start`, streamed.
    pub async fn read(
        &self,
        digest: &str,
        start: u64,
        length: u64,
    ) -> std::io::Result<futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>>
    {
        self.shelf.read(digest, start, length).await
    }

    /// A whole stored blob of at most `max` bytes (an image config).
    pub async fn read_small(&self, digest: &str, max: u64) -> Option<Vec<u8>> {
        self.shelf.read_small(digest, max).await
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    pub async fn start(&self, repository: &str) -> Result<String, BlobError> {
        if self.sessions.lock().len() >= self.limits.sessions {
            self.expire_sessions();
            if self.sessions.lock().len() >= self.limits.sessions {
                return Err(BlobError::TooManyUploads(self.limits.sessions));
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        // 0600 like every file in the data directory; the blob keeps the mode when renamed.
        let mut create = tokio::fs::OpenOptions::new();
        create.write(true).create(true).truncate(true);
        #[cfg(unix)]
        create.mode(0o600);
        create.open(self.upload_path(&id)).await?;
        let s = Session {
            repository: repository.to_string(),
            hasher: Sha256::new(),
            written: 0,
            touched: std::time::Instant::now(),
        };
        self.sessions
            .lock()
            .insert(id.clone(), SessionHandle::Idle(Box::new(s)));
        Ok(id)
    }

    /// Drops `id` if it is an idle session past its TTL; true if it did.
    fn expire(&self, map: &mut HashMap<String, SessionHandle>, id: &str) -> bool {
        let stale = matches!(map.get(id), Some(SessionHandle::Idle(s)) if s.touched.elapsed() > self.upload_ttl);
        if stale {
            if let Some(SessionHandle::Idle(s)) = map.remove(id) {
                self.pending
                    .fetch_sub(s.written, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = std::fs::remove_file(self.upload_path(id));
        }
        stale
    }

    /// Removes every idle session past its TTL (a maintenance pass); returns how many.
    pub fn expire_sessions(&self) -> usize {
        let mut map = self.sessions.lock();
        let ids: Vec<String> = map.keys().cloned().collect();
        ids.iter().filter(|id| self.expire(&mut map, id)).count()
    }

    fn take(&self, id: &str, repository: &str) -> Result<Lease<'_>, BlobError> {
        let mut map = self.sessions.lock();
        if self.expire(&mut map, id) {
            return Err(BlobError::UploadExpired);
        }
        match map.get(id) {
            Some(SessionHandle::Idle(s)) if s.repository == repository => {}
            _ => return Err(BlobError::UploadUnknown),
        }
        let busy = SessionHandle::Busy {
            repository: repository.to_string(),
            written: 0,
        };
        match map.insert(id.to_string(), busy) {
            Some(SessionHandle::Idle(s)) => {
                map.insert(
                    id.to_string(),
                    SessionHandle::Busy {
                        repository: s.repository.clone(),
                        written: s.written,
                    },
                );
                Ok(Lease {
                    blobs: self,
                    id: id.to_string(),
                    session: Some(s),
                })
            }
            _ => Err(BlobError::UploadUnknown),
        }
    }

    fn put_back(&self, id: &str, mut s: Box<Session>) {
        s.touched = std::time::Instant::now();
        self.sessions
            .lock()
            .insert(id.to_string(), SessionHandle::Idle(s));
    }

    /// Bytes received so far by an upload session.
    pub fn offset(&self, id: &str, repository: &str) -> Result<u64, BlobError> {
        let mut map = self.sessions.lock();
        if self.expire(&mut map, id) {
            return Err(BlobError::UploadExpired);
        }
        match map.get(id) {
            Some(SessionHandle::Idle(s)) if s.repository == repository => Ok(s.written),
            // A chunk is in flight: report what is committed so far.
            Some(SessionHandle::Busy {
                repository: r,
                written,
            }) if r == repository => Ok(*written),
            _ => Err(BlobError::UploadUnknown),
        }
    }

    /// Appends a streamed chunk starting at `start` (if the client said where it starts).
    pub async fn append<S, E>(
        &self,
        id: &str,
        repository: &str,
        start: Option<u64>,
        mut body: S,
    ) -> Result<u64, BlobError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let mut lease = self.take(id, repository)?;
        if let Some(start) = start
            && start != lease.session().written
        {
            let expected = lease.session().written;
            lease.put_back();
            return Err(BlobError::OutOfOrder { expected });
        }
        let file = match tokio::fs::OpenOptions::new()
            .append(true)
            .open(self.upload_path(id))
            .await
        {
            Ok(f) => f,
            Err(e) => {
                lease.put_back();
                return Err(e.into());
            }
        };
        // Body frames are small; batching them into 1 MiB writes saves a blocking-pool hop per frame.
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut received: Result<(), BlobError> = Ok(());
        let mut broken = false;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // The client went away mid-body: keep what arrived, so the upload can resume.
                Err(e) => {
                    received = Err(BlobError::ClientAborted(e.to_string()));
                    break;
                }
            };
            let n = chunk.len() as u64;
            let before = self
                .pending
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            if before + n > self.limits.bytes {
                self.pending
                    .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
                broken = true;
                received = Err(BlobError::UploadsTooLarge(self.limits.bytes));
                break;
            }
            if let Err(e) = file.write_all(&chunk).await {
                self.pending
                    .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
                broken = true;
                received = Err(e.into());
                break;
            }
            let s = lease.session();
            s.hasher.update(&chunk);
            s.written += n;
        }
        // Everything counted in the hash must be in the file, or the session no longer matches
        // it: dropping the lease discards both.
        if broken || file.flush().await.is_err() {
            drop(lease);
            return Err(received.err().unwrap_or(BlobError::UploadUnknown));
        }
        let written = lease.session().written;
        lease.put_back();
        received.map(|()| written)
    }

    /// Verifies the whole upload against `digest` and makes it visible. On mismatch the
    /// session is discarded and nothing becomes visible.
    pub async fn finish(&self, id: &str, repository: &str, digest: &str) -> Result<u64, BlobError> {
        let hex = parse_digest(digest).ok_or(BlobError::BadDigest)?;
        let s = self.take(id, repository)?.into_inner();
        self.sessions.lock().remove(id);
        self.pending
            .fetch_sub(s.written, std::sync::atomic::Ordering::Relaxed);
        let upload = self.upload_path(id);
        // Until published, the file is removed if this request is cancelled.
        let mut leftover = RemoveOnDrop(Some(upload.clone()));
        let actual = format!("sha256:{}", hex::encode(s.hasher.finalize()));
        if actual != digest {
            let _ = tokio::fs::remove_file(&upload).await;
            return Err(BlobError::DigestMismatch);
        }
        self.shelf.publish(&upload, hex, s.written).await?;
        leftover.0 = None;
        Ok(s.written)
    }

    pub async fn cancel(&self, id: &str, repository: &str) -> Result<(), BlobError> {
        // Dropping the lease discards the session and its file.
        drop(self.take(id, repository)?);
        Ok(())
    }
}

/// Deletes a file when dropped, unless disarmed (its path taken out).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl FsBlobs {
    /// Every stored blob with the time it was published.
    pub async fn list(&self) -> std::io::Result<Vec<(String, std::time::SystemTime)>> {
        self.shelf.list().await
    }

    /// Removes a blob and returns its size.
    pub async fn remove(&self, digest: &str) -> std::io::Result<u64> {
        self.shelf.remove(digest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn store() -> (tempfile::TempDir, FsBlobs) {
        let d = tempfile::tempdir().unwrap();
        let b = FsBlobs::open(d.path(), std::time::Duration::from_secs(60), None).unwrap();
        (d, b)
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("uploads")).unwrap().count()
    }

    #[tokio::test]
    async fn a_cancelled_chunk_discards_its_session_and_file() {
        let (d, b) = store();
        let id = b.start("r").await.unwrap();
        // A body that sends one chunk and then never ends: the request is dropped mid-body.
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
            bytes::Bytes::from_static(b"abc"),
        )])
        .chain(futures_util::stream::pending());
        let append = b.append(&id, "r", None, Box::pin(body));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), append)
                .await
                .is_err()
        );
        assert!(matches!(b.offset(&id, "r"), Err(BlobError::UploadUnknown)));
        assert_eq!(files(d.path()), 0);
        assert_eq!(b.uploads_in_progress(), (0, 0));
    }

    #[tokio::test]
    async fn sessions_are_bounded_in_number_and_bytes() {
        let (_d, b) = store();
        let b = b.with_limits(UploadLimits {
            sessions: 2,
            bytes: 4,
        });
        let one = b.start("r").await.unwrap();
        b.start("r").await.unwrap();
        assert!(matches!(
            b.start("r").await,
            Err(BlobError::TooManyUploads(2))
        ));
        let chunk = |s: &'static [u8]| {
            futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(s))])
        };
        assert_eq!(b.append(&one, "r", None, chunk(b"abc")).await.unwrap(), 3);
        assert!(matches!(
            b.append(&one, "r", None, chunk(b"de")).await,
            Err(BlobError::UploadsTooLarge(4))
        ));
        assert_eq!(b.uploads_in_progress(), (1, 0));
        b.cancel(&one, "r").await.unwrap_err();
    }
}
