//! The in-memory copy of every document that stores serve reads from: control-plane state is
//! small, and a map lookup costs well under a microsecond where a database read costs tens. A
//! store's writer (or, for PostgreSQL, the follower of other replicas' changes) applies
//! committed changes to it under one lock, so readers see whole commits.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::{ReadTxn, Record, StoreError};

/// Collection → key → document: the committed state, as readers see it. The key maps are
/// persistent (structure shared between versions), so a snapshot costs a clone of the few
/// collection handles: readers copy one out under a short lock and scan without it, and the
/// writer builds the next version beside them instead of waiting for their scans.
pub(crate) type Documents = HashMap<String, imbl::OrdMap<String, Arc<[u8]>>>;

/// One change a job made, applied to [`Documents`] once its group has committed.
pub(crate) enum Change {
    Put(String, String, Arc<[u8]>),
    Delete(String, String),
}

/// The smallest text above every key that starts with `prefix`, for a database's range scan.
pub(crate) fn prefix_upper(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// Applies committed changes, in order, to the copy readers see.
pub(crate) fn apply(docs: &RwLock<Arc<Documents>>, changes: Vec<Change>) {
    if changes.is_empty() {
        return;
    }
    let mut next: Documents = (**docs.read()).clone();
    for change in changes {
        match change {
            Change::Put(c, k, v) => {
                next.entry(c).or_default().insert(k, v);
            }
            Change::Delete(c, k) => {
                if let Some(m) = next.get_mut(&c) {
                    m.remove(&k);
                }
            }
        }
    }
    *docs.write() = Arc::new(next);
}

/// A read snapshot of the in-memory copy.
pub(crate) struct Snapshot<'a>(pub(crate) &'a Documents);

fn in_range<'a>(
    docs: &'a Documents,
    collection: &str,
    prefix: &str,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a String, &'a Arc<[u8]>)> {
    let start = match after {
        Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_string()),
        _ => std::ops::Bound::Included(prefix.to_string()),
    };
    let prefix = prefix.to_string();
    docs.get(collection)
        .into_iter()
        .flat_map(move |m| m.range((start.clone(), std::ops::Bound::Unbounded)))
        .take_while(move |(k, _)| k.starts_with(&prefix))
}

impl ReadTxn for Snapshot<'_> {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .0
            .get(collection)
            .and_then(|m| m.get(key))
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        Ok(in_range(self.0, collection, prefix, after)
            .take(limit)
            .map(|(k, v)| Record {
                key: k.clone(),
                value: v.to_vec(),
            })
            .collect())
    }

    fn count(&self, collection: &str, prefix: &str) -> Result<u64, StoreError> {
        Ok(in_range(self.0, collection, prefix, None).count() as u64)
    }
}
