//! References between resources that different services own (a listener serving an ACM
//! certificate; later a task using a role, an instance in a security group), checked where they
//! are made and where they are broken, each inside that side's own transaction. Neither service
//! reads the other's records: the owner declares its resource here when it creates it and
//! retires it when it deletes it; a referrer links to a declared resource and unlinks.
//!
//! Store writes are serialised, so a retire that finds no referrer and a link that finds the
//! resource declared can never both commit: a delete cannot race past a new use, nor a use
//! past a delete. Keys: `<target>\n` declares a resource, `<target>\n<referrer>` is one use.

use crate::{ReadTxn, StoreError, WriteTxn};

pub const REFS: &str = "refs";

fn declared_key(target: &str) -> String {
    format!("{target}\n")
}

fn use_key(target: &str, referrer: &str) -> String {
    format!("{target}\n{referrer}")
}

/// Why a reference could not be made or a resource not retired.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{target} is in use by {referrers:?}")]
    InUse {
        target: String,
        referrers: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Declares that `target` exists and may be referred to (writing nothing if it already is).
pub fn declare(txn: &mut dyn WriteTxn, target: &str) -> Result<(), StoreError> {
    put_once(txn, &declared_key(target))
}

/// Records have no content: one that exists is not written again, so declaring or linking at
/// every start costs reads only.
fn put_once(txn: &mut dyn WriteTxn, key: &str) -> Result<(), StoreError> {
    if txn.get(REFS, key)?.is_none() {
        txn.put(REFS, key, b"")?;
    }
    Ok(())
}

/// Whether `target` is declared.
pub fn declared(txn: &dyn ReadTxn, target: &str) -> Result<bool, StoreError> {
    Ok(txn.get(REFS, &declared_key(target))?.is_some())
}

/// What refers to `target`.
pub fn referrers(txn: &dyn ReadTxn, target: &str) -> Result<Vec<String>, StoreError> {
    let prefix = declared_key(target);
    Ok(txn
        .scan(REFS, &prefix, None, usize::MAX)?
        .into_iter()
        .filter_map(|r| r.key.strip_prefix(&prefix).map(String::from))
        .filter(|r| !r.is_empty())
        .collect())
}

/// Retires `target` unless something still refers to it.
pub fn retire(txn: &mut dyn WriteTxn, target: &str) -> Result<(), RefError> {
    let users = referrers(txn, target)?;
    if !users.is_empty() {
        return Err(RefError::InUse {
            target: target.to_string(),
            referrers: users,
        });
    }
    txn.delete(REFS, &declared_key(target))?;
    Ok(())
}

/// Records that `referrer` uses `target`, which must be declared.
pub fn link(txn: &mut dyn WriteTxn, target: &str, referrer: &str) -> Result<(), RefError> {
    if !declared(txn, target)? {
        return Err(RefError::Missing(target.to_string()));
    }
    put_once(txn, &use_key(target, referrer))?;
    Ok(())
}

/// Records that `referrer` no longer uses `target`.
pub fn unlink(txn: &mut dyn WriteTxn, target: &str, referrer: &str) -> Result<(), StoreError> {
    txn.delete(REFS, &use_key(target, referrer)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::{Abort, write};

    type Job = Box<dyn FnOnce(&mut dyn WriteTxn) -> Result<(), RefError> + Send>;

    #[tokio::test]
    async fn links_need_a_declared_target_and_retire_needs_no_referrer() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path()).unwrap();
        let run = |f: Job| write(&s, move |txn| f(txn).map_err(Abort::Domain));
        assert!(matches!(
            run(Box::new(|t| link(t, "cert", "l1"))).await,
            Err(RefError::Missing(_))
        ));
        run(Box::new(|t| declare(t, "cert").map_err(RefError::from)))
            .await
            .unwrap();
        run(Box::new(|t| link(t, "cert", "l1"))).await.unwrap();
        assert!(matches!(
            run(Box::new(|t| retire(t, "cert"))).await,
            Err(RefError::InUse { referrers, .. }) if referrers == ["l1"]
        ));
        run(Box::new(|t| {
            unlink(t, "cert", "l1").map_err(RefError::from)
        }))
        .await
        .unwrap();
        run(Box::new(|t| retire(t, "cert"))).await.unwrap();
        assert!(matches!(
            run(Box::new(|t| link(t, "cert", "l2"))).await,
            Err(RefError::Missing(_))
        ));
    }
}
