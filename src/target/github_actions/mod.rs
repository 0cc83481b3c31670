//! GitHub Actions: `workflow_dispatch` (run one workflow on a ref, with
//! inputs) or `repository_dispatch` (an event any workflow can listen to,
//! with a `client_payload`).
//!
//! - `POST /repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches`
//!   with `{ref, inputs, return_run_details: true}`: GitHub answers 200
//!   with the run's id and URLs (since 2026-02), which are recorded.
//!   GitHub Enterprise Server (a `url` ending in `/api/v3`) refuses the
//!   field (422 "not a permitted key", up to 3.19 at least), so it is not
//!   sent there: GHES answers 204, and no run is recorded.
//! - `POST /repos/{owner}/{repo}/dispatches` with `{event_type,
//!   client_payload}`: 204, no run to record.
//!
//! The token travels as `Authorization: Bearer`. GitHub's rate limits are
//! read from its own headers: a 403 or 429 with `retry-after`, or with
//! `x-ratelimit-remaining: 0` and `x-ratelimit-reset`, or saying
//! "secondary rate limit", is retried after the stated time.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::encode::path_segment;
use super::{
    AUTHORIZATION, Credential, Encoding, Header, OutboundRequest, Outcome, REDACTED, RequestError, Response,
    TriggerCompiler, TriggerResult, USER_AGENT, default_ref, json_type, owner_repo, render_string,
    render_table, retry_after,
};
use crate::config::raw::RawTrigger;
use crate::event::Event;
use crate::template::{TemplateValue, Templates};

/// `workflow_dispatch` takes at most this many inputs.
pub const MAX_INPUTS: usize = 25;
/// `repository_dispatch`: at most this many top-level `client_payload` keys.
pub const MAX_CLIENT_PAYLOAD_KEYS: usize = 10;
/// `repository_dispatch`: the JSON of `client_payload` is under 64 KiB.
pub const MAX_CLIENT_PAYLOAD_BYTES: usize = 64 * 1024;
/// `event_type` is 1 to 100 characters.
pub const MAX_EVENT_TYPE: usize = 100;
/// The REST API version every request names.
pub const API_VERSION: &str = "2022-11-28";
/// How long a secondary rate limit is waited out when GitHub names no time.
const SECONDARY_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Trigger {
    repository: TemplateValue,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Workflow {
        workflow: TemplateValue,
        git_ref: Option<TemplateValue>,
        inputs: BTreeMap<String, TemplateValue>,
    },
    Repository {
        event_type: TemplateValue,
        client_payload: BTreeMap<String, TemplateValue>,
    },
}

/// A rendered GitHub Actions trigger.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Workflow(WorkflowDispatch),
    Repository(RepositoryDispatch),
}

/// `workflow_dispatch`, stored as `"api": "github_workflow_dispatch"`;
/// Gitea's and Forgejo's take the same fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowDispatch {
    /// `owner/repo`.
    pub repository: String,
    /// The workflow's file name (`deploy.yml`) or numeric id.
    pub workflow: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    #[serde(default)]
    pub inputs: serde_json::Map<String, serde_json::Value>,
}

/// `repository_dispatch`, stored as `"api": "github_repository_dispatch"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryDispatch {
    pub repository: String,
    pub event_type: String,
    #[serde(default)]
    pub client_payload: serde_json::Map<String, serde_json::Value>,
}

/// A literal `owner/repo` is checked at config time.
pub(super) fn check_repository(
    f: &mut TriggerCompiler<'_>,
    raw: &Option<Spanned<String>>,
    value: &TemplateValue,
) {
    if let (Some(raw), Some(literal)) = (raw, value.as_literal_str())
        && let Err(e) = owner_repo(literal)
    {
        f.error(format!("trigger.repository: {e}"), raw.span());
    }
}

fn check_input_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("input names cannot be empty".into());
    }
    Ok(())
}

impl Trigger {
    pub fn compile(raw: &Spanned<RawTrigger>, f: &mut TriggerCompiler<'_>) -> Option<Trigger> {
        let r = raw.get_ref();
        let repository = f.required(raw, "repository", &r.repository, "the repository as `owner/repo`")?;
        check_repository(f, &r.repository, &repository);
        let kind = match (&r.workflow, &r.event_type) {
            (Some(workflow), None) => {
                f.allow(
                    r,
                    "a GitHub Actions workflow_dispatch",
                    &["repository", "workflow", "ref", "inputs"],
                    |key| match key {
                        "client_payload" => {
                            Some("client_payload goes with `event_type` (repository_dispatch)".into())
                        }
                        "branch" | "tag" => Some("the branch or tag to run on is `ref`".into()),
                        "parameters" | "variables" => Some("workflow inputs are `inputs`".into()),
                        _ => None,
                    },
                );
                f.limit("inputs", &r.inputs, MAX_INPUTS);
                if let Some(inputs) = &r.inputs {
                    for (k, v) in inputs.get_ref() {
                        if matches!(v.get_ref(), toml::Value::Array(_) | toml::Value::Table(_)) {
                            f.error(
                                format!(
                                    "trigger.inputs.{}: a workflow input is a string, number or boolean",
                                    k.get_ref()
                                ),
                                v.span(),
                            );
                        }
                    }
                }
                Kind::Workflow {
                    workflow: f.text("workflow", workflow)?,
                    git_ref: f.opt_text("ref", &r.git_ref),
                    inputs: f.table("inputs", &r.inputs, check_input_key),
                }
            }
            (None, Some(event_type)) => {
                f.allow(
                    r,
                    "a GitHub repository_dispatch",
                    &["repository", "event_type", "client_payload"],
                    |key| match key {
                        "inputs" | "ref" => {
                            Some("`inputs` and `ref` go with `workflow` (workflow_dispatch)".into())
                        }
                        _ => None,
                    },
                );
                let len = event_type.get_ref().chars().count();
                if !event_type.get_ref().contains("{{") && !(1..=MAX_EVENT_TYPE).contains(&len) {
                    f.error(
                        format!("trigger.event_type is {len} characters; GitHub takes 1 to {MAX_EVENT_TYPE}"),
                        event_type.span(),
                    );
                }
                f.limit("client_payload", &r.client_payload, MAX_CLIENT_PAYLOAD_KEYS);
                Kind::Repository {
                    event_type: f.text("event_type", event_type)?,
                    client_payload: f.table("client_payload", &r.client_payload, |_| Ok(())),
                }
            }
            (Some(w), Some(_)) => {
                f.error(
                    "set either `workflow` (workflow_dispatch) or `event_type` (repository_dispatch), not both",
                    w.span(),
                );
                return None;
            }
            (None, None) => {
                f.error(
                    "trigger needs `workflow` (workflow_dispatch: a file name such as `deploy.yml`, or an id) or `event_type` (repository_dispatch)",
                    raw.span(),
                );
                return None;
            }
        };
        Some(Trigger { repository, kind })
    }

    pub fn render(&self, t: &Templates, scope: &minijinja::Value, event: &Event) -> Result<Request, String> {
        let repository = render_string(t, &self.repository, scope, "repository")?;
        owner_repo(&repository)?;
        match &self.kind {
            Kind::Workflow {
                workflow,
                git_ref,
                inputs,
            } => Ok(Request::Workflow(WorkflowDispatch {
                repository,
                workflow: render_string(t, workflow, scope, "workflow")?,
                git_ref: match git_ref {
                    Some(r) => render_string(t, r, scope, "ref")?,
                    None => default_ref(event, "ref")?,
                },
                inputs: render_inputs(t, inputs, scope)?,
            })),
            Kind::Repository {
                event_type,
                client_payload,
            } => {
                let event_type = render_string(t, event_type, scope, "event_type")?;
                let len = event_type.chars().count();
                if len > MAX_EVENT_TYPE {
                    return Err(format!(
                        "trigger.event_type rendered {len} characters; GitHub takes at most {MAX_EVENT_TYPE}"
                    ));
                }
                let client_payload = render_table(t, client_payload, scope)?;
                let size = serde_json::to_vec(&client_payload).map_or(0, |b| b.len());
                if size >= MAX_CLIENT_PAYLOAD_BYTES {
                    return Err(format!(
                        "trigger.client_payload rendered {size} bytes of JSON; GitHub takes less than {MAX_CLIENT_PAYLOAD_BYTES}"
                    ));
                }
                Ok(Request::Repository(RepositoryDispatch {
                    repository,
                    event_type,
                    client_payload,
                }))
            }
        }
    }
}

/// Workflow inputs: strings, numbers and booleans, as GitHub takes them.
fn render_inputs(
    t: &Templates,
    inputs: &BTreeMap<String, TemplateValue>,
    scope: &minijinja::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let rendered = render_table(t, inputs, scope)?;
    for (k, v) in &rendered {
        if !matches!(
            v,
            serde_json::Value::String(_) | serde_json::Value::Number(_) | serde_json::Value::Bool(_)
        ) {
            return Err(format!(
                "input `{k}` must be a string, number or boolean, got {}",
                json_type(v)
            ));
        }
    }
    Ok(rendered)
}

/// The headers of every GitHub API call, with the token's place.
pub(super) fn headers() -> Vec<Header> {
    vec![
        Header {
            name: "Accept".into(),
            value: "application/vnd.github+json".into(),
        },
        Header {
            name: "Content-Type".into(),
            value: "application/json".into(),
        },
        Header {
            name: "X-GitHub-Api-Version".into(),
            value: API_VERSION.into(),
        },
        Header {
            name: "User-Agent".into(),
            value: USER_AGENT.into(),
        },
        Header {
            name: AUTHORIZATION.into(),
            value: format!("Bearer {REDACTED}"),
        },
    ]
}

/// GitHub Enterprise Server serves its API under `/api/v3`.
fn is_enterprise_server(base: &str) -> bool {
    base.trim_end_matches('/').ends_with("/api/v3")
}

/// The path of a repository, each part one segment.
pub(super) fn repo_path(repository: &str) -> Result<String, RequestError> {
    let (owner, repo) = owner_repo(repository).map_err(RequestError::Invalid)?;
    Ok(format!("/repos/{}/{}", path_segment(owner), path_segment(repo)))
}

pub(super) fn request(base: &str, r: &Request) -> Result<OutboundRequest, RequestError> {
    let (url, body) = match r {
        Request::Workflow(w) => {
            let mut body = serde_json::Map::new();
            body.insert("ref".into(), w.git_ref.clone().into());
            if !w.inputs.is_empty() {
                body.insert("inputs".into(), w.inputs.clone().into());
            }
            if !is_enterprise_server(base) {
                body.insert("return_run_details".into(), true.into());
            }
            let url = format!(
                "{base}{}/actions/workflows/{}/dispatches",
                repo_path(&w.repository)?,
                path_segment(&w.workflow)
            );
            (url, body)
        }
        Request::Repository(d) => {
            let mut body = serde_json::Map::new();
            body.insert("event_type".into(), d.event_type.clone().into());
            if !d.client_payload.is_empty() {
                body.insert("client_payload".into(), d.client_payload.clone().into());
            }
            (format!("{base}{}/dispatches", repo_path(&d.repository)?), body)
        }
    };
    Ok(OutboundRequest {
        method: "POST",
        url,
        headers: headers(),
        body: serde_json::Value::Object(body),
        encoding: Encoding::Json,
        credential: Credential::Authorization("Bearer"),
    })
}

/// The answer to a dispatch that went through.
pub(super) fn created(body: &[u8]) -> Outcome {
    #[derive(Deserialize)]
    struct Run {
        workflow_run_id: Option<i64>,
        html_url: Option<String>,
        run_url: Option<String>,
    }
    // A repository_dispatch, or a GitHub that was not asked for the run,
    // answers 204 without a body: dispatched, no run to record.
    let run: Option<Run> = serde_json::from_slice(body).ok();
    Outcome::Created(TriggerResult {
        id: run
            .as_ref()
            .and_then(|r| r.workflow_run_id)
            .map(|id| id.to_string()),
        url: run.and_then(|r| r.html_url.or(r.run_url)),
        state: Some("dispatched".into()),
        ..TriggerResult::default()
    })
}

/// How long to wait before retrying a 408, 425, 429 or 5xx: as GitHub
/// states it ([`rate_limited`]), else a minute for a secondary rate limit.
pub(crate) fn retry_wait(response: &Response, message: &str, now: SystemTime) -> Option<Duration> {
    rate_limited(response, now).or_else(|| secondary(message).then_some(SECONDARY_WAIT))
}

/// Whether GitHub's message names its secondary rate limit.
fn secondary(message: &str) -> bool {
    message.to_ascii_lowercase().contains("secondary rate limit")
}

/// When GitHub says how long to wait: `retry-after`, or the primary
/// limit's reset (`x-ratelimit-remaining: 0`, `x-ratelimit-reset`).
fn rate_limited(response: &Response, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if get("retry-after").is_some() {
        return retry_after(&response.headers, now);
    }
    if get("x-ratelimit-remaining") == Some("0") {
        let reset = get("x-ratelimit-reset")?.parse::<u64>().ok()?;
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(reset));
        return Some(at.map_or(Duration::MAX, |at| at.duration_since(now).unwrap_or_default()));
    }
    None
}

/// A 4xx other than 408/425/429: a rate limit (403) is retried after the
/// time GitHub states, anything else is permanent.
pub(super) fn failed(status: u16, message: &str, response: &Response, now: SystemTime) -> Outcome {
    if status == 403
        && let Some(after) = retry_wait(response, message, now)
    {
        return Outcome::Retry {
            reason: format!("HTTP {status}: {message}"),
            after: Some(after),
        };
    }
    if message.contains("not a permitted key") {
        return Outcome::Permanent(format!(
            "HTTP {status}: {message} (this GitHub does not take a field hookbridge sent; a GitHub Enterprise Server `url` ends in /api/v3)"
        ));
    }
    let hint = match status {
        401 => " (the token is invalid or expired)",
        403 => {
            " (the token lacks the permission: Actions read and write for workflow_dispatch, Contents read and write for repository_dispatch)"
        }
        404 => " (no such repository or workflow, or the token cannot see it)",
        422 => {
            " (the workflow has no `workflow_dispatch` trigger, the ref does not exist, or an input is not declared)"
        }
        _ => "",
    };
    Outcome::Permanent(format!("HTTP {status}: {message}{hint}"))
}

#[cfg(test)]
mod tests;
