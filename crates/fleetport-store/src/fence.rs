//! Fencing tokens for the work that must run once over all replicas. A replica's singleton
//! loops run inside [`fenced`] with the leader epoch it won; every store write they make
//! carries that epoch, and a store shared by replicas commits it only while that epoch still
//! holds the lease (PostgreSQL checks the lease row inside the write's transaction). A leader
//! that was paused or cut off and has lost the lease without noticing therefore cannot
//! overwrite what its successor decided: its writes fail with [`crate::StoreError::Fenced`].
//! A store only one process writes (SQLite) has nothing to fence and ignores the token.

use std::future::Future;

tokio::task_local! {
    static EPOCH: i64;
}

/// Runs `work` with every store write it makes fenced by `epoch`.
pub async fn fenced<F: Future>(epoch: i64, work: F) -> F::Output {
    EPOCH.scope(epoch, work).await
}

/// The epoch the current task's writes carry, if it runs fenced.
pub fn current() -> Option<i64> {
    EPOCH.try_with(|e| *e).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_epoch_is_seen_inside_only() {
        assert_eq!(current(), None);
        assert_eq!(fenced(7, async { current() }).await, Some(7));
        assert_eq!(current(), None);
    }
}
