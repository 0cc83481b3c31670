#![allow(clippy::unwrap_used)]

use super::*;

fn files(dir: &Path) -> PathBuf {
    let db = dir.join("hb.db");
    for p in [db.clone(), sidecar(&db, "-wal"), sidecar(&db, "-shm")] {
        std::fs::write(p, b"x").unwrap();
    }
    db
}

#[test]
fn a_deleted_file_is_lost_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let db = files(dir.path());
    let guard = Guard::new(&db, None).unwrap();
    assert_eq!(guard.watched.len(), 3);
    guard.check_files().unwrap();
    std::fs::remove_file(sidecar(&db, "-shm")).unwrap();
    let e = guard.check_files().unwrap_err();
    assert!(e.contains("hb.db-shm` was deleted"), "{e}");
    // Putting a file back at the path does not make it the same file.
    std::fs::write(sidecar(&db, "-shm"), b"x").unwrap();
    assert_eq!(guard.check_files().unwrap_err(), e);
}

#[test]
fn a_replaced_file_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let db = files(dir.path());
    let guard = Guard::new(&db, None).unwrap();
    let other = dir.path().join("other");
    std::fs::write(&other, b"y").unwrap();
    std::fs::rename(&other, &db).unwrap();
    let e = guard.check_files().unwrap_err();
    assert!(e.contains("hb.db` was replaced"), "{e}");
}

#[test]
fn the_lock_file_is_identified_by_the_held_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let db = files(dir.path());
    let lock_path = dir.path().join("hb.db.lock");
    let lock = File::create(&lock_path).unwrap();
    let guard = Guard::new(&db, Some((&lock_path, &lock))).unwrap();
    guard.check_files().unwrap();
    std::fs::remove_file(&lock_path).unwrap();
    std::fs::write(&lock_path, b"").unwrap();
    let e = guard.check_files().unwrap_err();
    assert!(e.contains("hb.db.lock` was replaced"), "{e}");
}

#[test]
fn a_rescue_never_writes_over_or_removes_a_file_it_did_not_make() {
    // Another daemon's copy under the same name (same second, same pid
    // in another namespace): left as it is; this one goes elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hb.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE jobs (state TEXT); INSERT INTO jobs VALUES ('pending');")
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let theirs: Vec<PathBuf> = (now..now + 3)
        .map(|t| {
            dir.path()
                .join(format!("hb.db.rescued-{t}-{}", std::process::id()))
        })
        .collect();
    for p in &theirs {
        std::fs::write(p, b"another daemon's copy").unwrap();
    }
    assert!(rescue(&conn));
    for p in &theirs {
        assert_eq!(std::fs::read(p).unwrap(), b"another daemon's copy");
    }
    // Ours went to the temporary directory.
    let ours = (now..now + 3)
        .map(|t| std::env::temp_dir().join(format!("hb.db.rescued-{t}-{}", std::process::id())))
        .find(|p| p.exists())
        .unwrap();
    let saved = Connection::open(&ours).unwrap();
    let n: i64 = saved
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    std::fs::remove_file(ours).unwrap();
}

#[test]
fn room_is_the_reserve_plus_what_comes() {
    let dir = tempfile::tempdir().unwrap();
    let db = files(dir.path());
    let guard = Guard::new(&db, None).unwrap();
    let Some(space) = disk_space(dir.path()).unwrap() else {
        return;
    };
    if space.read_only || space.free < RESERVE {
        assert!(guard.check_room(0).is_err());
        return;
    }
    guard.check_room(0).unwrap();
    let e = guard.check_room(space.free).unwrap_err();
    assert!(e.contains("kept for the queue"), "{e}");
    // No overflow on absurd sizes.
    assert!(guard.check_room(u64::MAX).is_err());
}
