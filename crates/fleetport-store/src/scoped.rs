//! One tenant's view of a shared store. Every collection a tenant's services name is stored as
//! `@<tenant>/<collection>`, so a service handed a [`Scoped`] store cannot read or write another
//! tenant's documents, and no handler has to remember the tenant. A scope with no prefix is the
//! store itself: the default tenant keeps the unprefixed collections older data directories
//! already hold, which is what makes opening them a migration with nothing to move.

use std::sync::Arc;

use crate::{BoxFuture, ReadTxn, Record, Store, StoreError, WriteJob, WriteTxn};

/// A store whose collections are those of one tenant.
pub struct Scoped {
    inner: Arc<dyn Store>,
    /// `@<tenant>/`, or empty for the default tenant.
    prefix: String,
}

impl Scoped {
    /// The view of `tenant` (any text without `/` at either end, such as `123456789012/eu-west-1`);
    /// `None` is the default tenant, which sees the unprefixed collections.
    pub fn new(inner: Arc<dyn Store>, tenant: Option<&str>) -> Self {
        let prefix = tenant.map(|t| format!("@{t}/")).unwrap_or_default();
        Self { inner, prefix }
    }

    fn name(prefix: &str, collection: &str) -> String {
        format!("{prefix}{collection}")
    }
}

struct ScopedRead<'a> {
    txn: &'a dyn ReadTxn,
    prefix: &'a str,
}

impl ReadTxn for ScopedRead<'_> {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.txn.get(&Scoped::name(self.prefix, collection), key)
    }

    fn scan(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.txn
            .scan(&Scoped::name(self.prefix, collection), prefix, after, limit)
    }

    fn count(&self, collection: &str, prefix: &str) -> Result<u64, StoreError> {
        self.txn
            .count(&Scoped::name(self.prefix, collection), prefix)
    }
}

struct ScopedWrite<'a> {
    txn: &'a mut dyn WriteTxn,
    prefix: &'a str,
}

impl ScopedWrite<'_> {
    fn reads(&self) -> ScopedRead<'_> {
        ScopedRead {
            txn: &*self.txn,
            prefix: self.prefix,
        }
    }
}

impl ReadTxn for ScopedWrite<'_> {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.reads().get(collection, key)
    }

    fn scan(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.reads().scan(collection, prefix, after, limit)
    }

    fn count(&self, collection: &str, prefix: &str) -> Result<u64, StoreError> {
        self.reads().count(collection, prefix)
    }
}

impl WriteTxn for ScopedWrite<'_> {
    fn put(&mut self, collection: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.txn
            .put(&Scoped::name(self.prefix, collection), key, value)
    }

    fn delete(&mut self, collection: &str, key: &str) -> Result<bool, StoreError> {
        self.txn.delete(&Scoped::name(self.prefix, collection), key)
    }
}

impl Store for Scoped {
    fn read(
        &self,
        f: &mut dyn FnMut(&dyn ReadTxn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.prefix.is_empty() {
            return self.inner.read(f);
        }
        let prefix = self.prefix.as_str();
        self.inner.read(&mut |txn| f(&ScopedRead { txn, prefix }))
    }

    fn write(&self, job: WriteJob) -> BoxFuture<'static, Result<(), StoreError>> {
        if self.prefix.is_empty() {
            return self.inner.write(job);
        }
        let prefix = self.prefix.clone();
        self.inner.write(Box::new(move |txn| {
            job(&mut ScopedWrite {
                txn,
                prefix: &prefix,
            })
        }))
    }

    fn remote_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.remote_changes()
    }

    /// Resets the whole store, every tenant's part included: a reset is the test suite's,
    /// never one tenant's.
    fn reset(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::{ReadTxnExt, WriteTxnExt, read, write};

    async fn put(store: &dyn Store, key: &'static str, value: &'static str) {
        write::<_, StoreError>(store, move |t| {
            Ok(t.put_json("ecs.cluster", key, &value)?)
        })
        .await
        .unwrap();
    }

    fn all(store: &dyn Store) -> Vec<(String, String)> {
        read::<_, StoreError>(store, |t| t.scan_json("ecs.cluster", "", None, 100)).unwrap()
    }

    #[tokio::test]
    async fn tenants_see_only_their_own_documents_and_the_default_sees_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let base: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        // Written before tenancy existed.
        put(&*base, "demo", "old").await;
        let default = Scoped::new(base.clone(), None);
        let a = Scoped::new(base.clone(), Some("111111111111/us-east-1"));
        let b = Scoped::new(base.clone(), Some("111111111111/eu-west-1"));
        put(&a, "demo", "a").await;
        put(&b, "demo", "b").await;
        put(&b, "other", "b2").await;
        assert_eq!(all(&default), vec![("demo".into(), "old".into())]);
        assert_eq!(all(&a), vec![("demo".into(), "a".into())]);
        assert_eq!(
            all(&b),
            vec![("demo".into(), "b".into()), ("other".into(), "b2".into())]
        );
        assert_eq!(
            read::<_, StoreError>(&a, |t| t.count("ecs.cluster", "")).unwrap(),
            1
        );
        write::<_, StoreError>(&b, |t| Ok(t.delete("ecs.cluster", "demo")?))
            .await
            .unwrap();
        assert_eq!(all(&a), vec![("demo".into(), "a".into())]);
        assert_eq!(all(&b), vec![("other".into(), "b2".into())]);
    }
}
