//! The dashboard on a long history: 100,000 deliveries in the store, then
//! each page of the deliveries list (its filters, its search box, a page far
//! back) and the delivery and rules pages, timed over HTTP against the real
//! daemon, logged in as a browser is. The goal (issue 18): a list page in
//! under 100 ms on the 2-core machine.
//!
//! The history is written through the store's own ingest, 64 deliveries at
//! a time: ten days, 10,000 a day (so the rules page counts 10,000
//! summaries), then its jobs are finished with one SQL statement (about 1
//! in 32 dead, the rest done), so no dispatcher
//! works while the pages are timed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hookbridge::config::{StoreSettings, StoreUrl};
use hookbridge::store::{self, MatchedJob, NewDelivery, NewJob, OpenMode, Store, Summary};
use tokio::task::JoinSet;

use crate::postgres::BenchDatabase;
use crate::servers;

/// How many deliveries the store holds.
const DELIVERIES: usize = 100_000;
/// The goal for a list page, at p99.
const GOAL: Duration = Duration::from_millis(100);
const ADMIN_TOKEN: &str = "bench-admin-token";

fn settings(url: StoreUrl) -> StoreSettings {
    StoreSettings {
        url,
        retention: Duration::from_secs(3650 * 86400),
        password: None,
        pool_size: 8,
        statement_timeout: Duration::from_secs(30),
        tls: "disable".into(),
    }
}

/// Delivery `i`: what the search box looks for is derived from `i`.
fn guid(i: usize) -> String {
    format!("{i:08x}-5b7e-11f0-8c1a-3a5e2d9b7c41")
}

fn sha(i: usize) -> String {
    // Distinct, spread over the key space (a multiplicative hash of i).
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{h:016x}{:024x}", i)
}

fn delivery(i: usize, now: SystemTime) -> NewDelivery {
    let source = if i.is_multiple_of(5) { "gitlab" } else { "github" };
    // One repository in 10,000 deliveries is rare: its filter reads far back.
    let repository = if i % 10_000 == 7 {
        "acme/rare".to_owned()
    } else {
        format!("acme/service-{}", i % 50)
    };
    // Ten days of history: 10,000 deliveries a day.
    let age = Duration::from_millis(((DELIVERIES - i) as u64) * 86_400_000 / 10_000);
    let event = serde_json::from_value(serde_json::json!({
        "source": source, "provider": "github", "name": "push", "kind": "push",
        "delivery": guid(i), "repository": repository, "ref": "refs/heads/main",
        "branch": "main", "sha": sha(i), "created": false, "deleted": false, "forced": false,
        "changes": []
    }))
    .unwrap();
    let request: hookbridge::target::TriggerRequest = serde_json::from_value(
        serde_json::json!({"api": "gitlab_pipeline", "project": repository, "ref": "main"}),
    )
    .unwrap();
    let jobs: Vec<NewJob> = if i % 10 == 3 {
        vec![]
    } else {
        vec![NewJob::new(
            ulid::Ulid::generate().to_string(),
            "build".into(),
            "gitlab".into(),
            request,
        )]
    };
    NewDelivery {
        id: ulid::Ulid::generate().to_string(),
        source: source.into(),
        delivery: guid(i),
        received_at: now - age,
        event,
        headers: [("x-github-event".to_owned(), "push".to_owned())].into(),
        payload: bytes::Bytes::from_static(br#"{"ref":"refs/heads/main"}"#),
        summary: Summary {
            delivery: guid(i),
            source: source.into(),
            event: "push".into(),
            duplicate: false,
            matched: jobs
                .iter()
                .map(|j| MatchedJob {
                    rule: j.rule.clone(),
                    job: j.id.clone(),
                    target: j.target.clone(),
                    group: None,
                    superseded: vec![],
                })
                .collect(),
            skipped: vec![hookbridge::rules::Skipped {
                rule: "pull-requests".into(),
                reason: "event 'push' not in events [pull_request]".into(),
            }],
            errors: vec![],
            deferred: Vec::new(),
        },
        jobs,
        trace: None,
    }
}

/// Write the history through the store's ingest, 64 at a time; returns
/// the internal ids in order.
async fn fill(store: Arc<dyn Store>) -> Vec<String> {
    let now = SystemTime::now();
    let mut ids = vec![String::new(); DELIVERIES];
    let mut tasks = JoinSet::new();
    for i in 0..DELIVERIES {
        if tasks.len() >= 64 {
            let (n, id) = tasks.join_next().await.unwrap().unwrap();
            ids[n] = id;
        }
        let s = store.clone();
        tasks.spawn(async move {
            let d = delivery(i, now);
            let id = d.id.clone();
            s.ingest(d).await.unwrap();
            (i, id)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (n, id) = r.unwrap();
        ids[n] = id;
    }
    ids
}

/// Finish every job (about 1 in 32 dead, by its id's last character) and set
/// the deliveries' status to match. `+j.state`: each delivery's jobs through
/// `jobs_delivery`, not every dead job through `jobs_due`.
const FINISH: [&str; 2] = [
    "UPDATE jobs SET state = CASE WHEN substr(id, 26, 1) IN ('0') THEN 'dead' ELSE 'done' END,
        lease_owner = NULL, lease_until = NULL",
    "UPDATE deliveries SET status = CASE
        WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = deliveries.id AND +j.state = 'dead') THEN 'dead'
        WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = deliveries.id) THEN 'done'
        ELSE 'skipped' END",
];

fn config(path: &Path, hooks: u16, admin: u16, store: &str) {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{hooks}"

[admin]
listen = "127.0.0.1:{admin}"
token = "env:HOOKBRIDGE_ADMIN_TOKEN"

[store]
url = "{store}"
retention = "3650d"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[sources.gitlab]
type = "gitlab"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.gitlab]
type = "gitlab"
url = "http://127.0.0.1:9"
token = "env:CIRCLECI_TOKEN"

[[rules]]
name = "build"
source = "github"
events = ["push"]
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "main"

[[rules]]
name = "pull-requests"
source = "github"
events = ["pull_request"]
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "main"
"#
    );
    std::fs::write(path, text).unwrap();
}

/// One timed page: its name, and its latencies.
struct Timed {
    name: &'static str,
    rows: usize,
    times: Vec<Duration>,
}

impl Timed {
    fn pct(&self, p: usize) -> f64 {
        let mut t = self.times.clone();
        t.sort();
        t[(t.len() * p / 100).min(t.len() - 1)].as_secs_f64() * 1e3
    }
}

/// Time `path` `n` times, logged in; each answer must be 200.
async fn time(
    client: &reqwest::Client,
    base: &str,
    cookie: &str,
    name: &'static str,
    path: &str,
    n: usize,
) -> Timed {
    let mut times = Vec::with_capacity(n);
    let mut rows = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .get(format!("{base}{path}"))
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let html = r.text().await.unwrap();
        times.push(t.elapsed());
        rows = html.matches("<tr>").count();
    }
    Timed { name, rows, times }
}

/// Fill a store, start the daemon on it, time the pages; print the table
/// and whether the goal holds. `postgres`: on a fresh PostgreSQL database.
pub(crate) async fn run(bin: &Path, dir: &Path, smoke: bool, postgres: bool) {
    let db = if postgres {
        Some(BenchDatabase::create().await)
    } else {
        None
    };
    let url = match &db {
        Some(db) => StoreUrl::Postgres(db.url().to_owned()),
        None => StoreUrl::Sqlite(dir.join("history.db")),
    };
    let label = if postgres { "PostgreSQL" } else { "SQLite" };
    let started = Instant::now();
    let store = store::open(&settings(url.clone()), OpenMode::Daemon)
        .await
        .unwrap();
    let ids = fill(store.clone()).await;
    drop(store);
    let filled = started.elapsed();
    match &url {
        StoreUrl::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            for sql in FINISH {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch("ANALYZE").unwrap();
        }
        StoreUrl::Postgres(url) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            for sql in FINISH {
                // PostgreSQL has no unary `+`, and needs no such hint.
                let sql = sql.replace("+j.state", "j.state");
                sqlx::query(&sql).execute(&mut conn).await.unwrap();
            }
            sqlx::query("VACUUM ANALYZE").execute(&mut conn).await.unwrap();
        }
    }
    println!(
        "\ndashboard on a long history ({label}): {DELIVERIES} deliveries stored through the ingest in {:.1} s",
        filled.as_secs_f64()
    );

    let (hooks, admin) = (servers::free_port(), servers::free_port());
    let store_url = match &url {
        StoreUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
        StoreUrl::Postgres(u) => u.clone(),
    };
    let config_path = dir.join("history.toml");
    config(&config_path, hooks, admin, &store_url);
    let daemon = servers::start_hookbridge_with(
        bin,
        &config_path,
        hooks,
        &dir.join("history.log"),
        &[("HOOKBRIDGE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let base = format!("http://{}", SocketAddr::from(([127, 0, 0, 1], admin)));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .post(format!("{base}/ui/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}&next=%2Fui%2Fdeliveries"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303, "login");
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let n = if smoke { 5 } else { 30 };
    let middle = &ids[DELIVERIES / 2];
    let pages: Vec<(&'static str, String)> = vec![
        ("newest page", "/ui/deliveries".into()),
        ("live rows", "/ui/deliveries/rows".into()),
        ("page at 50,000", format!("/ui/deliveries?before={middle}")),
        ("status=dead", "/ui/deliveries?status=dead".into()),
        ("source=gitlab", "/ui/deliveries?source=gitlab".into()),
        ("rule=build", "/ui/deliveries?rule=build".into()),
        (
            "repository (rare)",
            "/ui/deliveries?repository=acme%2Frare".into(),
        ),
        ("since=1h", "/ui/deliveries?since=1h".into()),
        ("search: GUID", format!("/ui/deliveries?q={}", guid(12_345))),
        (
            "search: sha prefix",
            format!("/ui/deliveries?q={}", &sha(54_321)[..7]),
        ),
        (
            "search: hookbridge id",
            format!("/ui/deliveries?q={}", ids[77_777]),
        ),
        ("delivery page", format!("/ui/deliveries/{}", ids[99_000])),
        ("rules page (24 h)", "/ui/rules".into()),
    ];
    let mut timed = Vec::new();
    for (name, path) in &pages {
        timed.push(time(&client, &base, &cookie, name, path, n).await);
    }
    daemon.stop();
    println!(
        "{:<22} {:>5} {:>9} {:>9} {:>9}",
        "page", "rows", "p50 ms", "p99 ms", "max ms"
    );
    for t in &timed {
        println!(
            "{:<22} {:>5} {:>9.1} {:>9.1} {:>9.1}",
            t.name,
            t.rows,
            t.pct(50),
            t.pct(99),
            t.pct(100)
        );
    }
    let lists: Vec<&Timed> = timed
        .iter()
        .filter(|t| t.name != "rules page (24 h)" && t.name != "delivery page")
        .collect();
    let worst = lists.iter().map(|t| t.pct(99)).fold(0.0, f64::max);
    println!(
        "goal: every list page (filters and searches included) under {} ms at p99 with {DELIVERIES} deliveries: {} (worst p99 {worst:.1} ms)",
        GOAL.as_millis(),
        if worst < GOAL.as_secs_f64() * 1e3 {
            "met"
        } else {
            "NOT met"
        }
    );
    drop(db);
}
