//! A server under load with what the benchmark reads around it: the ceiling,
//! or hookbridge's replicas with their store and the stand-in CI they trigger.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::postgres::{BenchDatabase, ServerCpu};
use crate::report::Target;
use crate::servers::{self, Proc, RssWatch, StandIn};

/// Where hookbridge stores deliveries.
enum Store {
    Sqlite(PathBuf),
    Postgres {
        db: BenchDatabase,
        /// The server's processes, when they are on this machine.
        server: Option<ServerCpu>,
    },
}

pub(crate) struct Setup {
    pub target: Target,
    /// The processes taking the load. Declared before `store`, so they are
    /// killed before the database is dropped.
    procs: Vec<Proc>,
    /// None for the ceiling.
    store: Option<Store>,
    logs: Vec<PathBuf>,
    ci: StandIn,
    /// The stand-in's counts when this setup started: only one hookbridge
    /// setup runs at a time, so what the stand-in sees since is this one's.
    triggers_at_start: u64,
    unexpected_at_start: u64,
    /// Deliveries acknowledged as stored (202) so far.
    stored_acks: u64,
}

/// After a setup's scenarios: did every stored ack end in the store and in a trigger?
pub(crate) struct Durability {
    target: Target,
    stored: u64,
    stored_acks: u64,
    triggers: u64,
    unexpected: u64,
    log_errors: usize,
    log_warnings: usize,
}

impl Setup {
    fn new(
        target: Target,
        procs: Vec<Proc>,
        store: Option<Store>,
        logs: Vec<PathBuf>,
        ci: &StandIn,
    ) -> Setup {
        Setup {
            target,
            procs,
            store,
            logs,
            triggers_at_start: ci.count(),
            unexpected_at_start: ci.unexpected(),
            ci: ci.clone(),
            stored_acks: 0,
        }
    }

    pub(crate) fn ceiling(proc: Proc, ci: &StandIn) -> Setup {
        Setup::new(Target::Ceiling, vec![proc], None, Vec::new(), ci)
    }

    pub(crate) fn sqlite(proc: Proc, db: PathBuf, log: PathBuf, ci: &StandIn) -> Setup {
        Setup::new(Target::Sqlite, vec![proc], Some(Store::Sqlite(db)), vec![log], ci)
    }

    /// A fresh database and `replicas` hookbridge processes on it, each with
    /// its own port, config and log in `dir`. Started one after the other:
    /// the first creates the schema. Prints the setup's header line.
    pub(crate) async fn postgres(
        replicas: usize,
        bin: &Path,
        dir: &Path,
        ci: &StandIn,
        ci_addr: SocketAddr,
    ) -> Setup {
        let db = BenchDatabase::create().await;
        let server = db.server_cpu().await;
        let (mut procs, mut logs) = (Vec::new(), Vec::new());
        for i in 1..=replicas {
            let name = format!("hookbridge-pg{replicas}-{i}");
            let (config, log) = (dir.join(format!("{name}.toml")), dir.join(format!("{name}.log")));
            let port = servers::free_port();
            servers::hookbridge_config(&config, port, ci_addr, db.url());
            procs.push(servers::start_hookbridge(bin, &config, port, &log));
            logs.push(log);
        }
        let startups: Vec<String> = procs
            .iter()
            .map(|p| format!("{:.1}", p.startup.as_secs_f64() * 1e3))
            .collect();
        println!(
            "hookbridge pg×{replicas}: {}, database {}; replicas up in {} ms{}",
            db.describe().await,
            db.name(),
            startups.join(", "),
            if server.is_some() {
                ""
            } else {
                "; the server's processes are not on this machine: no PostgreSQL CPU"
            }
        );
        let store = Store::Postgres { db, server };
        Setup::new(Target::Postgres(replicas), procs, Some(store), logs, ci)
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.procs.iter().map(|p| p.addr).collect()
    }

    /// CPU time of all the processes so far.
    pub(crate) fn cpu(&self) -> Duration {
        self.procs.iter().map(|p| servers::cpu_time(p.pid())).sum()
    }

    /// CPU time of the PostgreSQL server so far, if there is one here.
    pub(crate) fn pg_cpu(&self) -> Option<Duration> {
        match &self.store {
            Some(Store::Postgres { server: Some(s), .. }) => Some(s.cpu()),
            _ => None,
        }
    }

    /// WAL the PostgreSQL server has written so far, if this is PostgreSQL.
    pub(crate) async fn pg_wal(&self) -> Option<u64> {
        match self.store.as_ref()? {
            Store::Postgres { db, .. } => Some(db.wal_bytes().await),
            Store::Sqlite(_) => None,
        }
    }

    /// One peak-RSS watch per process.
    pub(crate) fn watch_rss(&self) -> Vec<RssWatch> {
        self.procs.iter().map(|p| RssWatch::start(p.pid())).collect()
    }

    /// Deliveries in the store (none for the ceiling).
    pub(crate) async fn stored_deliveries(&self) -> Option<u64> {
        match self.store.as_ref()? {
            Store::Sqlite(path) => Some(sqlite_deliveries(path)),
            Store::Postgres { db, .. } => Some(db.stored_deliveries().await),
        }
    }

    /// Triggers the stand-in received since this setup started.
    pub(crate) fn triggers(&self) -> u64 {
        self.ci.count() - self.triggers_at_start
    }

    /// Count `acks` more stored acks and wait (at most a minute) until the
    /// stand-in has a trigger for each, so scenarios do not bleed into each other.
    pub(crate) async fn drain(&mut self, acks: u64) -> Duration {
        self.stored_acks += acks;
        let drained = Instant::now();
        while self.triggers() < self.stored_acks && drained.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drained.elapsed()
    }

    /// Stored acks so far without a trigger at the stand-in.
    pub(crate) fn untriggered(&self) -> u64 {
        self.stored_acks.saturating_sub(self.triggers())
    }

    /// Count what the store holds, then stop the processes (SIGTERM).
    pub(crate) async fn finish(self) -> Durability {
        let stored = self.stored_deliveries().await.unwrap_or(0);
        let (log_errors, log_warnings) = log_levels(&self.logs);
        let durability = Durability {
            target: self.target,
            stored,
            stored_acks: self.stored_acks,
            triggers: self.triggers(),
            unexpected: self.ci.unexpected() - self.unexpected_at_start,
            log_errors,
            log_warnings,
        };
        self.stop();
        durability
    }

    pub(crate) fn stop(self) {
        for p in self.procs {
            p.stop();
        }
    }
}

impl Durability {
    pub(crate) fn render(&self) -> String {
        let mut out = format!(
            "durability, {}: {} deliveries in the store for {} stored acks (202); triggers received {}, \
             unexpected requests at the stand-in {}; log: {} errors, {} warnings besides refused webhooks",
            self.target.label(),
            self.stored,
            self.stored_acks,
            self.triggers,
            self.unexpected,
            self.log_errors,
            self.log_warnings
        );
        if self.stored != self.stored_acks {
            out.push_str("\nWARNING: stored deliveries differ from acknowledged ones");
        }
        if self.triggers != self.stored_acks {
            out.push_str("\nWARNING: triggers received differ from stored acks (each is triggered once)");
        }
        out
    }
}

fn sqlite_deliveries(db: &Path) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .unwrap()
}

/// ERROR lines, and WARN lines other than the refusals the bad-signature
/// scenario causes on purpose, in hookbridge's JSON logs.
fn log_levels(logs: &[PathBuf]) -> (usize, usize) {
    let text: String = logs
        .iter()
        .filter_map(|l| std::fs::read_to_string(l).ok())
        .collect();
    let errors = text.lines().filter(|l| l.contains(r#""level":"ERROR""#)).count();
    let warnings = text
        .lines()
        .filter(|l| l.contains(r#""level":"WARN""#) && !l.contains(r#""message":"webhook refused""#))
        .count();
    (errors, warnings)
}
