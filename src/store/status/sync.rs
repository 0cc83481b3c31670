//! What both stores do when a job with a status spec moves, decided once
//! here and written by each in its own SQL (`sqlite::statuses`,
//! `postgres::statuses`): [`plan`] reads the job as stored and says what
//! changes with it and which statuses it wants; [`repeats`] keeps a status
//! equal to the latest one of its subject out of the queue; [`told`] reads
//! a completion event; [`after_read`] records a watch's read.

use std::time::Duration;

use super::desired::{self, JobFacts, Wanted, WatchFacts, Workflow};
use super::{NewStatus, PipelineState, PostOutcome, StatusSpec, WatchRecord};
use crate::event::{Event, kind};
use crate::store::model::{from_json, to_json};
use crate::store::{JobState, StoreError, millis};
use crate::target::{TargetKind, TriggerRequest, TriggerResult};

/// What `sync` reads of a job, in the order of [`Stored`]'s fields, from
/// `jobs j LEFT JOIN watches w ON w.job_id = j.id` (the same on both stores).
pub const STORED_COLUMNS: &str = "j.id, j.state, j.request, j.result, j.last_error, j.status, j.pipeline_state,
    j.pipeline_id, (SELECT d.sha FROM jobs s JOIN deliveries d ON d.id = s.delivery_id WHERE s.id = j.superseded_by),
    w.job_id IS NOT NULL, w.facts";

/// A job with a status spec, as stored ([`STORED_COLUMNS`]).
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub id: String,
    pub state: String,
    pub request: String,
    pub result: Option<String>,
    pub last_error: Option<String>,
    /// The status spec (JSON).
    pub spec: String,
    pub pipeline: Option<String>,
    pub pipeline_id: Option<String>,
    /// The commit of the job that superseded it.
    pub superseded_by: Option<String>,
    /// It has a watch, with these facts (JSON).
    pub watched: bool,
    pub facts: Option<String>,
}

/// What a write does for one job ([`plan`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub job: String,
    /// Queued again: its watch goes, and what was learned of its pipeline.
    pub reset: bool,
    /// Its pipeline, just created: recorded as the job's, in state
    /// `created` unless a later one is known.
    pub pipeline_id: Option<String>,
    /// Start watching it (unless it is watched): the first read and the
    /// deadline, in milliseconds.
    pub watch: Option<(i64, i64)>,
    /// The statuses it wants now, each to be queued unless it
    /// [`repeats`] the latest of its subject.
    pub wanted: Vec<Wanted>,
}

/// What to write for `job` at `now` (ms): a job queued again forgets its
/// pipeline; a done one records the pipeline it created and starts
/// watching it when its spec follows it to its result; then the statuses
/// it wants ([`desired::desired`]).
pub fn plan(job: &Stored, now: i64) -> Result<Plan, StoreError> {
    let state: JobState = job
        .state
        .parse()
        .map_err(|e| StoreError::corrupt(format!("job {}: {e}", job.id)))?;
    let request: TriggerRequest = from_json(&job.request)?;
    let spec: StatusSpec = from_json(&job.spec)?;
    let result: Option<TriggerResult> = job.result.as_deref().map(from_json).transpose()?;
    let mut pipeline = job.pipeline.as_deref().and_then(PipelineState::parse);
    let mut facts = job.watched.then(|| facts(job.facts.as_deref())).transpose()?;
    let mut out = Plan {
        job: job.id.clone(),
        reset: false,
        pipeline_id: None,
        watch: None,
        wanted: Vec::new(),
    };
    match state {
        JobState::Pending | JobState::Running
            if pipeline.is_some() || job.pipeline_id.is_some() || facts.is_some() =>
        {
            out.reset = true;
            (pipeline, facts) = (None, None);
        }
        JobState::Done => {
            let id = result.as_ref().and_then(|r| r.id.clone());
            if id.is_some() && id != job.pipeline_id {
                out.pipeline_id.clone_from(&id);
                pipeline = pipeline.or(Some(PipelineState::Created));
            }
            if id.is_some()
                && spec.follow
                && facts.is_none()
                && !pipeline.is_some_and(PipelineState::is_final)
            {
                out.watch = Some(watch_times(&spec, now));
                facts = Some(WatchFacts::default());
            }
        }
        _ => {}
    }
    out.wanted = desired::desired(&JobFacts {
        state,
        kind: request.target_kind(),
        result: result.as_ref(),
        last_error: job.last_error.as_deref(),
        spec: &spec,
        pipeline,
        superseded_by: job.superseded_by.as_deref(),
        watch: facts.as_ref(),
    });
    Ok(out)
}

/// A new watch's first read (the first poll, or the deadline without
/// `poll`) and its deadline.
fn watch_times(spec: &StatusSpec, now: i64) -> (i64, i64) {
    let after = |d: Duration| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let deadline = after(spec.poll_timeout);
    (spec.poll.map_or(deadline, after).min(deadline), deadline)
}

/// Whether `status` is the latest one queued for its subject (`latest`:
/// its state and description): then it is not queued again.
pub fn repeats(latest: Option<(&str, &str)>, status: &NewStatus) -> bool {
    latest.is_some_and(|(s, d)| s == status.state.as_str() && d == status.description)
}

/// A watch's facts as stored (none yet: the default).
pub fn facts(json: Option<&str>) -> Result<WatchFacts, StoreError> {
    Ok(json.map(from_json).transpose()?.unwrap_or_default())
}

/// What a completion event tells of the pipeline of a job of `kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum Told {
    /// A GitLab `Pipeline Hook`: the pipeline's state.
    Pipeline(PipelineState),
    /// A CircleCI `workflow-completed`: one workflow's result. The
    /// pipeline runs; whether all of its workflows are done is the
    /// watch's to read, woken at once.
    Workflow(Option<(String, Workflow)>),
}

/// What a completion event (`event.pipeline` = `run`) tells of a job
/// that sent `request` and recorded a pipeline of `run`'s id, if the event
/// is about that pipeline: from the same CI, and, where both name it, of
/// the same project (pipeline ids are only unique within one GitLab).
/// Only pipeline events (`kind = "pipeline"`) tell anything: a CircleCI
/// `job-completed` is no workflow's result.
pub fn told(request: &TriggerRequest, event: &Event) -> Option<Told> {
    let run = event.pipeline.as_ref().filter(|_| event.kind == kind::PIPELINE)?;
    if !same_project(request, event.repository.as_deref()) {
        return None;
    }
    match (request.target_kind(), run.ci.as_str()) {
        (TargetKind::Gitlab, "gitlab") => PipelineState::from_gitlab(&run.status).map(Told::Pipeline),
        (TargetKind::Circleci, "circleci") => Some(Told::Workflow(run.workflow.clone().map(|name| {
            let workflow = Workflow {
                status: run.status.clone(),
                url: run.url.clone(),
            };
            (name, workflow)
        }))),
        _ => None,
    }
}

/// Whether a completion event of `repository` may be about a pipeline
/// `request` created: the GitLab project's path, or the repository a
/// CircleCI project slug names (`gh/acme/app`), compared without case. A
/// numeric GitLab project id, a CircleCI `circleci/<org>/<project>` slug or
/// an event without a repository cannot be compared, and pass.
fn same_project(request: &TriggerRequest, repository: Option<&str>) -> bool {
    let Some(repository) = repository else {
        return true;
    };
    let named = match request {
        TriggerRequest::Gitlab(r) if !r.project.bytes().all(|b| b.is_ascii_digit()) => r.project.as_str(),
        TriggerRequest::Circleci(r) => match r.project().split_once('/') {
            Some(("gh" | "github" | "bb" | "bitbucket", path)) => path,
            _ => return true,
        },
        _ => return true,
    };
    named.eq_ignore_ascii_case(repository)
}

/// A workflow added to a watch's facts (JSON in, JSON out).
pub fn with_workflow(
    facts_json: Option<&str>,
    workflow: Option<(String, Workflow)>,
) -> Result<String, StoreError> {
    let mut f = facts(facts_json)?;
    if let Some((name, run)) = workflow {
        f.workflows.insert(name, run);
    }
    to_json(&f)
}

/// What a watch's read comes to ([`after_read`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AfterRead {
    /// The watch's facts (JSON).
    pub facts: String,
    /// `pending` (read again at `next`) or `done`.
    pub state: &'static str,
    pub next: i64,
}

/// Record `record`, a read of a watch whose facts were `facts_json`, of a
/// job whose pipeline was `current`: a completion event that came during
/// the read (`woken`) makes it due again at once; a final state, or no
/// next read, ends it.
pub fn after_read(
    facts_json: Option<&str>,
    woken: bool,
    current: Option<PipelineState>,
    record: &WatchRecord,
    now: i64,
) -> Result<AfterRead, StoreError> {
    let mut f = facts(facts_json)?;
    for (name, run) in &record.workflows {
        f.workflows.insert(name.clone(), run.clone());
    }
    f.per_workflow |= record.per_workflow;
    if record.gave_up.is_some() {
        f.gave_up.clone_from(&record.gave_up);
    }
    let learned = match record.pipeline {
        Some(p) if PipelineState::advances_to(current, p) => Some(p),
        _ => current,
    };
    let fin = learned.is_some_and(PipelineState::is_final);
    let (state, next) = match record.next {
        Some(_) if woken && !fin => ("pending", now),
        Some(at) if !fin => ("pending", millis(at)),
        _ => ("done", now),
    };
    Ok(AfterRead {
        facts: to_json(&f)?,
        state,
        next,
    })
}

/// A post's outcome as the status row stores it: `post`, when it is due
/// next, the VCS's HTTP status and the error.
pub fn posted(outcome: &PostOutcome, now: i64) -> (&'static str, i64, Option<u16>, Option<&str>) {
    match outcome {
        PostOutcome::Posted { status } => ("done", now, Some(*status), None),
        PostOutcome::Retry { at, reason, status } => ("pending", millis(*at), *status, Some(reason.as_str())),
        PostOutcome::Dead { reason, status } => ("dead", now, *status, Some(reason.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::status::{StatusState, Vcs};

    fn spec(follow: bool, poll: Option<Duration>) -> String {
        to_json(&StatusSpec {
            source: "github".into(),
            vcs: Vcs::Github,
            repository: "acme/app".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            git_ref: None,
            context: "hookbridge/ci".into(),
            follow,
            poll,
            poll_timeout: Duration::from_secs(3600),
        })
        .unwrap()
    }

    fn stored(state: &str, result: Option<&str>) -> Stored {
        Stored {
            id: "j1".into(),
            state: state.into(),
            request: r#"{"api":"gitlab_pipeline","project":"acme/app","ref":"main"}"#.into(),
            result: result.map(str::to_owned),
            spec: spec(true, Some(Duration::from_secs(60))),
            ..Stored::default()
        }
    }

    #[test]
    fn a_created_pipeline_is_recorded_and_watched_once() {
        let done = stored("done", Some(r#"{"id":"991","number":12}"#));
        let p = plan(&done, 1_000).unwrap();
        assert_eq!(p.pipeline_id.as_deref(), Some("991"));
        assert_eq!(p.watch, Some((61_000, 3_601_000)));
        assert!(!p.reset);
        assert_eq!(p.wanted[0].status.state, StatusState::Running);
        let mut again = done.clone();
        again.pipeline_id = Some("991".into());
        again.pipeline = Some("created".into());
        again.watched = true;
        let p = plan(&again, 2_000).unwrap();
        assert_eq!((p.pipeline_id, p.watch), (None, None));
        let mut fin = done;
        fin.pipeline = Some("success".into());
        let p = plan(&fin, 2_000).unwrap();
        assert_eq!(p.watch, None, "a finished pipeline is not watched");
        assert_eq!(p.wanted[0].status.state, StatusState::Success);
    }

    #[test]
    fn a_job_queued_again_forgets_its_pipeline() {
        let mut job = stored("pending", None);
        assert!(!plan(&job, 0).unwrap().reset);
        job.pipeline_id = Some("991".into());
        let p = plan(&job, 0).unwrap();
        assert!(p.reset);
        assert_eq!(p.wanted[0].status.description, "queued");
        job.pipeline_id = None;
        job.watched = true;
        assert!(plan(&job, 0).unwrap().reset, "a watch without facts is one too");
    }

    #[test]
    fn a_read_during_which_an_event_came_is_due_again_at_once() {
        let record = WatchRecord {
            next: Some(crate::store::from_millis(90_000)),
            ..WatchRecord::default()
        };
        let r = after_read(None, true, Some(PipelineState::Running), &record, 5_000).unwrap();
        assert_eq!((r.state, r.next), ("pending", 5_000));
        let r = after_read(None, false, Some(PipelineState::Running), &record, 5_000).unwrap();
        assert_eq!((r.state, r.next), ("pending", 90_000));
        let fin = WatchRecord {
            pipeline: Some(PipelineState::Failed),
            ..record.clone()
        };
        assert_eq!(after_read(None, true, None, &fin, 5_000).unwrap().state, "done");
        // A late "running" after the result does not keep the watch going.
        let late = WatchRecord {
            pipeline: Some(PipelineState::Running),
            ..record
        };
        let r = after_read(None, false, Some(PipelineState::Success), &late, 5_000).unwrap();
        assert_eq!(r.state, "done");
    }

    #[test]
    fn equal_statuses_repeat_and_others_do_not() {
        let s = NewStatus {
            state: StatusState::Pending,
            description: "queued".into(),
            target_url: None,
            context_suffix: None,
        };
        assert!(repeats(Some(("pending", "queued")), &s));
        assert!(!repeats(Some(("running", "queued")), &s));
        assert!(!repeats(None, &s));
    }
}
