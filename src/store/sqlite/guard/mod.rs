//! Noticing that the SQLite store can no longer keep what it would acknowledge.
//!
//! SQLite writes through file descriptors it opened at start. When the
//! database file, its WAL, its shared-memory index or the daemon's lock file
//! is deleted or replaced while the daemon runs, every commit still
//! "succeeds", into a file that no process will ever open again: a restart
//! finds none of it. And a full disk still takes the small commits that fit
//! into the WAL's old frames, while bigger deliveries fail and nothing is left
//! for the dispatcher to record its attempts.
//!
//! [`Guard`] checks, in the writer thread:
//! - **file identity**: the (device, inode) found at each path against the one
//!   recorded at open, before an op that takes in new work and again after its
//!   commit, before anyone is answered. A difference is permanent (the open
//!   descriptors point at the old files for good), so from then on the store
//!   refuses new work until a restart opens the files at the paths;
//! - **room**: new deliveries are refused while the file system holding the
//!   store has less than [`RESERVE`] bytes free after them (or is mounted
//!   read-only), which keeps room for the dispatcher to drain the queue.
//!
//! Which op must pass which check is its [`Gate`]. And `serve` does not start
//! on a store it could only read ([`refuse_read_only`]).

use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytesize::ByteSize;
use rusqlite::Connection;

use super::{StoreError, db_at};

/// Free space kept for the queue's own bookkeeping (leases, attempt records,
/// WAL checkpoints): new deliveries are refused below it. Four of the
/// writer's largest batches.
pub(super) const RESERVE: u64 = 16 << 20;

/// A file's identity: what a path resolves to, independent of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    #[cfg(unix)]
    fn of(meta: &Metadata) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Without inode numbers nothing is watched.
    #[cfg(not(unix))]
    fn of(_: &Metadata) -> Option<FileId> {
        None
    }
}

/// What an op must prove before it runs, and again before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// The dispatcher's bookkeeping (and purges): it goes on with the files
    /// it has open, so deliveries acknowledged before a loss still reach the CI.
    Open,
    /// Answers an operator: only into the files a restart will read.
    Files,
    /// Takes in a delivery (or says one could be taken): the files, and room.
    Room,
}

/// A path and the file the store opened there.
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    id: FileId,
    /// The daemon's lock file: its loss leaves the data where it was.
    lock: bool,
}

/// Checks that what the store writes is what a restart will read.
#[derive(Debug)]
pub(super) struct Guard {
    /// The directory holding the store, for the free-space check.
    dir: PathBuf,
    watched: Vec<Watched>,
    /// Set once a watched file went away; never cleared (see the module doc).
    lost: OnceLock<String>,
    /// Set once the database, its WAL or its index went away (not only the
    /// lock file): what they hold is then reachable through the open
    /// descriptors only, and is saved ([`rescue`]).
    data_lost: std::sync::atomic::AtomicBool,
}

impl Guard {
    /// Record the files as they are now, once the store's connections have
    /// them open. The lock file is identified by the descriptor the daemon
    /// holds, so even a swap before this call is caught.
    pub(super) fn new(db: &Path, lock: Option<(&Path, &File)>) -> Result<Guard, StoreError> {
        let meta = std::fs::metadata(db)
            .map_err(|e| StoreError::unavailable(format!("cannot inspect `{}`: {e}", db.display())))?;
        let mut watched = Vec::new();
        if let Some(id) = FileId::of(&meta) {
            watched.push(Watched {
                path: db.to_path_buf(),
                id,
                lock: false,
            });
        }
        // The WAL and its index exist while any connection is open (ours are,
        // for the store's lifetime); should one be missing, it is not watched.
        for suffix in ["-wal", "-shm"] {
            let path = sidecar(db, suffix);
            if let Some(id) = std::fs::metadata(&path).ok().as_ref().and_then(FileId::of) {
                watched.push(Watched {
                    path,
                    id,
                    lock: false,
                });
            }
        }
        if let Some((path, file)) = lock {
            let meta = file
                .metadata()
                .map_err(|e| StoreError::unavailable(format!("cannot inspect `{}`: {e}", path.display())))?;
            if let Some(id) = FileId::of(&meta) {
                watched.push(Watched {
                    path: path.to_path_buf(),
                    id,
                    lock: true,
                });
            }
        }
        Ok(Guard {
            dir: directory(db),
            watched,
            lost: OnceLock::new(),
            data_lost: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Are the files at the paths still the ones the store writes to?
    pub(super) fn check_files(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        if let Some(why) = self.lost.get()
            && self.data_lost.load(Ordering::Relaxed)
        {
            return Err(why.clone());
        }
        for w in &self.watched {
            let found = match std::fs::metadata(&w.path) {
                Ok(meta) => FileId::of(&meta),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                // Not a verdict about the file: this batch fails, the next one looks again.
                Err(e) => return Err(format!("cannot inspect `{}`: {e}", w.path.display())),
            };
            if found != Some(w.id) {
                let what = if found.is_none() {
                    "deleted or moved"
                } else {
                    "replaced by another file"
                };
                if !w.lock {
                    self.data_lost.store(true, Ordering::Relaxed);
                }
                let after = if w.lock {
                    "another hookbridge may now serve this store; stop this one (what it acknowledged is in the store at its path)"
                } else {
                    "nothing written now would survive a restart"
                };
                return Err(self.lose(
                    format!(
                        "`{}` was {what} while hookbridge had it open; {after}",
                        w.path.display()
                    ),
                    w.lock,
                ));
            }
        }
        match self.lost.get() {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Whether the database, its WAL or its index went away.
    pub(super) fn data_lost(&self) -> bool {
        self.data_lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Is there room for `bytes` more, beyond the [`RESERVE`]?
    pub(super) fn check_room(&self, bytes: u64) -> Result<(), String> {
        let space = match disk_space(&self.dir) {
            Ok(Some(space)) => space,
            // A file system that reports no sizes: nothing to compare.
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("cannot inspect `{}`: {e}", self.dir.display())),
        };
        if space.read_only {
            return Err(format!(
                "the file system holding `{}` is mounted read-only",
                self.dir.display()
            ));
        }
        let needed = RESERVE.saturating_add(bytes);
        if space.free < needed {
            return Err(format!(
                "the file system holding `{}` has {} free; new deliveries need {} ({} of it kept for the queue)",
                self.dir.display(),
                ByteSize(space.free),
                ByteSize(needed),
                ByteSize(RESERVE)
            ));
        }
        Ok(())
    }

    /// Remember why the files are lost, and say so in the log once.
    fn lose(&self, why: String, lock: bool) -> String {
        if self.lost.set(why.clone()).is_ok() {
            if lock {
                tracing::error!(
                    reason = %why,
                    "the store's lock file is no longer the one hookbridge holds: another hookbridge may \
                     now serve this store. This one answers new deliveries 503 and /readyz fails; stop it \
                     (what it acknowledged is in the store at its path) and leave one daemon on the store"
                );
            } else {
                tracing::error!(
                    reason = %why,
                    "the store's files are no longer the ones hookbridge writes to: new deliveries are \
                     answered 503 and /readyz fails until hookbridge is restarted"
                );
            }
        } else if !lock {
            tracing::error!(reason = %why, "the store's data files are gone too");
        }
        self.lost.get().cloned().unwrap_or_default()
    }
}

/// Save what the store holds, read through the descriptors it still has
/// open, into a new file beside the database (or, when its directory is
/// gone, in the temporary directory), and say in the log where it is and how
/// many acknowledged jobs it holds that are not yet done: a restart opens
/// the files at the paths, and whatever was acknowledged into the lost ones
/// would otherwise be gone. A snapshot of the moment of the loss: jobs done
/// after it run again once it is restored (at least once, never lost).
pub(super) fn rescue(conn: &Connection) -> bool {
    let Some(db) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return true;
    };
    let name = db
        .file_name()
        .map_or_else(|| "hookbridge.db".into(), |n| n.to_string_lossy().into_owned());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The pid too: two daemons on one store (its lock file deleted) lose
    // their files in the same second.
    let rescued = format!("{name}.rescued-{stamp}-{}", std::process::id());
    let pending: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')",
            [],
            |r| r.get(0),
        )
        .unwrap_or(-1);
    let mut errors = Vec::new();
    for dir in [directory(&db), std::env::temp_dir()] {
        let target = dir.join(&rescued);
        if target.exists() {
            // Not ours to write over, nor to remove.
            errors.push(format!("{}: exists already", target.display()));
            continue;
        }
        match conn.execute("VACUUM INTO ?1", [target.to_string_lossy()]) {
            Ok(_) => {
                tracing::error!(
                    saved = %target.display(),
                    jobs_not_done = pending,
                    store = %db.display(),
                    "the store's content as it was when its files were lost is saved: to deliver what was \
                     acknowledged, stop hookbridge, move the saved file to the store's path (removing any \
                     -wal and -shm files beside it) and start it again"
                );
                return true;
            }
            Err(e) => {
                // Nothing half-written is left to be mistaken for a copy.
                let _ = std::fs::remove_file(&target);
                errors.push(format!("{}: {e}", target.display()));
            }
        }
    }
    tracing::error!(
        jobs_not_done = pending,
        errors = %errors.join("; "),
        "the store's content could not be saved after its files were lost (tried again every \
         30 s); until hookbridge stops, its open files can still be copied from /proc/<pid>/fd"
    );
    false
}

/// The reason `serve` refuses a store it cannot write.
pub(super) fn read_only(path: &Path, why: impl std::fmt::Display) -> StoreError {
    StoreError::invalid(format!(
        "the store `{}` cannot be written ({why}); `hookbridge serve` writes the database and, beside it, its WAL and lock files",
        path.display()
    ))
}

/// Refuse a store `serve` could only read. SQLite opens a file it cannot
/// write read-only without an error, and every delivery would then be
/// answered 503; better not to start at all.
pub(super) fn refuse_read_only(path: &Path) -> Result<(), StoreError> {
    let dir = directory(path);
    if let Ok(Some(space)) = disk_space(&dir)
        && space.read_only
    {
        return Err(read_only(path, "read-only file system"));
    }
    // SQLite creates its WAL and index beside the database.
    writable(&dir).map_err(|e| read_only(path, format_args!("its directory `{}`: {e}", dir.display())))?;
    if path.exists() {
        writable(path).map_err(|e| read_only(path, format_args!("the file: {e}")))?;
    }
    let conn = Connection::open(path).map_err(|e| db_at(path, e))?;
    match conn.is_readonly(rusqlite::MAIN_DB) {
        Ok(false) => Ok(()),
        Ok(true) => Err(read_only(path, "SQLite can open it only for reading")),
        Err(e) => Err(db_at(path, e)),
    }
}

/// `hb.db` → `hb.db-wal`.
fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The directory a store path lives in (`.` for a bare file name).
fn directory(db: &Path) -> PathBuf {
    match db.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What `statvfs` says about a file system.
#[derive(Debug, Clone, Copy)]
struct Space {
    /// Bytes an unprivileged process may still write.
    free: u64,
    read_only: bool,
}

/// Free space and mount flags of the file system holding `dir`; `None` when
/// it reports no sizes (some network and virtual file systems).
#[cfg(unix)]
fn disk_space(dir: &Path) -> io::Result<Option<Space>> {
    let s = rustix::fs::statvfs(dir)?;
    if s.f_blocks == 0 {
        return Ok(None);
    }
    Ok(Some(Space {
        free: s.f_bavail.saturating_mul(s.f_frsize),
        read_only: s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
    }))
}

#[cfg(not(unix))]
fn disk_space(_: &Path) -> io::Result<Option<Space>> {
    Ok(None)
}

/// May this process write `path`? Asks the kernel with the effective ids, so
/// it knows what permission bits do not show: a read-only mount, an
/// immutable file or directory (which stops root too).
#[cfg(unix)]
fn writable(path: &Path) -> io::Result<()> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    Ok(accessat(CWD, path, Access::WRITE_OK, AtFlags::EACCESS)?)
}

#[cfg(not(unix))]
fn writable(_: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests;
