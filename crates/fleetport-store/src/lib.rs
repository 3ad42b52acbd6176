//! Fleetport's state store. Desired state written by API handlers lives here; reconcilers read
//! it back. The [`Store`] trait is a small transactional document store (collections of keyed
//! JSON documents, scans in key order, a change feed) so service crates stay independent of
//! the backend. [`sqlite::SqliteStore`] is the embedded default; [`pg::PgStore`] sits behind
//! the same trait for several control-plane replicas, whose singleton work is fenced
//! ([`fence`]).

mod cache;
pub mod datadir;
pub mod fence;
pub mod pg;
mod queue;
pub mod refs;
pub mod scoped;
pub mod seal;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A failure of the store itself (never a domain error: those abort a write via [`Abort`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("stored document {collection}/{key} is corrupt: {reason}")]
    Corrupt {
        collection: String,
        key: String,
        reason: String,
    },
    #[error("the store is shutting down")]
    Closed,
    #[error("transaction aborted by its caller")]
    Aborted,
    /// A fenced write ([`fence`]) from a leader whose epoch no longer holds the lease.
    #[error("refused a write of leader epoch {0}: another replica leads now")]
    Fenced(i64),
}

/// What the process does after a reset has freed the in-memory copy of the state, called on the
/// store's writer thread, which freed it (the binary hands the allocator's free pages back to
/// the operating system). Set once, at start.
static AFTER_RESET: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets [`AFTER_RESET`]'s hook; later calls are ignored.
pub fn set_after_reset(hook: fn()) {
    let _ = AFTER_RESET.set(hook);
}

pub(crate) fn after_reset() {
    if let Some(hook) = AFTER_RESET.get() {
        hook();
    }
}

/// One stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
}

/// Reads inside a consistent snapshot.
pub trait ReadTxn {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Documents whose key starts with `prefix` and sorts after `after`, in key order.
    fn scan(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// How many documents in `collection` have keys starting with `prefix`.
    fn count(&self, collection: &str, prefix: &str) -> Result<u64, StoreError>;
}

/// Reads and writes inside one atomic transaction.
pub trait WriteTxn: ReadTxn {
    fn put(&mut self, collection: &str, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, collection: &str, key: &str) -> Result<bool, StoreError>;
}

/// A write job: runs inside a transaction that commits only if it returns `Ok`.
pub type WriteJob = Box<dyn FnOnce(&mut dyn WriteTxn) -> Result<(), StoreError> + Send>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The state store. Writes are durable when their future resolves `Ok`.
pub trait Store: Send + Sync + 'static {
    /// Runs `f` against a read snapshot on the calling thread (reads are short and local).
    fn read(
        &self,
        f: &mut dyn FnMut(&dyn ReadTxn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Queues `job`; it runs serialised with every other write and is durable once `Ok`.
    fn write(&self, job: WriteJob) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Deletes everything (the test-suite reset) and returns memory the store holds.
    fn reset(&self) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Moves whenever changes other processes made have been applied to what [`Store::read`]
    /// sees, so what a process keeps in memory beside the store (IAM's compiled policies, ELB's
    /// configuration, waiting agent polls) can follow. None for a store only this process
    /// writes.
    fn remote_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// The collections other processes changed since the last call, so a follower reloads
    /// only what moved. The empty name means everything (after a reset, or a reload of the
    /// whole state).
    fn take_remote_collections(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Typed helpers over the byte-level traits.
pub trait ReadTxnExt: ReadTxn {
    fn get_json<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get(collection, key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        collection: collection.into(),
                        key: key.into(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    fn scan_json<T: DeserializeOwned>(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.scan(collection, prefix, after, limit)?
            .into_iter()
            .map(|r| {
                serde_json::from_slice(&r.value)
                    .map(|v| (r.key.clone(), v))
                    .map_err(|e| StoreError::Corrupt {
                        collection: collection.into(),
                        key: r.key,
                        reason: e.to_string(),
                    })
            })
            .collect()
    }
}

impl<T: ReadTxn + ?Sized> ReadTxnExt for T {}

pub trait WriteTxnExt: WriteTxn {
    fn put_json<T: Serialize>(
        &mut self,
        collection: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.put(collection, key, &bytes)
    }
}

impl<T: WriteTxn + ?Sized> WriteTxnExt for T {}

/// Marks a domain failure that must roll the transaction back and reach the caller unchanged.
#[derive(Debug)]
pub enum Abort<E> {
    Domain(E),
    Store(StoreError),
}

impl<E> From<StoreError> for Abort<E> {
    fn from(e: StoreError) -> Self {
        Abort::Store(e)
    }
}

/// Runs a read closure and returns its value.
pub fn read<T, E: From<StoreError>>(
    store: &dyn Store,
    f: impl FnOnce(&dyn ReadTxn) -> Result<T, E>,
) -> Result<T, E> {
    let mut f = Some(f);
    let mut out: Option<Result<T, E>> = None;
    store.read(&mut |txn| {
        if let Some(f) = f.take() {
            out = Some(f(txn));
        }
        Ok(())
    })?;
    out.unwrap_or_else(|| Err(StoreError::Aborted.into()))
}

/// Runs a write closure in one transaction. A domain error (`Err(Abort::Domain)`) rolls the
/// transaction back and is returned as-is; success commits durably before returning.
pub async fn write<T, E>(
    store: &dyn Store,
    f: impl FnOnce(&mut dyn WriteTxn) -> Result<T, Abort<E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let slot = std::sync::Arc::new(parking_lot::Mutex::new(None::<Result<T, Abort<E>>>));
    let inner = slot.clone();
    let job: WriteJob = Box::new(move |txn| {
        let r = f(txn);
        let failed = r.is_err();
        *inner.lock() = Some(r);
        if failed {
            Err(StoreError::Aborted)
        } else {
            Ok(())
        }
    });
    let committed = store.write(job).await;
    let outcome = slot.lock().take();
    match (committed, outcome) {
        (Ok(()), Some(Ok(v))) => Ok(v),
        (_, Some(Err(Abort::Domain(e)))) => Err(e),
        (_, Some(Err(Abort::Store(e)))) => Err(e.into()),
        (Err(e), _) => Err(e.into()),
        (Ok(()), None) => Err(StoreError::Aborted.into()),
    }
}
