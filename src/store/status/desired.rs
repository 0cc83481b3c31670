//! Which statuses a job wants on its commit now, from what is stored of it.
//!
//! Both stores call [`desired`] after every write that moves a job with a
//! status spec (ingest, attempt record, superseding, replay, a completion
//! event, a watch's read) and queue each wanted status that differs from
//! the latest one queued for its subject. Deriving the status from the
//! job's state, rather than from the write that moved it, makes the rule
//! one function and the writes idempotent: calling it twice queues
//! nothing twice, and a job moved back to pending (a replay) reports
//! "queued" again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{NewStatus, PipelineState, StatusSpec, StatusState, description};
use crate::store::JobState;
use crate::target::{TargetKind, TriggerResult};

/// A CircleCI workflow as a completion event or a read reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A job's watch (`watches`): what was learned of its pipeline besides
/// its state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchFacts {
    /// CircleCI workflows by name, as completion events reported them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workflows: BTreeMap<String, Workflow>,
    /// The CI refused to list the workflows: report each under
    /// `<context>/<workflow>` instead of the pipeline's result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_workflow: bool,
    /// Why watching ended without a final state (no result in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<String>,
}

/// What [`desired`] reads of a job.
#[derive(Debug, Clone)]
pub struct JobFacts<'a> {
    pub state: JobState,
    pub kind: TargetKind,
    pub result: Option<&'a TriggerResult>,
    pub last_error: Option<&'a str>,
    pub spec: &'a StatusSpec,
    pub pipeline: Option<PipelineState>,
    /// The commit of the job that superseded this one.
    pub superseded_by: Option<&'a str>,
    pub watch: Option<&'a WatchFacts>,
}

/// A status a job wants: its subject (what posts are ordered and
/// deduplicated by), its full context, and the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub subject: String,
    pub context: String,
    pub status: NewStatus,
}

/// The key statuses are ordered and deduplicated by: the source, the
/// repository, the commit and the context.
pub fn subject(spec: &StatusSpec, context: &str) -> String {
    format!(
        "{}\n{}\n{}\n{}",
        spec.source,
        spec.repository,
        spec.sha.to_ascii_lowercase(),
        context
    )
}

/// The CI's name in descriptions.
pub fn ci_name(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Circleci => "CircleCI",
        TargetKind::Gitlab => "GitLab",
        TargetKind::GithubActions => "GitHub Actions",
        TargetKind::GiteaActions => "Actions",
        TargetKind::Buildkite => "Buildkite",
        TargetKind::Jenkins => "Jenkins",
        TargetKind::Http => "HTTP",
    }
}

/// "GitLab pipeline #12" (its number when the CI gave one, else its id).
fn pipeline_name(kind: TargetKind, result: Option<&TriggerResult>) -> String {
    let ci = ci_name(kind);
    match result.and_then(|r| r.number.map(|n| n.to_string()).or_else(|| r.id.clone())) {
        Some(n) => format!("{ci} pipeline #{n}"),
        None => format!("{ci} pipeline"),
    }
}

fn status(state: StatusState, text: &str, target_url: Option<String>) -> NewStatus {
    NewStatus {
        state,
        description: description(text),
        target_url,
        context_suffix: None,
    }
}

/// The statuses `job` wants now: the one under its context, and with
/// per-workflow reporting, one per CircleCI workflow.
pub fn desired(job: &JobFacts<'_>) -> Vec<Wanted> {
    let url = job.result.and_then(|r| r.url.clone());
    let name = || pipeline_name(job.kind, job.result);
    let main = match job.state {
        JobState::Pending | JobState::Running => status(StatusState::Pending, "queued", None),
        JobState::Dead => status(
            StatusState::Error,
            &format!("not triggered: {}", headline(job.last_error.unwrap_or("gave up"))),
            None,
        ),
        JobState::Superseded => {
            let by = job.superseded_by.map(short).unwrap_or("a newer job");
            status(StatusState::Error, &format!("superseded by {by}"), None)
        }
        JobState::Skipped => status(
            StatusState::Success,
            &format!(
                "not run: {}",
                headline(job.last_error.unwrap_or("the CI chose not to run"))
            ),
            None,
        ),
        JobState::Done if !job.spec.follow => {
            status(StatusState::Success, &format!("{} created", name()), url.clone())
        }
        JobState::Done => done(job, &name(), url.clone()),
    };
    let mut out = vec![Wanted {
        subject: subject(job.spec, &job.spec.context),
        context: job.spec.context.clone(),
        status: main,
    }];
    if job.state == JobState::Done
        && let Some(w) = job.watch.filter(|w| w.per_workflow)
    {
        for (name, run) in &w.workflows {
            // A name from a webhook: printable, and short enough for any
            // VCS's context.
            let workflow: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
            let context = format!("{}/{workflow}", job.spec.context);
            let state = workflow_state(&run.status);
            let mut s = status(
                state,
                &format!("CircleCI workflow {workflow} {}", run.status),
                run.url.clone().or_else(|| url.clone()),
            );
            s.context_suffix = Some(workflow);
            out.push(Wanted {
                subject: subject(job.spec, &context),
                context,
                status: s,
            });
        }
    }
    out
}

/// The status of a done job whose pipeline is followed.
fn done(job: &JobFacts<'_>, name: &str, url: Option<String>) -> NewStatus {
    let per_workflow = job.watch.is_some_and(|w| w.per_workflow);
    // A result learned (from an event or a read) is the pipeline's,
    // whatever was reported workflow by workflow before.
    match job.pipeline {
        Some(PipelineState::Success) => status(StatusState::Success, &format!("{name} passed"), url),
        Some(PipelineState::Failed) => status(StatusState::Failure, &format!("{name} failed"), url),
        Some(PipelineState::Canceled) => status(StatusState::Canceled, &format!("{name} canceled"), url),
        _ => match job.watch.and_then(|w| w.gave_up.as_deref()) {
            // Reported workflow by workflow, the pipeline's own context ends
            // with the workflows completion events told of, once watching
            // ends: their worst result when every one finished.
            Some(why) if per_workflow => match job.watch.and_then(finished_workflows) {
                Some(state) => status(
                    state,
                    &format!("{name}: {} (by its workflows)", state.as_str()),
                    url,
                ),
                None => status(StatusState::Error, &format!("{name}: {why}"), url),
            },
            Some(why) => status(StatusState::Error, &format!("{name}: {why}"), url),
            // Created or running: one status, so a CI's own "running" news
            // after the creation posts nothing new.
            _ => status(StatusState::Running, &format!("{name} running"), url),
        },
    }
}

/// The worst result of the workflows a watch knows, when there are some
/// and every one finished.
fn finished_workflows(w: &WatchFacts) -> Option<StatusState> {
    let states: Vec<StatusState> = w.workflows.values().map(|r| workflow_state(&r.status)).collect();
    if states.is_empty() || states.contains(&StatusState::Running) {
        return None;
    }
    [StatusState::Failure, StatusState::Error, StatusState::Canceled]
        .into_iter()
        .find(|s| states.contains(s))
        .or(Some(StatusState::Success))
}

/// A CircleCI workflow's status on the commit.
pub fn workflow_state(status: &str) -> StatusState {
    match status {
        "success" => StatusState::Success,
        "failed" | "unauthorized" => StatusState::Failure,
        "error" => StatusState::Error,
        "canceled" | "cancelled" => StatusState::Canceled,
        "not_run" => StatusState::Success,
        _ => StatusState::Running,
    }
}

/// What a status may say of an error: its first part, up to the first
/// `:` (`HTTP 404`, `cannot connect to the CI API`), so that a CI's
/// answer or a host name is not published on the commit; the whole text
/// is in `deliveries show`.
fn headline(error: &str) -> &str {
    error
        .split(':')
        .next()
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or(error)
}

/// The first 7 characters of a commit.
pub fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::status::Vcs;

    fn spec(follow: bool) -> StatusSpec {
        StatusSpec {
            source: "github".into(),
            vcs: Vcs::Github,
            repository: "acme/app".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            git_ref: Some("refs/heads/main".into()),
            context: "hookbridge/ci".into(),
            follow,
            poll: None,
            poll_timeout: Duration::from_secs(3600),
        }
    }

    fn facts<'a>(spec: &'a StatusSpec, state: JobState, result: Option<&'a TriggerResult>) -> JobFacts<'a> {
        JobFacts {
            state,
            kind: TargetKind::Gitlab,
            result,
            last_error: None,
            spec,
            pipeline: None,
            superseded_by: None,
            watch: None,
        }
    }

    fn result() -> TriggerResult {
        TriggerResult {
            id: Some("991".into()),
            number: Some(12),
            url: Some("https://gitlab.example/acme/app/-/pipelines/991".into()),
            ..TriggerResult::default()
        }
    }

    fn one(job: &JobFacts<'_>) -> NewStatus {
        let mut w = desired(job);
        assert_eq!(w.len(), 1);
        w.remove(0).status
    }

    #[test]
    fn a_job_walks_from_queued_to_its_pipelines_result() {
        let spec = spec(true);
        let r = result();
        assert_eq!(one(&facts(&spec, JobState::Pending, None)).description, "queued");
        let created = one(&facts(&spec, JobState::Done, Some(&r)));
        assert_eq!(created.state, StatusState::Running);
        assert_eq!(created.description, "GitLab pipeline #12 running");
        assert_eq!(created.target_url.as_deref(), r.url.as_deref());
        let mut f = facts(&spec, JobState::Done, Some(&r));
        f.pipeline = Some(PipelineState::Running);
        assert_eq!(one(&f).description, "GitLab pipeline #12 running");
        f.pipeline = Some(PipelineState::Failed);
        assert_eq!(one(&f).state, StatusState::Failure);
        f.pipeline = Some(PipelineState::Canceled);
        assert_eq!(one(&f).state, StatusState::Canceled);
    }

    #[test]
    fn without_follow_creation_is_success() {
        let spec = spec(false);
        let r = result();
        let s = one(&facts(&spec, JobState::Done, Some(&r)));
        assert_eq!(
            (s.state, s.description.as_str()),
            (StatusState::Success, "GitLab pipeline #12 created")
        );
    }

    #[test]
    fn dead_and_superseded_jobs_are_errors_with_the_reason() {
        let spec = spec(true);
        let mut f = facts(&spec, JobState::Dead, None);
        f.last_error = Some("HTTP 404: project not found");
        let s = one(&f);
        assert_eq!(s.state, StatusState::Error);
        assert_eq!(s.description, "not triggered: HTTP 404");
        let mut f = facts(&spec, JobState::Superseded, None);
        f.superseded_by = Some("fedcba9876543210");
        assert_eq!(one(&f).description, "superseded by fedcba9");
        let long = "x".repeat(500);
        f = facts(&spec, JobState::Dead, None);
        f.last_error = Some(&long);
        assert_eq!(
            one(&f).description.chars().count(),
            crate::store::status::DESCRIPTION_MAX
        );
    }

    #[test]
    fn refused_workflow_lists_report_each_workflow_under_its_own_context() {
        let spec = spec(true);
        let r = result();
        let mut watch = WatchFacts {
            per_workflow: true,
            ..WatchFacts::default()
        };
        watch.workflows.insert(
            "build".into(),
            Workflow {
                status: "success".into(),
                url: None,
            },
        );
        watch.workflows.insert(
            "test".into(),
            Workflow {
                status: "failed".into(),
                url: None,
            },
        );
        let mut f = facts(&spec, JobState::Done, Some(&r));
        f.kind = TargetKind::Circleci;
        f.watch = Some(&watch);
        let w = desired(&f);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].status.state, StatusState::Running);
        assert_eq!(w[1].context, "hookbridge/ci/build");
        assert_eq!(w[1].status.state, StatusState::Success);
        assert_eq!(w[2].status.state, StatusState::Failure);
        assert_ne!(w[1].subject, w[2].subject);
    }

    #[test]
    fn gitlab_words_map_to_states() {
        assert_eq!(
            PipelineState::from_gitlab("running"),
            Some(PipelineState::Running)
        );
        assert_eq!(
            PipelineState::from_gitlab("success"),
            Some(PipelineState::Success)
        );
        assert_eq!(
            PipelineState::from_gitlab("canceled"),
            Some(PipelineState::Canceled)
        );
        assert_eq!(PipelineState::from_gitlab("weird"), None);
    }
}
