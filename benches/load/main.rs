//! Load benchmark: hookbridge against a bare axum server (the ceiling), in one run.
//!
//! ```sh
//! cargo bench --bench load              # full run, a few minutes
//! cargo bench --bench load -- --smoke   # a few seconds per target
//! ```
//!
//! `cargo bench` builds `target/release/hookbridge` (the bench profile is the
//! release profile) and this binary. The run starts the ceiling in a child
//! process, hookbridge as its real release binary with an embedded SQLite
//! store (WAL, `synchronous = FULL`: every ack is after its commit's fsync) in
//! a temporary directory on the same disk as `$TMPDIR`, and a stand-in
//! CircleCI in this process that answers v2 pipeline triggers with 201 and
//! counts them. Both servers get the same scenarios, interleaved; the table
//! reports each, the ratios hookbridge/ceiling, and checks the goals of
//! issue 7. Options: `--smoke`, `--duration SECS` (closed-loop scenarios),
//! `--keep` (keep the temporary directory and its log).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod generator;
mod report;
mod servers;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use generator::{Delivery, Tally};
use report::{Row, Target};
use servers::{Proc, RssWatch, StandIn};

/// Where the benchmark's options come from; `cargo bench` adds `--bench`.
struct Options {
    smoke: bool,
    duration: Duration,
    keep: bool,
    /// Run only the scenarios whose name contains this (for profiling).
    only: Option<String>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let duration = args
        .iter()
        .position(|a| a == "--duration")
        .and_then(|i| args.get(i + 1))
        .map(|s| Duration::from_secs_f64(s.parse().expect("--duration SECS")))
        .unwrap_or(if smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        });
    Options {
        smoke,
        duration,
        keep: args.iter().any(|a| a == "--keep"),
        only: args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .cloned(),
    }
}

/// One scenario, run against both servers.
#[derive(Clone, Copy)]
enum Load {
    Closed(usize),
    Open { rate: u64, secs: u64 },
}

#[derive(Clone, Copy, PartialEq)]
enum Body {
    Push,
    Large,
}

struct Scenario {
    name: &'static str,
    load: Load,
    body: Body,
    bad_signature: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "c=1",
        load: Load::Closed(1),
        body: Body::Push,
        bad_signature: false,
    },
    Scenario {
        name: "c=8",
        load: Load::Closed(8),
        body: Body::Push,
        bad_signature: false,
    },
    Scenario {
        name: "c=64",
        load: Load::Closed(64),
        body: Body::Push,
        bad_signature: false,
    },
    Scenario {
        name: "open 1000/s",
        load: Load::Open { rate: 1000, secs: 5 },
        body: Body::Push,
        bad_signature: false,
    },
    Scenario {
        name: "1 MB c=64",
        load: Load::Closed(64),
        body: Body::Large,
        bad_signature: false,
    },
    Scenario {
        name: "bad sig c=64",
        load: Load::Closed(64),
        body: Body::Push,
        bad_signature: true,
    },
];

fn main() {
    if std::env::args().any(|a| a == servers::CEILING_ARG) {
        servers::serve_ceiling();
        return;
    }
    let opts = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(opts));
}

/// A GitHub push of about 1 MB: 20 commits with long messages and many files.
fn large_push(base: &[u8]) -> Bytes {
    let mut v: serde_json::Value = serde_json::from_slice(base).unwrap();
    let template = v["commits"][0].clone();
    let commits: Vec<serde_json::Value> = (0..20)
        .map(|c| {
            let mut commit = template.clone();
            commit["message"] =
                format!("commit {c}\n\n{}", "lorem ipsum dolor sit amet ".repeat(1400)).into();
            commit["added"] = (0..400).map(|i| format!("src/module_{c}/file_{i}.rs")).collect();
            commit
        })
        .collect();
    v["commits"] = commits.into();
    Bytes::from(serde_json::to_vec(&v).unwrap())
}

/// Latency of appending 4 KiB and `fdatasync` (what a WAL commit costs at
/// least): p50, p99 and max in milliseconds.
fn fsync_probe(dir: &Path, n: usize) -> (f64, f64, f64) {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let page = [7u8; 4096];
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&page).unwrap();
            f.sync_data().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    std::fs::remove_file(path).unwrap();
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[n * 99 / 100], times[n - 1])
}

fn stored_deliveries(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .unwrap()
}

async fn run(opts: Options) {
    let bin = Path::new(env!("CARGO_BIN_EXE_hookbridge"));
    let dir = tempfile::Builder::new()
        .prefix("hookbridge-bench-")
        .tempdir()
        .unwrap();
    let push = Bytes::from(
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/payloads/github/push.json"))
            .unwrap(),
    );
    let large = large_push(&push);
    println!(
        "hookbridge load benchmark ({} mode)",
        if opts.smoke { "smoke" } else { "full" }
    );
    println!(
        "machine: {} CPUs; payloads: push {} B, large push {} B; closed loops {:?} each",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        push.len(),
        large.len(),
        opts.duration
    );
    println!(
        "store: embedded SQLite, WAL; deliveries synchronous=FULL (each 2xx is sent after its commit is fsynced), \
         dispatcher leases and attempt records synchronous=NORMAL"
    );
    println!("work dir: {}", dir.path().display());

    let fsync = fsync_probe(dir.path(), if opts.smoke { 100 } else { 500 });
    println!(
        "disk: write 4 KiB + fdatasync in the work dir: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (the floor under every stored ack)",
        fsync.0, fsync.1, fsync.2
    );

    let ci = StandIn::default();
    let ci_addr = ci.start().await;
    let ceiling = servers::start_ceiling();
    let port = servers::free_port();
    let config = servers::hookbridge_config(dir.path(), port, ci_addr);
    let log = dir.path().join("hookbridge.log");

    // Start-up: the first start creates the database; later ones open it.
    let starts = if opts.smoke { 2 } else { 5 };
    let mut startups = Vec::new();
    for _ in 0..starts - 1 {
        let p = servers::start_hookbridge(bin, &config, port, &log);
        startups.push(p.startup);
        p.stop();
    }
    let hb = servers::start_hookbridge(bin, &config, port, &log);
    startups.push(hb.startup);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = servers::status_kib(hb.pid(), "VmRSS");
    let mut sorted = startups.clone();
    sorted.sort();
    let startup_median = sorted[sorted.len() / 2];
    println!(
        "hookbridge start-up to a listening port: first (new database) {:.1} ms, median of {} {:.1} ms; idle RSS {:.1} MB",
        startups[0].as_secs_f64() * 1e3,
        startups.len(),
        startup_median.as_secs_f64() * 1e3,
        idle_kib as f64 / 1024.0
    );
    println!();

    let db = dir.path().join("hookbridge.db");
    let mut rows = Vec::new();
    let mut stored_acks = 0u64;
    for (n, s) in SCENARIOS.iter().enumerate() {
        if opts.only.as_ref().is_some_and(|o| !s.name.contains(o.as_str())) {
            continue;
        }
        for target in [Target::Ceiling, Target::Hookbridge] {
            let proc: &Proc = if target == Target::Ceiling { &ceiling } else { &hb };
            let body = if s.body == Body::Large {
                large.clone()
            } else {
                push.clone()
            };
            let secret = if s.bad_signature {
                "not-the-secret"
            } else {
                servers::GITHUB_SECRET
            };
            let delivery = Delivery::new(body, secret, &format!("bench-{n}-{}", target.name()));
            let expected: &'static [u16] = match (target, s.bad_signature) {
                (Target::Ceiling, _) => &[200],
                (Target::Hookbridge, true) => &[401],
                (Target::Hookbridge, false) => &[202],
            };
            let stored_before = if s.bad_signature && target == Target::Hookbridge {
                stored_deliveries(&db)
            } else {
                0
            };
            let triggers_before = ci.count();
            let cpu_before = servers::cpu_time(proc.pid());
            let rss = RssWatch::start(proc.pid());
            let tally: Tally = match s.load {
                Load::Closed(c) => {
                    let d = if s.body == Body::Large {
                        opts.duration / 2
                    } else {
                        opts.duration
                    };
                    generator::closed_loop(&[proc.addr], &delivery, c, d, expected).await
                }
                Load::Open { rate, secs } => {
                    let secs = if opts.smoke { 1 } else { secs };
                    generator::open_loop(&[proc.addr], &delivery, rate, Duration::from_secs(secs), expected)
                        .await
                }
            };
            let cpu = servers::cpu_time(proc.pid()) - cpu_before;
            let triggers = ci.count() - triggers_before;
            let peak_kib = rss.finish();
            let mut row = Row::new(target, s.name, &tally, cpu, peak_kib);
            if target == Target::Hookbridge {
                row.triggers_per_sec = Some(triggers as f64 / tally.elapsed.as_secs_f64());
                if s.bad_signature {
                    row.stored_delta = Some(stored_deliveries(&db) - stored_before);
                } else {
                    stored_acks += tally.ok;
                    // Let the dispatcher catch up so scenarios do not bleed into each other.
                    let drained = Instant::now();
                    while ci.count() < stored_acks && drained.elapsed() < Duration::from_secs(60) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    row.drain = Some(drained.elapsed());
                }
            }
            rows.push(row);
        }
    }
    let stored = stored_deliveries(&db) as u64;
    hb.stop();
    ceiling.stop();

    println!("{}", report::table(&rows));
    let startup = report::Startup {
        first: startups[0],
        median: startup_median,
        idle_kib,
    };
    let checks = report::goals(&rows, &startup);
    println!("{}", report::render_goals(&checks));
    println!(
        "durability: {stored} deliveries in the store for {stored_acks} stored acks (202); triggers received {}, unexpected requests at the stand-in {}",
        ci.count(),
        ci.unexpected.load(std::sync::atomic::Ordering::Relaxed)
    );
    if stored != stored_acks {
        println!("WARNING: stored deliveries differ from acknowledged ones");
    }
    if opts.keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
}
