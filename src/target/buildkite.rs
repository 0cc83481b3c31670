//! Buildkite: create a build.
//!
//! `POST /v2/organizations/{org}/pipelines/{pipeline}/builds` with
//! `Authorization: Bearer` (an API access token with `write_builds`) and a
//! JSON body `{commit, branch, message, env, meta_data}`. Buildkite answers
//! 201 with the build, whose number and web URL are recorded. `commit`
//! defaults to `HEAD`, `branch` to the event's branch (Buildkite requires
//! one). `env` and `meta_data` values are strings; numbers and booleans are
//! written as text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::encode::path_segment;
use super::{
    AUTHORIZATION, Credential, Encoding, Header, OutboundRequest, Outcome, REDACTED, TriggerCompiler,
    TriggerResult, default_ref, json_headers, render_opt_string, render_string, render_text_table,
};
use crate::config::raw::RawTrigger;
use crate::event::Event;
use crate::template::{TemplateValue, Templates};

/// Keys per `env` or `meta_data` table: a bound on a typo'd config, far
/// above what a build needs.
const MAX_KEYS: usize = 200;

#[derive(Debug)]
pub struct Trigger {
    organization: TemplateValue,
    pipeline: TemplateValue,
    commit: Option<TemplateValue>,
    branch: Option<TemplateValue>,
    message: Option<TemplateValue>,
    env: BTreeMap<String, TemplateValue>,
    meta_data: BTreeMap<String, TemplateValue>,
}

/// A rendered Buildkite build (`"api": "buildkite_build"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub organization: String,
    pub pipeline: String,
    pub commit: String,
    pub branch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub env: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub meta_data: serde_json::Map<String, serde_json::Value>,
}

fn check_env_key(key: &str) -> Result<(), String> {
    if super::is_env_name(key) {
        Ok(())
    } else {
        Err(format!(
            "`{key}`: environment variable names are letters, digits and `_`, not starting with a digit"
        ))
    }
}

fn check_meta_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("meta-data keys cannot be empty".into());
    }
    Ok(())
}

impl Trigger {
    pub fn compile(raw: &Spanned<RawTrigger>, f: &mut TriggerCompiler<'_>) -> Option<Trigger> {
        let r = raw.get_ref();
        f.allow(
            r,
            "a Buildkite build",
            &[
                "organization",
                "pipeline",
                "commit",
                "branch",
                "message",
                "env",
                "meta_data",
            ],
            |key| match key {
                "project" => {
                    Some("Buildkite names the pipeline by `organization` and `pipeline` (slugs)".into())
                }
                "ref" => Some("Buildkite takes `branch` and `commit`".into()),
                "parameters" | "variables" => Some("Buildkite takes `env` and `meta_data`".into()),
                _ => None,
            },
        );
        let organization = f.required(raw, "organization", &r.organization, "the organization's slug")?;
        let pipeline = f.required(raw, "pipeline", &r.pipeline, "the pipeline's slug")?;
        Some(Trigger {
            organization,
            pipeline,
            commit: f.opt_text("commit", &r.commit),
            branch: f.opt_text("branch", &r.branch),
            message: f.opt_text("message", &r.message),
            env: f.text_table("env", &r.env, MAX_KEYS, false, check_env_key),
            meta_data: f.text_table("meta_data", &r.meta_data, MAX_KEYS, false, check_meta_key),
        })
    }

    pub fn render(&self, t: &Templates, scope: &minijinja::Value, event: &Event) -> Result<Request, String> {
        Ok(Request {
            organization: render_string(t, &self.organization, scope, "organization")?,
            pipeline: render_string(t, &self.pipeline, scope, "pipeline")?,
            commit: render_opt_string(t, &self.commit, scope, "commit")?.unwrap_or_else(|| "HEAD".into()),
            branch: match &self.branch {
                Some(b) => render_string(t, b, scope, "branch")?,
                None => default_ref(event, "branch")?,
            },
            message: render_opt_string(t, &self.message, scope, "message")?,
            env: render_text_table(t, &self.env, scope, "env", false)?,
            meta_data: render_text_table(t, &self.meta_data, scope, "meta_data", false)?,
        })
    }
}

pub(super) fn request(base: &str, r: &Request) -> OutboundRequest {
    let url = format!(
        "{base}/v2/organizations/{}/pipelines/{}/builds",
        path_segment(&r.organization),
        path_segment(&r.pipeline)
    );
    let mut body = serde_json::Map::new();
    body.insert("commit".into(), r.commit.clone().into());
    body.insert("branch".into(), r.branch.clone().into());
    if let Some(m) = &r.message {
        body.insert("message".into(), m.clone().into());
    }
    if !r.env.is_empty() {
        body.insert("env".into(), r.env.clone().into());
    }
    if !r.meta_data.is_empty() {
        body.insert("meta_data".into(), r.meta_data.clone().into());
    }
    let mut headers = json_headers();
    headers.push(Header {
        name: AUTHORIZATION.into(),
        value: format!("Bearer {REDACTED}"),
    });
    OutboundRequest {
        method: "POST",
        url,
        headers,
        body: serde_json::Value::Object(body),
        encoding: Encoding::Json,
        credential: Credential::Authorization("Bearer"),
    }
}

/// The created build: its id, number, web URL and state.
pub(super) fn created(body: &[u8]) -> Outcome {
    #[derive(Deserialize)]
    struct Build {
        id: Option<String>,
        number: Option<i64>,
        web_url: Option<String>,
        state: Option<String>,
    }
    let build: Option<Build> = serde_json::from_slice(body).ok();
    Outcome::Created(build.map_or_else(TriggerResult::default, |b| TriggerResult {
        id: b.id,
        number: b.number,
        url: b.web_url,
        state: b.state,
        ..TriggerResult::default()
    }))
}

/// Buildkite's error body: `{"message": ..., "errors": [...]}`.
pub(super) fn failed(status: u16, message: &str, body: &[u8]) -> Outcome {
    #[derive(Deserialize)]
    struct E {
        errors: Option<Vec<serde_json::Value>>,
    }
    let details = serde_json::from_slice::<E>(body)
        .ok()
        .and_then(|e| e.errors)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let text: Vec<String> = e
                .iter()
                .take(5)
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            format!(" ({})", super::truncate_body(text.join("; ").as_bytes(), 500))
        })
        .unwrap_or_default();
    let hint = match status {
        401 => " (the API token is invalid)",
        403 => " (the API token lacks the write_builds scope, or access to this organization)",
        404 => " (no such organization or pipeline, or the token cannot see it)",
        _ => "",
    };
    Outcome::Permanent(format!("HTTP {status}: {message}{details}{hint}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_build_request_and_its_answer() {
        let r = Request {
            organization: "acme".into(),
            pipeline: "app".into(),
            commit: "HEAD".into(),
            branch: "main".into(),
            message: Some("push by a".into()),
            env: serde_json::from_str(r#"{"DEPLOY":"1"}"#).unwrap(),
            meta_data: serde_json::Map::new(),
        };
        let out = request("https://api.buildkite.com", &r);
        assert_eq!(
            out.url,
            "https://api.buildkite.com/v2/organizations/acme/pipelines/app/builds"
        );
        assert!(out.body.get("meta_data").is_none());
        let Outcome::Created(b) = created(
            br#"{"id":"f62a1b4d","number":12,"web_url":"https://buildkite.com/acme/app/builds/12","state":"scheduled"}"#,
        ) else {
            panic!()
        };
        assert_eq!(
            (b.number, b.url.as_deref()),
            (Some(12), Some("https://buildkite.com/acme/app/builds/12"))
        );
        let Outcome::Permanent(why) = failed(
            422,
            "Validation failed",
            br#"{"message":"Validation failed","errors":["Branch can't be blank"]}"#,
        ) else {
            panic!()
        };
        assert_eq!(why, "HTTP 422: Validation failed (Branch can't be blank)");
    }
}
