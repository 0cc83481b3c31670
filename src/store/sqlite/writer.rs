//! The group-commit writer: one thread drains the queue of writes into a
//! single transaction per batch, each write in a savepoint of its own, and
//! answers every caller only after the commit that holds its write. A write
//! is one boxed closure ([`Op`]) whose reply type is its own, so adding a
//! write to the store is adding one function that runs on a connection.
//!
//! Beside it, the checkpointer thread copies committed WAL frames into the
//! database file, so that a commit never waits for a checkpoint.

use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::guard::{self, Gate, Guard};
use super::{StoreError, db};

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 512;

/// Most payload bytes folded into one transaction. Big payloads (1 MB pushes)
/// commit in smaller batches, so that a batch fits the writer's page cache
/// (instead of spilling pages into the WAL and reading them back) and fewer
/// bodies wait in memory for one commit. Small deliveries still share fsyncs.
pub(super) const MAX_BATCH_BYTES: usize = 4 << 20;

/// How often the checkpointer thread copies committed WAL frames into the
/// database file. Checkpoints run beside the writer, so a commit (and the acks
/// waiting on it) never waits for one.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How a batch's commit reaches the disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Durability {
    /// fsync the WAL before anyone is answered: acknowledged deliveries,
    /// operator actions.
    Full,
    /// Commit without an fsync of its own: the dispatcher's bookkeeping
    /// (leases, attempt records). It survives a process crash like any
    /// commit (the WAL is in the OS's page cache) and reaches the disk with
    /// the next full commit or checkpoint; a power loss can lose the last
    /// ones, and those jobs then run again: at least once, never lost.
    Normal,
}

impl Durability {
    /// Full unless every write of the batch settles for Normal.
    fn of(batch: &[Box<dyn Write>]) -> Durability {
        if batch.iter().all(|w| w.how().durability == Durability::Normal) {
            Durability::Normal
        } else {
            Durability::Full
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "PRAGMA synchronous = FULL",
            Durability::Normal => "PRAGMA synchronous = NORMAL",
        }
    }
}

/// What a write must prove before it runs ([`Gate`]), how its commit
/// reaches the disk, and roughly how many bytes it writes (payloads dominate).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct How {
    pub(super) gate: Gate,
    pub(super) durability: Durability,
    pub(super) bytes: usize,
}

impl How {
    /// The dispatcher's leases and attempt records.
    pub(super) const BOOKKEEPING: How = How {
        gate: Gate::Open,
        durability: Durability::Normal,
        bytes: 0,
    };
    /// Giving leases back, retention purges: durable, but not new work.
    pub(super) const UPKEEP: How = How {
        gate: Gate::Open,
        durability: Durability::Full,
        bytes: 0,
    };
    /// An operator's replay or re-evaluation.
    pub(super) const OPERATOR: How = How {
        gate: Gate::Files,
        durability: Durability::Full,
        bytes: 0,
    };

    /// A delivery of `bytes` (or the readiness probe, which stands for one).
    pub(super) const fn intake(bytes: usize) -> How {
        How {
            gate: Gate::Room,
            durability: Durability::Full,
            bytes,
        }
    }
}

/// One write, as the writer thread sees it.
pub(super) trait Write: Send {
    fn how(&self) -> How;
    /// Run inside the batch's transaction; false: roll back its savepoint.
    fn apply(&mut self, tx: &Connection) -> bool;
    /// Answer with `e` instead of what `apply` found (or in place of running).
    fn fail(&mut self, e: StoreError);
    /// Send the answer, once the batch's commit decided it.
    fn answer(self: Box<Self>, commit: &Result<(), StoreError>);
}

/// The one implementation: a closure and the caller waiting for its result.
pub(super) struct Op<T, F> {
    how: How,
    run: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Op<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    /// The write and the receiver of its answer.
    pub(super) fn queued(how: How, run: F) -> (Box<dyn Write>, oneshot::Receiver<Result<T, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        let op = Op {
            how,
            run: Some(run),
            result: None,
            reply,
        };
        (Box::new(op), rx)
    }
}

impl<T, F> Write for Op<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn how(&self) -> How {
        self.how
    }

    fn apply(&mut self, tx: &Connection) -> bool {
        let result = match self.run.take() {
            Some(run) => run(tx),
            None => Err(StoreError::unavailable("a write ran twice")),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, e: StoreError) {
        self.run = None;
        self.result = Some(Err(e));
    }

    fn answer(self: Box<Self>, commit: &Result<(), StoreError>) {
        let result = match commit {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(StoreError::unavailable("the write did not run"))),
            Err(e) => Err(e.clone()),
        };
        // The caller may have gone away (request cancelled); the write stands regardless.
        let _ = self.reply.send(result);
    }
}

/// The writer thread: batch every queued write into one transaction and commit.
pub(super) fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Box<dyn Write>>, guard: Guard) {
    let mut sync = Durability::Full;
    let mut rescue = Rescue::default();
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.how().bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.how().bytes;
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch, &mut sync, &guard);
        rescue_when_lost(&conn, &guard, &mut rescue);
    }
    // The last look, at shutdown: a loss no delivery has run into yet.
    rescue_when_lost(&conn, &guard, &mut rescue);
}

/// Whether the files' content still has to be saved, and when it was last tried.
#[derive(Debug, Default)]
struct Rescue {
    done: bool,
    tried: Option<std::time::Instant>,
}

/// How long after a failed save (a full disk) the next is tried.
const RESCUE_AGAIN: Duration = Duration::from_secs(30);

/// Notice a loss even while only the dispatcher writes (a `stat` per
/// file), and save what the open files hold once the data files are gone.
fn rescue_when_lost(conn: &Connection, guard: &Guard, rescue: &mut Rescue) {
    if rescue.done {
        return;
    }
    let _ = guard.check_files();
    if !guard.data_lost() || rescue.tried.is_some_and(|t| t.elapsed() < RESCUE_AGAIN) {
        return;
    }
    rescue.tried = Some(std::time::Instant::now());
    rescue.done = guard::rescue(conn);
}

/// The checkpointer thread: a passive checkpoint every [`CHECKPOINT_EVERY`]
/// until the store is dropped. Passive checkpoints never block the writer;
/// durability does not depend on them (commits are fsynced in the WAL).
pub(super) fn checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint failed; the next one retries");
        }
    }
}

fn run_batch(conn: &mut Connection, batch: Vec<Box<dyn Write>>, sync: &mut Durability, guard: &Guard) {
    let batch = admit(guard, batch);
    if batch.is_empty() {
        return;
    }
    let wanted = Durability::of(&batch);
    if wanted != *sync {
        match conn.execute_batch(wanted.pragma()) {
            Ok(()) => *sync = wanted,
            // Still FULL or NORMAL as before; only a FULL batch must not run as NORMAL.
            Err(e) if wanted == Durability::Full => return fail_batch(batch, e),
            Err(_) => {}
        }
    }
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_batch(batch, e),
    };
    let mut done = Vec::with_capacity(batch.len());
    for mut op in batch {
        // Each write runs in a savepoint so one failure does not undo the others.
        match tx.savepoint() {
            Ok(mut sp) => {
                if op.apply(&sp) {
                    if let Err(e) = sp.commit() {
                        op.fail(db(e));
                    }
                } else {
                    let _ = sp.rollback();
                }
            }
            Err(e) => op.fail(db(e)),
        }
        done.push(op);
    }
    let commit = tx.commit().map_err(db);
    // Looked at after the commit, before anyone is answered: a file deleted
    // at any moment up to here turns the acknowledgement into a refusal.
    let kept = if commit.is_ok() && done.iter().any(|op| op.how().gate != Gate::Open) {
        guard.check_files()
    } else {
        Ok(())
    };
    for mut op in done {
        if let Err(why) = &kept
            && op.how().gate != Gate::Open
        {
            op.fail(StoreError::unavailable(why));
        }
        op.answer(&commit);
    }
}

/// Answer every write of a batch that could not run at all with the reason.
fn fail_batch(batch: Vec<Box<dyn Write>>, e: rusqlite::Error) {
    let failed = Err(db(e));
    for op in batch {
        op.answer(&failed);
    }
}

/// Answer at once, without running them, the ops whose gate is shut;
/// return the others.
fn admit(guard: &Guard, batch: Vec<Box<dyn Write>>) -> Vec<Box<dyn Write>> {
    if batch.iter().all(|op| op.how().gate == Gate::Open) {
        return batch;
    }
    let files = guard.check_files();
    let incoming = batch
        .iter()
        .filter(|op| op.how().gate == Gate::Room)
        .map(|op| op.how().bytes)
        .fold(0, usize::saturating_add);
    let room = if batch.iter().any(|op| op.how().gate == Gate::Room) {
        files
            .clone()
            .and_then(|()| guard.check_room(u64::try_from(incoming).unwrap_or(u64::MAX)))
    } else {
        Ok(())
    };
    let mut admitted = Vec::with_capacity(batch.len());
    for mut op in batch {
        let verdict = match op.how().gate {
            Gate::Open => Ok(()),
            Gate::Files => files.clone(),
            Gate::Room => room.clone(),
        };
        match verdict {
            Ok(()) => admitted.push(op),
            Err(why) => {
                op.fail(StoreError::unavailable(why));
                op.answer(&Ok(()));
            }
        }
    }
    admitted
}
