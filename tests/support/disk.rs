//! Real file-system trouble for tests: a small tmpfs to fill or cover with a
//! read-only view. Mounting needs root (CI has it); [`is_root`] lets a test
//! say it was skipped elsewhere.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this process may mount file systems.
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A tmpfs of its own (for a store); unmounted when dropped.
pub(crate) struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            path,
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Cover the tmpfs with a read-only view of itself: what the daemon
    /// opened stays writable (a remount would fail while files are open for
    /// writing), but the path, and every new file under it, is read-only.
    pub(crate) fn cover_read_only(&self) -> ReadOnlyView {
        let path = self.path.to_str().unwrap();
        run("mount", &["--bind", "-o", "ro", path], &self.path);
        ReadOnlyView {
            path: self.path.clone(),
        }
    }

    /// Write a file until the file system is full; returns its path.
    pub(crate) fn fill(&self) -> PathBuf {
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 512, 1] {
            let buf = vec![0xA5u8; chunk];
            while file.write_all(&buf).and_then(|()| file.flush()).is_ok() {}
        }
        let _ = file.sync_all();
        path
    }
}

/// A read-only bind mount over a directory; removed when dropped.
pub(crate) struct ReadOnlyView {
    path: PathBuf,
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

pub(crate) fn run(cmd: &str, args: &[&str], path: &Path) {
    let status = Command::new(cmd).args(args).arg(path).status().unwrap();
    assert!(status.success(), "{cmd} {args:?} {} failed", path.display());
}
