//! `Type=notify`: the real daemon talks to a `$NOTIFY_SOCKET` this test listens
//! on, and reads its secrets from `$CREDENTIALS_DIRECTORY` as `LoadCredential=`
//! provides them.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::daemon::Workspace;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[admin]
listen = "127.0.0.1:0"

[store]
url = "@DB@"

[sources.github]
type = "github"
secrets = ["file:${CREDENTIALS_DIRECTORY}/github-webhook-secret"]

[targets.circleci]
type = "circleci"
url = "http://127.0.0.1:9"
token = "file:${CREDENTIALS_DIRECTORY}/circleci-token"
"#;

/// A stand-in for systemd's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: String,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        NotifySocket {
            socket,
            path: path.display().to_string(),
            seen: Vec::new(),
        }
    }

    /// Wait until a datagram holds the line `state`; panics with all seen so far.
    fn expect(&mut self, state: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l == state) {
                    return msg;
                }
            }
        }
        panic!("no `{state}` within {within:?}; received: {:?}", self.seen);
    }
}

fn credentials(ws: &Workspace) -> String {
    let creds = ws.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("github-webhook-secret"), "gh-secret\n").unwrap();
    std::fs::write(creds.join("circleci-token"), "cc-token\n").unwrap();
    creds.display().to_string()
}

#[test]
fn notifies_ready_reloading_and_stopping() {
    let ws = Workspace::new(CONFIG);
    let creds = credentials(&ws);
    let mut notify = NotifySocket::bind(ws.dir.path());
    let daemon = ws.start(&[
        ("NOTIFY_SOCKET", notify.path.as_str()),
        ("CREDENTIALS_DIRECTORY", creds.as_str()),
    ]);
    notify.expect("READY=1", Duration::from_secs(10));

    // Ready means ready: the admin listener answers at once (as a HEALTHCHECK would ask).
    let admin = daemon.admin.trim_start_matches("http://").to_owned();
    let by_name = admin.replace("127.0.0.1", "localhost");
    for probe in [
        &["healthcheck", "--addr", &admin][..],
        &["healthcheck", "--ready", "--addr", &admin],
        &["healthcheck", "--addr", &by_name],
    ] {
        let (code, out, err) = ws.cli(probe, &[]);
        assert_eq!(code, 0, "{out}{err}");
    }

    daemon.reload();
    notify.expect("RELOADING=1", Duration::from_secs(10));
    notify.expect("READY=1", Duration::from_secs(10));

    let code = daemon.stop();
    notify.expect("STOPPING=1", Duration::from_secs(10));
    assert_eq!(code, 0);
}

#[test]
fn feeds_the_watchdog_at_half_the_interval() {
    let ws = Workspace::new(CONFIG);
    let creds = credentials(&ws);
    let mut notify = NotifySocket::bind(ws.dir.path());
    let daemon = ws.start(&[
        ("NOTIFY_SOCKET", notify.path.as_str()),
        ("CREDENTIALS_DIRECTORY", creds.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ]);
    notify.expect("READY=1", Duration::from_secs(10));
    let started = Instant::now();
    notify.expect("WATCHDOG=1", Duration::from_secs(5));
    notify.expect("WATCHDOG=1", Duration::from_secs(5));
    notify.expect("WATCHDOG=1", Duration::from_secs(5));
    // Three pings at 200 ms (the first at once): well within one 400 ms interval each.
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(daemon);
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let ws = Workspace::new(CONFIG);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _out, err) = ws.cli(&["healthcheck", "--addr", &port.to_string()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("/healthz"), "{err}");
}

/// A listener that accepts and never answers (a hung daemon): the probe
/// gives up after `--timeout` and says so in words.
#[test]
fn healthcheck_says_when_no_answer_came_in_time() {
    let ws = Workspace::new(CONFIG);
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hung.local_addr().unwrap().to_string();
    let (code, _out, err) = ws.cli(&["healthcheck", "--addr", &addr, "--timeout", "1"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no answer within 1 s"), "{err}");
    // Out of 1..=3600 is a usage error, not a probe that waits for ever.
    for timeout in ["0", "3601", "99999999999"] {
        let (code, _out, err) = ws.cli(&["healthcheck", "--addr", &addr, "--timeout", timeout], &[]);
        assert_eq!(code, 2, "{timeout}: {err}");
        assert!(err.contains("--timeout"), "{err}");
    }
    let (code, _out, err) = ws.cli(&["deliveries", "list", "--limit", "0"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--limit"), "{err}");
    drop(hung);
}

#[test]
fn serve_refuses_to_start_without_the_credentials() {
    let ws = Workspace::new(CONFIG);
    let (code, _out, err) = ws.cli(
        &["serve", "--config", "hookbridge.toml"],
        &[("CREDENTIALS_DIRECTORY", "/nonexistent-credentials")],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("/nonexistent-credentials/github-webhook-secret"),
        "{err}"
    );
    assert!(!err.contains("gh-secret"));
}

#[test]
fn check_expands_credentials_directory_in_file_secrets() {
    let ws = Workspace::new(CONFIG);
    let creds = credentials(&ws);
    let (code, out, err) = ws.cli(
        &["check", "--config", "hookbridge.toml"],
        &[("CREDENTIALS_DIRECTORY", creds.as_str())],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok — "), "{out}");
    assert!(!err.contains("warning"), "{err}");
}
