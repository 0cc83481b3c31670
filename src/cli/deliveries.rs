//! `hookbridge deliveries list|show|replay`: the delivery history, read from
//! the store directly (safe while the daemon runs).

use super::common::terminal_safe;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use super::ConfigArg;
use crate::config::units::parse_since;
use crate::store::{
    self, DeliveryDetail, DeliveryFilter, DeliveryKey, DeliveryRow, DeliveryStatus, JobState, OpenMode, Store,
};

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Recent deliveries, newest first
    List(ListArgs),
    /// One delivery: summary, jobs, every attempt, created pipelines
    Show(ShowArgs),
    /// Queue a delivery's recorded jobs again (or re-run the current rules with --reevaluate)
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[arg(long, value_parser = str::parse::<DeliveryStatus>)]
    pub status: Option<DeliveryStatus>,
    #[arg(long)]
    pub source: Option<String>,
    /// Only deliveries with a job for this rule
    #[arg(long)]
    pub rule: Option<String>,
    /// Only deliveries of this repository (`owner/name`, as the event names it)
    #[arg(long)]
    pub repository: Option<String>,
    /// Received within this long (`1h`, `2d`) or since an RFC 3339 time
    #[arg(long, value_parser = |s: &str| parse_since(s, SystemTime::now()))]
    pub since: Option<SystemTime>,
    /// Find by hookbridge id, provider delivery id, or commit sha (or its first 4+ characters)
    #[arg(long)]
    pub search: Option<String>,
    /// Deliveries to list, newest first (at least 1)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The delivery id from the summary (or the internal id)
    pub id: String,
    /// When the same delivery id exists for several sources
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    pub id: String,
    #[arg(long)]
    pub source: Option<String>,
    /// Only this job
    #[arg(long)]
    pub job: Option<String>,
    /// Evaluate the current rules on the stored payload and queue the jobs they produce
    #[arg(long, conflicts_with = "job")]
    pub reevaluate: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: DeliveriesCommand) -> ExitCode {
    super::common::block_on(async {
        match cmd {
            DeliveriesCommand::List(a) => list(a).await,
            DeliveriesCommand::Show(a) => show(a).await,
            DeliveriesCommand::Replay(a) => replay(a).await,
        }
    })
}

async fn open(config: &ConfigArg) -> Result<(crate::config::Config, std::sync::Arc<dyn Store>), String> {
    let loaded = config
        .load_quiet()
        .map_err(|_| "the configuration is invalid".to_owned())?;
    // A client reads the daemon's store; opening a path that holds none would
    // create an empty one and answer "no deliveries" for a mistyped path.
    if let crate::config::StoreUrl::Sqlite(path) = &loaded.config.store.url
        && !path.exists()
    {
        return Err(format!(
            "no store at `{}`: check `[store] url` (`serve` creates the store when it first starts)",
            path.display()
        ));
    }
    let store = store::open(&loaded.config.store, OpenMode::Client)
        .await
        .map_err(|e| e.to_string())?;
    Ok((loaded.config, store))
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
    );
    Ok(())
}

pub fn time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(store::from_millis(ms)).to_string()
}

async fn list(a: ListArgs) -> Result<(), String> {
    let (_, store) = open(&a.config).await?;
    let rows = store
        .list(&DeliveryFilter {
            status: a.status,
            source: a.source,
            rule: a.rule,
            repository: a.repository,
            since: a.since,
            search: a.search,
            limit: usize::try_from(a.limit).unwrap_or(usize::MAX),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    if a.json {
        return print_json(&rows);
    }
    print!("{}", terminal_safe(&table(&rows)));
    Ok(())
}

/// The `deliveries list` table.
pub fn table(rows: &[DeliveryRow]) -> String {
    let mut lines = vec![[
        "RECEIVED".to_owned(),
        "SOURCE".into(),
        "DELIVERY".into(),
        "EVENT".into(),
        "REF".into(),
        "STATUS".into(),
        "JOBS".into(),
    ]];
    for r in rows {
        lines.push([
            time(r.received_at),
            r.source.clone(),
            r.delivery.clone(),
            r.event.clone(),
            r.git_ref.clone().unwrap_or_else(|| "-".into()),
            r.status.as_str().into(),
            r.jobs.to_string(),
        ]);
    }
    let mut out = super::common::table(&lines);
    if rows.is_empty() {
        out.push_str("(no deliveries)\n");
    }
    out
}

async fn show(a: ShowArgs) -> Result<(), String> {
    let (_, store) = open(&a.config).await?;
    let detail = store
        .get(&DeliveryKey {
            id: a.id,
            source: a.source,
        })
        .await
        .map_err(|e| e.to_string())?;
    if a.json {
        return print_json(&detail);
    }
    print!("{}", terminal_safe(&describe(&detail)));
    Ok(())
}

/// The `deliveries show` report.
pub fn describe(d: &DeliveryDetail) -> String {
    let r = &d.row;
    let mut out = format!(
        "delivery {} (source {}, event {}, kind {})\n  received {}  status {}  id {}\n",
        r.delivery,
        r.source,
        r.event,
        r.kind,
        time(r.received_at),
        r.status.as_str(),
        r.id
    );
    if let Some(repo) = &r.repository {
        out.push_str(&format!(
            "  repository {repo}  ref {}\n",
            r.git_ref.as_deref().unwrap_or("-")
        ));
    }
    for s in &d.summary.skipped {
        out.push_str(&format!("  skipped {}: {}\n", s.rule, s.reason));
    }
    for e in &d.summary.errors {
        out.push_str(&format!("  error   {}: {}\n", e.rule, e.error));
    }
    for x in &d.summary.deferred {
        out.push_str(&format!("  deferred {}: {}\n", x.rule, x.reason));
    }
    for f in &d.deferrals {
        out.push_str(&deferral_line(f));
    }
    for j in &d.jobs {
        out.push_str(&format!(
            "\njob {}  rule {}  target {}  state {}  attempts {}\n",
            j.id, j.rule, j.target, j.state, j.attempts
        ));
        if let Some(group) = &j.group {
            out.push_str(&format!("  concurrency group: {group}\n"));
        }
        if let Some(by) = &j.superseded_by {
            out.push_str(&format!(
                "  superseded by job {} of delivery {} (rule {}, id {})\n",
                by.job, by.delivery, by.rule, by.delivery_id
            ));
        }
        if let Some(c) = &j.cancel {
            out.push_str(&format!(
                "  pipeline cancel (a newer job of the group, {}, created its pipeline): {}, {} attempt{}{}\n",
                c.by_job,
                c.state.as_str(),
                c.attempts,
                if c.attempts == 1 { "" } else { "s" },
                c.outcome.as_deref().map(|o| format!(": {o}")).unwrap_or_default()
            ));
        }
        if let Some(res) = &j.result {
            let mut parts = Vec::new();
            if let Some(id) = &res.id {
                parts.push(format!("id {id}"));
            }
            if let Some(n) = res.number {
                parts.push(format!("number {n}"));
            }
            if let Some(u) = &res.url {
                parts.push(u.clone());
            }
            if let Some(state) = &res.state {
                parts.push(format!("state {state}"));
            }
            if parts.is_empty() {
                parts.push("(the CI's answer named no pipeline)".into());
            }
            out.push_str(&format!("  created: {}\n", parts.join("  ")));
        }
        if let Some(e) = &j.last_error {
            out.push_str(&format!("  last error: {e}\n"));
        }
        if let Some(p) = &j.pipeline_state {
            out.push_str(&format!("  pipeline: {p}\n"));
        }
        for st in &j.statuses {
            out.push_str(&format!(
                "  status {} {} \"{}\": {}{}{}\n",
                st.context,
                st.state,
                st.description,
                match st.post.as_str() {
                    "done" => "posted",
                    "dead" => "not posted (gave up)",
                    "running" => "posting",
                    _ => "waiting",
                },
                st.http_status.map(|h| format!(" ({h})")).unwrap_or_default(),
                st.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
        if let (Some(next), JobState::Pending) = (j.next_attempt_at, j.state) {
            out.push_str(&format!("  next attempt: {}\n", time(next)));
        }
        for a in &j.history {
            out.push_str(&format!(
                "  #{} {}  {}  {} ms  {}\n",
                a.n,
                time(a.started_at),
                a.status.map_or_else(|| "---".to_owned(), |s| s.to_string()),
                a.duration_ms,
                a.outcome
            ));
            if let Some(r) = &a.reconcile {
                out.push_str(&format!("     reconcile: {r}\n"));
            }
            if let Some(e) = &a.error {
                out.push_str(&format!("     error: {e}\n"));
            }
            if let Some(body) = &a.response {
                out.push_str(&format!("     response: {}\n", body.replace('\n', " ")));
            }
        }
    }
    out
}

async fn replay(a: ReplayArgs) -> Result<(), String> {
    let (config, store) = open(&a.config).await?;
    let key = DeliveryKey {
        id: a.id.clone(),
        source: a.source.clone(),
    };
    if a.reevaluate {
        let summary = crate::intake::reevaluate(&config, store.as_ref(), &key, SystemTime::now())
            .await
            .map_err(|e| e.to_string())?;
        let queued: Vec<String> = summary.matched.iter().map(|m| m.job.clone()).collect();
        if a.json {
            return print_json(&serde_json::json!({
                "queued": queued, "skipped": summary.skipped, "errors": summary.errors,
                "deferred": summary.deferred,
            }));
        }
        if queued.is_empty() {
            println!(
                "nothing queued: no rule matches delivery {} under the current rules",
                terminal_safe(&a.id)
            );
            for s in &summary.skipped {
                println!(
                    "  skipped {}: {}",
                    terminal_safe(&s.rule),
                    terminal_safe(&s.reason)
                );
            }
            for e in &summary.errors {
                println!(
                    "  error   {}: {}",
                    terminal_safe(&e.rule),
                    terminal_safe(&e.error)
                );
            }
            for x in &summary.deferred {
                println!(
                    "  deferred {}: {} (queued once the changed files are read)",
                    terminal_safe(&x.rule),
                    terminal_safe(&x.reason)
                );
            }
            return Ok(());
        }
        return queued_message(&a.id, &queued);
    }
    let queued = store
        .replay(&key, a.job.as_deref(), SystemTime::now())
        .await
        .map_err(|e| e.to_string())?;
    if a.json {
        return print_json(&serde_json::json!({ "queued": queued }));
    }
    if queued.is_empty() {
        println!(
            "nothing to replay: delivery {} has no finished jobs",
            terminal_safe(&a.id)
        );
        Ok(())
    } else {
        queued_message(&a.id, &queued)
    }
}

fn queued_message(id: &str, queued: &[String]) -> Result<(), String> {
    println!(
        "queued {} job{} of delivery {}: {}",
        queued.len(),
        if queued.len() == 1 { "" } else { "s" },
        terminal_safe(id),
        queued.join(", ")
    );
    println!("the running daemon picks them up within a second");
    Ok(())
}

/// One deferred rule's read of changed files, for `deliveries show`:
/// `files for billing: done (matched): 1200 read from GitHub compare ...`.
fn deferral_line(f: &crate::store::deferral::DeferralRow) -> String {
    let state = match &f.outcome {
        Some(outcome) => format!("{} ({outcome})", f.state),
        None => f.state.clone(),
    };
    let files = match &f.files {
        Some(n) => format!("{} read from {}", n.count, n.from),
        None => "not read".to_owned(),
    };
    let mut line = format!(
        "  files for {}: {state}: {files}; {} read{}",
        f.rule,
        f.attempts,
        if f.attempts == 1 { "" } else { "s" }
    );
    if let Some(error) = &f.last_error {
        line.push_str(&format!("; last error: {error}"));
    }
    line.push('\n');
    line
}
