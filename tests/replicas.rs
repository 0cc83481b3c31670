//! Several real `hookbridge serve` replicas on one PostgreSQL database.
//!
//! Each test gets a fresh database (see `support::pg`). The stand-in CI
//! answers slowly so that many attempts are in flight at once; every trigger
//! carries its delivery id in a GitLab variable, so the stand-in's record
//! says how often each delivery was triggered.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use support::ci::{GITLAB_TRIGGER_TOKEN, StandIn};
use support::daemon::{Daemon, Workspace};
use support::pg::TestDatabase;
use support::{eventually, github_signature, payload, wait_for};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const GITHUB_SECRET: &str = "It's a Secret to Everybody";

const ENV: &[(&str, &str)] = &[
    ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
    ("GITLAB_TRIGGER_TOKEN", GITLAB_TRIGGER_TOKEN),
];

fn config(db_url: &str, ci: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[admin]
listen = "127.0.0.1:0"

[store]
url = "{db_url}"
tls = "disable"
pool_size = 8

[retry]
max_attempts = 50
initial_backoff = "100ms"
max_backoff = "500ms"
request_timeout = "1s"

[dispatch]
lease = "3s"
concurrency = 16

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.gitlab]
type = "gitlab"
url = "{ci}"
token = "env:GITLAB_TRIGGER_TOKEN"

[[rules]]
name = "mirror"
source = "github"
events = ["push"]
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "{{{{ event.branch }}}}"
variables = {{ DELIVERY = "{{{{ event.delivery }}}}" }}
"#
    )
}

/// A database, a slow stand-in CI, and a config every replica shares.
struct Cluster {
    _db: TestDatabase,
    pool: PgPool,
    ci: StandIn,
    ws: Workspace,
}

impl Cluster {
    /// With `proxy`, the replicas reach the database through that local port.
    async fn new(proxy: Option<u16>, ci_delay: Duration) -> Cluster {
        let db = TestDatabase::create().await;
        let pool = PgPool::connect(&db.url).await.unwrap();
        let ci = StandIn::start().await;
        ci.set_delay(ci_delay);
        let url = match proxy {
            Some(port) => db.url.replacen(host_of(&db.url), &format!("127.0.0.1:{port}"), 1),
            None => db.url.clone(),
        };
        let ws = Workspace::new(&config(&url, &ci.url));
        // Apply the schema once up front, as an operator's rollout would.
        let (code, out, err) = ws.cli(&["migrate"], ENV);
        assert_eq!(code, 0, "migrate failed: {out}{err}");
        Cluster {
            _db: db,
            pool,
            ci,
            ws,
        }
    }

    /// The replicas' `[dispatch] lease` (for those started after).
    fn set_lease(&self, lease: &str) {
        let config = std::fs::read_to_string(self.ws.config_path())
            .unwrap()
            .replace("lease = \"3s\"", &format!("lease = \"{lease}\""));
        std::fs::write(self.ws.config_path(), config).unwrap();
    }

    /// Start `n` replicas at once (they all migrate under the advisory lock).
    fn start(&self, n: usize) -> Vec<Daemon> {
        let starts: Vec<_> = (0..n)
            .map(|_| {
                let (config, dir) = (self.ws.config_path(), self.ws.dir.path().to_path_buf());
                std::thread::spawn(move || Daemon::start(&config, &dir, ENV))
            })
            .collect();
        starts.into_iter().map(|t| t.join().unwrap()).collect()
    }

    /// How many accepted triggers each delivery got at the CI.
    fn triggers(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.ci.accepted() {
            let id = r.body["variables"]["DELIVERY"].as_str().unwrap_or("").to_owned();
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    fn total_triggers(&self) -> usize {
        self.ci.accepted().len()
    }

    /// Wait until every job is recorded as done.
    async fn wait_all_done(&self) {
        wait_for(Duration::from_secs(30), "every job done", async || {
            match self
                .scalar("SELECT COUNT(*) FROM jobs WHERE state != 'done'")
                .await
            {
                0 => Ok(()),
                left => Err(format!("{left} jobs not done")),
            }
        })
        .await;
    }

    /// Wait until no job is pending or running. No lease is left then that a
    /// takeover could act on, so nothing more will be sent: the CI's count is
    /// final. (It cannot pass early: a job to be sent again is still pending
    /// or running.)
    async fn settled(&self) {
        wait_for(
            Duration::from_secs(30),
            "every job in a final state (done, dead or skipped)",
            async || match self
                .scalar("SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')")
                .await
            {
                0 => Ok(()),
                left => Err(format!("{left} jobs pending or running")),
            },
        )
        .await;
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}

/// The `host:port` of a PostgreSQL URL.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority)
}

/// POST a signed GitHub push; `None` when the replica could not be reached.
async fn post(client: &reqwest::Client, hooks: &str, delivery: &str) -> Option<(u16, Value)> {
    let body = payload("github/push.json");
    let resp = client
        .post(format!("{hooks}/hooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", github_signature(GITHUB_SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let text = resp.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Send `ids` spread over `hooks` (round robin), 32 at a time; a delivery a
/// replica does not accept goes to the next one, as a sender's retry would.
async fn send_all(hooks: Arc<std::sync::Mutex<Vec<String>>>, ids: Vec<String>) {
    let client = reqwest::Client::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let (client, hooks) = (client.clone(), hooks.clone());
        tasks.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for n in i.. {
                let target = {
                    let h = hooks.lock().unwrap();
                    h[n % h.len()].clone()
                };
                if let Some((status, _)) = post(&client, &target, &id).await
                    && (200..300).contains(&status)
                {
                    break;
                }
                assert!(Instant::now() < deadline, "delivery {id} was never accepted");
                // The pause between a sender's retries: its behaviour, not a wait.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(permit);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:05}")).collect()
}

const N: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_trigger_every_delivery_exactly_once() {
    let cluster = Cluster::new(None, Duration::from_millis(50)).await;
    // Without faults, no lease may expire: on a machine busy with the other
    // tests a 3 s lease can (a replica starved for the CPU), and its jobs
    // would rightly be sent again. That is the kill test's case, not this one.
    cluster.set_lease("30s");
    let replicas = cluster.start(3);
    let hooks = Arc::new(std::sync::Mutex::new(
        replicas.iter().map(|d| d.hooks.clone()).collect::<Vec<_>>(),
    ));
    let started = Instant::now();
    send_all(hooks, ids("once", N)).await;
    eventually(Duration::from_secs(90), "every delivery triggered", || {
        cluster.triggers().len() == N
    })
    .await;
    let elapsed = started.elapsed();
    // Stray duplicates would come from jobs still pending or running.
    cluster.settled().await;
    let triggers = cluster.triggers();
    let extra: Vec<_> = triggers.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "3 replicas: {N} deliveries, {} triggers, {} duplicated, in {elapsed:?}",
        cluster.total_triggers(),
        extra.len()
    );
    assert!(extra.is_empty(), "triggered more than once: {extra:?}");
    assert_eq!(cluster.total_triggers(), N);
    // Every replica took part, and the store agrees: one attempt per job, all done.
    for (i, d) in replicas.iter().enumerate() {
        assert!(
            d.logs().contains("trigger delivered"),
            "replica {i} never triggered"
        );
    }
    cluster.wait_all_done().await;
    let done = cluster
        .scalar("SELECT COUNT(*) FROM jobs WHERE state = 'done'")
        .await;
    let attempts = cluster.scalar("SELECT COUNT(*) FROM attempts").await;
    assert_eq!((done, attempts), (N as i64, N as i64));
    cluster.ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_run_loses_nothing() {
    let cluster = Cluster::new(None, Duration::from_millis(200)).await;
    let mut replicas = cluster.start(3);
    let hooks = Arc::new(std::sync::Mutex::new(
        replicas.iter().map(|d| d.hooks.clone()).collect::<Vec<_>>(),
    ));
    let sender = tokio::spawn(send_all(hooks.clone(), ids("kill", N)));
    eventually(Duration::from_secs(60), "a third of the triggers", || {
        cluster.total_triggers() >= N / 3
    })
    .await;
    let victim = replicas.remove(0);
    let pid = victim.pid();
    hooks.lock().unwrap().retain(|h| *h != victim.hooks);
    victim.kill();
    // Its sessions finish what the server already received (a record's
    // commit may land after the kill), then end: count once they are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster
        .scalar(&format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'hookbridge:{pid}'"
        ))
        .await
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed replica's sessions never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight = cluster
        .scalar(&format!(
            "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND lease_owner LIKE '%:{pid}:%'"
        ))
        .await;
    sender.await.unwrap();
    eventually(Duration::from_secs(90), "every delivery triggered", || {
        cluster.triggers().len() == N
    })
    .await;
    cluster.wait_all_done().await;
    let duplicates = cluster.total_triggers() - N;
    let taken_over = cluster
        .scalar("SELECT COUNT(*) FROM attempts WHERE outcome = 'interrupted'")
        .await;
    println!(
        "SIGKILL: {N} deliveries, {} triggers, {duplicates} duplicates; {in_flight} attempts in flight at the kill, {taken_over} leases taken over",
        cluster.total_triggers()
    );
    assert!(
        duplicates as i64 <= in_flight,
        "{duplicates} duplicates but only {in_flight} attempts were in flight"
    );
    // On a loaded machine a live replica's lease can expire too, so more may be taken over.
    assert!(
        taken_over >= in_flight,
        "every lease of the dead replica was taken over ({taken_over} of {in_flight})"
    );
    cluster.ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delivery_at_two_replicas_is_stored_and_triggered_once() {
    let cluster = Cluster::new(None, Duration::from_millis(10)).await;
    let replicas = cluster.start(2);
    let client = reqwest::Client::new();
    const ROUNDS: usize = 50;
    for i in 0..ROUNDS {
        let id = format!("twice-{i}");
        let (a, b) = tokio::join!(
            post(&client, &replicas[0].hooks, &id),
            post(&client, &replicas[1].hooks, &id)
        );
        let ((sa, a), (sb, b)) = (a.unwrap(), b.unwrap());
        let mut statuses = [sa, sb];
        statuses.sort();
        assert_eq!(statuses, [200, 202], "{a} / {b}");
        let flags = [a["duplicate"].as_bool(), b["duplicate"].as_bool()];
        assert!(
            flags.contains(&Some(true)) && flags.contains(&Some(false)),
            "{a} / {b}"
        );
        assert_eq!(a["matched"], b["matched"], "both answer the original summary");
    }
    eventually(Duration::from_secs(30), "every delivery triggered", || {
        cluster.triggers().len() == ROUNDS
    })
    .await;
    cluster.settled().await;
    assert_eq!(cluster.total_triggers(), ROUNDS);
    assert_eq!(
        cluster.scalar("SELECT COUNT(*) FROM deliveries").await,
        ROUNDS as i64
    );
    cluster.ci.assert_clean();
}

/// A TCP proxy in front of PostgreSQL that can be cut (every connection
/// dropped, new ones refused) and restored, to simulate an outage without
/// stopping the shared server.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (c, conns) = (cut.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                conns.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            port,
            cut,
            connections,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.connections.lock().unwrap().abort_all();
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn readyz(client: &reqwest::Client, daemon: &Daemon) -> u16 {
    client
        .get(format!("{}/readyz", daemon.admin))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_answers_503_and_recovers_without_restart() {
    let proxy = Proxy::start(host_of(&support::pg::maintenance_url()).to_owned()).await;
    let cluster = Cluster::new(Some(proxy.port), Duration::from_millis(10)).await;
    let daemon = cluster.start(1).remove(0);
    let client = reqwest::Client::new();
    for id in ids("before", 10) {
        let (status, _) = post(&client, &daemon.hooks, &id).await.unwrap();
        assert_eq!(status, 202);
    }
    eventually(Duration::from_secs(20), "triggers before the outage", || {
        cluster.triggers().len() == 10
    })
    .await;
    // Recorded, too: an attempt whose record is cut off may run again (at least once).
    cluster.wait_all_done().await;

    proxy.cut();
    let cut_at = Instant::now();
    let mut during = Vec::new();
    for id in ids("during", 10) {
        let started = Instant::now();
        let (status, body) = post(&client, &daemon.hooks, &id).await.unwrap();
        assert_eq!(
            status, 503,
            "{id} answered {status} while the store was down: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "503 took {:?}",
            started.elapsed()
        );
        during.push(id);
    }
    assert_eq!(readyz(&client, &daemon).await, 503);
    // Workers back off meanwhile (each failed lease is logged with the
    // wait before the next); the daemon stays up.
    let failed_leases = |logs: &str| logs.matches("cannot lease jobs").count();
    let before = failed_leases(&daemon.logs());
    eventually(
        Duration::from_secs(20),
        "three failed leases, backing off",
        || failed_leases(&daemon.logs()) >= before + 3,
    )
    .await;
    assert_eq!(readyz(&client, &daemon).await, 503);
    let outage = cut_at.elapsed();

    proxy.restore();
    let restored_at = Instant::now();
    wait_for(Duration::from_secs(30), "ready again", async || {
        match readyz(&client, &daemon).await {
            200 => Ok(()),
            status => Err(format!("/readyz {status}; logs:\n{}", daemon.logs())),
        }
    })
    .await;
    for id in &during {
        let (status, body) = post(&client, &daemon.hooks, id).await.unwrap();
        assert_eq!(status, 202, "after the outage: {body}");
        assert_eq!(body["duplicate"], false, "it was not stored during the outage");
    }
    eventually(Duration::from_secs(30), "triggers after the outage", || {
        cluster.triggers().len() == 20
    })
    .await;
    println!(
        "outage: {outage:?} down, ready again {:?} after restore",
        restored_at.elapsed()
    );
    assert_eq!(cluster.total_triggers(), 20);
    assert!(daemon.logs().contains("delivery not stored"));
    cluster.ci.assert_clean();
}
