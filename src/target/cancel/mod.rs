//! Cancelling a pipeline hookbridge created, for a newer job of its
//! concurrency group (`cancel_in_progress`). Only the pipeline recorded on
//! the job is addressed, so nothing hookbridge did not create is touched.
//!
//! - CircleCI v2 (pipeline, pipeline run): list the pipeline's workflows
//!   (`GET /api/v2/pipeline/{id}/workflow`, paged) and cancel each one still
//!   running, on hold or failing (`POST /api/v2/workflow/{id}/cancel`).
//! - CircleCI v1.1: cancel the build
//!   (`POST /api/v1.1/project/{vcs}/{org}/{repo}/{build_num}/cancel`).
//! - GitLab: `POST /api/v4/projects/:id/pipelines/:pipeline_id/cancel` with
//!   the target's `api_token` (a trigger token cannot cancel), then read
//!   the pipeline again: GitLab answers 200 whatever its state.
//!
//! A cancel is safe to repeat: a second attempt lists again and cancels
//! only what still runs. Errors are classified as a trigger's are: 408,
//! 425, 429, 5xx and the transport's failures are retried, 404 means the
//! pipeline is gone (nothing to cancel), other answers are permanent.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::caller::{Caller, Step, Stop};
use super::circleci::{self, Api, parse_slug};
use super::client::Transport;
use super::encode::path_segment;
use super::{Target, TriggerRequest, TriggerResult};

pub use super::caller::Exchange;

/// The most workflow pages read per attempt (CircleCI pages 20 or so).
const PAGES: usize = 10;

/// What a cancel attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// What the CI cancelled.
    Cancelled(String),
    /// Nothing was left running (or the pipeline is gone).
    Finished(String),
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Permanent(String),
}

impl From<Stop> for Cancelled {
    fn from(stop: Stop) -> Cancelled {
        match stop {
            Stop::Retry { reason, after } => Cancelled::Retry { reason, after },
            Stop::Permanent(reason) => Cancelled::Permanent(reason),
        }
    }
}

/// Why a job's pipeline cannot be cancelled at all (permanent).
fn unusable(why: impl Into<String>) -> (Cancelled, Exchange) {
    (Cancelled::Permanent(why.into()), Exchange::default())
}

/// Cancel `pipeline`, created by `request` on `target`; one attempt.
pub async fn cancel(
    transport: &dyn Transport,
    target: &Target,
    request: &TriggerRequest,
    pipeline: &TriggerResult,
    timeout: Duration,
    now: SystemTime,
) -> (Cancelled, Exchange) {
    let (token, header) = match request {
        TriggerRequest::Circleci(_) => (target.token.as_ref(), "Circle-Token"),
        TriggerRequest::Gitlab(_) => (target.api_token.as_ref(), "PRIVATE-TOKEN"),
        other => {
            return unusable(format!(
                "hookbridge cannot cancel a {} run",
                other.target_kind().as_str()
            ));
        }
    };
    let Some(token) = token else {
        return unusable(format!(
            "target `{}` has no {} to cancel with",
            target.name,
            if header == "PRIVATE-TOKEN" {
                "`api_token`"
            } else {
                "`token`"
            }
        ));
    };
    let mut caller = Caller::new(transport, token, header, timeout, now);
    let base = &target.base_url;
    let outcome = match request {
        TriggerRequest::Circleci(circleci::Request::Job(r)) => {
            match (parse_slug(&r.project, Api::Job), pipeline.number) {
                (Ok(s), Some(build)) => {
                    let url = format!(
                        "{base}/api/v1.1/project/{}/{}/{}/{build}/cancel",
                        path_segment(circleci::vcs_type(s.provider)),
                        path_segment(s.org),
                        path_segment(s.project)
                    );
                    build_cancel(&mut caller, url, build).await
                }
                (Err(e), _) => Cancelled::Permanent(e.to_string()),
                (_, None) => Cancelled::Permanent("the job recorded no build number to cancel".into()),
            }
        }
        TriggerRequest::Circleci(_) => match &pipeline.id {
            Some(id) => workflows(&mut caller, base, id).await,
            None => Cancelled::Permanent("the job recorded no pipeline id to cancel".into()),
        },
        TriggerRequest::Gitlab(r) => match &pipeline.id {
            Some(id) if id.parse::<u64>().is_ok() => {
                let url = format!(
                    "{base}/api/v4/projects/{}/pipelines/{id}",
                    path_segment(&r.project)
                );
                gitlab_cancel(&mut caller, url, id).await
            }
            _ => Cancelled::Permanent("the job recorded no GitLab pipeline id to cancel".into()),
        },
        // Refused before a caller was made.
        other => Cancelled::Permanent(format!(
            "hookbridge cannot cancel a {} run",
            other.target_kind().as_str()
        )),
    };
    (outcome, caller.last)
}

/// CircleCI v2: cancel each workflow of `pipeline` that still runs.
async fn workflows(caller: &mut Caller<'_>, base: &str, pipeline: &str) -> Cancelled {
    #[derive(Deserialize)]
    struct Page {
        #[serde(default)]
        items: Vec<Workflow>,
        next_page_token: Option<String>,
    }
    #[derive(Deserialize)]
    struct Workflow {
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        status: String,
    }
    let mut running = Vec::new();
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    // Whether the list was read to its end (more pages than `PAGES` are
    // left for the next attempt, which lists again).
    let mut pages_left = true;
    for page_number in 0..PAGES {
        let mut url = format!("{base}/api/v2/pipeline/{}/workflow", path_segment(pipeline));
        if let Some(t) = &token {
            url.push_str("?page-token=");
            url.push_str(
                &percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC).to_string(),
            );
        }
        let page: Page = match caller.call("GET", url).await {
            Step::Ok(r) => match serde_json::from_slice(&r.body) {
                Ok(p) => p,
                Err(e) => {
                    return Cancelled::Retry {
                        reason: format!("the workflow list is not CircleCI's JSON: {e}"),
                        after: None,
                    };
                }
            },
            Step::NotFound => return Cancelled::Finished(format!("pipeline {pipeline} not found")),
            Step::Stop(c) => return c.into(),
        };
        for w in page.items {
            seen.push(w.status.clone());
            if matches!(w.status.as_str(), "running" | "on_hold" | "failing") {
                running.push(w);
            }
        }
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) if page_number + 1 == PAGES => {
                pages_left = false;
                token = Some(t);
            }
            Some(t) => token = Some(t),
            None => break,
        }
    }
    if seen.is_empty() {
        return not_started(caller, base, pipeline).await;
    }
    if running.is_empty() {
        seen.sort();
        seen.dedup();
        return Cancelled::Finished(format!(
            "no workflow of pipeline {pipeline} was running ({})",
            if seen.is_empty() {
                "none listed".to_owned()
            } else {
                seen.join(", ")
            }
        ));
    }
    // Every running workflow gets its cancel, whatever another one's
    // answer; the attempt then comes to the first failure (a retry lists
    // again and cancels only what still runs).
    let mut names = Vec::new();
    let mut failed: Option<Cancelled> = None;
    for w in &running {
        let url = format!("{base}/api/v2/workflow/{}/cancel", path_segment(&w.id));
        match caller.call("POST", url).await {
            Step::Ok(_) | Step::NotFound => names.push(if w.name.is_empty() {
                w.id.clone()
            } else {
                w.name.clone()
            }),
            Step::Stop(c) => {
                failed.get_or_insert(c.into());
            }
        }
    }
    if let Some(c) = failed {
        return c;
    }
    let more = if pages_left {
        ""
    } else {
        " (the first pages of its workflows)"
    };
    Cancelled::Cancelled(format!(
        "cancelled {} workflow{} of pipeline {pipeline}{more}: {}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    ))
}

/// A v2 pipeline that lists no workflow: still being set up (its workflows
/// come, and the cancel is retried for them), or errored (nothing runs).
async fn not_started(caller: &mut Caller<'_>, base: &str, pipeline: &str) -> Cancelled {
    #[derive(Deserialize)]
    struct Pipeline {
        state: Option<String>,
    }
    let url = format!("{base}/api/v2/pipeline/{}", path_segment(pipeline));
    match caller.call("GET", url).await {
        Step::Ok(r) => match serde_json::from_slice::<Pipeline>(&r.body)
            .ok()
            .and_then(|p| p.state)
            .as_deref()
        {
            Some(s @ ("created" | "setup-pending" | "setup" | "pending")) => Cancelled::Retry {
                reason: format!("pipeline {pipeline} has no workflow yet ({s})"),
                after: None,
            },
            Some(s) => Cancelled::Finished(format!("pipeline {pipeline} runs no workflow ({s})")),
            None => Cancelled::Finished(format!("pipeline {pipeline} lists no workflow")),
        },
        Step::NotFound => Cancelled::Finished(format!("pipeline {pipeline} not found")),
        Step::Stop(c) => c.into(),
    }
}

/// CircleCI v1.1: cancel one build.
async fn build_cancel(caller: &mut Caller<'_>, url: String, build: i64) -> Cancelled {
    #[derive(Deserialize)]
    struct Build {
        status: Option<String>,
    }
    match caller.call("POST", url).await {
        Step::Ok(r) => {
            let status = serde_json::from_slice::<Build>(&r.body)
                .ok()
                .and_then(|b| b.status);
            match status.as_deref() {
                Some("canceled") | Some("cancelled") | None => {
                    Cancelled::Cancelled(format!("cancelled build {build}"))
                }
                Some(
                    s @ ("success"
                    | "fixed"
                    | "failed"
                    | "no_tests"
                    | "timedout"
                    | "infrastructure_fail"
                    | "not_run"),
                ) => Cancelled::Finished(format!("build {build} had ended: {s}")),
                Some(other) => Cancelled::Retry {
                    reason: format!("build {build} is still {other} after the cancel"),
                    after: None,
                },
            }
        }
        Step::NotFound => Cancelled::Finished(format!("build {build} not found")),
        Step::Stop(c) => c.into(),
    }
}

/// GitLab: cancel, then read the pipeline's state again.
async fn gitlab_cancel(caller: &mut Caller<'_>, pipeline_url: String, id: &str) -> Cancelled {
    #[derive(Deserialize)]
    struct Pipeline {
        status: Option<String>,
    }
    match caller.call("POST", format!("{pipeline_url}/cancel")).await {
        Step::Ok(_) => {}
        Step::NotFound => return Cancelled::Finished(format!("pipeline {id} not found")),
        Step::Stop(c) => return c.into(),
    }
    let status = match caller.call("GET", pipeline_url).await {
        Step::Ok(r) => serde_json::from_slice::<Pipeline>(&r.body)
            .ok()
            .and_then(|p| p.status),
        Step::NotFound => return Cancelled::Finished(format!("pipeline {id} not found")),
        Step::Stop(c) => return c.into(),
    };
    match status.as_deref() {
        Some("canceled") | Some("canceling") => Cancelled::Cancelled(format!("cancelled pipeline {id}")),
        Some(s @ ("success" | "failed" | "skipped")) => {
            Cancelled::Finished(format!("pipeline {id} had ended: {s}"))
        }
        Some(other) => Cancelled::Retry {
            reason: format!("pipeline {id} is still {other} after the cancel"),
            after: None,
        },
        None => Cancelled::Retry {
            reason: format!("pipeline {id}: GitLab's answer names no status"),
            after: None,
        },
    }
}

#[cfg(test)]
mod tests;
