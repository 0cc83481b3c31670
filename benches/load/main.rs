//! Load benchmark: hookbridge against a bare axum server (the ceiling), in one run.
//!
//! ```sh
//! cargo bench --bench load              # full run, a few minutes
//! cargo bench --bench load -- --smoke   # a few seconds per target
//! cargo bench --bench load -- --smoke --store postgres --replicas 1,3
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
//! issue 7. A server's CPU µs/delivery is its processes' CPU time from the
//! start of a scenario's load until the stand-in has its triggers, per
//! delivery answered as expected.
//!
//! Options:
//! - `--smoke`: short scenarios.
//! - `--duration SECS`: length of the closed-loop scenarios.
//! - `--only TEXT`: only the scenarios whose name contains TEXT; `floors` is
//!   the stage-cost table (`floors`), measured before any server starts;
//!   `history` is the dashboard on a 100,000-delivery store (`history.rs`),
//!   on SQLite, and on PostgreSQL too with `--store postgres`.
//! - `--keep`: keep the temporary directory with configs and logs.
//! - `--store postgres`: after the SQLite run, run the same scenarios on
//!   hookbridge with a PostgreSQL store: a fresh database `hb_bench_<ulid>` on
//!   the server of `HOOKBRIDGE_BENCH_POSTGRES_URL` (else
//!   `HOOKBRIDGE_TEST_POSTGRES_URL`, else the local one), dropped at the end,
//!   also on a panic. The table gains the PostgreSQL server's CPU per
//!   delivery (its processes, from `/proc`, over the same window as
//!   hookbridge's; the whole server, so other clients of it count too), and
//!   the PostgreSQL goals are checked at c=64.
//! - `--replicas N[,M…]`: with `--store postgres`, how many hookbridge
//!   processes share the database, one setup (and database) per count, run
//!   one after the other; default 1. The load is spread over the replicas
//!   round-robin, so the total concurrency is the scenario's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod floors;
mod generator;
mod history;
/// The tests' throw-away PostgreSQL databases.
#[allow(dead_code)]
#[path = "../../tests/support/pg.rs"]
mod pg;
mod postgres;
mod report;
mod servers;
mod setup;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use generator::{Delivery, Tally};
use report::{Row, Target};
use servers::{RssWatch, StandIn};
use setup::Setup;

/// Where the benchmark's options come from; `cargo bench` adds `--bench`.
struct Options {
    smoke: bool,
    duration: Duration,
    keep: bool,
    /// Run only the scenarios whose name contains this (for profiling).
    only: Option<String>,
    /// With `--store postgres`: the replica counts to run, one setup each;
    /// empty without it.
    pg_replicas: Vec<usize>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let smoke = args.iter().any(|a| a == "--smoke");
    let duration = value("--duration")
        .map(|s| Duration::from_secs_f64(s.parse().expect("--duration SECS")))
        .unwrap_or(if smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        });
    let postgres = match value("--store").as_deref() {
        None | Some("sqlite") => false,
        Some("postgres") => true,
        Some(other) => panic!("--store sqlite|postgres, not `{other}`"),
    };
    let pg_replicas = match (postgres, value("--replicas")) {
        (false, None) => Vec::new(),
        (false, Some(_)) => panic!("--replicas needs --store postgres"),
        (true, None) => vec![1],
        (true, Some(list)) => replica_counts(&list),
    };
    Options {
        smoke,
        duration,
        keep: args.iter().any(|a| a == "--keep"),
        only: value("--only"),
        pg_replicas,
    }
}

/// `1,3` as `[1, 3]`.
fn replica_counts(list: &str) -> Vec<usize> {
    let count = |n: &str| n.trim().parse().ok().filter(|&n| n > 0);
    list.split(',')
        .map(|n| count(n).expect("--replicas N[,M...], each ≥ 1"))
        .collect()
}

/// One scenario, run against every server.
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

/// The request bodies, built once.
struct Payloads {
    push: Bytes,
    large: Bytes,
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
    let payloads = Payloads {
        large: large_push(&push),
        push,
    };
    println!(
        "hookbridge load benchmark ({} mode)",
        if opts.smoke { "smoke" } else { "full" }
    );
    println!(
        "machine: {} CPUs; payloads: push {} B, large push {} B; closed loops {:?} each",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        payloads.push.len(),
        payloads.large.len(),
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

    if opts.only.as_ref().is_none_or(|o| "floors".contains(o.as_str())) {
        floors::run(&payloads.push, &payloads.large, dir.path(), opts.smoke).await;
    }

    if opts.only.as_ref().is_none_or(|o| "history".contains(o.as_str())) {
        history::run(bin, dir.path(), opts.smoke, false).await;
        if !opts.pg_replicas.is_empty() {
            history::run(bin, dir.path(), opts.smoke, true).await;
        }
        if opts.only.is_some() {
            return;
        }
    }

    let ci = StandIn::default();
    let ci_addr = ci.start().await;
    let mut ceiling = Setup::ceiling(servers::start_ceiling(), &ci);
    let (mut sqlite, startup) = start_sqlite(bin, dir.path(), ci_addr, &ci, opts.smoke).await;

    let scenarios: Vec<(usize, &Scenario)> = SCENARIOS
        .iter()
        .enumerate()
        .filter(|(_, s)| opts.only.as_ref().is_none_or(|o| s.name.contains(o.as_str())))
        .collect();
    let mut rows = Vec::new();
    for &(n, s) in &scenarios {
        for setup in [&mut ceiling, &mut sqlite] {
            rows.push(measure(setup, n, s, &payloads, &opts).await);
        }
    }
    let mut durability = vec![sqlite.finish().await];
    // One PostgreSQL setup at a time: the server's CPU is then only this setup's.
    for &replicas in &opts.pg_replicas {
        let mut pg = Setup::postgres(replicas, bin, dir.path(), &ci, ci_addr).await;
        for &(n, s) in &scenarios {
            rows.push(measure(&mut pg, n, s, &payloads, &opts).await);
        }
        durability.push(pg.finish().await);
    }
    ceiling.stop();
    println!();

    rows.sort_by_key(|r| SCENARIOS.iter().position(|s| s.name == r.scenario));
    println!("{}", report::table(&rows));
    let checks = report::goals(&rows, &startup);
    println!("{}", report::render_goals(&checks));
    if !opts.pg_replicas.is_empty() {
        println!("{}", report::render_goals(&report::postgres_goals(&rows)));
    }
    for d in &durability {
        println!("{}", d.render());
    }
    if opts.keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
}

/// hookbridge on SQLite in `dir`, after timing its start-up: the first start
/// creates the database, later ones open it. Prints the start-up line.
async fn start_sqlite(
    bin: &Path,
    dir: &Path,
    ci_addr: SocketAddr,
    ci: &StandIn,
    smoke: bool,
) -> (Setup, report::Startup) {
    let port = servers::free_port();
    let (config, db, log) = (
        dir.join("hookbridge.toml"),
        dir.join("hookbridge.db"),
        dir.join("hookbridge.log"),
    );
    servers::hookbridge_config(&config, port, ci_addr, &format!("sqlite://{}", db.display()));
    let starts = if smoke { 2 } else { 5 };
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
    let startup = report::Startup {
        first: startups[0],
        median: sorted[sorted.len() / 2],
        idle_kib,
    };
    println!(
        "hookbridge start-up to a listening port: first (new database) {:.1} ms, median of {} {:.1} ms; idle RSS {:.1} MB",
        startup.first.as_secs_f64() * 1e3,
        startups.len(),
        startup.median.as_secs_f64() * 1e3,
        idle_kib as f64 / 1024.0
    );
    (Setup::sqlite(hb, db, log, ci), startup)
}

/// One scenario against one setup: the load, then for stored acks the wait
/// until the stand-in has every trigger. CPU is measured over both.
async fn measure(setup: &mut Setup, n: usize, s: &Scenario, payloads: &Payloads, opts: &Options) -> Row {
    let target = setup.target;
    let body = if s.body == Body::Large {
        payloads.large.clone()
    } else {
        payloads.push.clone()
    };
    let secret = if s.bad_signature {
        "not-the-secret"
    } else {
        servers::GITHUB_SECRET
    };
    let delivery = Delivery::new(body, secret, &format!("bench-{n}-{}", target.slug()));
    let expected: &'static [u16] = match (target, s.bad_signature) {
        (Target::Ceiling, _) => &[200],
        (_, true) => &[401],
        (_, false) => &[202],
    };
    let stored_before = if s.bad_signature {
        setup.stored_deliveries().await
    } else {
        None
    };
    let triggers_before = setup.triggers();
    let (cpu_before, pg_before) = (setup.cpu(), setup.pg_cpu());
    let wal_before = setup.pg_wal().await;
    let rss = setup.watch_rss();
    let replicas = setup.addrs();
    let tally: Tally = match s.load {
        Load::Closed(c) => {
            let d = if s.body == Body::Large {
                opts.duration / 2
            } else {
                opts.duration
            };
            generator::closed_loop(&replicas, &delivery, c, d, expected).await
        }
        Load::Open { rate, secs } => {
            let secs = if opts.smoke { 1 } else { secs };
            generator::open_loop(&replicas, &delivery, rate, Duration::from_secs(secs), expected).await
        }
    };
    let peak_kib = rss.into_iter().map(RssWatch::finish).max().unwrap_or(0);
    let triggers = setup.triggers() - triggers_before;
    let drain = if target != Target::Ceiling && !s.bad_signature {
        Some(setup.drain(tally.ok).await)
    } else {
        None
    };
    // Saturating: a process that exits between two reads of /proc takes its time along.
    let cpu = setup.cpu().saturating_sub(cpu_before);
    let pg_cpu = setup
        .pg_cpu()
        .zip(pg_before)
        .map(|(after, before)| after.saturating_sub(before));

    let mut row = Row::new(target, s.name, &tally, cpu, peak_kib);
    row.pg_cpu_us_per_delivery = pg_cpu.map(|c| report::per_delivery(c, tally.ok));
    let wal = setup
        .pg_wal()
        .await
        .zip(wal_before)
        .map(|(after, before)| after.saturating_sub(before));
    row.pg_wal_bytes_per_delivery = wal.map(|w| w as f64 / tally.ok.max(1) as f64);
    row.drain = drain;
    row.untriggered = setup.untriggered();
    if target != Target::Ceiling {
        row.triggers_per_sec = Some(triggers as f64 / tally.elapsed.as_secs_f64());
    }
    if let Some(before) = stored_before {
        let after = setup.stored_deliveries().await.unwrap_or(before);
        row.stored_delta = Some(after as i64 - before as i64);
    }
    row
}
