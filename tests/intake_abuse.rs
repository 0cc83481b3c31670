//! Unauthenticated senders cannot hold back intake: stalled and slow bodies,
//! stalled headers, idle connections. The real server runs in-process on
//! 127.0.0.1 with a real SQLite store; the attackers are raw TCP sockets.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hookbridge::config::LoadMode;
use hookbridge::server::{self, App};
use hookbridge::store::{self, OpenMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "abuse-test-secret";

struct Server {
    hooks: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(server_settings: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            r#"
[server]
{server_settings}
[store]
url = "sqlite://{db}"
[sources.github]
type = "github"
secrets = ["{SECRET}"]
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
"#,
            db = dir.path().join("hb.db").display()
        );
        let config = hookbridge::config::parse(&dir.path().join("hb.toml"), &toml, LoadMode::Serve)
            .unwrap()
            .config;
        let store = store::open(&config.store, OpenMode::Daemon).await.unwrap();
        let app = App::new(config, store);
        let hooks = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = hooks.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::run(app, hooks, admin, shutdown.clone()));
        Server {
            hooks: addr,
            shutdown,
            task,
            _dir: dir,
        }
    }

    /// A signed push, as GitHub sends it, on a new connection; the status and
    /// how long the answer took.
    async fn signed_push(&self, delivery: &str) -> (u16, Duration) {
        let body = support::payload("github/push.json");
        let started = Instant::now();
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .post(format!("http://{}/hooks/github", self.hooks))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", support::github_signature(SECRET, &body))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), started.elapsed())
    }

    /// A connection that sent the head of a push declaring `length` bytes, and
    /// then `sent` bytes of its body.
    async fn declare(&self, length: u64, sent: usize) -> TcpStream {
        self.send_head(length, sent, "").await
    }

    /// [`Server::declare`], returning once the server is reading the body, so
    /// the stall is in place: the head asks `Expect: 100-continue`, which is
    /// answered when the handler starts reading (a refusal would answer a
    /// final status instead).
    async fn stall(&self, length: u64, sent: usize) -> TcpStream {
        let mut conn = self.send_head(length, sent, "Expect: 100-continue\r\n").await;
        reading_the_body(&mut conn).await;
        conn
    }

    async fn send_head(&self, length: u64, sent: usize, extra: &str) -> TcpStream {
        let mut conn = TcpStream::connect(self.hooks).await.unwrap();
        let head = format!(
            "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: stall\r\n\
             X-Hub-Signature-256: sha256=00\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\
             {extra}\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&vec![b' '; sent]).await.unwrap();
        conn
    }

    async fn stop(self) {
        self.shutdown.cancel();
        // Attackers' connections may still be open: they are cut off by their
        // timeouts, well within this bound.
        let _ = tokio::time::timeout(Duration::from_secs(40), self.task).await;
    }
}

/// Wait for the `100 Continue` a head with `Expect: 100-continue` gets once
/// the handler starts reading its body.
async fn reading_the_body(conn: &mut TcpStream) {
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut answer = vec![0; CONTINUE.len()];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(CONTINUE),
        "the server is not reading the body"
    );
}

/// Read until the peer closes; the bytes read and how long that took.
async fn read_until_closed(conn: &mut TcpStream, bound: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(bound, conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was still open after {bound:?}");
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_declaring_20_mb_and_stalling_holds_back_nobody() {
    let server = Server::start("").await;
    let stalled = server.stall(20_000_000, 0).await;
    // And one that sent part of its body before stalling.
    let partial = server.stall(20_000_000, 256 * 1024).await;
    for i in 0..3 {
        let (status, took) = server.signed_push(&format!("after-20mb-{i}")).await;
        assert_eq!(status, 202);
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
    drop((stalled, partial));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_declaring_5_mb_hold_back_nobody() {
    // A small budget, so that reserving declared lengths would exhaust it
    // many times over.
    let server = Server::start(
        r#"body_memory = "16MiB"
max_body = "6MiB""#,
    )
    .await;
    let mut stalled = Vec::new();
    for i in 0..50 {
        // Every fifth one sends 64 KiB of its body first (a chunk of it held).
        let sent = if i % 5 == 0 { 64 * 1024 } else { 0 };
        stalled.push(server.stall(5_000_000, sent).await);
    }
    for i in 0..3 {
        let (status, took) = server.signed_push(&format!("after-50x5mb-{i}")).await;
        assert_eq!(status, 202);
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
    drop(stalled);
    server.stop().await;
}

/// Keep a connection's body arriving a byte every `every`, as slowly as
/// `body_idle_timeout` allows and far below any useful rate, until the server
/// closes it; then what it answered.
async fn trickle(mut conn: TcpStream, every: Duration) -> String {
    let mut interval = tokio::time::interval(every);
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if conn.write_all(b" ").await.is_err() {
                    break;
                }
            }
            read = conn.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// What the server answered each attacker so far (those it has not
/// answered are still open).
async fn answered(attackers: &mut tokio::task::JoinSet<String>) -> Vec<String> {
    let mut answers = Vec::new();
    while let Some(Some(answer)) = attackers.try_join_next().map(Result::ok) {
        answers.push(answer);
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_that_fill_body_memory_and_stall_are_cut_off_for_a_signed_delivery() {
    // 28 senders of the same source each send 32 KiB of a 100 KB body and
    // stop: together they hold all of what one source may use (seven eighths
    // of 1 MiB), and stay under body_idle_timeout.
    let server = Server::start(r#"body_memory = "1MiB""#).await;
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..28 {
        let conn = server.stall(100_000, 32 * 1024).await;
        attackers.spawn(trickle(conn, Duration::from_secs(5)));
    }
    // Past the half second a body is read before it may be cut off.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for i in 0..3 {
        let (status, took) = server.signed_push(&format!("after-stalls-{i}")).await;
        assert_eq!(status, 202);
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
    let answers = answered(&mut attackers).await;
    assert!(!answers.is_empty(), "a stalled sender was cut off");
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_memory"), "{answer}");
    }
    attackers.abort_all();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_senders_arriving_all_the_time_do_not_take_the_room_freed_for_a_delivery() {
    // 224 stalled bodies of 4 KiB fill one source's share; meanwhile a new
    // one arrives every 100 ms, each ready to take the 4 KiB a cut frees
    // (a signed push needs 9 KB).
    let server = Server::start(r#"body_memory = "1MiB""#).await;
    let mut stalled = Vec::new();
    for _ in 0..224 {
        stalled.push(server.stall(4097, 4096).await);
    }
    let stream = {
        let hooks = server.hooks;
        tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut conn = TcpStream::connect(hooks).await.unwrap();
                let head = "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n\
                            X-Hub-Signature-256: sha256=00\r\nContent-Length: 4097\r\n\r\n";
                conn.write_all(head.as_bytes()).await.unwrap();
                conn.write_all(&[b' '; 4096]).await.unwrap();
                open.push(conn);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    for i in 0..3 {
        let (status, took) = server.signed_push(&format!("amid-arrivals-{i}")).await;
        assert_eq!(status, 202);
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
    stream.abort();
    drop(stalled);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_trickling_senders_hold_back_no_signed_delivery() {
    // 300 connections, each 3 KiB into a body 200 bytes longer and then a
    // byte every 100 ms (never idle long enough for body_idle_timeout):
    // together all one source may hold of the 1 MiB budget. (Declaring much
    // more than they send would leave room for a push: every body that holds
    // room must be able to finish.)
    let server = Server::start(r#"body_memory = "1MiB""#).await;
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let conn = server.stall(3 * 1024 + 200, 3 * 1024).await;
        attackers.spawn(trickle(conn, Duration::from_millis(100)));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for i in 0..3 {
        let (status, took) = server.signed_push(&format!("after-trickles-{i}")).await;
        assert_eq!(status, 202);
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
    let answers = answered(&mut attackers).await;
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    // Only what made room was cut: most trickles are still being read.
    assert!(answers.len() < 100, "{} cut off", answers.len());
    attackers.abort_all();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_stops_mid_body_is_cut_off_within_body_idle_timeout() {
    let server = Server::start(r#"body_idle_timeout = "1s""#).await;
    let mut conn = server.declare(100_000, 1000).await;
    let (answer, took) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_idle_timeout"), "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "cut off after {took:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_that_stalls_is_cut_off_and_holds_back_nobody() {
    let server = Server::start(
        r#"body_memory = "1MiB"
body_idle_timeout = "2s""#,
    )
    .await;
    let mut conn = TcpStream::connect(server.hooks).await.unwrap();
    conn.write_all(
        b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nTransfer-Encoding: chunked\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = vec![b' '; 256 * 1024];
    conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    conn.write_all(&chunk).await.unwrap();
    conn.write_all(b"\r\n").await.unwrap();
    reading_the_body(&mut conn).await;
    let (status, took) = server.signed_push("after-chunked").await;
    assert_eq!(status, 202);
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let (answer, _) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_closed() {
    let server = Server::start(r#"idle_timeout = "1s""#).await;
    // Never sends a byte.
    let mut silent = TcpStream::connect(server.hooks).await.unwrap();
    // Sends its headers a byte at a time, slower than the timeout allows.
    let mut slow = TcpStream::connect(server.hooks).await.unwrap();
    slow.write_all(b"POST /hooks/github HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let (answer, took) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    let (_, took) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");

    // A kept-alive connection is closed once idle for as long.
    let mut kept = TcpStream::connect(server.hooks).await.unwrap();
    kept.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 404");
    let (_, took) = read_until_closed(&mut kept, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_bodies_beyond_body_memory_is_read_without_deadlock() {
    // Twelve 256 KiB bodies sent at once in small writes through a 1 MiB
    // budget: each is read as it arrives, none waits forever on another.
    let server = Server::start(r#"body_memory = "1MiB""#).await;
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let addr = server.hooks;
        sends.spawn(async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let length = 256 * 1024;
            conn.write_all(
                format!(
                    "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: {length}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            for _ in 0..16 {
                conn.write_all(&[b' '; 16 * 1024]).await.unwrap();
                tokio::task::yield_now().await;
            }
            let mut answer = [0u8; 12];
            conn.read_exact(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        });
    }
    let answers = tokio::time::timeout(Duration::from_secs(10), sends.join_all())
        .await
        .expect("every body was read");
    // Read in full and then refused for their bad signature: not 503 or 408.
    assert!(answers.iter().all(|a| a == "HTTP/1.1 401"), "{answers:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_over_cleartext_http2_is_accepted_with_small_windows() {
    let server = Server::start("").await;
    let body = support::payload("github/push.json");
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..3 {
        let response = client
            .post(format!("http://{}/hooks/github", server.hooks))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", format!("h2-{i}"))
            .header("X-Hub-Signature-256", support::github_signature(SECRET, &body))
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status().as_u16(), 202);
    }
    // A body larger than the 64 KiB windows still arrives whole (here:
    // refused for its signature after being read, not cut off or reset).
    let response = client
        .post(format!("http://{}/hooks/github", server.hooks))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "h2-large")
        .header("X-Hub-Signature-256", "sha256=00")
        .body(vec![b' '; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_with_an_unusable_delivery_id_is_refused_with_400() {
    let server = Server::start("").await;
    let long = "d".repeat(300);
    let (status, _) = server.signed_push(&long).await;
    assert_eq!(status, 400);
    let (status, _) = server.signed_push("tab\there").await;
    assert_eq!(status, 400);
    let (status, _) = server.signed_push(&"d".repeat(256)).await;
    assert_eq!(status, 202);
    server.stop().await;
}

/// Send a push head carrying one extra header of `padding` bytes and an
/// empty JSON body; the status line of the answer.
async fn push_with_header_of(server: &Server, padding: usize) -> String {
    let mut conn = TcpStream::connect(server.hooks).await.unwrap();
    let head = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: head\r\n\
         X-Hub-Signature-256: sha256=00\r\nX-Padding: {}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\n\r\n{{}}",
        "p".repeat(padding)
    );
    // The server may answer and close before it has read all of a head it refuses.
    let _ = conn.write_all(head.as_bytes()).await;
    let (answer, _) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_64_kib_is_refused_with_431() {
    // The head is read into the connection's buffer, which is capped at
    // 64 KiB (memory per connection, before any authentication).
    let server = Server::start("").await;
    assert_eq!(
        push_with_header_of(&server, 48 << 10).await,
        "HTTP/1.1 401 Unauthorized",
        "a 48 KiB head is read and the request verified"
    );
    assert_eq!(
        push_with_header_of(&server, 80 << 10).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_is_offered_small_limits() {
    // What one unauthenticated HTTP/2 connection may make the server hold:
    // 32 requests at once, each with a header list of at most 16 KiB, and
    // 64 KiB of body data in flight. Read from the server's SETTINGS frame.
    let server = Server::start("").await;
    let mut conn = TcpStream::connect(server.hooks).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS");
    let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; length];
    conn.read_exact(&mut payload).await.unwrap();
    let settings: std::collections::HashMap<u16, u32> = payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    assert_eq!(settings.get(&MAX_CONCURRENT_STREAMS), Some(&32), "{settings:?}");
    assert_eq!(settings.get(&MAX_HEADER_LIST_SIZE), Some(&16384), "{settings:?}");
    // Absent means the protocol's default, 65,535.
    assert!(
        settings.get(&INITIAL_WINDOW_SIZE).is_none_or(|w| *w <= 65_535),
        "{settings:?}"
    );
    drop(conn);
    server.stop().await;
}
