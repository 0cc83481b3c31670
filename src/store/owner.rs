//! Who holds a lease: `host:pid:id`, one per dispatcher run.
//!
//! At start a SQLite daemon takes back the leases a previous process left
//! behind (its attempts were cut short), but never those of a process that
//! is still running on this machine: they are its attempts in flight, and
//! taking them back would send each a second time. That happens when a
//! second daemon starts on a store whose lock file was deleted. An owner of
//! this machine (its host name) is dead when its pid is this process's own
//! (a run before, in this process), runs another program, or runs nothing;
//! one that cannot be inspected (another user's) counts as running. An
//! owner of another host is taken for a previous container's. (PostgreSQL
//! replicas take nothing back at start: a dead replica's leases expire.)

/// A new owner name for a dispatcher of this process.
pub fn new_owner() -> String {
    format!("{}:{}:{}", hostname(), std::process::id(), ulid::Ulid::generate())
}

/// What a start does with the leases of `owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// A process of this machine that is gone (or this one, before):
    /// its leases are taken back now.
    Dead,
    /// Still running here: its leases are its attempts in flight.
    Running,
    /// Another machine's (or not an owner name): its leases expire.
    Elsewhere,
}

/// Whose `owner`'s leases these are, seen from this process.
pub fn left_by(owner: &str) -> Left {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(_id), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return Left::Elsewhere;
    };
    if host != hostname() {
        return Left::Elsewhere;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return Left::Elsewhere;
    };
    if pid == std::process::id() {
        return Left::Dead;
    }
    // No such process: gone. One this process may not inspect (another
    // user's): perhaps a hookbridge, so left to its lease.
    let theirs = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => exe,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Left::Dead,
        Err(_) => return Left::Running,
    };
    match std::fs::read_link("/proc/self/exe") {
        Ok(ours) if ours == theirs => Left::Running,
        Ok(_) => Left::Dead,
        Err(_) => Left::Running,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hookbridge".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_told_apart() {
        let ours = new_owner();
        assert_eq!(left_by(&ours), Left::Dead, "a previous run of this process");
        let host = hostname();
        // A pid that runs another program (this test's parent is cargo or a shell).
        let parent = std::os::unix::process::parent_id();
        assert_eq!(left_by(&format!("{host}:{parent}:x")), Left::Dead);
        // A pid nobody has.
        assert_eq!(left_by(&format!("{host}:4294967295:x")), Left::Dead);
        assert_eq!(left_by("other-host:1:x"), Left::Elsewhere);
        assert_eq!(left_by("garbage"), Left::Elsewhere);
        assert_eq!(left_by(&format!("{host}:notapid:x")), Left::Elsewhere);
        // A second process of this executable.
        let exe = std::env::current_exe().unwrap();
        let mut child = std::process::Command::new(exe)
            .args(["--exact", "store::owner::tests::sleeps_when_asked", "--ignored"])
            .env("HOOKBRIDGE_TEST_SLEEP", "1")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let running = left_by(&format!("{host}:{}:x", child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(running, Left::Running);
    }

    /// The second process of `owners_are_told_apart`.
    #[test]
    #[ignore = "started by owners_are_told_apart"]
    fn sleeps_when_asked() {
        if std::env::var_os("HOOKBRIDGE_TEST_SLEEP").is_some() {
            std::thread::sleep(std::time::Duration::from_secs(30));
        }
    }
}
