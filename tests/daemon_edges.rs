//! The real daemon at its edges: a low open-file limit under thousands of idle
//! connections, and reloads that fail without taking signal handling along.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::daemon::{Daemon, Workspace};
use tokio::net::TcpStream;

const SECRET: &str = "edges-secret";

fn config(extra_source: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
idle_timeout = "60s"
[admin]
listen = "127.0.0.1:0"
[sources.github]
type = "github"
secrets = ["{SECRET}"]
{extra_source}
[targets.circleci]
type = "circleci"
url = "http://127.0.0.1:9"
token = "t"
[[rules]]
name = "build"
source = "github"
events = ["push"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"
"#
    )
}

async fn signed_push(url: &str, delivery: &str) -> u16 {
    let body = support::payload("github/push.json");
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(url)
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", support::github_signature(SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_idle_connections_do_not_starve_the_listener() {
    // This test holds 3,000 sockets itself.
    let _ = rlimit::increase_nofile_limit(8192);
    let ws = Workspace::new(&config(""));
    let daemon = Daemon::start_with_nofile(&ws.config_path(), ws.dir.path(), &[], 1024);
    let logs = daemon.logs();
    let capacity_line = logs
        .lines()
        .find(|l| l.contains("open-file limit allows"))
        .unwrap_or_else(|| panic!("the capacity is logged:\n{logs}"));
    let capacity: serde_json::Value = serde_json::from_str(capacity_line).unwrap();
    assert_eq!(capacity["fd_limit"], 1024, "{capacity_line}");
    let connections = capacity["connections"].as_u64().unwrap();
    assert!(connections < 1000, "{capacity_line}");

    let addr = daemon.hooks.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..3000 {
        let conn = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
            .await
            .expect("connect within 5 s")
            .unwrap();
        idle.push(conn);
    }
    let started = Instant::now();
    assert_eq!(signed_push(&daemon.hook_url("github"), "beside-idle").await, 202);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        started.elapsed()
    );
    assert!(
        daemon.logs().lines().all(|l| !l.contains("panicked")),
        "{}",
        daemon.logs()
    );
    drop(idle);
    assert_eq!(daemon.stop(), 0);
}

/// Wait until `needle` has been logged `times` times.
async fn logged(daemon: &Daemon, needle: &str, times: usize) {
    support::eventually(Duration::from_secs(10), needle, || {
        daemon.logs().matches(needle).count() >= times
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reloads_leave_sighup_and_sigterm_working() {
    let ws = Workspace::new(&config(""));
    let daemon = Daemon::start(&ws.config_path(), ws.dir.path(), &[]);
    let gitea = daemon.hook_url("gitea");
    let unsigned = || async {
        reqwest::Client::new()
            .post(&gitea)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(unsigned().await, 404);

    // Not TOML at all.
    ws.write_config("[sources.github\n");
    daemon.reload();
    logged(&daemon, "config reload refused", 1).await;
    // The path is now a directory: the file cannot be read.
    std::fs::remove_file(ws.config_path()).unwrap();
    std::fs::create_dir(ws.config_path()).unwrap();
    daemon.reload();
    logged(&daemon, "cannot read config file", 1).await;
    assert_eq!(
        signed_push(&daemon.hook_url("github"), "between-reloads").await,
        202
    );

    // SIGHUP still reloads: a valid config with one more source applies.
    std::fs::remove_dir(ws.config_path()).unwrap();
    ws.write_config(&config("[sources.gitea]\ntype = \"gitea\"\nsecrets = [\"g\"]"));
    daemon.reload();
    logged(&daemon, "config reloaded", 1).await;
    assert_eq!(unsigned().await, 401);
    // And SIGTERM still stops it, cleanly.
    assert_eq!(daemon.stop(), 0);
}

/// A free port on 127.0.0.1 (another process could take it before the daemon
/// binds it; the test then fails to start rather than passing wrongly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `serve` on `ws`'s config, logging at debug level in `format`.
fn serve_at_debug(
    ws: &Workspace,
    format: &str,
    stdout: std::process::Stdio,
    stderr: std::process::Stdio,
) -> std::process::Child {
    std::process::Command::new(support::daemon::BIN)
        .args([
            "serve",
            "--log-format",
            format,
            "--log-level",
            "debug",
            "--config",
        ])
        .arg(ws.config_path())
        .current_dir(ws.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// `config("")` with its listeners on these ports.
fn config_on(hooks: u16, admin: u16) -> String {
    config("")
        .replace(
            "listen = \"127.0.0.1:0\"\nidle_timeout",
            &format!("listen = \"127.0.0.1:{hooks}\"\nidle_timeout"),
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"127.0.0.1:{admin}\""),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_source_name_cannot_write_escape_sequences_into_the_log() {
    // The human format at debug level (a terminal's `serve`): the source
    // name from the URL is escaped in the webhook's span.
    let (hooks, admin) = (free_port(), free_port());
    let ws = Workspace::new(&config_on(hooks, admin));
    let log = ws.dir.path().join("serve.log");
    let mut child = serve_at_debug(
        &ws,
        "pretty",
        std::fs::File::create(&log).unwrap().into(),
        std::fs::File::create(ws.dir.path().join("serve.err"))
            .unwrap()
            .into(),
    );
    support::eventually(Duration::from_secs(20), "the daemon listens", || {
        std::net::TcpStream::connect(("127.0.0.1", hooks)).is_ok()
    })
    .await;
    let url = format!("http://127.0.0.1:{hooks}/hooks/%1b%5b31mRED%1b%5d0;title%07");
    let status = reqwest::Client::new()
        .post(url)
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404);
    support::eventually(Duration::from_secs(10), "the refusal is logged", || {
        let out = std::fs::read(&log).unwrap_or_default();
        let err = std::fs::read(ws.dir.path().join("serve.err")).unwrap_or_default();
        String::from_utf8_lossy(&[out, err].concat()).contains("unknown source")
    })
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let written = [
        std::fs::read(&log).unwrap(),
        std::fs::read(ws.dir.path().join("serve.err")).unwrap(),
    ]
    .concat();
    let text = String::from_utf8_lossy(&written);
    let line = text.lines().find(|l| l.contains("unknown source")).unwrap();
    // No escape at all: the name is escaped, and a log that is not a
    // terminal gets no colours either.
    assert!(!written.contains(&0x1b) && !written.contains(&0x07), "{line:?}");
    assert!(
        line.contains("source=\\u{1b}[31mRED\\u{1b}]0;title\\u{7}"),
        "{line:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_written_loses_no_delivery() {
    // stderr on a full disk: every log write fails with ENOSPC.
    let (hooks, admin) = (free_port(), free_port());
    let ws = Workspace::new(&config_on(hooks, admin));
    let mut child = serve_at_debug(
        &ws,
        "json",
        std::process::Stdio::null(),
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
            .into(),
    );
    let url = format!("http://127.0.0.1:{hooks}/hooks/github");
    support::eventually(Duration::from_secs(20), "the daemon listens", || {
        std::net::TcpStream::connect(("127.0.0.1", hooks)).is_ok()
    })
    .await;
    for i in 0..5 {
        assert_eq!(signed_push(&url, &format!("no-log-{i}")).await, 202);
    }
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert!(child.try_wait().unwrap().is_none(), "the daemon is still running");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Send `body` on `conn` as an unsigned push and read the start of the answer.
async fn unsigned_push(conn: &mut TcpStream, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: big\r\n\
         X-Hub-Signature-256: sha256=00\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut answer = [0u8; 12];
    conn.read_exact(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_that_each_sent_a_large_body_keep_little_memory() {
    // An unauthenticated sender sends a 1 MiB body on each of many
    // connections and keeps them open: every body is read (and refused,
    // 401), and what each idle connection keeps afterwards is its read
    // buffer. hyper's default lets that grow to ~400 KiB; the listener caps
    // it at 64 KiB.
    const CONNECTIONS: u64 = 200;
    let ws = Workspace::new(&config(""));
    let daemon = ws.start(&[]);
    let addr = daemon.hooks.trim_start_matches("http://").to_owned();
    let body = format!("{{\"a\":\"{}\"}}", "x".repeat(1 << 20)).into_bytes();
    let warm = {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(unsigned_push(&mut conn, &body).await, "HTTP/1.1 401");
        conn
    };
    let before = rss_kib(daemon.pid());
    let mut idle = vec![warm];
    for _ in 0..CONNECTIONS / 8 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (addr, body) = (addr.clone(), body.clone());
            batch.spawn(async move {
                let mut conn = TcpStream::connect(&addr).await.unwrap();
                let answer = unsigned_push(&mut conn, &body).await;
                (conn, answer)
            });
        }
        for (conn, answer) in batch.join_all().await {
            assert_eq!(answer, "HTTP/1.1 401");
            idle.push(conn);
        }
    }
    let grown = rss_kib(daemon.pid()).saturating_sub(before);
    let per_connection = grown / CONNECTIONS;
    eprintln!("{CONNECTIONS} idle connections grew the daemon by {grown} KiB ({per_connection} KiB each)");
    assert!(
        per_connection < 256,
        "{CONNECTIONS} idle connections that each sent 1 MiB grew the daemon by {grown} KiB ({per_connection} KiB each)"
    );
    drop(idle);
    assert_eq!(daemon.stop(), 0);
}
