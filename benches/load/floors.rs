//! Stage costs: what each step of one delivery costs, measured alone in this
//! process before any server starts, so the goals can be compared with what
//! the steps themselves allow on this machine.
//!
//! - one copy of the body (`Bytes::copy_from_slice`), HMAC-SHA256 over it,
//!   and a full `serde_json::Value` parse of it: the floor of any design that
//!   receives, verifies and reads a JSON body;
//! - `intake::receive`: hookbridge's verify, describe and evaluate (what a
//!   request costs before the store);
//! - the SQLite store's ingest, 64 at a time as at c=64 (its writer thread,
//!   the WAL, the fsyncs): process CPU per delivery, and the rate the store
//!   alone reaches without HTTP or a load generator beside it;
//! - the disk: sequential writes with one `fdatasync`, the most payload bytes
//!   per second any design that stores each body once can make durable.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hookbridge::config::LoadMode;
use hookbridge::store::{Attempt, NewDelivery, OpenMode, Store, Transition};
use hookbridge::target::TriggerResult;

use crate::generator::Delivery;
use crate::servers;

/// Per-call cost of a CPU stage in µs: calls repeated for `budget`.
fn per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm caches and lazily built state
    let start = Instant::now();
    let mut n = 0u32;
    while n < 3 || start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// One payload's stage costs.
struct Stages {
    copy: f64,
    hmac: f64,
    parse: f64,
    receive: f64,
    /// Process CPU µs per delivery while the store ingests 64 at a time.
    store_cpu: f64,
    /// Deliveries per second the store alone took, 64 at a time.
    store_rate: f64,
    /// Process CPU µs per job for its lease and its attempt's record.
    book_cpu: f64,
    /// Jobs per second leased and recorded (leases of 128, records 16 at a time).
    book_rate: f64,
}

fn headers(delivery: &Delivery, id: &str) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-github-event", "push".parse().unwrap());
    h.insert("x-github-delivery", id.parse().unwrap());
    h.insert("x-hub-signature-256", delivery.signature.parse().unwrap());
    h
}

async fn stages(
    config: &hookbridge::config::Config,
    store: Arc<dyn Store>,
    body: &Bytes,
    name: &str,
    budget: Duration,
    deliveries: usize,
) -> Stages {
    let delivery = Delivery::new(body.clone(), servers::GITHUB_SECRET, name);
    let source = &config.sources["github"];
    let now = SystemTime::now();
    let copy = per_call(budget, || {
        std::hint::black_box(Bytes::copy_from_slice(body));
    });
    let hmac = per_call(budget, || {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(servers::GITHUB_SECRET.as_bytes()).unwrap();
        mac.update(body);
        std::hint::black_box(mac.finalize());
    });
    let parse = per_call(budget, || {
        std::hint::black_box(serde_json::from_slice::<serde_json::Value>(body).unwrap());
    });
    let h = headers(&delivery, &format!("{name}-0"));
    let receive = per_call(budget, || {
        std::hint::black_box(hookbridge::intake::receive(config, source, &h, body, now).unwrap());
    });

    // The store: deliveries made ready first, then written 64 at a time.
    let ready: Vec<NewDelivery> = (0..deliveries)
        .map(|i| {
            let h = headers(&delivery, &format!("{name}-store-{i}"));
            let intake = hookbridge::intake::receive(config, source, &h, body, now).unwrap();
            hookbridge::intake::delivery(intake, now)
        })
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(ready));
    let pid = std::process::id();
    let (cpu, start) = (servers::cpu_time(pid), Instant::now());
    let writers: Vec<_> = (0..64)
        .map(|_| {
            let (queue, store) = (queue.clone(), store.clone());
            tokio::spawn(async move {
                loop {
                    let Some(d) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    store.ingest(d).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let (wall, cpu) = (start.elapsed(), servers::cpu_time(pid) - cpu);
    let (book_cpu, book_rate) = bookkeeping(&store, name, deliveries).await;
    Stages {
        book_cpu,
        book_rate,
        copy,
        hmac,
        parse,
        receive,
        store_cpu: cpu.as_secs_f64() * 1e6 / deliveries as f64,
        store_rate: deliveries as f64 / wall.as_secs_f64(),
    }
}

/// What triggering costs the store besides the ingest: every job leased
/// (128 at a time, as the dispatcher leases ahead) and its attempt recorded
/// as done (16 at a time, `[dispatch] concurrency`'s default); no CI call.
/// Process CPU µs per job and jobs per second.
async fn bookkeeping(store: &Arc<dyn Store>, owner: &str, jobs: usize) -> (f64, f64) {
    let pid = std::process::id();
    let (cpu, start) = (servers::cpu_time(pid), Instant::now());
    let mut done = 0;
    while done < jobs {
        let leased = store
            .lease_due(owner, 128, Duration::from_secs(300), SystemTime::now())
            .await
            .unwrap();
        assert!(!leased.is_empty(), "{done} of {jobs} jobs leased, then none due");
        done += leased.len();
        for chunk in leased.chunks(16) {
            let records: Vec<_> = chunk
                .iter()
                .map(|job| {
                    let (store, job, owner) = (store.clone(), job.clone(), owner.to_owned());
                    tokio::spawn(async move {
                        let now = SystemTime::now();
                        let attempt = Attempt {
                            started_at: now,
                            duration: Duration::from_millis(1),
                            status: Some(201),
                            error: None,
                            response: Some(r#"{"id":"floor","number":1,"state":"created"}"#.into()),
                            ambiguous: false,
                            reconcile: None,
                        };
                        let result = TriggerResult {
                            id: Some("floor".into()),
                            number: Some(1),
                            ..TriggerResult::default()
                        };
                        store
                            .record_attempt(&job, &owner, attempt, Transition::Done(result), now)
                            .await
                            .unwrap();
                    })
                })
                .collect();
            for r in records {
                r.await.unwrap();
            }
        }
    }
    let (wall, cpu) = (start.elapsed(), servers::cpu_time(pid) - cpu);
    (
        cpu.as_secs_f64() * 1e6 / done as f64,
        done as f64 / wall.as_secs_f64(),
    )
}

/// MB/s of sequential 1 MiB writes followed by one `fdatasync`.
fn disk_bandwidth(dir: &Path, mib: usize) -> f64 {
    use std::io::Write;
    let path = dir.join("bandwidth-probe");
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    f.sync_data().unwrap();
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(path).unwrap();
    (mib << 20) as f64 / secs / 1e6
}

/// Measure and print the stage table.
pub(crate) async fn run(push: &Bytes, large: &Bytes, dir: &Path, smoke: bool) {
    let config_path = dir.join("floors.toml");
    let db = dir.join("floors.db");
    servers::hookbridge_config(
        &config_path,
        servers::free_port(),
        ([127, 0, 0, 1], 9).into(),
        &format!("sqlite://{}", db.display()),
    );
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("env:GITHUB_WEBHOOK_SECRET", servers::GITHUB_SECRET)
        .replace("env:CIRCLECI_TOKEN", servers::CIRCLE_TOKEN);
    let config = hookbridge::config::parse(&config_path, &text, LoadMode::Check)
        .unwrap()
        .config;
    let store = hookbridge::store::open(&config.store, OpenMode::Daemon)
        .await
        .unwrap();
    let budget = Duration::from_millis(if smoke { 100 } else { 700 });
    let (n_push, n_large) = if smoke { (2_000, 40) } else { (20_000, 400) };
    let small = stages(&config, store.clone(), push, "floor-push", budget, n_push).await;
    let big = stages(&config, store.clone(), large, "floor-large", budget, n_large).await;
    drop(store);
    let disk = disk_bandwidth(dir, if smoke { 64 } else { 512 });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;

    println!(
        "stage costs, each alone on this machine (µs per delivery; the store row is process CPU, 64 ingests at a time):"
    );
    println!("| stage | push {} B | large push {} B |", push.len(), large.len());
    println!("|---|---:|---:|");
    let row = |name: &str, a: f64, b: f64| println!("| {name} | {a:.1} | {b:.1} |");
    row("copy the body once", small.copy, big.copy);
    row("HMAC-SHA256 of the body", small.hmac, big.hmac);
    row("parse the body (serde_json::Value)", small.parse, big.parse);
    row(
        "hookbridge receive (verify, describe, evaluate)",
        small.receive,
        big.receive,
    );
    row(
        "hookbridge SQLite ingest (CPU of the process)",
        small.store_cpu,
        big.store_cpu,
    );
    row(
        "hookbridge SQLite lease + record per job (CPU of the process)",
        small.book_cpu,
        big.book_cpu,
    );
    let cap = |s: &Stages| cores * 1e6 / (s.receive + s.store_cpu);
    println!(
        "store alone, 64 at a time: {:.0} push/s, {:.0} large/s; receive + store on {cores} cores allow at most {:.0} push/s, {:.0} large/s",
        small.store_rate,
        big.store_rate,
        cap(&small),
        cap(&big)
    );
    println!(
        "store alone, lease + record: {:.0} jobs/s (push run), {:.0} jobs/s (large run)",
        small.book_rate, big.book_rate
    );
    println!(
        "disk: sequential 1 MiB writes + fdatasync {disk:.0} MB/s: at most {:.0} large pushes/s stored once each",
        disk * 1e6 / large.len() as f64
    );
}
