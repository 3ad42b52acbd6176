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
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Transaction};
use tokio::sync::oneshot;

use crate::cache::{Change, Documents, Snapshot};
use crate::{BoxFuture, ReadTxn, Record, Store, StoreError, WriteJob, WriteTxn};

/// The advisory lock every writer takes: one number for the whole store.
const WRITE_LOCK: i64 = 0x666c_6565_7470_6f72; // "fleetpor"

/// Keep this many revisions of the change log; a replica further behind reloads everything.
const KEEP_REVISIONS: i64 = 100_000;

/// At most this many queued jobs share one transaction.
const MAX_GROUP: usize = 256;

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
"#;

enum Command {
    Write(WriteJob, oneshot::Sender<Result<(), StoreError>>),
    Reset(oneshot::Sender<Result<(), StoreError>>),
}

fn backend(e: postgres::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The copy readers see and the revision it reflects.
struct Follow {
    docs: Arc<RwLock<Arc<Documents>>>,
    /// The last revision applied to `docs`; held while applying, so changes apply in order.
    cursor: Mutex<i64>,
}

pub struct PgStore {
    tx: Mutex<Option<mpsc::Sender<Command>>>,
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
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut listener = config.connect(NoTls).map_err(backend)?;
        listener
            .batch_execute("LISTEN fleetport_changes")
            .map_err(backend)?;
        let (tx, rx) = mpsc::channel();
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
            tx: Mutex::new(Some(tx)),
            follow,
            stop,
            threads: Mutex::new(vec![writer, follower]),
        })
    }

    /// The last revision this replica's copy reflects.
    pub fn revision(&self) -> i64 {
        *self.follow.cursor.lock()
    }

    fn send(&self, cmd: Command) -> Result<(), StoreError> {
        match self.tx.lock().as_ref() {
            Some(tx) => tx.send(cmd).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    /// Stops the writer after the queued jobs are done, and the follower.
    pub fn close(&self) {
        self.tx.lock().take();
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

/// The session lock a control plane holds on its database until leader election for the
/// singleton loops exists (one number, apart from [`WRITE_LOCK`]).
const SOLE_CONTROL_PLANE: i64 = 0x666c_6565_7470_6f73;

/// Proof that this process is the only control plane on its database: a session lock, held
/// by a connection of its own and released when dropped (or when the process dies).
pub struct SoleControlPlane(#[allow(dead_code)] Client);

impl PgStore {
    /// Claims the database for this control plane. The service scheduler, health checks and
    /// other loops that must run once would run twice beside another `fleetport up`, so until
    /// they elect a leader a second one is refused. Blocking.
    pub fn claim_sole_control_plane(url: &str) -> Result<SoleControlPlane, StoreError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Backend(format!("the store URL: {e}")))?;
        let mut client = config.connect(NoTls).map_err(backend)?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&SOLE_CONTROL_PLANE])
            .map_err(backend)?
            .get(0);
        if !got {
            return Err(StoreError::Backend(
                "another fleetport up already runs on this database; several control planes on one database are not supported yet".into(),
            ));
        }
        Ok(SoleControlPlane(client))
    }
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
        for row in rows {
            let collection: String = row.get(1);
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
    rx: mpsc::Receiver<Command>,
    follow: &Follow,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut writes = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Write(job, reply) => writes.push((job, reply)),
                Command::Reset(reply) => {
                    commit_group(&mut client, &config, std::mem::take(&mut writes), follow);
                    let r = reconnect(&mut client, &config)
                        .and_then(|()| reset(&mut client))
                        .and_then(|()| catch_up(&mut client, follow));
                    let _ = reply.send(r);
                }
            }
        }
        commit_group(&mut client, &config, writes, follow);
    }
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

fn commit_group(
    client: &mut Client,
    config: &postgres::Config,
    writes: Vec<(WriteJob, Reply)>,
    follow: &Follow,
) {
    if writes.is_empty() {
        return;
    }
    if let Err(e) = reconnect(client, config) {
        for (_, reply) in writes {
            let _ = reply.send(Err(StoreError::Backend(e.to_string())));
        }
        return;
    }
    let mut outcomes = Vec::with_capacity(writes.len());
    let committed = run_group(client, writes, &mut outcomes);
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
    writes: Vec<(WriteJob, Reply)>,
    outcomes: &mut Vec<(Result<(), StoreError>, Reply)>,
) -> Result<(), StoreError> {
    let mut txn = match client.transaction() {
        Ok(t) => t,
        Err(e) => {
            outcomes.extend(writes.into_iter().map(|(_, r)| (Ok(()), r)));
            return Err(backend(e));
        }
    };
    if let Err(e) = txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]) {
        outcomes.extend(writes.into_iter().map(|(_, r)| (Ok(()), r)));
        return Err(backend(e));
    }
    let mut changes: Vec<(String, String, Option<Vec<u8>>)> = Vec::new();
    let mut broken = None;
    for (job, reply) in writes {
        if broken.is_some() {
            outcomes.push((Ok(()), reply));
            continue;
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
    if !changes.is_empty() {
        log_changes(&mut txn, changes)?;
    }
    txn.commit().map_err(backend)
}

/// Appends the changes to the log with the next revisions, and announces the last one.
fn log_changes(
    txn: &mut Transaction<'_>,
    changes: Vec<(String, String, Option<Vec<u8>>)>,
) -> Result<(), StoreError> {
    let mut rev: i64 = txn
        .query_one("SELECT value FROM fleetport_meta WHERE name = 'rev'", &[])
        .map_err(backend)?
        .get(0);
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
    Ok(())
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

fn reset(client: &mut Client) -> Result<(), StoreError> {
    let mut txn = client.transaction().map_err(backend)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .map_err(backend)?;
    txn.batch_execute("DELETE FROM fleetport_doc; DELETE FROM fleetport_change;")
        .map_err(backend)?;
    // The empty collection marks the reset in the log, for the other replicas' copies.
    log_changes(&mut txn, vec![(String::new(), String::new(), None)])?;
    txn.commit().map_err(backend)
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

fn prefix_upper(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
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
                &[&collection, &prefix, &prefix_upper(prefix), &after.unwrap_or(""), &limit],
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
                &[&collection, &prefix, &prefix_upper(prefix)],
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
    fn read(
        &self,
        f: &mut dyn FnMut(&dyn ReadTxn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let docs = self.follow.docs.read().clone();
        f(&Snapshot(&docs))
    }

    fn write(&self, job: WriteJob) -> BoxFuture<'static, Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::Write(job, reply));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn reset(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::Reset(reply));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}
