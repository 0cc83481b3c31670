//! The real `hookbridge` binary, started on a temporary config.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookbridge::store::Store;
use hookbridge::store::sqlite::SqliteStore;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_hookbridge");

/// A running daemon; killed when dropped.
pub(crate) struct Daemon {
    child: Child,
    pub hooks: String,
    pub admin: String,
    logs: Arc<Mutex<Vec<String>>>,
}

/// A scratch directory holding a config and its SQLite file.
pub(crate) struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub(crate) fn new(config: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace { dir };
        ws.write_config(config);
        ws
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("hookbridge.toml")
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        self.dir.path().join("hookbridge.db")
    }

    /// Write the config; `@DB@` is replaced by the SQLite URL in this workspace.
    pub(crate) fn write_config(&self, config: &str) {
        let text = config.replace("@DB@", &format!("sqlite://{}", self.db_path().display()));
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub(crate) fn start(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start(&self.config_path(), self.dir.path(), env)
    }

    /// Wait until no job in this workspace's SQLite store is pending or
    /// running. No lease is left then that a takeover could act on, so nothing
    /// more will be sent: what the CI has received is final. (It cannot pass
    /// early: a job that is to be sent again is still pending or running.)
    pub(crate) async fn settled(&self) {
        super::wait_for(
            Duration::from_secs(30),
            "every job in a final state (done, dead or skipped)",
            async || {
                let store = SqliteStore::open(&self.db_path()).map_err(|e| e.to_string())?;
                let stats = store.stats().await.map_err(|e| e.to_string())?;
                if stats.pending == 0 && stats.running == 0 {
                    Ok(())
                } else {
                    Err(format!("{} pending, {} running", stats.pending, stats.running))
                }
            },
        )
        .await;
    }

    /// Run a CLI command in the workspace; returns (exit code, stdout, stderr).
    pub(crate) fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(self.dir.path())
            .env("HOOKBRIDGE_CONFIG", self.config_path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Daemon {
    /// Start `hookbridge serve` and wait until both listeners are up.
    pub(crate) fn start(config: &Path, cwd: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(Command::new(BIN), config, cwd, env)
    }

    /// Start it with its open-file limit (soft and hard) set to `nofile`, as a
    /// supervisor or container runtime might.
    pub(crate) fn start_with_nofile(config: &Path, cwd: &Path, env: &[(&str, &str)], nofile: u64) -> Daemon {
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(BIN);
        Daemon::spawn(shell, config, cwd, env)
    }

    /// Start `command` (the binary, or a wrapper that runs it) as `serve`.
    pub(crate) fn spawn(mut command: Command, config: &Path, cwd: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = command
            .args(["serve", "--config"])
            .arg(config)
            .args(["--log-format", "json", "--log-level", "hookbridge=debug,info"])
            .current_dir(cwd)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                {
                    let _ = tx.send((
                        v["hooks"].as_str().unwrap_or_default().to_owned(),
                        v["admin"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let Ok((hooks, admin)) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            // The reader drops its sender once it has kept the last line.
            while rx.recv_timeout(Duration::from_secs(5)).is_ok() {}
            panic!("daemon did not start:\n{}", logs.lock().unwrap().join("\n"));
        };
        Daemon {
            child,
            hooks: format!("http://{hooks}"),
            admin: format!("http://{admin}"),
            logs,
        }
    }

    pub(crate) fn hook_url(&self, source: &str) -> String {
        format!("{}/hooks/{source}", self.hooks)
    }

    /// The admin listener's `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown path runs.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGHUP: reload the config.
    pub(crate) fn reload(&self) {
        self.signal("-HUP");
    }

    /// SIGTERM and wait for the exit code.
    pub(crate) fn stop(mut self) -> i32 {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
