//! The results table, the ratios to the ceiling, the goals of issue 7 (on
//! SQLite), and the PostgreSQL goals when `--store postgres` ran.

use std::fmt::Write;
use std::time::Duration;

use crate::generator::Tally;

/// What a row measured: the ceiling, or hookbridge on a store.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Ceiling,
    Sqlite,
    /// PostgreSQL with this many replicas.
    Postgres(usize),
}

impl Target {
    /// The table's "server" column.
    pub(crate) fn label(self) -> String {
        match self {
            Target::Ceiling => "ceiling".into(),
            Target::Sqlite => "hookbridge sqlite".into(),
            Target::Postgres(n) => format!("hookbridge pg×{n}"),
        }
    }

    /// A part of delivery ids: ASCII, no spaces.
    pub(crate) fn slug(self) -> String {
        match self {
            Target::Ceiling => "ceiling".into(),
            Target::Sqlite => "hookbridge".into(),
            Target::Postgres(n) => format!("pg{n}"),
        }
    }
}

/// CPU time per delivery in µs.
pub(crate) fn per_delivery(cpu: Duration, deliveries: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / deliveries.max(1) as f64
}

/// One scenario on one server.
pub(crate) struct Row {
    pub target: Target,
    pub scenario: &'static str,
    pub requests: u64,
    /// Answers with the expected status (200 ceiling, 202 stored, 401 bad signature).
    pub ok: u64,
    pub not_ok: u64,
    /// What the answers that were not as expected were: statuses, and no answer.
    pub not_ok_detail: String,
    pub acks_per_sec: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// The server's CPU (all replicas) from the start of the load until its
    /// triggers are drained, per delivery answered as expected.
    pub cpu_us_per_delivery: f64,
    /// The PostgreSQL server's CPU over the same window, per delivery.
    pub pg_cpu_us_per_delivery: Option<f64>,
    /// The WAL the PostgreSQL server wrote over the same window, in bytes
    /// per delivery: a count, so it does not drift with the machine's speed
    /// as CPU times do.
    pub pg_wal_bytes_per_delivery: Option<f64>,
    pub peak_rss_mb: f64,
    pub triggers_per_sec: Option<f64>,
    /// Time for the stand-in to receive every trigger after the load stopped.
    pub drain: Option<Duration>,
    /// Stored acks whose trigger the stand-in never received (the drain
    /// gave up): the row's figures are not of the whole work then.
    pub untriggered: u64,
    /// Deliveries stored during a bad-signature scenario (must be 0).
    pub stored_delta: Option<i64>,
}

impl Row {
    pub(crate) fn new(
        target: Target,
        scenario: &'static str,
        t: &Tally,
        cpu: Duration,
        peak_kib: u64,
    ) -> Row {
        Row {
            target,
            scenario,
            requests: t.total(),
            ok: t.ok,
            not_ok: t.total() - t.ok,
            not_ok_detail: t
                .unexpected
                .iter()
                .map(|(status, n)| format!("{status} ×{n}"))
                .chain((t.failed > 0).then(|| format!("no answer ×{}", t.failed)))
                .collect::<Vec<_>>()
                .join(", "),
            acks_per_sec: t.per_sec(),
            p50: t.ms(0.50),
            p99: t.ms(0.99),
            max: t.max_ms(),
            cpu_us_per_delivery: per_delivery(cpu, t.ok),
            pg_cpu_us_per_delivery: None,
            pg_wal_bytes_per_delivery: None,
            peak_rss_mb: peak_kib as f64 / 1024.0,
            triggers_per_sec: None,
            drain: None,
            untriggered: 0,
            stored_delta: None,
        }
    }
}

impl Row {
    /// Deliveries stored and triggered per second of the load and the drain
    /// after it: the rate the whole work was done at, which acks/s alone
    /// overstates when the dispatcher falls behind the intake (its queue
    /// grows through the load and is worked off after). None without a
    /// drain, or when some stored delivery was never triggered.
    pub(crate) fn delivered_per_sec(&self) -> Option<f64> {
        let drain = self.drain?;
        if self.untriggered > 0 || self.acks_per_sec <= 0.0 {
            return None;
        }
        let ok = self.ok as f64;
        Some(ok / (ok / self.acks_per_sec + drain.as_secs_f64()))
    }
}

fn find<'a>(rows: &'a [Row], target: Target, scenario: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.target == target && r.scenario == scenario)
}

/// A hookbridge row's acks/s over the ceiling's in the same scenario.
fn ratio(rows: &[Row], target: Target, scenario: &str) -> Option<f64> {
    let c = find(rows, Target::Ceiling, scenario)?;
    let h = find(rows, target, scenario)?;
    Some(h.acks_per_sec / c.acks_per_sec)
}

/// The table, one row per scenario and server, in the order given; the
/// PostgreSQL CPU and WAL columns only when some row has them.
pub(crate) fn table(rows: &[Row]) -> String {
    let pg = rows.iter().any(|r| r.pg_cpu_us_per_delivery.is_some());
    let mut out = String::new();
    let mut header = vec![
        "scenario",
        "server",
        "requests",
        "ok",
        "acks/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "triggers/s",
        "delivered/s",
        "CPU µs/delivery",
    ];
    if pg {
        header.extend(["PostgreSQL CPU µs/delivery", "PostgreSQL WAL bytes/delivery"]);
    }
    header.extend(["peak RSS MB", "ratio"]);
    writeln!(out, "| {} |", header.join(" | ")).unwrap();
    let align: Vec<&str> = header
        .iter()
        .enumerate()
        .map(|(i, _)| if i < 2 { "---" } else { "---:" })
        .collect();
    writeln!(out, "|{}|", align.join("|")).unwrap();
    for r in rows {
        let ratio = match r.target {
            Target::Ceiling => String::new(),
            t => ratio(rows, t, r.scenario).map_or("-".into(), |x| format!("{x:.2}×")),
        };
        let mut cells = vec![
            r.scenario.to_owned(),
            r.target.label(),
            r.requests.to_string(),
            r.ok.to_string(),
            format!("{:.0}", r.acks_per_sec),
            format!("{:.2}", r.p50),
            format!("{:.2}", r.p99),
            format!("{:.1}", r.max),
            r.triggers_per_sec.map_or("-".into(), |t| format!("{t:.0}")),
            r.delivered_per_sec().map_or("-".into(), |t| format!("{t:.0}")),
            format!("{:.0}", r.cpu_us_per_delivery),
        ];
        if pg {
            cells.push(r.pg_cpu_us_per_delivery.map_or("-".into(), |c| format!("{c:.0}")));
            cells.push(
                r.pg_wal_bytes_per_delivery
                    .map_or("-".into(), |w| format!("{w:.0}")),
            );
        }
        cells.extend([format!("{:.1}", r.peak_rss_mb), ratio]);
        writeln!(out, "| {} |", cells.join(" | ")).unwrap();
    }
    for r in rows
        .iter()
        .filter(|r| r.drain.is_some() || r.not_ok > 0 || r.untriggered > 0)
    {
        let mut notes = Vec::new();
        if r.not_ok > 0 {
            notes.push(format!(
                "{} answers not as expected ({})",
                r.not_ok, r.not_ok_detail
            ));
        }
        if let Some(d) = r.drain {
            notes.push(format!(
                "triggers drained {:.2} s after the load",
                d.as_secs_f64()
            ));
        }
        if r.untriggered > 0 {
            notes.push(format!(
                "WARNING: {} stored deliveries never triggered",
                r.untriggered
            ));
        }
        writeln!(out, "  {} {}: {}", r.target.label(), r.scenario, notes.join("; ")).unwrap();
    }
    out
}

pub(crate) struct Startup {
    pub first: Duration,
    pub median: Duration,
    pub idle_kib: u64,
}

pub(crate) struct Check {
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// The goals of issue 7, each a ratio to the ceiling measured in the same run.
pub(crate) fn goals(rows: &[Row], s: &Startup) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |goal: &str, measured: String, met: bool| {
        checks.push(Check {
            goal: goal.into(),
            measured,
            met,
        })
    };
    let ceiling64 = find(rows, Target::Ceiling, "c=64").map_or(f64::NAN, |r| r.acks_per_sec);
    if let Some(h) = find(rows, Target::Sqlite, "c=64") {
        let r = h.acks_per_sec / ceiling64;
        push(
            "stored acks at c=64 ≥ 0.25× ceiling",
            format!("{r:.2}× ({:.0}/s)", h.acks_per_sec),
            r >= 0.25,
        );
        let t = h.triggers_per_sec.unwrap_or(0.0) / ceiling64;
        push(
            "triggers/s at c=64 ≥ 0.10× ceiling",
            format!("{t:.2}× ({:.0}/s)", h.triggers_per_sec.unwrap_or(0.0)),
            t >= 0.10,
        );
    }
    if let Some(h) = find(rows, Target::Sqlite, "open 1000/s") {
        push(
            "open loop 1000/s: all 2xx, p99 ≤ 5 ms",
            format!("{}/{} 2xx, p99 {:.2} ms", h.ok, h.requests, h.p99),
            h.not_ok == 0 && h.p99 <= 5.0,
        );
    }
    if let (Some(h), Some(r)) = (
        find(rows, Target::Sqlite, "1 MB c=64"),
        ratio(rows, Target::Sqlite, "1 MB c=64"),
    ) {
        push(
            "1 MB at c=64 ≥ 0.20× ceiling",
            format!("{r:.2}× ({:.0}/s)", h.acks_per_sec),
            r >= 0.20,
        );
        push(
            "1 MB at c=64 peak RSS ≤ 150 MB",
            format!("{:.1} MB", h.peak_rss_mb),
            h.peak_rss_mb <= 150.0,
        );
    }
    if let Some(h) = find(rows, Target::Sqlite, "bad sig c=64") {
        let c = find(rows, Target::Ceiling, "bad sig c=64").map_or(ceiling64, |r| r.acks_per_sec);
        let r = h.acks_per_sec / c;
        let stored = h.stored_delta.unwrap_or(-1);
        push(
            "bad signatures 401 ≥ 0.30× ceiling, nothing stored",
            format!(
                "{r:.2}× ({:.0}/s), {} not 401, {stored} stored",
                h.acks_per_sec, h.not_ok
            ),
            r >= 0.30 && stored == 0 && h.not_ok == 0,
        );
    }
    push(
        "start-up ≤ 50 ms to a listening port",
        format!(
            "median {:.1} ms (first {:.1} ms)",
            s.median.as_secs_f64() * 1e3,
            s.first.as_secs_f64() * 1e3
        ),
        s.median <= Duration::from_millis(50),
    );
    push(
        "idle RSS ≤ 15 MB",
        format!("{:.1} MB", s.idle_kib as f64 / 1024.0),
        s.idle_kib <= 15 * 1024,
    );
    checks
}

/// The PostgreSQL store's goals at c=64, against rows of the same run:
/// PostgreSQL CPU per delivery ≤ 250 µs; one replica ≥ 0.5× the SQLite
/// acks/s; more replicas at least the throughput of one.
pub(crate) fn postgres_goals(rows: &[Row]) -> Vec<Check> {
    const SCENARIO: &str = "c=64";
    let sqlite = find(rows, Target::Sqlite, SCENARIO)
        .filter(|r| r.untriggered == 0)
        .map_or(f64::NAN, |r| r.acks_per_sec);
    let one = find(rows, Target::Postgres(1), SCENARIO);
    let mut checks = Vec::new();
    for r in rows.iter().filter(|r| r.scenario == SCENARIO) {
        let Target::Postgres(n) = r.target else {
            continue;
        };
        // A run that left stored deliveries untriggered did not do the work
        // its figures stand for: none of its goals is met.
        let whole = r.untriggered == 0 && one.is_none_or(|o| o.untriggered == 0);
        let short = |m: String| {
            if whole {
                m
            } else {
                format!("{m}; NOT every delivery was triggered")
            }
        };
        let cpu = r.pg_cpu_us_per_delivery;
        checks.push(Check {
            goal: format!("pg×{n}: PostgreSQL CPU per delivery at c=64 ≤ 250 µs"),
            measured: short(
                cpu.map_or("not measured: the server is not on this machine".into(), |c| {
                    format!("{c:.0} µs (hookbridge {:.0} µs)", r.cpu_us_per_delivery)
                }),
            ),
            met: whole && cpu.is_some_and(|c| c <= 250.0),
        });
        let vs_sqlite = r.acks_per_sec / sqlite;
        if n == 1 {
            checks.push(Check {
                goal: "pg×1 acks/s at c=64 ≥ 0.5× sqlite".into(),
                measured: short(format!(
                    "{vs_sqlite:.2}× ({:.0}/s vs {sqlite:.0}/s)",
                    r.acks_per_sec
                )),
                met: whole && vs_sqlite >= 0.5,
            });
        } else if let Some(one) = one {
            // Throughput: deliveries stored and triggered per second (see
            // `delivered_per_sec`); acks/s alone shown beside it.
            let done = r.delivered_per_sec().zip(one.delivered_per_sec());
            let vs_one = done.map_or(f64::NAN, |(n, one)| n / one);
            let acks_vs_one = r.acks_per_sec / one.acks_per_sec;
            checks.push(Check {
                goal: format!("pg×{n} throughput (stored and triggered per second) at c=64 ≥ pg×1"),
                measured: short(format!(
                    "{vs_one:.2}× pg×1 ({:.0}/s vs {:.0}/s); acks/s alone {acks_vs_one:.2}× pg×1, {vs_sqlite:.2}× sqlite",
                    done.map_or(f64::NAN, |d| d.0),
                    done.map_or(f64::NAN, |d| d.1),
                )),
                met: whole && vs_one >= 1.0,
            });
        }
    }
    checks
}

pub(crate) fn render_goals(checks: &[Check]) -> String {
    let mut out = String::from("| goal | measured | met |\n|---|---|---|\n");
    for c in checks {
        writeln!(
            out,
            "| {} | {} | {} |",
            c.goal,
            c.measured,
            if c.met { "yes" } else { "NO" }
        )
        .unwrap();
    }
    out
}
