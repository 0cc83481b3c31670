//! Reading back the state of a pipeline hookbridge created: for `poll` (no
//! completion event came in time), and to learn when a CircleCI pipeline
//! has finished (all of its workflows have).
//!
//! - CircleCI v2 (pipeline, pipeline run), with the target's `token` as
//!   `Circle-Token`: `GET /api/v2/pipeline/{id}/workflow` (followed over
//!   [`PAGES`] pages at most). A pipeline without workflows is still being
//!   set up, unless `GET /api/v2/pipeline/{id}` says it `errored` (a config
//!   error: no workflow will ever run). See [`circleci`] for how workflow
//!   statuses make the pipeline's state.
//! - GitLab, with the target's `api_token` as `PRIVATE-TOKEN` (a trigger
//!   token cannot read): `GET /api/v4/projects/:id/pipelines/:pipeline_id`,
//!   its `status` mapped by [`gitlab`].
//!
//! Every other target (CircleCI v1.1 jobs, and the targets without a
//! pipeline API here) cannot be read: [`readable`] says why.
//!
//! What an answer means: a 2xx is the state ([`PipelineRead::State`]);
//! timeouts, connection errors, 408, 425, 429, 5xx and an answer that is not
//! the CI's JSON are worth another read later ([`PipelineRead::Retry`], with
//! the CI's `Retry-After` when it sent one); 401, 403, 404 and any other 4xx
//! will not change by waiting ([`PipelineRead::Refused`]). A pipeline id
//! that is not the CI's shape (a UUID, GitLab's digits) is refused before it
//! reaches a URL. The token is redacted from every reason, as from every
//! other call to a CI's API besides triggers (`target::caller`).

use std::time::{Duration, SystemTime};

use super::caller::{Caller, Stop};
use super::client::Transport;
use super::{Target, TargetKind, TriggerRequest, circleci as trigger};
/// The state a read learns: the store's, re-exported (the one place this
/// module names it).
pub use crate::store::status::state::PipelineState;

pub mod circleci;
pub mod gitlab;

/// The most workflow pages read per CircleCI read (CircleCI pages 20 or so).
pub const PAGES: usize = 5;

/// One CircleCI workflow of a pipeline, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRun {
    /// CircleCI's workflow id (a UUID).
    pub id: String,
    /// The workflow's name in the config (`build-and-test`): what a status
    /// per workflow is reported under.
    pub name: String,
    /// CircleCI's status, as it wrote it (`success`, `failed`, `running`, ...).
    pub status: String,
    /// The workflow's page on app.circleci.com, when the pipeline's number is known.
    pub url: Option<String>,
}

/// What reading a pipeline came to.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineRead {
    /// The pipeline's state now, with CircleCI's workflows (empty for GitLab).
    State {
        state: PipelineState,
        workflows: Vec<WorkflowRun>,
        url: Option<String>,
    },
    /// Could not read now (timeout, 429, 5xx, not JSON): try later.
    Retry { reason: String, after: Option<Duration> },
    /// The CI refuses this token the read (401/403) or does not know the
    /// pipeline (404), or the pipeline cannot be read at all ([`readable`]).
    Refused(String),
}

impl PipelineRead {
    /// A stop of the reads, for pipeline `what` (`CircleCI pipeline <id>`).
    fn stopped(stop: Stop, what: &str) -> PipelineRead {
        match stop {
            Stop::Retry { reason, after } => PipelineRead::Retry {
                reason: format!("cannot read {what}: {reason}"),
                after,
            },
            Stop::Permanent(reason) => PipelineRead::Refused(format!("cannot read {what}: {reason}")),
        }
    }

    /// An answer that is not the CI's JSON (a proxy's page, say): asked again later.
    fn unreadable(what: &str, e: &serde_json::Error) -> PipelineRead {
        PipelineRead::Retry {
            reason: format!("the answer for {what} is not the CI's JSON: {e}"),
            after: None,
        }
    }
}

/// Whether `target` can be read at all (CircleCI v2 pipeline / pipeline run
/// targets; GitLab with `api_token`); the reason when not.
///
/// It asks whether the config names the token (not whether it resolved), so
/// that `check` can say it without the secrets.
pub fn readable(target: &Target, request: &TriggerRequest) -> Result<(), String> {
    let kind = request.target_kind();
    if kind != target.kind {
        return Err(format!(
            "the job was rendered for a {} target, and target `{}` is now {}",
            kind.as_str(),
            target.name,
            target.kind.as_str()
        ));
    }
    match request {
        TriggerRequest::Circleci(trigger::Request::Job(_)) => {
            Err("a CircleCI API v1.1 job has no pipeline to read (its workflows are not listed)".into())
        }
        TriggerRequest::Circleci(_) if target.token.is_none() && !target.has_token => Err(format!(
            "target `{}` has no `token` to read its pipelines with",
            target.name
        )),
        TriggerRequest::Gitlab(_) if target.api_token.is_none() && !target.has_api_token => Err(format!(
            "target `{}` has no `api_token` to read its pipelines with (a trigger token cannot)",
            target.name
        )),
        TriggerRequest::Circleci(_) | TriggerRequest::Gitlab(_) => Ok(()),
        _ => Err(format!(
            "hookbridge cannot read the state of a {} run",
            kind.as_str()
        )),
    }
}

/// Read the state of pipeline `pipeline_id`, created on `target` by
/// `request`; each call waits at most `timeout`, and `now` dates a
/// `Retry-After`.
pub async fn read_pipeline(
    target: &Target,
    transport: &dyn Transport,
    request: &TriggerRequest,
    pipeline_id: &str,
    timeout: Duration,
    now: SystemTime,
) -> PipelineRead {
    if let Err(why) = readable(target, request) {
        return PipelineRead::Refused(why);
    }
    let base = &target.base_url;
    match (request, target.kind) {
        (TriggerRequest::Circleci(r), TargetKind::Circleci) => {
            let Some(token) = target.token.as_ref() else {
                return PipelineRead::Refused(format!(
                    "target `{}` has no `token` to read with",
                    target.name
                ));
            };
            let project = match r {
                trigger::Request::Pipeline(p) => &p.project,
                trigger::Request::PipelineRun(p) => &p.project,
                trigger::Request::Job(_) => {
                    return PipelineRead::Refused("a CircleCI API v1.1 job has no pipeline to read".into());
                }
            };
            let mut caller = Caller::new(transport, token, "Circle-Token", timeout, now);
            circleci::read(&mut caller, base, project, pipeline_id).await
        }
        (TriggerRequest::Gitlab(r), TargetKind::Gitlab) => {
            let Some(token) = target.api_token.as_ref() else {
                return PipelineRead::Refused(format!(
                    "target `{}` has no `api_token` to read with",
                    target.name
                ));
            };
            let mut caller = Caller::new(transport, token, "PRIVATE-TOKEN", timeout, now);
            gitlab::read(&mut caller, base, &r.project, pipeline_id).await
        }
        (other, _) => PipelineRead::Refused(format!(
            "hookbridge cannot read the state of a {} run",
            other.target_kind().as_str()
        )),
    }
}

#[cfg(test)]
mod tests;
