//! The queue between callers and a store's one writer thread, shared by both backends: jobs and
//! resets go in, the writer takes them in groups (many jobs, one commit) and answers each.

use std::sync::mpsc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{BoxFuture, StoreError, WriteJob};

/// At most this many queued jobs share one commit.
const MAX_GROUP: usize = 256;

/// Where a job's or a reset's outcome goes.
pub(crate) type Reply = oneshot::Sender<Result<(), StoreError>>;

enum Command {
    Write(Queued),
    Reset(Reply),
}

/// A write job as queued: with the leader epoch that fences it, if its caller runs fenced
/// ([`crate::fence`]), and where its outcome goes.
pub(crate) struct Queued {
    pub(crate) job: WriteJob,
    pub(crate) fence: Option<i64>,
    pub(crate) reply: Reply,
}

/// What the writer does next: commit a group of jobs, or reset (after the jobs queued before it).
pub(crate) enum Step {
    Commit(Vec<Queued>),
    Reset(Reply),
}

/// The callers' end; closing it lets the writer finish what is queued and stop.
#[derive(Debug)]
pub(crate) struct Queue(Mutex<Option<mpsc::Sender<Command>>>);

/// The writer's end.
pub(crate) struct Receiver(mpsc::Receiver<Command>);

pub(crate) fn channel() -> (Queue, Receiver) {
    let (tx, rx) = mpsc::channel();
    (Queue(Mutex::new(Some(tx))), Receiver(rx))
}

impl Queue {
    fn submit(
        &self,
        make: impl FnOnce(Reply) -> Command,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = match self.0.lock().as_ref() {
            Some(tx) => tx.send(make(reply)).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        };
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// Queues `job`, fenced by the caller's epoch if it has one.
    pub(crate) fn write(&self, job: WriteJob) -> BoxFuture<'static, Result<(), StoreError>> {
        let fence = crate::fence::current();
        self.submit(|reply| Command::Write(Queued { job, fence, reply }))
    }

    pub(crate) fn reset(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        self.submit(Command::Reset)
    }

    pub(crate) fn close(&self) {
        self.0.lock().take();
    }
}

impl Receiver {
    /// Runs the writer until the queue is closed and drained: each wake-up takes what is queued
    /// (up to a group's worth) and hands `step` the jobs in runs, with any reset in its place.
    pub(crate) fn serve(self, mut step: impl FnMut(Step)) {
        while let Ok(first) = self.0.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match self.0.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut writes = Vec::new();
            for cmd in batch {
                match cmd {
                    Command::Write(queued) => writes.push(queued),
                    Command::Reset(reply) => {
                        if !writes.is_empty() {
                            step(Step::Commit(std::mem::take(&mut writes)));
                        }
                        step(Step::Reset(reply));
                    }
                }
            }
            if !writes.is_empty() {
                step(Step::Commit(writes));
            }
        }
    }
}
