//! CircleCI webhook payloads described as an [`Event`] with its
//! [`PipelineRun`]: `workflow-completed` is a `pipeline` event, `job-completed`
//! a `job` event, and the action is the workflow's (or job's) status.
//!
//! The commit comes from `pipeline.vcs` (GitHub OAuth and Bitbucket Cloud
//! projects) or, when it is absent, from `pipeline.trigger_parameters.git`
//! (GitLab, GitHub App and Bitbucket Data Center projects). Payloads are open
//! maps: every field is optional, and unknown ones are ignored.

use serde::Deserialize;

use crate::event::{Event, PipelineRun, Provider, kind};
use crate::source::{DescribeError, parse, signature};

#[derive(Deserialize)]
struct Payload {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    workflow: Option<Workflow>,
    job: Option<Job>,
    pipeline: Option<Pipeline>,
    project: Option<Project>,
}

#[derive(Deserialize)]
struct Workflow {
    id: Option<String>,
    name: Option<String>,
    url: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize)]
struct Job {
    status: Option<String>,
}

#[derive(Deserialize)]
struct Pipeline {
    id: Option<String>,
    number: Option<u64>,
    vcs: Option<Vcs>,
    trigger_parameters: Option<TriggerParameters>,
}

#[derive(Deserialize)]
struct Vcs {
    origin_repository_url: Option<String>,
    target_repository_url: Option<String>,
    revision: Option<String>,
    branch: Option<String>,
    tag: Option<String>,
}

#[derive(Deserialize)]
struct TriggerParameters {
    git: Option<Git>,
    gitlab: Option<GitlabTrigger>,
}

#[derive(Deserialize)]
struct Git {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    branch: Option<String>,
    tag: Option<String>,
    checkout_sha: Option<String>,
    checkout_url: Option<String>,
}

#[derive(Deserialize)]
struct GitlabTrigger {
    web_url: Option<String>,
}

#[derive(Deserialize)]
struct Project {
    slug: Option<String>,
}

/// CircleCI's event types, as `event.name`.
pub(super) const WORKFLOW_COMPLETED: &str = "workflow-completed";
pub(super) const JOB_COMPLETED: &str = "job-completed";

/// `Some` only for a non-empty string: CircleCI sends `"tag": ""` for a branch build.
fn present(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

pub(super) fn describe(source: &str, header: Option<&str>, payload: &[u8]) -> Result<Event, DescribeError> {
    let p: Payload = parse(payload)?;
    let name = present(p.event_type)
        .or_else(|| header.map(str::to_owned))
        .ok_or_else(|| {
            DescribeError::Unreadable(
                "CircleCI payload has no `type` (and no `circleci-event-type` header): cannot tell which event this is"
                    .into(),
            )
        })?;
    let normalized = match name.as_str() {
        WORKFLOW_COMPLETED => kind::PIPELINE,
        JOB_COMPLETED => "job",
        other => other,
    };
    // CircleCI may deliver an event twice, with the same `id`.
    let delivery = present(p.id).unwrap_or_else(|| signature::body_digest(payload));
    let mut event = Event::new(source, Provider::Circleci, &name, normalized, delivery);
    let workflow = p.workflow;
    let status = match name.as_str() {
        JOB_COMPLETED => p.job.and_then(|j| present(j.status)),
        _ => workflow.as_ref().and_then(|w| present(w.status.clone())),
    };
    event.action = status.clone();
    let slug = p.project.and_then(|p| p.slug);
    let Some(pipeline) = p.pipeline else {
        event.repository = slug.as_deref().and_then(repository_from_slug);
        return Ok(event);
    };
    let git = pipeline.trigger_parameters.as_ref().and_then(|t| t.git.as_ref());
    commit(&mut event, pipeline.vcs.as_ref(), git);
    event.repository = repository(&pipeline, slug.as_deref());
    if let (Some(id), Some(status)) = (present(pipeline.id), status) {
        let (workflow_name, workflow_id, url) = match workflow {
            Some(w) => (present(w.name), present(w.id), present(w.url)),
            None => (None, None, None),
        };
        event.pipeline = Some(PipelineRun {
            ci: Provider::Circleci.as_str().to_owned(),
            id,
            number: pipeline.number,
            status,
            workflow: workflow_name,
            workflow_id,
            url,
        });
    }
    Ok(event)
}

/// The first non-empty of two optional strings.
fn first(a: Option<&String>, b: Option<&String>) -> Option<String> {
    present(a.cloned()).or_else(|| present(b.cloned()))
}

/// `sha`, `ref`, `branch` and `tag` from `pipeline.vcs`, else from the trigger's git parameters.
fn commit(event: &mut Event, vcs: Option<&Vcs>, git: Option<&Git>) {
    event.sha = first(
        vcs.and_then(|v| v.revision.as_ref()),
        git.and_then(|g| g.checkout_sha.as_ref()),
    );
    let tag = first(vcs.and_then(|v| v.tag.as_ref()), git.and_then(|g| g.tag.as_ref()));
    let branch = first(
        vcs.and_then(|v| v.branch.as_ref()),
        git.and_then(|g| g.branch.as_ref()),
    );
    if let Some(tag) = tag {
        event.set_ref(&format!("refs/tags/{tag}"));
    } else if let Some(branch) = branch {
        event.set_ref(&format!("refs/heads/{branch}"));
    } else if let Some(full_ref) = first(git.and_then(|g| g.git_ref.as_ref()), None) {
        event.set_ref(&full_ref);
    }
}

/// The repository CircleCI built: its URL in `pipeline.vcs` (the target, which
/// differs from the origin for a pull request from a fork), the trigger's
/// repository URLs, else a VCS-style project slug (`gh/acme/app`).
fn repository(pipeline: &Pipeline, slug: Option<&str>) -> Option<String> {
    let vcs = pipeline.vcs.as_ref();
    let trigger = pipeline.trigger_parameters.as_ref();
    [
        vcs.and_then(|v| v.target_repository_url.as_deref()),
        vcs.and_then(|v| v.origin_repository_url.as_deref()),
        trigger
            .and_then(|t| t.gitlab.as_ref())
            .and_then(|g| g.web_url.as_deref()),
        trigger
            .and_then(|t| t.git.as_ref())
            .and_then(|g| g.checkout_url.as_deref()),
    ]
    .into_iter()
    .flatten()
    .find_map(repository_from_url)
    .or_else(|| slug.and_then(repository_from_slug))
}

/// `acme/app` from `https://github.com/acme/app`, `git@gitlab.com:group/sub/app.git`,
/// `ssh://git@host:7999/scm/PROJ/repo.git` (Bitbucket Data Center's `scm/` dropped).
pub(super) fn repository_from_url(url: &str) -> Option<String> {
    let url = url.trim();
    let path = if let Some((_, rest)) = url.split_once("://") {
        // After the host (and any user or port): the first `/`.
        rest.split_once('/').map(|(_, path)| path)?
    } else {
        // scp-like `user@host:path`.
        url.split_once(':').map(|(_, path)| path)?
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let path = path.strip_prefix("scm/").unwrap_or(path);
    let segments = path.split('/').filter(|s| !s.is_empty()).count();
    (segments >= 2).then(|| path.to_owned())
}

/// `acme/app` from a VCS-style slug (`gh/acme/app`, `github/acme/app`,
/// `bb/acme/app`, `bitbucket/acme/app`). A `circleci/<org-id>/<project-id>`
/// slug (GitLab, GitHub App projects) names no repository.
fn repository_from_slug(slug: &str) -> Option<String> {
    let mut parts = slug.splitn(3, '/');
    let vcs = parts.next()?;
    let (owner, repo) = (parts.next()?, parts.next()?);
    let known = matches!(vcs, "gh" | "github" | "bb" | "bitbucket");
    (known && !owner.is_empty() && !repo.is_empty() && !repo.contains('/')).then(|| format!("{owner}/{repo}"))
}

#[cfg(test)]
mod tests;
