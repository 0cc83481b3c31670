//! The embedded store: one SQLite file in WAL mode with `synchronous = FULL`
//! for every write that answers someone, so a delivery's commit is on disk
//! before `ingest` returns. Only the dispatcher's own bookkeeping (leases and
//! attempt records) commits without an fsync of its own (see `writer::Durability`).
//!
//! All writes go through one writer thread that drains its queue into a single
//! transaction per batch (group commit): under load many deliveries share one
//! fsync, and each caller is answered only after the commit that holds its
//! write. Reads use their own connections and never wait for the writer.
//!
//! The daemon opens the file with [`SqliteStore::open_exclusive`], which holds
//! a lock file for its lifetime: one `serve` per database, so leases left by a
//! previous (crashed) process can be taken back at start. The CLI opens the
//! same file with [`SqliteStore::open`] while the daemon runs.
//!
//! The writer refuses new deliveries rather than acknowledge what a restart
//! would not find: files deleted or replaced under the daemon, a disk without
//! room (`guard`). `serve` refuses to start on a store it cannot write.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::concurrency::{CancelOutcome, LeasedCancel};
use super::follow::{FollowOutcome, LeasedFollowUp};
use super::ready::Readiness;
use super::*;
use guard::Guard;
use queue::PreparedDelivery;
use schema::{connect, connect_existing, migrate, probe};
use writer::{How, Op, Write};

mod cancels;
mod deferral_queue;
mod deferrals;
mod follow_ups;
mod groups;
mod guard;
mod history;
mod purge;
mod queue;
mod schema;
mod status;
mod status_queue;
mod statuses;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
mod writer;

pub use schema::schema_version;

/// The writer connection's page cache in KiB: room for one batch of
/// [`writer::MAX_BATCH_BYTES`]. Pages are allocated as used, so an idle daemon stays small.
const WRITER_CACHE_KIB: i64 = 8192;

/// The writer connection's own automatic checkpoint threshold in pages (64 MiB
/// at 4 KiB pages): only a safety valve, should the checkpointer fall behind.
const WRITER_AUTOCHECKPOINT: i64 = 16384;

/// What the WAL file is cut back to once a checkpoint has copied all of it
/// into the database: a burst of large payloads grows the file, and without
/// a limit SQLite keeps it at its largest size for good.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// How long the readiness probe waits for its commit. The writer waits up to
/// its busy timeout (3 s) for a write lock another process holds; readiness
/// says no sooner (Kubernetes' probe gives up after 3 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(e)
}

/// Classify a driver error where it happens (the error policy is in [`super`]):
/// busy, locked, I/O, full, read-only and the like are `Unavailable`, a
/// constraint is a `Conflict`, a damaged file or an unreadable column is
/// `Corrupt`. Whatever else SQLite reports stays `Unavailable`, as before.
fn db(e: rusqlite::Error) -> StoreError {
    StoreError::from_driver(kind_of(&e), e)
}

/// [`db`], with the file it is about.
fn db_at(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::new(kind_of(&e), format!("{}: {e}", path.display())).with_source(e)
}

fn kind_of(e: &rusqlite::Error) -> StoreErrorKind {
    use rusqlite::ErrorCode;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation => StoreErrorKind::Conflict,
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => StoreErrorKind::Corrupt,
            _ => StoreErrorKind::Unavailable,
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Unavailable,
    }
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Box<dyn Write>>,
    readers: std::sync::Arc<Mutex<Vec<Connection>>>,
    /// Held for the daemon's lifetime; released by the OS if the process dies.
    _lock: Option<std::fs::File>,
    /// Dropped with the store, which stops the checkpointer thread.
    _checkpointer: std::sync::mpsc::Sender<()>,
    readiness: Readiness,
}

impl SqliteStore {
    /// Open for the daemon: one per file, and leases of a previous process are taken back.
    /// Refuses a store it cannot write (read-only file, directory or file system).
    pub fn open_exclusive(path: &Path) -> Result<SqliteStore, StoreError> {
        create_dir(path)?;
        guard::refuse_read_only(path)?;
        let lock_path = lock_path(path);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
                    guard::read_only(
                        path,
                        format_args!("cannot open its lock file `{}`: {e}", lock_path.display()),
                    )
                }
                _ => unavailable(format!("cannot open lock file {}: {e}", lock_path.display())),
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::invalid(format!(
                    "{} is in use by another `hookbridge serve`; SQLite serves one daemon (use PostgreSQL to run several)",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(unavailable(e)),
        }
        let store = Self::start(path, Some(lock))?;
        // Any job still marked running was in flight when the previous process stopped.
        let conn = connect_existing(path)?;
        queue::release_leases(&conn, None, SystemTime::now())?;
        // A first commit of our own: a store that cannot write is refused here;
        // one that cannot write *now* (a full disk) starts, and is not ready.
        match probe(&conn, SystemTime::now()) {
            Ok(()) => {}
            Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::ReadOnly => {
                return Err(guard::read_only(path, f));
            }
            Err(e) => {
                tracing::warn!(error = %e, store = %path.display(), "the store cannot commit yet; not ready")
            }
        }
        Ok(store)
    }

    /// Open as a client alongside a running daemon (the CLI).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::start(path, None)
    }

    fn start(path: &Path, lock: Option<std::fs::File>) -> Result<SqliteStore, StoreError> {
        create_dir(path)?;
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        // Recorded now that our connections hold the files open.
        let lock_file = lock_path(path);
        let guard = Guard::new(path, lock.as_ref().map(|l| (lock_file.as_path(), l)))?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT)
            .map_err(db)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(db)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(db)?;
        let checkpoint_conn = connect_existing(path)?;
        checkpoint_conn
            .pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(db)?;
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer::writer(conn, rx, guard))
            .map_err(unavailable)?;
        let (stop, stopped) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || writer::checkpointer(checkpoint_conn, stopped))
            .map_err(unavailable)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: tx,
            readers: std::sync::Arc::new(Mutex::new(Vec::new())),
            _lock: lock,
            _checkpointer: stop,
            readiness: Readiness::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` in the writer's next batch; answered once that batch committed.
    async fn write<T, F>(&self, how: How, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (op, rx) = Op::queued(how, f);
        self.writer
            .send(op)
            .await
            .map_err(|_| StoreError::unavailable("the store's writer has stopped"))?;
        rx.await
            .map_err(|_| StoreError::unavailable("the store's writer has stopped"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers
                .lock()
                .map_err(|_| unavailable("reader pool poisoned"))?
                .pop();
            let conn = match conn {
                Some(c) => c,
                None => connect_existing(&path)?,
            };
            let result = f(&conn);
            if let Ok(mut pool) = readers.lock()
                && pool.len() < 4
            {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(unavailable)?
    }
}

fn create_dir(db: &Path) -> Result<(), StoreError> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

/// The lock file beside the database's real path, so that a symbolic link
/// to the database (or to a directory above it) finds the lock the first
/// daemon holds. A database not yet created is resolved through its
/// directory.
fn lock_path(db: &Path) -> PathBuf {
    let real = std::fs::canonicalize(db).ok().or_else(|| {
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Some(std::fs::canonicalize(dir).ok()?.join(db.file_name()?))
    });
    let db = real.as_deref().unwrap_or(db);
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    db.with_file_name(name)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError> {
        let prepared = PreparedDelivery::new(delivery)?;
        let how = How::intake(prepared.bytes());
        self.write(how, move |tx| queue::ingest(tx, prepared)).await
    }

    async fn lease_due(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        let owner = owner.to_owned();
        self.write(How::BOOKKEEPING, move |tx| {
            queue::lease_due(tx, &owner, limit, lease, now)
        })
        .await
    }

    async fn record_attempt(
        &self,
        job: &LeasedJob,
        owner: &str,
        attempt: Attempt,
        next: Transition,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (job_id, delivery_id, owner) = (job.id.clone(), job.delivery_id.clone(), owner.to_owned());
        let (lease, grouped) = (job.attempt, job.grouped);
        self.write(How::BOOKKEEPING, move |tx| {
            queue::record(
                tx,
                (&job_id, grouped),
                &delivery_id,
                (&owner, lease),
                &attempt,
                &next,
                now,
            )
        })
        .await
    }

    async fn lease_follow_ups(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedFollowUp>, StoreError> {
        let owner = owner.to_owned();
        self.write(How::BOOKKEEPING, move |tx| {
            follow_ups::lease(tx, &owner, limit, lease, now)
        })
        .await
    }

    async fn record_follow_up(
        &self,
        follow_up: &LeasedFollowUp,
        owner: &str,
        outcome: FollowOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (follow_up, owner) = (follow_up.clone(), owner.to_owned());
        self.write(How::BOOKKEEPING, move |tx| {
            follow_ups::record(tx, &follow_up, &owner, &outcome, now)
        })
        .await
    }

    async fn lease_cancels(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedCancel>, StoreError> {
        let owner = owner.to_owned();
        self.write(How::BOOKKEEPING, move |tx| {
            cancels::lease(tx, &owner, limit, lease, now)
        })
        .await
    }

    async fn record_cancel(
        &self,
        cancel: &LeasedCancel,
        owner: &str,
        attempt: Attempt,
        outcome: CancelOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (job, lease, owner) = (cancel.job.clone(), cancel.attempt, owner.to_owned());
        self.write(How::BOOKKEEPING, move |tx| {
            cancels::record(tx, (&job, lease), &owner, &attempt, &outcome, now)
        })
        .await
    }

    async fn start_attempt(
        &self,
        job: &LeasedJob,
        owner: &str,
        now: SystemTime,
    ) -> Result<Start, StoreError> {
        let (job_id, owner, lease) = (job.id.clone(), owner.to_owned(), job.attempt);
        self.write(How::BOOKKEEPING, move |tx| {
            groups::start(tx, &job_id, (&owner, lease), now)
        })
        .await
    }

    async fn release(&self, owner: &str, now: SystemTime) -> Result<(), StoreError> {
        let owner = owner.to_owned();
        self.write(How::UPKEEP, move |tx| {
            queue::release_leases(tx, Some(&owner), now)
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        self.read(history::next_due).await
    }

    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        let filter = filter.clone();
        self.read(move |c| history::list(c, &filter)).await
    }

    async fn verdicts(&self, since: SystemTime, cap: usize) -> Result<RecentVerdicts, StoreError> {
        self.read(move |c| history::verdicts(c, since, cap)).await
    }

    async fn get(&self, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
        let key = key.clone();
        self.read(move |c| history::get(c, &key)).await
    }

    async fn payload(&self, key: &DeliveryKey) -> Result<StoredPayload, StoreError> {
        let key = key.clone();
        self.read(move |c| history::payload(c, &key)).await
    }

    async fn replay(
        &self,
        key: &DeliveryKey,
        job: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let (key, job) = (key.clone(), job.map(str::to_owned));
        self.write(How::OPERATOR, move |tx| {
            queue::replay(tx, &key, job.as_deref(), now)
        })
        .await
    }

    async fn add_jobs(
        &self,
        key: &DeliveryKey,
        jobs: Vec<NewJob>,
        summary: Summary,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(How::OPERATOR, move |tx| {
            queue::add_jobs(tx, &key, &jobs, &summary, now)
        })
        .await
    }

    async fn purge(&self, cutoff: SystemTime, batch: usize) -> Result<u64, StoreError> {
        self.write(How::UPKEEP, move |tx| purge::purge(tx, cutoff, batch))
            .await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        self.read(history::stats).await
    }

    async fn neighbours(&self, target: &str, job: &str, since: SystemTime) -> Result<Neighbours, StoreError> {
        let (target, job) = (target.to_owned(), job.to_owned());
        self.read(move |c| history::neighbours(c, &target, &job, since))
            .await
    }

    /// A probe commit through the writer, gated like a delivery: it fails
    /// when a delivery would (files gone, no room, read-only, full disk,
    /// I/O errors), and when the commit cannot happen in time (a write lock
    /// held by another process). Under load it shares a batch's fsync.
    async fn ready(&self) -> Result<(), StoreError> {
        self.readiness
            .check(|| async {
                // The probe's own clock: the row it writes only proves a commit.
                let now = SystemTime::now();
                let commit = self.write(How::intake(0), move |tx| probe(tx, now).map_err(db));
                tokio::time::timeout(PROBE_TIMEOUT, commit)
                    .await
                    .unwrap_or_else(|_| {
                        Err(StoreError::unavailable(format!(
                            "no commit within {}s (does another process hold a write lock on `{}`?)",
                            PROBE_TIMEOUT.as_secs(),
                            self.path.display()
                        )))
                    })
            })
            .await
    }
}
