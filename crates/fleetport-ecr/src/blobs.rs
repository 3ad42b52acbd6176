//! The content-addressed blob store, shared by every repository. Uploads stream into a temporary
//! file while being hashed; a blob becomes visible only after its digest is verified, the file
//! is fsynced and atomically renamed to `blobs/sha256/<hex>`. A crash or a bad upload never
//! leaves a visible partial blob. Kept behind [`BlobStore`]-shaped methods so an object store
//! can back it later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

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
    sessions: Mutex<HashMap<String, SessionHandle>>,
    upload_ttl: std::time::Duration,
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
    pub fn open(root: &Path, upload_ttl: std::time::Duration) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("blobs/sha256"))?;
        let uploads = root.join("uploads");
        // Upload sessions do not survive a restart (their hash state is in memory): clear leftovers.
        let _ = std::fs::remove_dir_all(&uploads);
        std::fs::create_dir_all(&uploads)?;
        Ok(Self {
            root: root.to_path_buf(),
            sessions: Mutex::new(HashMap::new()),
            upload_ttl,
        })
    }

    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        parse_digest(digest).map(|hex| self.root.join("blobs/sha256").join(hex))
    }

    /// The size of a stored blob, if present.
    pub async fn size(&self, digest: &str) -> Option<u64> {
        let path = self.path(digest)?;
        tokio::fs::metadata(path)
            .await
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    pub async fn start(&self, repository: &str) -> Result<String, BlobError> {
        let id = uuid::Uuid::new_v4().to_string();
        tokio::fs::File::create(self.upload_path(&id)).await?;
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
            map.remove(id);
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

    fn take(&self, id: &str, repository: &str) -> Result<Box<Session>, BlobError> {
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
                Ok(s)
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
        let mut s = self.take(id, repository)?;
        if let Some(start) = start
            && start != s.written
        {
            let expected = s.written;
            self.put_back(id, s);
            return Err(BlobError::OutOfOrder { expected });
        }
        let file = match tokio::fs::OpenOptions::new()
            .append(true)
            .open(self.upload_path(id))
            .await
        {
            Ok(f) => f,
            Err(e) => {
                self.put_back(id, s);
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
            if let Err(e) = file.write_all(&chunk).await {
                broken = true;
                received = Err(e.into());
                break;
            }
            s.hasher.update(&chunk);
            s.written += chunk.len() as u64;
        }
        // Everything counted in the hash must be in the file, or the session no longer matches it.
        if broken || file.flush().await.is_err() {
            self.sessions.lock().remove(id);
            let _ = tokio::fs::remove_file(self.upload_path(id)).await;
            return Err(received.err().unwrap_or(BlobError::UploadUnknown));
        }
        let written = s.written;
        self.put_back(id, s);
        received.map(|()| written)
    }

    /// Verifies the whole upload against `digest` and makes it visible. On mismatch the
    /// session is discarded and nothing becomes visible.
    pub async fn finish(&self, id: &str, repository: &str, digest: &str) -> Result<u64, BlobError> {
        let target = self.path(digest).ok_or(BlobError::BadDigest)?;
        let s = self.take(id, repository)?;
        self.sessions.lock().remove(id);
        let upload = self.upload_path(id);
        let actual = format!("sha256:{}", hex::encode(s.hasher.finalize()));
        if actual != digest {
            let _ = tokio::fs::remove_file(&upload).await;
            return Err(BlobError::DigestMismatch);
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&upload)
            .await?;
        file.sync_all().await?;
        drop(file);
        // Concurrent pushes of one blob are safe: both files hold the same bytes; the rename is atomic.
        tokio::fs::rename(&upload, &target).await?;
        if let Some(dir) = target.parent()
            && let Ok(d) = tokio::fs::File::open(dir).await
        {
            let _ = d.sync_all().await;
        }
        Ok(s.written)
    }

    pub async fn cancel(&self, id: &str, repository: &str) -> Result<(), BlobError> {
        let _ = self.take(id, repository)?;
        self.sessions.lock().remove(id);
        let _ = tokio::fs::remove_file(self.upload_path(id)).await;
        Ok(())
    }
}

impl FsBlobs {
    /// Every stored blob with its last modification time.
    pub fn list(&self) -> std::io::Result<Vec<(String, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("blobs/sha256"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if parse_digest(&digest).is_some() {
                out.push((digest, entry.metadata()?.modified()?));
            }
        }
        Ok(out)
    }

    /// Removes a blob and returns its size.
    pub fn remove(&self, digest: &str) -> std::io::Result<u64> {
        let Some(path) = self.path(digest) else {
            return Ok(0);
        };
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(path)?;
        Ok(size)
    }
}
