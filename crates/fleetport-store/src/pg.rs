//! The PostgreSQL store, for several control-plane replicas on one database. It keeps the
//! guarantees of [`crate::sqlite::SqliteStore`] across processes:
//!
//! - **Writes are serialised across all replicas**: every group of jobs runs in one transaction
//!   that first takes a transaction-scoped advisory lock (`pg_advisory_xact_lock`), so write jobs
//!   (synchronous closures that read and write inside their transaction) see a serial world, as
//!   they do with SQLite's single writer, and never need a retry. The lock is released by the
//!   commit, never held by a session that could outlive its owner (so no stale lock survives a
//!   dead replica). Each job runs in its own savepoint: a failing job rolls back alone.
//! - **A change log with gap-free revisions**: each change gets the next revision (allocated
//!   under the lock, so revisions become visible in commit order) in `fleetport_change`, written
//!   in the same transaction as the document, and the commit sends `NOTIFY fleetport_changes`.
//! - **Reads from the in-memory copy** ([`crate::cache`]), kept fresh by applying the change log
//!   in order: by the writer right after its own commit (so a replica reads its own
//!   acknowledged writes), and by a follower thread for other replicas' changes, woken by the
//!   notification and polling every second regardless (a notification lost while disconnected
//!   costs at most a second). A copy whose revision the log no longer holds (compacted) is
//!   reloaded whole. Another replica's write is visible here within about a second; a client
//!   that needs to read its own write must read from the replica it wrote to.
//!
//! The blocking client runs on the store's own threads, never on the async runtime.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Transaction};

use crate::cache::{Change, Documents, Snapshot};
use crate::queue::{Queued, Reply, Step};
use crate::{BoxFuture, ReadTxn, Record, Store, StoreError, WriteJob, WriteTxn};

/// The advisory lock every writer takes: one number for the whole store.
const WRITE_LOCK: i64 = 0x666c_6565_7470_6f72; // "fleetpor"

/// Keep this many revisions of the change log; a replica further behind reloads everything.
const KEEP_REVISIONS: i64 = 100_000;

/// How often the follower looks for other replicas' changes without a notification.
const POLL: Duration = Duration::from_secs(1);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS fleetport_doc (
    collection text NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE TABLE IF NOT EXISTS fleetport_change (
    rev bigint PRIMARY KEY,
    collection text NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea
);
CREATE TABLE IF NOT EXISTS fleetport_meta (
    name text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO fleetport_meta (name, value) VALUES ('rev', 0), ('compacted', 0)
    ON CONFLICT (name) DO NOTHING;
CREATE TABLE IF NOT EXISTS fleetport_lease (
    name text PRIMARY KEY,
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
"#;

/// A leader's lease lasts this long on the database's clock from its last renewal.
const LEASE_SECS: f64 = 4.0;
/// Leaders renew, and others try to take an expired lease, this often.
const LEASE_EVERY: Duration = Duration::from_secs(1);
/// A leader that could not renew for this long steps down by itself, before its lease can
/// expire on the database and another replica take over (clocks run at about the same rate;
/// their offsets do not matter, since each side only measures its own intervals).
const STEP_DOWN_AFTER: Duration = Duration::from_millis(2500);

fn backend(e: postgres::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The copy readers see and the revision it reflects.
struct Follow {
    docs: Arc<RwLock<Arc<Documents>>>,
    /// The last revision applied to `docs`; held while applying, so changes apply in order.
    cursor: Mutex<i64>,
    /// Revisions this process committed and has not applied yet (they are not remote).
    own: Mutex<std::collections::BTreeSet<i64>>,
    /// Moves when another process's changes were applied.
    remote: tokio::sync::watch::Sender<u64>,
    /// The collections another process changed since [`Store::take_remote_collections`] last
    /// looked (the empty name: everything, after a reset or a reload).
    touched: Mutex<std::collections::BTreeSet<String>>,
}

pub struct PgStore {
    queue: crate::queue::Queue,
    follow: Arc<Follow>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects (`postgres://user@host:port/db` or `host=… user=… dbname=…`), creates the tables
    /// if needed, loads every document and starts the writer and the follower. Blocking: call
    /// it before the async runtime starts, or from a blocking task.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Backend(format!("the store URL: {e}")))?;
        let mut client = config.connect(NoTls).map_err(backend)?;
        {
            let mut txn = client.transaction().map_err(backend)?;
            txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                .map_err(backend)?;
            txn.batch_execute(SCHEMA).map_err(backend)?;
            txn.commit().map_err(backend)?;
        }
        let (docs, rev) = load(&mut client)?;
        let follow = Arc::new(Follow {
            docs: Arc::new(RwLock::new(Arc::new(docs))),
            cursor: Mutex::new(rev),
            own: Mutex::default(),
            remote: tokio::sync::watch::Sender::new(0),
            touched: Mutex::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut listener = config.connect(NoTls).map_err(backend)?;
        listener
            .batch_execute("LISTEN fleetport_changes")
            .map_err(backend)?;
        let (queue, rx) = crate::queue::channel();
        let writer_follow = follow.clone();
        let writer_config = config.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(client, writer_config, rx, &writer_follow))
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        let follower_follow = follow.clone();
        let follower_stop = stop.clone();
        let follower = std::thread::Builder::new()
            .name("store-follower".into())
            .spawn(move || follower_loop(listener, config, &follower_follow, &follower_stop))
            .map_err(|e| StoreError::Backend(format!("starting the follower thread: {e}")))?;
        Ok(Self {
            queue,
            follow,
            stop,
            threads: Mutex::new(vec![writer, follower]),
        })
    }

    /// The last revision this replica's copy reflects.
    pub fn revision(&self) -> i64 {
        *self.follow.cursor.lock()
    }

    /// Stops the writer after the queued jobs are done, and the follower.
    pub fn close(&self) {
        self.queue.close();
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Leadership of the work that must run once over all replicas (the service scheduler, expiry,
/// garbage collection, the managed capacity): a lease row renewed on the database's clock, not
/// a session lock, so a leader cut off from the database loses it by time alone. Each new
/// leader gets the next epoch.
pub struct Leadership {
    rx: tokio::sync::watch::Receiver<Option<i64>>,
    /// The newest epoch seen in the lease row, whoever holds it.
    seen: tokio::sync::watch::Receiver<i64>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Leadership {
    /// Takes part in the election as `holder` (unique per process). Blocking.
    pub fn join(url: &str, holder: &str) -> Result<Self, StoreError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Backend(format!("the store URL: {e}")))?;
        let mut client = config.connect(NoTls).map_err(backend)?;
        client.batch_execute(SCHEMA).map_err(backend)?;
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (seen_tx, seen) = tokio::sync::watch::channel(0);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let holder = holder.to_string();
        let thread = std::thread::Builder::new()
            .name("store-lease".into())
            .spawn(move || {
                lease_loop(client, &config, &holder, &tx, &seen_tx, &thread_stop);
            })
            .map_err(|e| StoreError::Backend(format!("starting the lease thread: {e}")))?;
        Ok(Self {
            rx,
            seen,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The epoch while this process leads, None otherwise.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<i64>> {
        self.rx.clone()
    }

    /// The newest leader epoch seen on the database, this replica's or another's. It stops
    /// moving while the database cannot be reached.
    pub fn epochs(&self) -> tokio::sync::watch::Receiver<i64> {
        self.seen.clone()
    }

    /// Gives the lease up (so another replica takes over at once) and stops. Blocking.
    pub fn resign(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.resign();
    }
}

fn lease_loop(
    mut client: Client,
    config: &postgres::Config,
    holder: &str,
    tx: &tokio::sync::watch::Sender<Option<i64>>,
    seen: &tokio::sync::watch::Sender<i64>,
    stop: &AtomicBool,
) {
    let mut renewed = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let leading = *tx.borrow();
        let attempt = reconnect(&mut client, config).and_then(|()| match leading {
            Some(epoch) => client
                .query_opt(
                    "UPDATE fleetport_lease SET expires_at = now() + make_interval(secs => $3) \
                     WHERE name = 'leader' AND holder = $1 AND epoch = $2 AND expires_at > now() RETURNING epoch",
                    &[&holder, &epoch, &LEASE_SECS],
                )
                .map_err(backend),
            None => client
                .query_opt(
                    "INSERT INTO fleetport_lease (name, holder, epoch, expires_at) \
                     VALUES ('leader', $1, 1, now() + make_interval(secs => $2)) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     epoch = fleetport_lease.epoch + 1, expires_at = excluded.expires_at \
                     WHERE fleetport_lease.expires_at <= now() RETURNING epoch",
                    &[&holder, &LEASE_SECS],
                )
                .map_err(backend),
        });
        match (leading, attempt) {
            (_, Ok(Some(row))) => {
                renewed = std::time::Instant::now();
                let epoch: i64 = row.get(0);
                note_epoch(seen, epoch);
                if leading != Some(epoch) {
                    tracing::info!(epoch, "this replica leads now");
                    tx.send_replace(Some(epoch));
                }
            }
            (Some(epoch), Ok(None)) => {
                tracing::warn!(epoch, "lost the lease to another replica");
                tx.send_replace(None);
            }
            (Some(epoch), Err(e)) if renewed.elapsed() >= STEP_DOWN_AFTER => {
                tracing::warn!(epoch, error = %e, "cannot renew the lease: stepping down");
                tx.send_replace(None);
            }
            (_, Err(e)) => tracing::debug!(error = %e, "lease attempt failed"),
            // Another replica leads: its epoch is what agents' assignments carry from here.
            (None, Ok(None)) => {
                if let Ok(Some(row)) = client.query_opt(
                    "SELECT epoch FROM fleetport_lease WHERE name = 'leader'",
                    &[],
                ) {
                    note_epoch(seen, row.get(0));
                }
            }
        }
        std::thread::sleep(LEASE_EVERY);
    }
    if let Some(epoch) = *tx.borrow() {
        let _ = client.execute(
            "UPDATE fleetport_lease SET expires_at = now() WHERE name = 'leader' AND holder = $1 AND epoch = $2",
            &[&holder, &epoch],
        );
    }
    tx.send_replace(None);
}

/// Remembers `epoch` if it is the newest seen.
fn note_epoch(seen: &tokio::sync::watch::Sender<i64>, epoch: i64) {
    seen.send_if_modified(|e| {
        let newer = epoch > *e;
        *e = (*e).max(epoch);
        newer
    });
}

/// Every document and the revision they are at, read in one snapshot.
fn load(client: &mut Client) -> Result<(Documents, i64), StoreError> {
    let mut txn = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(backend)?;
    let rev: i64 = txn
        .query_one("SELECT value FROM fleetport_meta WHERE name = 'rev'", &[])
        .map_err(backend)?
        .get(0);
    let mut docs = Documents::new();
    for row in txn
        .query("SELECT collection, key, value FROM fleetport_doc", &[])
        .map_err(backend)?
    {
        let (collection, key, value): (String, String, Vec<u8>) =
            (row.get(0), row.get(1), row.get(2));
        docs.entry(collection)
            .or_default()
            .insert(key, value.into());
    }
    txn.commit().map_err(backend)?;
    Ok((docs, rev))
}

/// Applies the change log after this copy's revision, in order (the whole copy again when the
/// log no longer reaches back that far).
fn catch_up(client: &mut Client, follow: &Follow) -> Result<(), StoreError> {
    let mut cursor = follow.cursor.lock();
    loop {
        let compacted: i64 = client
            .query_one(
                "SELECT value FROM fleetport_meta WHERE name = 'compacted'",
                &[],
            )
            .map_err(backend)?
            .get(0);
        if *cursor < compacted {
            let (docs, rev) = load(client)?;
            *follow.docs.write() = Arc::new(docs);
            *cursor = rev;
            follow.own.lock().clear();
            follow.touched.lock().insert(String::new());
            follow.remote.send_modify(|n| *n = n.wrapping_add(1));
            tracing::info!(
                revision = rev,
                "reloaded the whole state: the change log had moved past this replica"
            );
            continue;
        }
        let rows = client
            .query(
                "SELECT rev, collection, key, value FROM fleetport_change WHERE rev > $1 ORDER BY rev LIMIT 10000",
                &[&*cursor],
            )
            .map_err(backend)?;
        let Some(last) = rows.last().map(|r| r.get::<_, i64>(0)) else {
            return Ok(());
        };
        let mut changes = Vec::with_capacity(rows.len());
        let mut remote = false;
        for row in rows {
            let rev: i64 = row.get(0);
            let collection: String = row.get(1);
            if !follow.own.lock().remove(&rev) {
                remote = true;
                follow.touched.lock().insert(collection.clone());
            }
            let key: String = row.get(2);
            let value: Option<Vec<u8>> = row.get(3);
            if collection.is_empty() {
                // A reset: everything before it is gone.
                changes.clear();
                *follow.docs.write() = Arc::new(Documents::new());
                continue;
            }
            changes.push(match value {
                Some(v) => Change::Put(collection, key, v.into()),
                None => Change::Delete(collection, key),
            });
        }
        crate::cache::apply(&follow.docs, changes);
        *cursor = last;
        if remote {
            follow.remote.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

fn reconnect(client: &mut Client, config: &postgres::Config) -> Result<(), StoreError> {
    if client.is_closed() {
        *client = config.connect(NoTls).map_err(backend)?;
    }
    Ok(())
}

fn writer_loop(
    mut client: Client,
    config: postgres::Config,
    rx: crate::queue::Receiver,
    follow: &Follow,
) {
    rx.serve(|step| match step {
        Step::Commit(writes) => commit_group(&mut client, &config, writes, follow),
        Step::Reset(reply) => {
            let r = reconnect(&mut client, &config)
                .and_then(|()| reset(&mut client, follow))
                .and_then(|()| catch_up(&mut client, follow));
            if r.is_ok() {
                crate::after_reset();
            }
            let _ = reply.send(r);
        }
    });
}

fn commit_group(
    client: &mut Client,
    config: &postgres::Config,
    writes: Vec<Queued>,
    follow: &Follow,
) {
    if writes.is_empty() {
        return;
    }
    if let Err(e) = reconnect(client, config) {
        for Queued { reply, .. } in writes {
            let _ = reply.send(Err(StoreError::Backend(e.to_string())));
        }
        return;
    }
    let mut outcomes = Vec::with_capacity(writes.len());
    let committed = run_group(client, writes, &mut outcomes, follow);
    if committed.is_ok() {
        // This replica reads its own acknowledged writes: apply the log (ours, and any other
        // replica's before it) before answering.
        if let Err(e) = catch_up(client, follow) {
            tracing::warn!(error = %e, "could not apply the change log after a commit");
        }
    }
    for (outcome, reply) in outcomes {
        let r = match (&committed, outcome) {
            (Ok(()), r) => r,
            (Err(e), Ok(())) => Err(StoreError::Backend(e.to_string())),
            (Err(_), Err(e)) => Err(e),
        };
        let _ = reply.send(r);
    }
}

/// Runs the jobs in one transaction under the write lock; records each job's outcome.
fn run_group(
    client: &mut Client,
    writes: Vec<Queued>,
    outcomes: &mut Vec<(Result<(), StoreError>, Reply)>,
    follow: &Follow,
) -> Result<(), StoreError> {
    let mut txn = match client.transaction() {
        Ok(t) => t,
        Err(e) => {
            outcomes.extend(writes.into_iter().map(|q| (Ok(()), q.reply)));
            return Err(backend(e));
        }
    };
    if let Err(e) = txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]) {
        outcomes.extend(writes.into_iter().map(|q| (Ok(()), q.reply)));
        return Err(backend(e));
    }
    let mut changes: Vec<(String, String, Option<Vec<u8>>)> = Vec::new();
    let mut broken = None;
    // The epochs found to hold the lease in this transaction (checked once each).
    let mut holding: Vec<i64> = Vec::new();
    for Queued { job, fence, reply } in writes {
        if broken.is_some() {
            outcomes.push((Ok(()), reply));
            continue;
        }
        if let Some(epoch) = fence
            && !holding.contains(&epoch)
        {
            match holds_lease(&mut txn, epoch) {
                Ok(true) => holding.push(epoch),
                Ok(false) => {
                    outcomes.push((Err(StoreError::Fenced(epoch)), reply));
                    continue;
                }
                Err(e) => {
                    broken = Some(e);
                    outcomes.push((Ok(()), reply));
                    continue;
                }
            }
        }
        match run_job(&mut txn, job) {
            Ok((outcome, mut made)) => {
                if outcome.is_ok() {
                    changes.append(&mut made);
                }
                outcomes.push((outcome, reply));
            }
            // The transaction itself failed (the connection, say): nothing commits.
            Err(e) => {
                broken = Some(e);
                outcomes.push((Ok(()), reply));
            }
        }
    }
    if let Some(e) = broken {
        return Err(e);
    }
    let revisions = if changes.is_empty() {
        None
    } else {
        Some(log_changes(&mut txn, changes)?)
    };
    commit_own(txn, revisions, follow)
}

/// Commits, and remembers the transaction's revisions as this process's own. The copy's cursor
/// is held across the commit, so the follower cannot apply them before they are known as ours
/// (and take them for another replica's).
fn commit_own(
    txn: Transaction<'_>,
    revisions: Option<std::ops::RangeInclusive<i64>>,
    follow: &Follow,
) -> Result<(), StoreError> {
    let cursor = follow.cursor.lock();
    txn.commit().map_err(backend)?;
    if let Some(r) = revisions {
        follow.own.lock().extend(r.filter(|rev| *rev > *cursor));
    }
    Ok(())
}

/// Whether `epoch` still holds an unexpired lease. The row stays share-locked until the
/// transaction ends, so a successor's takeover (an update of that row) waits for this commit:
/// a fenced write is either in before the new epoch begins or refused.
fn holds_lease(txn: &mut Transaction<'_>, epoch: i64) -> Result<bool, StoreError> {
    Ok(txn
        .query_opt(
            "SELECT 1 FROM fleetport_lease WHERE name = 'leader' AND epoch = $1 \
             AND expires_at > now() FOR SHARE",
            &[&epoch],
        )
        .map_err(backend)?
        .is_some())
}

/// Appends the changes to the log with the next revisions, and announces the last one.
fn log_changes(
    txn: &mut Transaction<'_>,
    changes: Vec<(String, String, Option<Vec<u8>>)>,
) -> Result<std::ops::RangeInclusive<i64>, StoreError> {
    let mut rev: i64 = txn
        .query_one("SELECT value FROM fleetport_meta WHERE name = 'rev'", &[])
        .map_err(backend)?
        .get(0);
    let first = rev + 1;
    let insert = txn
        .prepare(
            "INSERT INTO fleetport_change (rev, collection, key, value) VALUES ($1, $2, $3, $4)",
        )
        .map_err(backend)?;
    for (collection, key, value) in &changes {
        rev += 1;
        txn.execute(&insert, &[&rev, collection, key, value])
            .map_err(backend)?;
    }
    txn.execute(
        "UPDATE fleetport_meta SET value = $1 WHERE name = 'rev'",
        &[&rev],
    )
    .map_err(backend)?;
    // Old revisions go once the log is long enough; a replica further behind reloads.
    let compacted: i64 = txn
        .query_one(
            "SELECT value FROM fleetport_meta WHERE name = 'compacted'",
            &[],
        )
        .map_err(backend)?
        .get(0);
    if rev - compacted > 2 * KEEP_REVISIONS {
        let upto = rev - KEEP_REVISIONS;
        txn.execute("DELETE FROM fleetport_change WHERE rev <= $1", &[&upto])
            .map_err(backend)?;
        txn.execute(
            "UPDATE fleetport_meta SET value = $1 WHERE name = 'compacted'",
            &[&upto],
        )
        .map_err(backend)?;
    }
    txn.execute(
        "SELECT pg_notify('fleetport_changes', $1)",
        &[&rev.to_string()],
    )
    .map_err(backend)?;
    Ok(first..=rev)
}

/// Runs one job in a savepoint. The outer error is the transaction's own failure; the inner
/// result is the job's.
#[allow(clippy::type_complexity)]
fn run_job(
    txn: &mut Transaction<'_>,
    job: WriteJob,
) -> Result<
    (
        Result<(), StoreError>,
        Vec<(String, String, Option<Vec<u8>>)>,
    ),
    StoreError,
> {
    let savepoint = txn.savepoint("job").map_err(backend)?;
    let mut t = Txn {
        txn: RefCell::new(savepoint),
        changes: Vec::new(),
    };
    // A panicking job must not take the writer thread (and every later write) down with it.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut t)))
        .unwrap_or_else(|_| Err(StoreError::Backend("a write job panicked".into())));
    let Txn { txn, changes } = t;
    let savepoint = txn.into_inner();
    if r.is_ok() {
        savepoint.commit().map_err(backend)?;
        Ok((r, changes))
    } else {
        savepoint.rollback().map_err(backend)?;
        Ok((r, Vec::new()))
    }
}

fn reset(client: &mut Client, follow: &Follow) -> Result<(), StoreError> {
    let mut txn = client.transaction().map_err(backend)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .map_err(backend)?;
    txn.batch_execute("DELETE FROM fleetport_doc; DELETE FROM fleetport_change;")
        .map_err(backend)?;
    // The empty collection marks the reset in the log, for the other replicas' copies.
    let revisions = log_changes(&mut txn, vec![(String::new(), String::new(), None)])?;
    commit_own(txn, Some(revisions), follow)
}

fn follower_loop(mut client: Client, config: postgres::Config, follow: &Follow, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if client.is_closed() {
            match config.connect(NoTls) {
                Ok(mut c) => {
                    if c.batch_execute("LISTEN fleetport_changes").is_ok() {
                        client = c;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the store's follower cannot reach PostgreSQL; retrying");
                    std::thread::sleep(POLL);
                    continue;
                }
            }
        }
        // A notification is only a hint: whatever it says, the log is read after it.
        let _ = client.notifications().timeout_iter(POLL).next();
        let _ = client.notifications().iter().count();
        if let Err(e) = catch_up(&mut client, follow) {
            tracing::warn!(error = %e, "could not follow the other replicas' changes");
        }
    }
}

/// A write transaction: PostgreSQL is authoritative inside it (a job sees its own writes).
struct Txn<'a> {
    txn: RefCell<Transaction<'a>>,
    changes: Vec<(String, String, Option<Vec<u8>>)>,
}

impl ReadTxn for Txn<'_> {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .txn
            .borrow_mut()
            .query_opt(
                "SELECT value FROM fleetport_doc WHERE collection = $1 AND key = $2",
                &[&collection, &key],
            )
            .map_err(backend)?
            .map(|r| r.get(0)))
    }

    fn scan(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .txn
            .borrow_mut()
            .query(
                "SELECT key, value FROM fleetport_doc WHERE collection = $1 AND key >= $2 AND key < $3 AND key > $4 ORDER BY key LIMIT $5",
                &[&collection, &prefix, &crate::cache::prefix_upper(prefix), &after.unwrap_or(""), &limit],
            )
            .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|r| Record {
                key: r.get(0),
                value: r.get(1),
            })
            .collect())
    }

    fn count(&self, collection: &str, prefix: &str) -> Result<u64, StoreError> {
        let n: i64 = self
            .txn
            .borrow_mut()
            .query_one(
                "SELECT COUNT(*) FROM fleetport_doc WHERE collection = $1 AND key >= $2 AND key < $3",
                &[&collection, &prefix, &crate::cache::prefix_upper(prefix)],
            )
            .map_err(backend)?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl WriteTxn for Txn<'_> {
    fn put(&mut self, collection: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.txn
            .get_mut()
            .execute(
                "INSERT INTO fleetport_doc (collection, key, value) VALUES ($1, $2, $3) ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value",
                &[&collection, &key, &value],
            )
            .map_err(backend)?;
        self.changes
            .push((collection.into(), key.into(), Some(value.to_vec())));
        Ok(())
    }

    fn delete(&mut self, collection: &str, key: &str) -> Result<bool, StoreError> {
        let deleted = self
            .txn
            .get_mut()
            .execute(
                "DELETE FROM fleetport_doc WHERE collection = $1 AND key = $2",
                &[&collection, &key],
            )
            .map_err(backend)?
            > 0;
        if deleted {
            self.changes.push((collection.into(), key.into(), None));
        }
        Ok(deleted)
    }
}

impl Store for PgStore {
    fn remote_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.follow.remote.subscribe())
    }

    fn take_remote_collections(&self) -> Vec<String> {
        std::mem::take(&mut *self.follow.touched.lock())
            .into_iter()
            .collect()
    }

    fn read(
        &self,
        f: &mut dyn FnMut(&dyn ReadTxn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let docs = self.follow.docs.read().clone();
        f(&Snapshot(&docs))
    }

    fn write(&self, job: WriteJob) -> BoxFuture<'static, Result<(), StoreError>> {
        self.queue.write(job)
    }

    fn reset(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        self.queue.reset()
    }
}
