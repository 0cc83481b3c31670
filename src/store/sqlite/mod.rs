//! The embedded store: one SQLite file in WAL mode with `synchronous = FULL`
//! for every write that answers someone, so a delivery's commit is on disk
//! before `ingest` returns. Only the dispatcher's own bookkeeping (leases and
//! attempt records) commits without an fsync of its own (see [`Durability`]).
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
//! room ([`guard`]). `serve` refuses to start on a store it cannot write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::model::{self, JobUpdate, from_json, to_json};
use super::ready::Readiness;
use super::*;
use guard::{Gate, Guard};

mod guard;

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 512;

/// Most payload bytes folded into one transaction. Big payloads (1 MB pushes)
/// commit in smaller batches, so that a batch fits the writer's page cache
/// (instead of spilling pages into the WAL and reading them back) and fewer
/// bodies wait in memory for one commit. Small deliveries still share fsyncs.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// The writer connection's page cache in KiB: room for one batch of
/// [`MAX_BATCH_BYTES`]. Pages are allocated as used, so an idle daemon stays small.
const WRITER_CACHE_KIB: i64 = 8192;

/// How often the checkpointer thread copies committed WAL frames into the
/// database file. Checkpoints run beside the writer, so a commit (and the acks
/// waiting on it) never waits for one.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The writer connection's own automatic checkpoint threshold in pages (64 MiB
/// at 4 KiB pages): only a safety valve, should the checkpointer fall behind.
const WRITER_AUTOCHECKPOINT: i64 = 16384;

/// Page size of new databases. Every commit writes each page it touches
/// whole into the WAL, and a small commit (one delivery, a lease, an attempt
/// record) touches a dozen pages of tables and indexes, so small pages keep
/// the bytes written per delivery down; payloads larger than a page go to
/// overflow pages of their own table.
const PAGE_SIZE: usize = 4096;

/// How long the readiness probe waits for its commit. The writer waits up to
/// its busy timeout (5 s) for a write lock another process holds; readiness
/// says no sooner (Kubernetes' probe gives up after 3 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE deliveries (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    delivery    TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    event_name  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    repository  TEXT,
    git_ref     TEXT,
    status      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    event       TEXT NOT NULL,
    headers     TEXT NOT NULL,
    payload     BLOB NOT NULL,
    UNIQUE (source, delivery)
);
CREATE INDEX deliveries_delivery ON deliveries (delivery);
CREATE INDEX deliveries_status ON deliveries (status, received_at);
CREATE INDEX deliveries_received ON deliveries (received_at);
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    delivery_id     TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    rule            TEXT NOT NULL,
    target          TEXT NOT NULL,
    request         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_error      TEXT,
    result          TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX jobs_delivery ON jobs (delivery_id);
CREATE INDEX jobs_rule ON jobs (rule);
CREATE TABLE attempts (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status      INTEGER,
    outcome     TEXT NOT NULL,
    error       TEXT,
    response    TEXT,
    PRIMARY KEY (job_id, n)
);
"#,
    // Version 2: the columns written once (payload, normalized event, headers,
    // summary) move to their own table, so the rows that change (a delivery's
    // status, its jobs) sit densely in a few pages instead of one page per
    // delivery, and a status change rewrites only those. One unique index on
    // (delivery, source) serves deduplication and lookups by delivery id alone;
    // the index on jobs.rule had no query. `seq` is the explicit rowid the
    // payload is keyed by (stable across VACUUM).
    r#"
CREATE TABLE payloads (
    seq     INTEGER PRIMARY KEY,
    summary TEXT NOT NULL,
    event   TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE deliveries_v2 (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    delivery    TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    event_name  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    repository  TEXT,
    git_ref     TEXT,
    status      TEXT NOT NULL,
    UNIQUE (delivery, source)
);
INSERT INTO deliveries_v2 (seq, id, source, delivery, received_at, event_name, kind, repository, git_ref, status)
    SELECT rowid, id, source, delivery, received_at, event_name, kind, repository, git_ref, status FROM deliveries;
INSERT INTO payloads (seq, summary, event, headers, payload)
    SELECT rowid, summary, event, headers, payload FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
CREATE INDEX deliveries_status ON deliveries (status, received_at);
CREATE INDEX deliveries_received ON deliveries (received_at);
DROP INDEX jobs_rule;
"#,
    // Version 3: the row the readiness probe rewrites, so that "ready" means
    // a commit just reached the disk.
    r#"
CREATE TABLE probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
"#,
];

/// The schema version this build creates.
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(e)
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(e)
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

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
    // The page size applies to new databases only (a file keeps its own).
    // Temporary storage in memory keeps the statement journal of the
    // writer's per-op savepoints off the disk.
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE_SIZE};
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;"
    ))
    .map_err(db)
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| db_at(path, e))?;
    configure(&conn)?;
    Ok(conn)
}

/// A further connection to the store's file, which must exist: should the
/// file be deleted under the daemon, a new reader fails instead of creating
/// an empty database at the path.
fn connect_existing(path: &Path) -> Result<Connection, StoreError> {
    let flags = rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| db_at(path, e))?;
    configure(&conn)?;
    Ok(conn)
}

/// Rewrite the probe row: once the commit holding it returns, a commit can
/// reach the disk.
fn probe(conn: &Connection, now: SystemTime) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
    )
    .and_then(|mut s| s.execute(params![millis(now)]))
    .map(|_| ())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // Rebuilding a table (SQLite's documented procedure) needs foreign keys
    // off, or dropping the old table would cascade into its jobs; the pragma
    // is a no-op inside a transaction, so it is set around it.
    conn.execute_batch("PRAGMA foreign_keys = OFF").map_err(db)?;
    let migrated = migrate_tx(conn).and_then(|()| {
        let broken: Option<String> = conn
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()
            .map_err(db)?;
        match broken {
            Some(table) => Err(corrupt(format!(
                "a foreign key in `{table}` points nowhere after migration"
            ))),
            None => Ok(()),
        }
    });
    conn.execute_batch("PRAGMA foreign_keys = ON").map_err(db)?;
    migrated
}

fn migrate_tx(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let version: usize = tx
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(db)? as usize;
    model::check_schema(version, MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql).map_err(db)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(db)?;
    }
    tx.commit().map_err(db)
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write, executed by the writer thread inside a batch transaction.
enum Op {
    Ingest(Box<PreparedDelivery>, Reply<Ingested>),
    Lease {
        owner: String,
        limit: usize,
        lease: Duration,
        now: SystemTime,
        reply: Reply<Vec<LeasedJob>>,
    },
    Record {
        job: String,
        delivery_id: String,
        owner: String,
        attempt: Attempt,
        next: Transition,
        now: SystemTime,
        reply: Reply<()>,
    },
    Release {
        owner: Option<String>,
        now: SystemTime,
        reply: Reply<()>,
    },
    Replay {
        key: DeliveryKey,
        job: Option<String>,
        now: SystemTime,
        reply: Reply<Vec<String>>,
    },
    AddJobs {
        key: DeliveryKey,
        jobs: Vec<NewJob>,
        summary: Box<Summary>,
        now: SystemTime,
        reply: Reply<()>,
    },
    Purge {
        cutoff: SystemTime,
        batch: usize,
        reply: Reply<u64>,
    },
    /// The readiness probe: a commit of its own (or a share of one).
    Probe(Reply<()>),
}

/// A delivery with its JSON columns already serialized, so that work runs on
/// the caller's thread in parallel rather than on the one writer thread.
struct PreparedDelivery {
    delivery: NewDelivery,
    summary: String,
    event: String,
    headers: String,
    /// Each job's request, in the order of `delivery.jobs`.
    requests: Vec<String>,
}

impl PreparedDelivery {
    fn new(delivery: NewDelivery) -> Result<PreparedDelivery, StoreError> {
        Ok(PreparedDelivery {
            summary: to_json(&delivery.summary)?,
            event: to_json(&delivery.event)?,
            headers: to_json(&delivery.headers)?,
            requests: delivery
                .jobs
                .iter()
                .map(|j| to_json(&j.request))
                .collect::<Result<_, _>>()?,
            delivery,
        })
    }
}

impl Op {
    /// Roughly how many bytes the op writes (payloads dominate).
    fn size(&self) -> usize {
        match self {
            Op::Ingest(p, _) => p.delivery.payload.len() + p.event.len() + p.summary.len(),
            _ => 0,
        }
    }
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Op>,
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
        release_leases(&conn, None, SystemTime::now())?;
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
        let checkpoint_conn = connect_existing(path)?;
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer(conn, rx, guard))
            .map_err(unavailable)?;
        let (stop, stopped) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpointer(checkpoint_conn, stopped))
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

    async fn write<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(make(reply))
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

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    db.with_file_name(name)
}

/// The writer thread: batch every queued op into one transaction and commit.
fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Op>, guard: Guard) {
    let mut sync = Durability::Full;
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.size();
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch, &mut sync, &guard);
    }
}

/// The checkpointer thread: a passive checkpoint every [`CHECKPOINT_EVERY`]
/// until the store is dropped. Passive checkpoints never block the writer;
/// durability does not depend on them (commits are fsynced in the WAL).
fn checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint failed; the next one retries");
        }
    }
}

/// Replies held until the batch's commit decides their fate.
enum Pending {
    Ingest(Reply<Ingested>, Result<Ingested, StoreError>),
    Lease(Reply<Vec<LeasedJob>>, Result<Vec<LeasedJob>, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Ids(Reply<Vec<String>>, Result<Vec<String>, StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
}

impl Pending {
    fn send(self, commit: &Result<(), StoreError>) {
        fn finish<T>(reply: Reply<T>, r: Result<T, StoreError>, commit: &Result<(), StoreError>) {
            let r = match commit {
                Ok(()) => r,
                Err(e) => Err(e.clone()),
            };
            // The caller may have gone away (request cancelled); the write stands regardless.
            let _ = reply.send(r);
        }
        match self {
            Pending::Ingest(reply, r) => finish(reply, r, commit),
            Pending::Lease(reply, r) => finish(reply, r, commit),
            Pending::Unit(reply, r) => finish(reply, r, commit),
            Pending::Ids(reply, r) => finish(reply, r, commit),
            Pending::Count(reply, r) => finish(reply, r, commit),
        }
    }
}

/// How a batch's commit reaches the disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Durability {
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
    fn of(batch: &[Op]) -> Durability {
        if batch
            .iter()
            .all(|op| matches!(op, Op::Lease { .. } | Op::Record { .. }))
        {
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

fn run_batch(conn: &mut Connection, batch: Vec<Op>, sync: &mut Durability, guard: &Guard) {
    let batch = guard.admit(batch);
    if batch.is_empty() {
        return;
    }
    let wanted = Durability::of(&batch);
    if wanted != *sync {
        match conn.execute_batch(wanted.pragma()) {
            Ok(()) => *sync = wanted,
            // Still FULL or NORMAL as before; only a FULL batch must not run as NORMAL.
            Err(e) if wanted == Durability::Full => return fail_batch(batch, "cannot set the sync mode", e),
            Err(_) => {}
        }
    }
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_batch(batch, "cannot begin a transaction", e),
    };
    // The probe's own clock: the row it writes only proves a commit.
    let now = SystemTime::now();
    let mut pending = Vec::with_capacity(batch.len());
    for op in batch {
        let gate = op.gate();
        // Each op runs in a savepoint so one failure does not undo the others.
        let mut sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => {
                pending.push((failed_op(op, db(e)), gate));
                continue;
            }
        };
        let mut result = apply(&sp, op, now);
        if result.is_ok() {
            if let Err(e) = sp.commit() {
                result = result.fail(db(e));
            }
        } else {
            let _ = sp.rollback();
        }
        pending.push((result, gate));
    }
    let commit = tx.commit().map_err(db);
    // Looked at after the commit, before anyone is answered: a file deleted
    // at any moment up to here turns the acknowledgement into a refusal.
    let kept = if commit.is_ok() && pending.iter().any(|(_, gate)| *gate != Gate::Open) {
        guard.check_files()
    } else {
        Ok(())
    };
    for (p, gate) in pending {
        match &kept {
            Err(why) if gate != Gate::Open => p.fail(StoreError::unavailable(why)).send(&commit),
            _ => p.send(&commit),
        }
    }
}

impl Pending {
    fn is_ok(&self) -> bool {
        match self {
            Pending::Ingest(_, r) => r.is_ok(),
            Pending::Lease(_, r) => r.is_ok(),
            Pending::Unit(_, r) => r.is_ok(),
            Pending::Ids(_, r) => r.is_ok(),
            Pending::Count(_, r) => r.is_ok(),
        }
    }

    fn fail(self, e: StoreError) -> Pending {
        match self {
            Pending::Ingest(reply, _) => Pending::Ingest(reply, Err(e)),
            Pending::Lease(reply, _) => Pending::Lease(reply, Err(e)),
            Pending::Unit(reply, _) => Pending::Unit(reply, Err(e)),
            Pending::Ids(reply, _) => Pending::Ids(reply, Err(e)),
            Pending::Count(reply, _) => Pending::Count(reply, Err(e)),
        }
    }
}

/// The reply for an op that could not run.
/// Answer every op of a batch that could not run at all.
fn fail_batch(batch: Vec<Op>, what: &str, e: rusqlite::Error) {
    let failed = Err(db(e));
    for op in batch {
        failed_op(op, StoreError::unavailable(what)).send(&failed);
    }
}

fn failed_op(op: Op, e: StoreError) -> Pending {
    match op {
        Op::Ingest(_, reply) => Pending::Ingest(reply, Err(e)),
        Op::Lease { reply, .. } => Pending::Lease(reply, Err(e)),
        Op::Record { reply, .. } | Op::Release { reply, .. } | Op::AddJobs { reply, .. } => {
            Pending::Unit(reply, Err(e))
        }
        Op::Replay { reply, .. } => Pending::Ids(reply, Err(e)),
        Op::Purge { reply, .. } => Pending::Count(reply, Err(e)),
        Op::Probe(reply) => Pending::Unit(reply, Err(e)),
    }
}

fn apply(tx: &Connection, op: Op, now: SystemTime) -> Pending {
    match op {
        Op::Ingest(d, reply) => Pending::Ingest(reply, ingest(tx, *d)),
        Op::Lease {
            owner,
            limit,
            lease,
            now,
            reply,
        } => Pending::Lease(reply, lease_due(tx, &owner, limit, lease, now)),
        Op::Record {
            job,
            delivery_id,
            owner,
            attempt,
            next,
            now,
            reply,
        } => Pending::Unit(
            reply,
            record(tx, &job, &delivery_id, &owner, &attempt, &next, now),
        ),
        Op::Release { owner, now, reply } => Pending::Unit(reply, release_leases(tx, owner.as_deref(), now)),
        Op::Replay { key, job, now, reply } => Pending::Ids(reply, replay(tx, &key, job.as_deref(), now)),
        Op::AddJobs {
            key,
            jobs,
            summary,
            now,
            reply,
        } => Pending::Unit(reply, add_jobs(tx, &key, &jobs, &summary, now)),
        Op::Purge { cutoff, batch, reply } => Pending::Count(reply, purge(tx, cutoff, batch)),
        Op::Probe(reply) => Pending::Unit(reply, probe(tx, now).map_err(db)),
    }
}

fn insert_job(
    tx: &Connection,
    delivery_id: &str,
    job: &NewJob,
    request: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO jobs (id, delivery_id, rule, target, request, state, attempts, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6, ?6)",
    )
    .and_then(|mut s| s.execute(params![job.id, delivery_id, job.rule, job.target, request, now]))
    .map_err(db)?;
    Ok(())
}

fn ingest(tx: &Connection, p: PreparedDelivery) -> Result<Ingested, StoreError> {
    let d = &p.delivery;
    let existing: Option<(String, String)> = tx
        .prepare_cached(
            "SELECT d.id, p.summary FROM deliveries d JOIN payloads p ON p.seq = d.seq
             WHERE d.source = ?1 AND d.delivery = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![d.source, d.delivery], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db)?;
    if let Some((id, summary)) = existing {
        // The duplicate's arrival is the clock: its dead jobs are due at once.
        let now = millis(d.received_at);
        let requeued = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = ?2, last_error = NULL, updated_at = ?2
                 WHERE delivery_id = ?1 AND state = 'dead'",
            )
            .and_then(|mut s| s.execute(params![id, now]))
            .map_err(db)?;
        if requeued > 0 {
            refresh_status(tx, &id)?;
        }
        return Ok(Ingested::Duplicate {
            summary: from_json(&summary)?,
            requeued,
        });
    }
    let received = millis(d.received_at);
    let status = if d.jobs.is_empty() { "skipped" } else { "pending" };
    tx.prepare_cached(
        "INSERT INTO deliveries (id, source, delivery, received_at, event_name, kind, repository, git_ref, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            d.id,
            d.source,
            d.delivery,
            received,
            d.event.name,
            d.event.kind,
            d.event.repository,
            d.event.git_ref,
            status,
        ])
    })
    .map_err(db)?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO payloads (seq, summary, event, headers, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![seq, p.summary, p.event, p.headers, &d.payload[..]]))
    .map_err(db)?;
    for (job, request) in d.jobs.iter().zip(&p.requests) {
        insert_job(tx, &d.id, job, request, received)?;
    }
    Ok(Ingested::Stored)
}

/// Recompute a delivery's status from its jobs.
fn refresh_status(tx: &Connection, delivery_id: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE deliveries SET status = CASE
            WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = ?1 AND state IN ('pending', 'running')) THEN 'pending'
            WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = ?1 AND state = 'dead') THEN 'dead'
            WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = ?1 AND state = 'done') THEN 'done'
            ELSE 'skipped' END
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![delivery_id]))
    .map_err(db)?;
    Ok(())
}

fn next_attempt_number(tx: &Connection, job: &str) -> Result<i64, StoreError> {
    tx.prepare_cached("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE job_id = ?1")
        .and_then(|mut s| s.query_row(params![job], |r| r.get(0)))
        .map_err(db)
}

fn lease_due(
    tx: &Connection,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedJob>, StoreError> {
    let now_ms = millis(now);
    let mut ids: Vec<(String, bool)> = Vec::new();
    {
        let mut expired = tx
            .prepare_cached("SELECT id FROM jobs WHERE state = 'running' AND lease_until < ?1 LIMIT ?2")
            .map_err(db)?;
        let rows = expired
            .query_map(params![now_ms, limit as i64], |r| r.get::<_, String>(0))
            .map_err(db)?;
        for id in rows {
            ids.push((id.map_err(db)?, true));
        }
        let mut due = tx
            .prepare_cached(
                "SELECT id FROM jobs WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2",
            )
            .map_err(db)?;
        let rows = due
            .query_map(params![now_ms, (limit - ids.len().min(limit)) as i64], |r| {
                r.get::<_, String>(0)
            })
            .map_err(db)?;
        for id in rows {
            ids.push((id.map_err(db)?, false));
        }
    }
    let until = millis(now + lease);
    let mut out = Vec::with_capacity(ids.len());
    for (id, was_expired) in ids {
        if was_expired {
            interrupted(tx, &id, now_ms, model::LEASE_EXPIRED)?;
        }
        let row = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'running', lease_owner = ?2, lease_until = ?3, attempts = attempts + 1, updated_at = ?4
                 WHERE id = ?1
                 RETURNING delivery_id, rule, target, request, attempts",
            )
            .and_then(|mut s| {
                s.query_row(params![id, owner, until, now_ms], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
            })
            .map_err(db)?;
        let (delivery_id, rule, target, request, attempts) = row;
        let (delivery, source): (String, String) = tx
            .prepare_cached("SELECT delivery, source FROM deliveries WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![delivery_id], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(db)?;
        out.push(LeasedJob {
            id,
            delivery_id,
            delivery,
            source,
            rule,
            target,
            request: from_json(&request)?,
            attempt: attempts.max(1) as u32,
        });
    }
    Ok(out)
}

/// Record that an attempt was cut short (crash, shutdown past the grace period).
fn interrupted(tx: &Connection, job: &str, now_ms: i64, why: &str) -> Result<(), StoreError> {
    let n = next_attempt_number(tx, job)?;
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
         VALUES (?1, ?2, ?3, 0, NULL, ?5, ?4, NULL)",
    )
    .and_then(|mut s| s.execute(params![job, n, now_ms, why, model::INTERRUPTED]))
    .map_err(db)?;
    Ok(())
}

fn release_leases(tx: &Connection, owner: Option<&str>, now: SystemTime) -> Result<(), StoreError> {
    let now_ms = millis(now);
    let ids: Vec<(String, String)> = {
        let mut s = tx
            .prepare_cached("SELECT id, delivery_id FROM jobs WHERE state = 'running' AND (?1 IS NULL OR lease_owner = ?1)")
            .map_err(db)?;
        let rows = s
            .query_map(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    for (id, _) in &ids {
        interrupted(tx, id, now_ms, model::STOPPED)?;
        tx.prepare_cached(
            "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = ?2, updated_at = ?2
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, now_ms]))
        .map_err(db)?;
    }
    Ok(())
}

fn record(
    tx: &Connection,
    job: &str,
    delivery_id: &str,
    owner: &str,
    attempt: &Attempt,
    next: &Transition,
    now: SystemTime,
) -> Result<(), StoreError> {
    let n = next_attempt_number(tx, job)?;
    let update = JobUpdate::after(next, attempt, now)?;
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            job,
            n,
            millis(attempt.started_at),
            attempt.duration.as_millis() as i64,
            attempt.status,
            next.outcome(),
            update.error,
            attempt.response,
        ])
    })
    .map_err(db)?;
    let now_ms = millis(now);
    // Only the lease holder moves the job; a late worker's attempt is still recorded above.
    tx.prepare_cached(
        "UPDATE jobs SET state = ?3, next_attempt_at = ?4, lease_owner = NULL, lease_until = NULL,
                last_error = ?5, result = COALESCE(?6, result), updated_at = ?7
         WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
    )
    .and_then(|mut s| {
        s.execute(params![
            job,
            owner,
            update.state.as_str(),
            update.next_attempt_at,
            update.error,
            update.result,
            now_ms
        ])
    })
    .map_err(db)?;
    refresh_status(tx, delivery_id)
}

/// Resolve a [`DeliveryKey`] to an internal id.
fn resolve(conn: &Connection, key: &DeliveryKey) -> Result<String, StoreError> {
    let by_internal: Option<String> = conn
        .prepare_cached("SELECT id FROM deliveries WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![key.id], |r| r.get(0)).optional())
        .map_err(db)?;
    if let Some(id) = by_internal {
        return Ok(id);
    }
    let mut s = conn
        .prepare_cached(
            "SELECT id, source FROM deliveries WHERE delivery = ?1 AND (?2 IS NULL OR source = ?2)",
        )
        .map_err(db)?;
    let rows: Vec<(String, String)> = s
        .query_map(params![key.id, key.source], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    match rows.len() {
        0 => Err(StoreError::not_found(key.id.clone())),
        1 => Ok(rows[0].0.clone()),
        _ => Err(model::ambiguous(
            &key.id,
            rows.into_iter().map(|(_, s)| s).collect(),
        )),
    }
}

fn replay(
    tx: &Connection,
    key: &DeliveryKey,
    job: Option<&str>,
    now: SystemTime,
) -> Result<Vec<String>, StoreError> {
    let id = resolve(tx, key)?;
    let now_ms = millis(now);
    let ids: Vec<String> = {
        let mut s = tx
            .prepare_cached("SELECT id FROM jobs WHERE delivery_id = ?1 AND (?2 IS NULL OR id = ?2) AND state != 'running'")
            .map_err(db)?;
        s.query_map(params![id, job], |r| r.get(0))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
    };
    if let Some(j) = job
        && ids.is_empty()
    {
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1 AND delivery_id = ?2)",
                params![j, id],
                |r| r.get(0),
            )
            .map_err(db)?;
        if !exists {
            return Err(model::job_not_found(j, key));
        }
    }
    for j in &ids {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = ?2, last_error = NULL, updated_at = ?2
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![j, now_ms]))
        .map_err(db)?;
    }
    refresh_status(tx, &id)?;
    Ok(ids)
}

fn add_jobs(
    tx: &Connection,
    key: &DeliveryKey,
    jobs: &[NewJob],
    summary: &Summary,
    now: SystemTime,
) -> Result<(), StoreError> {
    let id = resolve(tx, key)?;
    for job in jobs {
        insert_job(tx, &id, job, &to_json(&job.request)?, millis(now))?;
    }
    tx.execute(
        "UPDATE payloads SET summary = ?2 WHERE seq = (SELECT seq FROM deliveries WHERE id = ?1)",
        params![id, to_json(summary)?],
    )
    .map_err(db)?;
    refresh_status(tx, &id)
}

fn purge(tx: &Connection, cutoff: SystemTime, batch: usize) -> Result<u64, StoreError> {
    let seqs: Vec<i64> = tx
        .prepare_cached(
            "SELECT seq FROM deliveries WHERE status IN ('done', 'dead', 'skipped') AND received_at < ?1 LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![millis(cutoff), batch as i64], |r| r.get(0))?
                .collect()
        })
        .map_err(db)?;
    for seq in &seqs {
        // Jobs and attempts go with the delivery (ON DELETE CASCADE).
        tx.prepare_cached("DELETE FROM payloads WHERE seq = ?1")
            .and_then(|mut s| s.execute(params![seq]))
            .and_then(|_| tx.prepare_cached("DELETE FROM deliveries WHERE seq = ?1"))
            .and_then(|mut s| s.execute(params![seq]))
            .map_err(db)?;
    }
    Ok(seqs.len() as u64)
}

fn row_to_delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<(DeliveryRow, String)> {
    let status: String = r.get(8)?;
    Ok((
        DeliveryRow {
            id: r.get(0)?,
            source: r.get(1)?,
            delivery: r.get(2)?,
            received_at: r.get(3)?,
            event: r.get(4)?,
            kind: r.get(5)?,
            repository: r.get(6)?,
            git_ref: r.get(7)?,
            status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
            jobs: r.get::<_, i64>(9)? as u32,
        },
        status,
    ))
}

const DELIVERY_COLUMNS: &str =
    "d.id, d.source, d.delivery, d.received_at, d.event_name, d.kind, d.repository, d.git_ref, d.status,
     (SELECT COUNT(*) FROM jobs j WHERE j.delivery_id = d.id)";

fn list(conn: &Connection, f: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
    let mut sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE 1 = 1");
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    if let Some(s) = f.status {
        args.push(Box::new(s.as_str()));
        sql.push_str(&format!(" AND d.status = ?{}", args.len()));
    }
    if let Some(s) = &f.source {
        args.push(Box::new(s.clone()));
        sql.push_str(&format!(" AND d.source = ?{}", args.len()));
    }
    if let Some(r) = &f.rule {
        args.push(Box::new(r.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.id AND j.rule = ?{})",
            args.len()
        ));
    }
    if let Some(since) = f.since {
        args.push(Box::new(millis(since)));
        sql.push_str(&format!(" AND d.received_at >= ?{}", args.len()));
    }
    if let Some(before) = &f.before {
        args.push(Box::new(before.clone()));
        sql.push_str(&format!(" AND d.id < ?{}", args.len()));
    }
    args.push(Box::new(f.limit.max(1) as i64));
    sql.push_str(&format!(" ORDER BY d.id DESC LIMIT ?{}", args.len()));
    let mut s = conn.prepare(&sql).map_err(db)?;
    let rows = s
        .query_map(rusqlite::params_from_iter(args.iter()), row_to_delivery)
        .map_err(db)?;
    rows.map(|r| r.map(|(row, _)| row).map_err(db)).collect()
}

fn get(conn: &Connection, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
    let id = resolve(conn, key)?;
    let (row, summary, event): (DeliveryRow, String, String) = conn
        .query_row(
            &format!(
                "SELECT {DELIVERY_COLUMNS}, p.summary, p.event FROM deliveries d JOIN payloads p ON p.seq = d.seq WHERE d.id = ?1"
            ),
            params![id],
            |r| Ok((row_to_delivery(r)?.0, r.get(10)?, r.get(11)?)),
        )
        .map_err(db)?;
    let mut jobs = Vec::new();
    let mut s = conn
        .prepare(
            "SELECT id, rule, target, state, attempts, next_attempt_at, last_error, result, request
             FROM jobs WHERE delivery_id = ?1 ORDER BY id",
        )
        .map_err(db)?;
    let rows: Vec<_> = s
        .query_map(params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, String>(8)?,
            ))
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    for (job_id, rule, target, state, attempts, next, last_error, result, request) in rows {
        let mut a = conn
            .prepare_cached(
                "SELECT n, started_at, duration_ms, status, outcome, error, response FROM attempts WHERE job_id = ?1 ORDER BY n",
            )
            .map_err(db)?;
        let history = a
            .query_map(params![job_id], |r| {
                Ok(AttemptRow {
                    n: r.get::<_, i64>(0)? as u32,
                    started_at: r.get(1)?,
                    duration_ms: r.get(2)?,
                    status: r.get::<_, Option<i64>>(3)?.map(|s| s as u16),
                    outcome: r.get(4)?,
                    error: r.get(5)?,
                    response: r.get(6)?,
                })
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        let state: JobState = state.parse()?;
        let waiting = state == JobState::Pending;
        jobs.push(JobDetail {
            id: job_id,
            rule,
            target,
            state,
            attempts: attempts as u32,
            next_attempt_at: waiting.then_some(next),
            last_error,
            result: result.as_deref().map(from_json).transpose()?,
            request: from_json(&request)?,
            history,
        });
    }
    Ok(DeliveryDetail {
        row,
        summary: from_json(&summary)?,
        normalized: from_json(&event)?,
        jobs,
    })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError> {
        let prepared = Box::new(PreparedDelivery::new(delivery)?);
        self.write(|reply| Op::Ingest(prepared, reply)).await
    }

    async fn lease_due(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        let owner = owner.to_owned();
        self.write(|reply| Op::Lease {
            owner,
            limit,
            lease,
            now,
            reply,
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
        self.write(|reply| Op::Record {
            job: job_id,
            delivery_id,
            owner,
            attempt,
            next,
            now,
            reply,
        })
        .await
    }

    async fn release(&self, owner: &str, now: SystemTime) -> Result<(), StoreError> {
        let owner = Some(owner.to_owned());
        self.write(|reply| Op::Release { owner, now, reply }).await
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        self.read(|c| {
            let next: Option<i64> = c
                .query_row(
                    "SELECT MIN(t) FROM (
                        SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'pending'
                        UNION ALL SELECT MIN(lease_until) FROM jobs WHERE state = 'running')",
                    [],
                    |r| r.get(0),
                )
                .map_err(db)?;
            Ok(next.map(from_millis))
        })
        .await
    }

    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        let filter = filter.clone();
        self.read(move |c| list(c, &filter)).await
    }

    async fn get(&self, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
        let key = key.clone();
        self.read(move |c| get(c, &key)).await
    }

    async fn payload(&self, key: &DeliveryKey) -> Result<StoredPayload, StoreError> {
        let key = key.clone();
        self.read(move |c| {
            let id = resolve(c, &key)?;
            let (event, headers, payload): (String, String, Vec<u8>) = c
                .query_row(
                    "SELECT p.event, p.headers, p.payload FROM deliveries d JOIN payloads p ON p.seq = d.seq WHERE d.id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(db)?;
            Ok(StoredPayload {
                event: from_json(&event)?,
                headers: from_json::<BTreeMap<String, String>>(&headers)?,
                payload,
            })
        })
        .await
    }

    async fn replay(
        &self,
        key: &DeliveryKey,
        job: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let (key, job) = (key.clone(), job.map(str::to_owned));
        self.write(|reply| Op::Replay { key, job, now, reply }).await
    }

    async fn add_jobs(
        &self,
        key: &DeliveryKey,
        jobs: Vec<NewJob>,
        summary: Summary,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(|reply| Op::AddJobs {
            key,
            jobs,
            summary: Box::new(summary),
            now,
            reply,
        })
        .await
    }

    async fn purge(&self, cutoff: SystemTime, batch: usize) -> Result<u64, StoreError> {
        self.write(|reply| Op::Purge { cutoff, batch, reply }).await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        self.read(|c| {
            let mut stats = QueueStats::default();
            let mut s = c
                .prepare_cached("SELECT state, COUNT(*) FROM jobs WHERE state IN ('pending', 'running', 'dead') GROUP BY state")
                .map_err(db)?;
            let rows = s
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db)?;
            for row in rows {
                let (state, n) = row.map_err(db)?;
                match state.as_str() {
                    "pending" => stats.pending = n as u64,
                    "running" => stats.running = n as u64,
                    _ => stats.dead = n as u64,
                }
            }
            let oldest: Option<i64> = c
                .query_row("SELECT MIN(created_at) FROM jobs WHERE state IN ('pending', 'running')", [], |r| r.get(0))
                .map_err(db)?;
            stats.oldest_pending = oldest.map(from_millis);
            Ok(stats)
        })
        .await
    }

    /// A probe commit through the writer, gated like a delivery: it fails
    /// when a delivery would (files gone, no room, read-only, full disk,
    /// I/O errors), and when the commit cannot happen in time (a write lock
    /// held by another process). Under load it shares a batch's fsync.
    async fn ready(&self) -> Result<(), StoreError> {
        self.readiness
            .check(|| async {
                tokio::time::timeout(PROBE_TIMEOUT, self.write(Op::Probe))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A database written by the first schema keeps every delivery, job and
    /// attempt through the upgrade, and the upgraded store works on them.
    #[tokio::test]
    async fn version_1_databases_are_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                r#"PRAGMA user_version = 1;
                INSERT INTO deliveries VALUES ('01D1', 'github', 'guid-1', 1000, 'push', 'push', 'acme/app',
                    'refs/heads/main', 'pending',
                    '{"delivery":"guid-1","source":"github","event":"push","duplicate":false,"matched":[{"rule":"r","job":"01J1","target":"gl"}],"skipped":[],"errors":[]}',
                    '{"source":"github","provider":"github","name":"push","kind":"push","delivery":"guid-1","repository":"acme/app","ref":"refs/heads/main","branch":"main","created":false,"deleted":false,"forced":false,"changes":[]}',
                    '{"x-github-event":"push"}', X'7B7D');
                INSERT INTO jobs (id, delivery_id, rule, target, request, state, attempts, next_attempt_at, created_at, updated_at)
                    VALUES ('01J1', '01D1', 'r', 'gl', '{"api":"gitlab_pipeline","project":"acme/app","ref":"main"}', 'pending', 1, 0, 1000, 1000);
                INSERT INTO attempts VALUES ('01J1', 1, 1000, 5, 503, 'retry', 'CI unavailable', NULL);"#,
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let key = DeliveryKey {
            id: "guid-1".into(),
            source: None,
        };
        let detail = store.get(&key).await.unwrap();
        assert_eq!(detail.summary.matched[0].job, "01J1");
        assert_eq!(detail.normalized.repository.as_deref(), Some("acme/app"));
        assert_eq!(detail.jobs.len(), 1);
        assert_eq!(detail.jobs[0].history.len(), 1);
        let payload = store.payload(&key).await.unwrap();
        assert_eq!(payload.payload, b"{}");
        assert_eq!(payload.headers["x-github-event"], "push");
        let leased = store
            .lease_due("test", 10, Duration::from_secs(60), SystemTime::now())
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].delivery, "guid-1");
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version as usize, schema_version());
    }
}
