//! CircleCI: API v1.1 job trigger (`job` set), API v2 pipeline trigger, and API
//! v2 pipeline run (`definition_id` set).
//!
//! Requests send JSON with `Content-Type` and `Accept: application/json` (v2
//! ignores a body without the first; v1.1 answers EDN without the second), the
//! token in `Circle-Token`, the project slug as separate path segments and the
//! v1.1 branch percent-encoded as one segment.
//!
//! This module holds the trigger and request types and the project slug;
//! `compile` checks a trigger at config time, `render` fills it in per
//! event, and `request` builds the HTTP request and reads the answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::GitRef;
use crate::template::TemplateValue;

mod compile;
mod render;
mod request;

pub(super) use request::{created, failed, pipeline_result, request};

/// Which CircleCI endpoint a trigger calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Job,
    Pipeline,
    PipelineRun,
}

impl Api {
    fn describe(self) -> &'static str {
        match self {
            Api::Job => "a CircleCI job trigger (API v1.1)",
            Api::Pipeline => "a CircleCI pipeline trigger (API v2)",
            Api::PipelineRun => "a CircleCI pipeline run (API v2, definition_id)",
        }
    }
}

/// Pipeline parameter limits (CircleCI API v2).
const MAX_PARAMETERS: usize = 100;
const MAX_PARAMETER_KEY: usize = 128;
const MAX_PARAMETER_VALUE: usize = 512;

#[derive(Debug)]
pub struct Trigger {
    api: Api,
    project: TemplateValue,
    job: Option<TemplateValue>,
    branch: Option<TemplateValue>,
    tag: Option<TemplateValue>,
    revision: Option<TemplateValue>,
    parallel: Option<TemplateValue>,
    build_parameters: BTreeMap<String, TemplateValue>,
    parameters: BTreeMap<String, TemplateValue>,
    definition_id: Option<TemplateValue>,
    config: Option<RefTemplate>,
    checkout: Option<RefTemplate>,
}

#[derive(Debug)]
struct RefTemplate {
    branch: Option<TemplateValue>,
    tag: Option<TemplateValue>,
}

/// A rendered CircleCI trigger, one variant per API. Stored inside a
/// `TriggerRequest`, whose JSON names each variant (`circleci_job`, ...).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// API v1.1: run one job on a branch.
    Job(JobRequest),
    /// API v2: trigger a pipeline (`/project/{slug}/pipeline`).
    Pipeline(PipelineRequest),
    /// API v2: run a pipeline definition (`/pipeline/run`).
    PipelineRun(PipelineRunRequest),
}

impl Request {
    /// The project slug the trigger names (`gh/acme/app`, `circleci/<org>/<project>`).
    pub fn project(&self) -> &str {
        match self {
            Request::Job(r) => &r.project,
            Request::Pipeline(r) => &r.project,
            Request::PipelineRun(r) => &r.project,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub project: String,
    pub branch: String,
    pub job: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parallel: Option<u64>,
    #[serde(default)]
    pub build_parameters: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRequest {
    pub project: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRunRequest {
    pub project: String,
    pub definition_id: String,
    pub config: GitRef,
    pub checkout: GitRef,
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// A parsed project slug: `gh/org/repo`, `bitbucket/org/repo`, `circleci/<org-id>/<project-id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug<'a> {
    pub provider: &'a str,
    pub org: &'a str,
    pub project: &'a str,
}

/// Why a project slug cannot be used with an API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlugError {
    #[error(
        "project `{0}` is not a CircleCI project slug; expected `gh/ORG/REPO`, `bb/ORG/REPO` or `circleci/ORG_ID/PROJECT_ID`"
    )]
    NotASlug(String),
    #[error("project `{0}` has an empty segment")]
    EmptySegment(String),
    #[error(
        "project `{slug}`: `{provider}` is not a CircleCI provider; use gh, github, bb, bitbucket or circleci"
    )]
    UnknownProvider { slug: String, provider: String },
    /// A `circleci/...` project (GitHub App, GitLab, Bitbucket Data Center) with API v1.1.
    #[error(
        "project `{0}`: API v1.1 cannot trigger GitHub App, GitLab or Bitbucket Data Center projects; set `definition_id` to use a pipeline run"
    )]
    NoJobTrigger(String),
    /// A `circleci/...` project with the v2 pipeline trigger.
    #[error(
        "project `{0}`: the v2 pipeline trigger is not available to GitHub App or GitLab projects; set `definition_id` to use a pipeline run"
    )]
    NoPipelineTrigger(String),
}

/// Parse and check a slug for `api`.
pub fn parse_slug(slug: &str, api: Api) -> Result<Slug<'_>, SlugError> {
    let parts: Vec<&str> = slug.split('/').collect();
    let [provider, org, project] = parts[..] else {
        return Err(SlugError::NotASlug(slug.to_owned()));
    };
    if org.is_empty() || project.is_empty() {
        return Err(SlugError::EmptySegment(slug.to_owned()));
    }
    let valid = ["gh", "github", "bb", "bitbucket", "circleci"];
    if !valid.contains(&provider) {
        return Err(SlugError::UnknownProvider {
            slug: slug.to_owned(),
            provider: provider.to_owned(),
        });
    }
    if provider == "circleci" {
        match api {
            Api::Job => return Err(SlugError::NoJobTrigger(slug.to_owned())),
            Api::Pipeline => return Err(SlugError::NoPipelineTrigger(slug.to_owned())),
            Api::PipelineRun => {}
        }
    }
    Ok(Slug {
        provider,
        org,
        project,
    })
}

/// The v1.1 VCS type of a slug provider.
pub(in crate::target) fn vcs_type(provider: &str) -> &str {
    match provider {
        "gh" => "github",
        "bb" => "bitbucket",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            parse_slug("gh/acme/app", Api::Pipeline),
            Ok(Slug {
                provider: "gh",
                org: "acme",
                project: "app"
            })
        );
        assert!(parse_slug("circleci/9d3c/7a1f", Api::PipelineRun).is_ok());
        let circleci = "circleci/9d3c/7a1f".to_owned();
        assert_eq!(
            parse_slug("circleci/9d3c/7a1f", Api::Job),
            Err(SlugError::NoJobTrigger(circleci.clone()))
        );
        assert_eq!(
            parse_slug("circleci/9d3c/7a1f", Api::Pipeline),
            Err(SlugError::NoPipelineTrigger(circleci))
        );
        let e = parse_slug("gitlab/a/b", Api::PipelineRun).unwrap_err();
        assert_eq!(
            e.to_string(),
            "project `gitlab/a/b`: `gitlab` is not a CircleCI provider; use gh, github, bb, bitbucket or circleci"
        );
        assert_eq!(
            parse_slug("gh/acme", Api::Pipeline),
            Err(SlugError::NotASlug("gh/acme".into()))
        );
        assert_eq!(
            parse_slug("gh//app", Api::Job).unwrap_err().to_string(),
            "project `gh//app` has an empty segment"
        );
    }
}
