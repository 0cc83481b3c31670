//! The dispatcher: lease due jobs, call the CI API, record every attempt.
//!
//! Workers are tasks bounded by `[dispatch] concurrency`. New jobs wake the
//! loop at once; otherwise it sleeps until the next job falls due (or a short
//! poll interval, to notice jobs queued by other processes). Each attempt's
//! outcome is one `match` on [`Outcome`]: created and CI-skipped jobs finish,
//! retryable ones are rescheduled with exponential backoff and jitter (or the
//! server's `Retry-After`), everything else is dead-lettered. On shutdown the
//! running attempts get a grace period; leases still held after it are given
//! back so the next start runs those jobs again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{Config, RetryPolicy};
use crate::store::{Attempt, LeasedJob, Store, Transition};
use crate::target::{self, Outcome, Reveal, truncate_body};

/// How often an idle dispatcher looks for work queued elsewhere (CLI replays, other replicas).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Response bytes kept per attempt.
const RESPONSE_LIMIT: usize = 2048;

/// Delay before retry `attempt` (1-based): exponential from `initial_backoff`,
/// capped at `max_backoff`, with "equal jitter" (half fixed, half random).
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = policy
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(policy.max_backoff);
    let half = base / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// The next state of a job after an attempt with `outcome`.
pub fn transition(outcome: Outcome, attempt: u32, policy: &RetryPolicy, now: SystemTime) -> Transition {
    match outcome {
        Outcome::Created(result) => Transition::Done(result),
        Outcome::Skipped(message) => Transition::Skipped(message),
        Outcome::Permanent(reason) => Transition::Dead(reason),
        Outcome::Retry { reason, .. } if attempt >= policy.max_attempts => {
            Transition::Dead(format!("gave up after {attempt} attempts; last: {reason}"))
        }
        Outcome::Retry { reason, after } => {
            let delay = after.map_or_else(|| backoff(policy, attempt), |d| d.min(MAX_RETRY_AFTER));
            Transition::Retry {
                at: now + delay,
                reason,
            }
        }
    }
}

/// How many jobs to lease when `free` of `concurrency` slots are free.
///
/// Under load a lease is one round trip through the store's writer (a group
/// commit), so leasing only one job per freed slot caps triggers at a few per
/// commit. When the lease lasts at least twice the longest request timeout,
/// lease up to `concurrency` jobs ahead: each of them gets a slot within one
/// request timeout (every running attempt ends by then) and finishes its
/// attempt within the next, so it never outlives its lease and runs once.
pub fn lease_size(config: &Config, free: usize, concurrency: usize) -> usize {
    let longest = config
        .rules
        .rules()
        .iter()
        .map(|r| r.retry.request_timeout)
        .chain(config.targets.values().map(|t| t.retry.request_timeout))
        .fold(config.retry.request_timeout, Duration::max);
    if config.dispatch.lease >= longest * 2 {
        (free + concurrency).min(free.max(128))
    } else {
        free
    }
}

/// Everything a worker needs; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    store: Arc<dyn Store>,
    config: Arc<ArcSwap<Config>>,
    client: reqwest::Client,
    wake: Arc<Notify>,
    owner: String,
}

/// The shared HTTP client: no redirects, no proxies of inbound headers, warm connections.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(target::USER_AGENT)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

impl Dispatcher {
    pub fn new(store: Arc<dyn Store>, config: Arc<ArcSwap<Config>>, wake: Arc<Notify>) -> Self {
        let owner = format!("{}:{}:{}", hostname(), std::process::id(), ulid::Ulid::generate());
        Dispatcher {
            store,
            config,
            client: http_client(),
            wake,
            owner,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Run until `shutdown`, then let attempts finish within `grace`.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let concurrency = self.config.load().dispatch.concurrency;
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut inflight = JoinSet::new();
        let mut store_backoff = Duration::from_millis(100);
        info!(owner = %self.owner, concurrency, "dispatcher started");
        loop {
            while inflight.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = inflight.join_next() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let (lease, want) = {
                let config = self.config.load();
                (config.dispatch.lease, lease_size(&config, free, concurrency))
            };
            match self.store.lease_due(&self.owner, want, lease).await {
                Ok(jobs) => {
                    store_backoff = Duration::from_millis(100);
                    let full = jobs.len() == want;
                    for job in jobs {
                        // Jobs not started by shutdown are given back by `release` below.
                        let permit = tokio::select! {
                            p = slots.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => break,
                            },
                            _ = shutdown.cancelled() => break,
                        };
                        let worker = self.clone();
                        let span = info_span!(
                            "attempt",
                            delivery = %job.delivery,
                            source = %job.source,
                            rule = %job.rule,
                            target = %job.target,
                            job = %job.id,
                            attempt = job.attempt,
                        );
                        inflight.spawn(async move { worker.attempt(job, permit).await }.instrument(span));
                    }
                    if full {
                        continue;
                    }
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?store_backoff, "cannot lease jobs");
                    tokio::select! {
                        _ = tokio::time::sleep(store_backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    store_backoff = (store_backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            let wait = match self.store.next_due().await {
                Ok(Some(t)) => t
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .clamp(Duration::from_millis(1), POLL_INTERVAL),
                _ => POLL_INTERVAL,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(_) = inflight.join_next() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        let running = inflight.len();
        if running > 0 {
            info!(running, grace = ?grace, "waiting for running trigger attempts");
            let drained =
                tokio::time::timeout(grace, async { while inflight.join_next().await.is_some() {} }).await;
            if drained.is_err() {
                warn!(
                    left = inflight.len(),
                    "grace period over; the remaining jobs run again at next start"
                );
                inflight.abort_all();
            }
        }
        if let Err(e) = self.store.release(&self.owner).await {
            warn!(error = %e, "cannot give back leases; they expire on their own");
        }
        info!("dispatcher stopped");
    }

    /// One attempt of one job, recorded whatever happens. `permit` is the
    /// concurrency slot for the call to the CI API; it is given back as soon as
    /// the CI answered, so waiting for the record's commit does not hold it.
    async fn attempt(&self, job: LeasedJob, permit: tokio::sync::OwnedSemaphorePermit) {
        let config = self.config.load_full();
        let policy = config
            .rules
            .get(&job.rule)
            .map(|r| &r.retry)
            .or_else(|| config.targets.get(&job.target).map(|t| &t.retry))
            .unwrap_or(&config.retry)
            .clone();
        let started_at = SystemTime::now();
        let clock = Instant::now();
        let mut record = Attempt {
            started_at,
            duration: Duration::ZERO,
            status: None,
            error: None,
            response: None,
        };
        let outcome = match self.prepare(&config, &job) {
            Err(reason) => Outcome::Permanent(reason),
            Ok(request) => match send(&self.client, &request, policy.request_timeout).await {
                Ok(response) => {
                    record.status = Some(response.status);
                    record.response =
                        Some(truncate_body(&response.body, RESPONSE_LIMIT)).filter(|r| !r.is_empty());
                    target::classify(&job.request, &response, SystemTime::now())
                }
                Err(error) => {
                    record.error = Some(error.clone());
                    Outcome::Retry {
                        reason: error,
                        after: None,
                    }
                }
            },
        };
        record.duration = clock.elapsed();
        drop(permit);
        let next = transition(outcome, job.attempt, &policy, SystemTime::now());
        let target_kind = config
            .targets
            .get(&job.target)
            .map_or("unknown", |t| t.kind.as_str());
        metrics::counter!("hookbridge_trigger_attempts_total", "target" => job.target.clone(), "type" => target_kind, "outcome" => next.outcome()).increment(1);
        metrics::histogram!("hookbridge_trigger_attempt_duration_seconds", "target" => job.target.clone())
            .record(record.duration.as_secs_f64());
        match &next {
            Transition::Done(result) => info!(
                status = record.status,
                pipeline = result.id.as_deref().unwrap_or(""),
                number = result.number,
                url = result.url.as_deref().unwrap_or(""),
                duration_ms = record.duration.as_millis() as u64,
                "trigger delivered"
            ),
            Transition::Skipped(message) => {
                info!(status = record.status, message = %message, "CI skipped the trigger")
            }
            Transition::Retry { at, reason } => warn!(
                status = record.status,
                reason = %reason,
                retry_in_ms = at.duration_since(SystemTime::now()).unwrap_or_default().as_millis() as u64,
                "trigger failed; will retry"
            ),
            Transition::Dead(reason) => {
                metrics::counter!("hookbridge_dead_lettered_total", "target" => job.target.clone())
                    .increment(1);
                warn!(status = record.status, reason = %reason, "trigger dead-lettered")
            }
        }
        self.record(&job, record, next).await;
    }

    /// Build the outbound request from the current config.
    fn prepare(&self, config: &Config, job: &LeasedJob) -> Result<target::OutboundRequest, String> {
        let target = config
            .targets
            .get(&job.target)
            .ok_or_else(|| format!("target `{}` no longer exists in the configuration", job.target))?;
        let rule_token = match &job.request {
            target::TriggerRequest::GitlabPipeline(r) if r.rule_token => Some(
                config
                    .rules
                    .get(&job.rule)
                    .and_then(|r| r.trigger.token())
                    .ok_or_else(|| {
                        format!(
                            "rule `{}` no longer defines the trigger token this job needs",
                            job.rule
                        )
                    })?,
            ),
            _ => None,
        };
        target.request(&job.request, rule_token, Reveal::Secrets)
    }

    /// Store the attempt; retried while the store is briefly unavailable, since a
    /// lost record means the job runs again when its lease expires.
    async fn record(&self, job: &LeasedJob, attempt: Attempt, next: Transition) {
        let mut delay = Duration::from_millis(50);
        for _ in 0..10 {
            match self
                .store
                .record_attempt(job, &self.owner, attempt.clone(), next.clone())
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, "cannot record the attempt; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        warn!("attempt not recorded; the job runs again when its lease expires");
    }
}

/// Send one request; an error string describes a failure to get any response.
pub async fn send(
    client: &reqwest::Client,
    request: &target::OutboundRequest,
    timeout: Duration,
) -> Result<target::Response, String> {
    let mut builder = client
        .post(&request.url)
        .timeout(timeout)
        .body(serde_json::to_vec(&request.body).map_err(|e| e.to_string())?);
    for h in &request.headers {
        let mut value = http::HeaderValue::from_str(&h.value)
            .map_err(|_| format!("invalid value for header {}", h.name))?;
        value.set_sensitive(h.sensitive);
        builder = builder.header(h.name, value);
    }
    let response = builder.send().await.map_err(describe_error)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let mut response = response;
    // Keep a bounded prefix of the body; CI error pages can be large.
    while let Some(chunk) = response.chunk().await.map_err(describe_error)? {
        if body.len() < 64 * 1024 {
            body.extend_from_slice(&chunk);
        }
    }
    Ok(target::Response {
        status,
        headers,
        body: body.into(),
    })
}

fn describe_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        "timed out waiting for the CI API".to_owned()
    } else if e.is_connect() {
        format!("cannot connect to the CI API: {}", root_cause(&e))
    } else {
        format!("request failed: {}", root_cause(&e))
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hookbridge".to_owned())
}

/// Delete finished deliveries past retention, in small batches, hourly.
pub async fn purge_loop(store: Arc<dyn Store>, config: Arc<ArcSwap<Config>>, shutdown: CancellationToken) {
    loop {
        let retention = config.load().store.retention;
        let cutoff = SystemTime::now() - retention;
        loop {
            match store.purge(cutoff, 500).await {
                Ok(0) => break,
                Ok(n) => debug!(deleted = n, "purged old deliveries"),
                Err(e) => {
                    warn!(error = %e, "retention purge failed");
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::task::yield_now().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = policy();
        for _ in 0..100 {
            let d1 = backoff(&p, 1);
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d3 = backoff(&p, 3);
            assert!(
                d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            let d20 = backoff(&p, 20);
            assert!(
                d20 >= Duration::from_secs(30) && d20 <= Duration::from_secs(60),
                "{d20:?}"
            );
        }
    }

    #[test]
    fn retries_stop_at_max_attempts() {
        let now = SystemTime::now();
        let retry = || Outcome::Retry {
            reason: "HTTP 503".into(),
            after: None,
        };
        assert!(matches!(
            transition(retry(), 4, &policy(), now),
            Transition::Retry { .. }
        ));
        assert!(
            matches!(transition(retry(), 5, &policy(), now), Transition::Dead(r) if r.contains("gave up after 5"))
        );
    }

    #[test]
    fn retry_after_is_honoured() {
        let now = SystemTime::now();
        let t = transition(
            Outcome::Retry {
                reason: "HTTP 429".into(),
                after: Some(Duration::from_secs(1)),
            },
            1,
            &policy(),
            now,
        );
        assert_eq!(
            t,
            Transition::Retry {
                at: now + Duration::from_secs(1),
                reason: "HTTP 429".into()
            }
        );
    }
}
