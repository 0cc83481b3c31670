//! The processes under load and around it: the ceiling (a bare axum server in
//! a child process), hookbridge (the real release binary), the stand-in CI
//! (in the bench process), and what `/proc` tells about a process.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// The argument that makes the bench binary serve as the ceiling instead.
pub(crate) const CEILING_ARG: &str = "--serve-ceiling";

/// The body of the bare "read the body, answer 200" server (run in a child process).
pub(crate) fn serve_ceiling() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = axum::Router::new().fallback(|body: Bytes| async move {
            std::hint::black_box(body.len());
            StatusCode::OK
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

/// A child process under load, killed when dropped.
pub(crate) struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// Time from spawn to a port accepting connections.
    pub startup: Duration,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait.
    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the ceiling: this binary again with [`CEILING_ARG`]; it prints its address.
pub(crate) fn start_ceiling() -> Proc {
    use std::io::BufRead;
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg(CEILING_ARG)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line.trim().parse().unwrap();
    Proc {
        child,
        addr,
        startup: started.elapsed(),
    }
}

/// A free port on 127.0.0.1 (bound and released; fine for a benchmark).
pub(crate) fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) const GITHUB_SECRET: &str = "bench-github-secret";
pub(crate) const CIRCLE_TOKEN: &str = "bench-circle-token";

/// Write the hookbridge config to `path`: one GitHub source, one rule, the
/// stand-in as CircleCI, the store at `store` (a `sqlite://` or `postgres://` URL).
pub(crate) fn hookbridge_config(path: &Path, port: u16, ci: SocketAddr, store: &str) {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
max_body = "25MiB"

[admin]
listen = "127.0.0.1:0"

[store]
url = "{store}"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.circleci]
type = "circleci"
url = "http://{ci}"
token = "env:CIRCLECI_TOKEN"

[[rules]]
name = "pipeline"
source = "github"
events = ["push"]
branches = ["master", "main"]
[rules.trigger]
target = "circleci"
project = "gh/Codertocat/Hello-World"
branch = "{{{{ event.branch }}}}"
parameters = {{ sha = "{{{{ event.sha }}}}", deploy = true }}
"#
    );
    std::fs::write(path, text).unwrap();
}

/// Start `hookbridge serve` and time it until its webhook port accepts a connection.
pub(crate) fn start_hookbridge(bin: &Path, config: &Path, port: u16, log: &Path) -> Proc {
    start_hookbridge_with(bin, config, port, log, &[])
}

/// [`start_hookbridge`] with more environment variables.
pub(crate) fn start_hookbridge_with(
    bin: &Path,
    config: &Path,
    port: u16,
    log: &Path,
    env: &[(&str, &str)],
) -> Proc {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(config)
        .env("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET)
        .env("CIRCLECI_TOKEN", CIRCLE_TOKEN)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    loop {
        if TcpStream::connect(addr).is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("hookbridge exited during start-up: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "hookbridge did not start"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    Proc {
        child,
        addr,
        startup: started.elapsed(),
    }
}

/// The fields of `/proc/<pid>/stat` the benchmark reads; times in clock ticks.
pub(crate) struct ProcStat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// CPU time of children that exited and were waited for.
    pub cutime: u64,
    pub cstime: u64,
}

/// `/proc/<pid>/stat` of a live process.
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, from field 3 (state) on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse().ok();
    Some(ProcStat {
        ppid: field(1)? as u32,
        utime: field(11)?,
        stime: field(12)?,
        cutime: field(13)?,
        cstime: field(14)?,
    })
}

/// Clock ticks (`sysconf(_SC_CLK_TCK)`, the unit of `/proc` times) as a duration.
pub(crate) fn ticks(n: u64) -> Duration {
    Duration::from_nanos(n * 1_000_000_000 / rustix::param::clock_ticks_per_second())
}

/// CPU time (user + system) of a process so far.
pub(crate) fn cpu_time(pid: u32) -> Duration {
    proc_stat(pid).map_or(Duration::ZERO, |s| ticks(s.utime + s.stime))
}

/// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM).
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Peak RSS over a window: the kernel's high-water mark (reset through
/// `clear_refs`), backed by sampling every 5 ms where the reset is refused.
pub(crate) struct RssWatch {
    pid: u32,
    reset: bool,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    pub(crate) fn start(pid: u32) -> RssWatch {
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(status_kib(pid, "VmRSS")));
        let (s, p) = (stop.clone(), peak.clone());
        let sampler = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(status_kib(pid, "VmRSS"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssWatch {
            pid,
            reset,
            stop,
            peak,
            sampler: Some(sampler),
        }
    }

    /// Peak RSS in KiB since `start`.
    pub(crate) fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        let sampled = self.peak.load(Ordering::Relaxed);
        if self.reset {
            sampled.max(status_kib(self.pid, "VmHWM"))
        } else {
            sampled
        }
    }
}

/// The stand-in CircleCI: answers v2 pipeline triggers with 201 and counts them.
#[derive(Clone, Default)]
pub(crate) struct StandIn {
    triggers: Arc<AtomicU64>,
    unexpected: Arc<AtomicU64>,
}

impl StandIn {
    pub(crate) async fn start(&self) -> SocketAddr {
        let shared = self.clone();
        let app =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let shared = shared.clone();
                async move { shared.answer(method, uri, headers, body) }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn answer(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let trigger = method == Method::POST
            && uri.path() == "/api/v2/project/gh/Codertocat/Hello-World/pipeline"
            && headers.get("circle-token").is_some_and(|t| t == CIRCLE_TOKEN)
            && serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|b| b["branch"] == "master");
        if !trigger {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return StatusCode::NOT_FOUND.into_response();
        }
        let n = self.triggers.fetch_add(1, Ordering::Relaxed) + 1;
        let body = serde_json::json!({
            "id": format!("5034460f-c7c4-4c43-9457-{n:012x}"),
            "state": "pending",
            "number": n,
            "created_at": "2024-01-01T00:00:00Z",
        });
        (StatusCode::CREATED, axum::Json(body)).into_response()
    }

    /// Triggers answered so far.
    pub(crate) fn count(&self) -> u64 {
        self.triggers.load(Ordering::Relaxed)
    }

    /// Requests that were not a valid trigger so far.
    pub(crate) fn unexpected(&self) -> u64 {
        self.unexpected.load(Ordering::Relaxed)
    }
}
