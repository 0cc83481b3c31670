//! The SQLite schema: its migrations (the version lives in `PRAGMA
//! user_version`), the connection settings every connection gets, and the
//! readiness probe's row.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{db, db_at};
use crate::store::model;
use crate::store::{StoreError, millis};

/// Page size of new databases. Every commit writes each page it touches
/// whole into the WAL, and a small commit (one delivery, a lease, an attempt
/// record) touches a dozen pages of tables and indexes, so small pages keep
/// the bytes written per delivery down; payloads larger than a page go to
/// overflow pages of their own table.
const PAGE_SIZE: usize = 4096;

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
    // Version 4: the running jobs by lease expiry, for takeovers and the
    // dispatcher's next wake-up, without reading every job that ever ran
    // (`jobs_due` holds them all under 'running' until they are vacuumed).
    r#"
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE state = 'running';
"#,
    // Version 5, PostgreSQL's version 6: `jobs_due` holds only pending and
    // dead jobs; running ones are in `jobs_lease`, finished ones (nearly
    // all) in neither. The predicate is written as `OR`ed terms: SQLite uses
    // a partial index when a term of the query's `WHERE` is one of them
    // (`state = 'pending'`), not for `state IN (...)`. Queries by delivery
    // write `+state` so that they keep to `jobs_delivery`.
    r#"
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (state, next_attempt_at) WHERE state = 'pending' OR state = 'dead';
"#,
    // Version 6, PostgreSQL's version 7: concurrency groups. A job's group,
    // the job that superseded it, and when its attempt was let through to
    // the CI (until then a newer job of its group may end it). With
    // `cancel_in_progress`: whether its rule cancels older pipelines, the
    // newer job that is to cancel its pipeline, whether its pipeline may
    // still be running (`pipeline_open`), and the cancels themselves, a
    // queue of their own. The partial indexes hold only the live jobs of
    // groups and the open pipelines; queries name their predicates' terms
    // as written, so that SQLite sees they imply them.
    r#"
ALTER TABLE jobs ADD COLUMN concurrency_group TEXT;
ALTER TABLE jobs ADD COLUMN superseded_by TEXT;
ALTER TABLE jobs ADD COLUMN started_at INTEGER;
ALTER TABLE jobs ADD COLUMN cancel_in_progress INTEGER;
ALTER TABLE jobs ADD COLUMN cancel_by TEXT;
ALTER TABLE jobs ADD COLUMN pipeline_open INTEGER;
CREATE INDEX jobs_group ON jobs (concurrency_group)
    WHERE concurrency_group IS NOT NULL AND (state = 'pending' OR state = 'running');
CREATE INDEX jobs_open ON jobs (concurrency_group) WHERE pipeline_open = 1;
CREATE INDEX jobs_cancel_by ON jobs (cancel_by) WHERE cancel_by IS NOT NULL;
CREATE TABLE cancels (
    job_id          TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    by_job          TEXT NOT NULL,
    pipeline        TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    outcome         TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX cancels_due ON cancels (next_attempt_at) WHERE state = 'pending';
CREATE INDEX cancels_lease ON cancels (lease_until) WHERE state = 'running';
"#,
    // Version 7, PostgreSQL's version 8: the event's commit on its
    // delivery, so the dashboard's search box finds a delivery by sha (or a
    // prefix of it) through an index. Deliveries stored before get theirs
    // from their stored event.
    r#"
ALTER TABLE deliveries ADD COLUMN sha TEXT;
UPDATE deliveries SET sha = (SELECT lower(json_extract(p.event, '$.sha')) FROM payloads p WHERE p.seq = deliveries.seq);
CREATE INDEX deliveries_sha ON deliveries (sha) WHERE sha IS NOT NULL;
"#,
    // Version 8, PostgreSQL's version 9: follow-ups of runs a CI only
    // queued (`store::follow`), a queue of their own like `cancels`: one
    // row per job, stored with the attempt that created the queue entry,
    // leased to read it again (`polls` counts the leases) until the run is
    // known. Ended ones stay (`done`) until their delivery is purged.
    r#"
CREATE TABLE follow_ups (
    job_id          TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    state           TEXT NOT NULL,
    polls           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX follow_ups_due ON follow_ups (next_attempt_at) WHERE state = 'pending';
CREATE INDEX follow_ups_lease ON follow_ups (lease_until) WHERE state = 'running';
"#,
    // Version 9, PostgreSQL's version 10: what a later attempt needs to
    // know of the earlier ones. `trace_context` is the delivery's W3C
    // `traceparent` (an attempt on any replica joins its trace);
    // `leased_at` is when the current lease was taken; `ambiguous_since`
    // is when the earliest attempt of this round began whose outcome is
    // unknown (it may have reached the CI: a timeout, a cut connection, a
    // worker that stopped), so the next attempt reconciles before sending
    // again; `attempts.reconcile` is what that reconcile decided, and why.
    r#"
ALTER TABLE jobs ADD COLUMN trace_context TEXT;
ALTER TABLE jobs ADD COLUMN leased_at INTEGER;
ALTER TABLE jobs ADD COLUMN ambiguous_since INTEGER;
ALTER TABLE attempts ADD COLUMN reconcile TEXT;
"#,
    // Version 10, PostgreSQL's version 11: commit statuses
    // (`store::status`). `jobs.status` is the job's status spec (JSON),
    // `pipeline_state` its pipeline's state as last learned, `pipeline_id`
    // the created pipeline's id, which completion events find it by.
    // `statuses` is the queue of posts, in order per `subject` (source,
    // repository, commit, context); `watches` the pipelines followed to
    // their result (`facts`: what completion events told, JSON);
    // `completions` the completion events that came before any job
    // recorded their pipeline, kept until one does.
    r#"
ALTER TABLE jobs ADD COLUMN status TEXT;
ALTER TABLE jobs ADD COLUMN pipeline_state TEXT;
ALTER TABLE jobs ADD COLUMN pipeline_id TEXT;
CREATE INDEX jobs_pipeline ON jobs (pipeline_id) WHERE pipeline_id IS NOT NULL;
CREATE TABLE statuses (
    seq             INTEGER PRIMARY KEY,
    job_id          TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    subject         TEXT NOT NULL,
    context         TEXT NOT NULL,
    state           TEXT NOT NULL,
    description     TEXT NOT NULL,
    target_url      TEXT,
    post            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    http_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX statuses_subject ON statuses (subject, seq);
CREATE INDEX statuses_job ON statuses (job_id);
CREATE INDEX statuses_due ON statuses (next_attempt_at) WHERE post = 'pending';
CREATE INDEX statuses_lease ON statuses (lease_until) WHERE post = 'running';
CREATE TABLE watches (
    job_id          TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    state           TEXT NOT NULL,
    checks          INTEGER NOT NULL DEFAULT 0,
    next_check_at   INTEGER NOT NULL,
    deadline        INTEGER NOT NULL,
    woken           INTEGER NOT NULL DEFAULT 0,
    facts           TEXT,
    lease_owner     TEXT,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX watches_due ON watches (next_check_at) WHERE state = 'pending';
CREATE INDEX watches_lease ON watches (lease_until) WHERE state = 'running';
CREATE TABLE completions (
    seq             INTEGER PRIMARY KEY,
    pipeline_id     TEXT NOT NULL,
    event           TEXT NOT NULL,
    received_at     INTEGER NOT NULL
);
CREATE INDEX completions_pipeline ON completions (pipeline_id);
CREATE INDEX completions_received ON completions (received_at);
"#,
    // Version 11, PostgreSQL's version 12: deferred rule evaluations
    // (`store::deferral`), a queue of their own like `follow_ups`: one row
    // per rule a delivery's summary lists as `deferred`, stored with the
    // delivery, leased to read the changed files (`attempts` counts the
    // leases), ended `done` with its `outcome` and the `files` note (JSON)
    // once settled. `ordinal` is the rule's place in the summary, so that a
    // delivery shows its deferrals in rule order. Done ones stay until their
    // delivery is purged; `deferrals_delivery` serves the delivery's status,
    // its detail and the purge.
    r#"
CREATE TABLE deferrals (
    id              TEXT PRIMARY KEY,
    delivery_id     TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    source          TEXT NOT NULL,
    rule            TEXT NOT NULL,
    reason          TEXT NOT NULL,
    ordinal         INTEGER NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    outcome         TEXT,
    files           TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX deferrals_delivery ON deferrals (delivery_id);
CREATE INDEX deferrals_due ON deferrals (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deferrals_lease ON deferrals (lease_until) WHERE state = 'running';
"#,
];

/// The schema version this build creates.
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

pub(super) fn configure(conn: &Connection) -> Result<(), StoreError> {
    // Short enough that a delivery queued behind another one waiting is
    // answered (503) within 6 s, before a sender such as GitHub (10 s) gives up.
    conn.busy_timeout(Duration::from_secs(3)).map_err(db)?;
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

pub(super) fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| db_at(path, e))?;
    configure(&conn)?;
    Ok(conn)
}

/// A further connection to the store's file, which must exist: should the
/// file be deleted under the daemon, a new reader fails instead of creating
/// an empty database at the path.
pub(super) fn connect_existing(path: &Path) -> Result<Connection, StoreError> {
    let flags = rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| db_at(path, e))?;
    configure(&conn)?;
    Ok(conn)
}

/// Rewrite the probe row: once the commit holding it returns, a commit can
/// reach the disk.
pub(super) fn probe(conn: &Connection, now: SystemTime) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
    )
    .and_then(|mut s| s.execute(params![millis(now)]))
    .map(|_| ())
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
            Some(table) => Err(StoreError::corrupt(format!(
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{DeliveryKey, Store};

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
                    '{"source":"github","provider":"github","name":"push","kind":"push","delivery":"guid-1","repository":"acme/app","ref":"refs/heads/main","branch":"main","sha":"ABCDEF0123","created":false,"deleted":false,"forced":false,"changes":[]}',
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
        // The commit, read from the stored event, in lower case for search.
        assert_eq!(detail.row.sha.as_deref(), Some("abcdef0123"));
        let payload = store.payload(&key).await.unwrap();
        assert_eq!(payload.payload, b"{}");
        assert_eq!(payload.headers["x-github-event"], "push");
        let leased = store
            .lease_due("test", 10, Duration::from_secs(60), SystemTime::now())
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].delivery, "guid-1");
        // A run the CI only queued is followed up on the upgraded schema.
        let queued = crate::target::TriggerResult {
            follow: Some("3".into()),
            ..Default::default()
        };
        let attempt = crate::store::Attempt {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            status: Some(201),
            error: None,
            response: None,
            ambiguous: false,
            reconcile: None,
        };
        let done = crate::store::Transition::Done(queued);
        store
            .record_attempt(&leased[0], "test", attempt, done, SystemTime::now())
            .await
            .unwrap();
        let follow_ups = store
            .lease_follow_ups("test", 10, Duration::from_secs(60), SystemTime::now())
            .await
            .unwrap();
        assert_eq!(follow_ups.len(), 1);
        assert_eq!(follow_ups[0].job, "01J1");
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version as usize, schema_version());
    }
}
