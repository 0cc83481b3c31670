//! CI targets: what a matched rule renders into, the exact HTTP request that
//! carries it, and what the answer means.
//!
//! A rule's trigger compiles into a [`TriggerTemplate`]; rendering it against an
//! event yields a [`TriggerRequest`], which is stored with the job and holds no
//! secret. At send time the [`Target`] (from the current config) turns it into
//! an [`OutboundRequest`] with the token, and [`classify`] maps the response to
//! an [`Outcome`] the dispatcher acts on with one `match`.
//!
//! Error policy: a 2xx is success; 408, 425, 429, 5xx, connection errors,
//! timeouts and GitLab's "Too many pipelines" 400 are retried; any other answer
//! is permanent and dead-letters the job with its status and (truncated) body.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::raw::{RawTarget, RawTrigger};
use crate::config::{Diagnostic, Loader, RetryPolicy, Secret, suggest};
use crate::event::Event;
use crate::rules::template::{TemplateCompiler, TemplateValue, Templates};

pub mod circleci;
pub mod gitlab;

/// The `type` of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Circleci,
    Gitlab,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Circleci => "circleci",
            TargetKind::Gitlab => "gitlab",
        }
    }
}

/// A configured CI endpoint.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    /// Base URL without a trailing slash (`https://circleci.com`).
    pub base_url: String,
    pub token: Option<Secret>,
    /// Whether the config names a token at all (it may be unresolved under `check`).
    pub has_token: bool,
    pub retry: RetryPolicy,
}

/// Build a target from its config table.
pub fn build(
    name: &str,
    raw: &Spanned<RawTarget>,
    retry: &RetryPolicy,
    loader: &mut Loader,
) -> Option<Target> {
    let raw = raw.get_ref();
    let kind = match raw.kind.get_ref().as_str() {
        "circleci" => TargetKind::Circleci,
        "gitlab" => TargetKind::Gitlab,
        other => {
            let mut d = Diagnostic::error(
                format!("target `{name}`: unknown type `{other}`"),
                Some(raw.kind.span()),
            )
            .with_help("types are circleci, gitlab");
            if let Some(s) = suggest(other, ["circleci", "gitlab"]) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            loader.push(d);
            return None;
        }
    };
    let base_url = match (&raw.url, kind) {
        (Some(u), _) => {
            let url = u.get_ref().trim_end_matches('/').to_owned();
            match reqwest::Url::parse(&url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
                    if parsed.query().is_some()
                        || !parsed.username().is_empty()
                        || parsed.password().is_some()
                    {
                        loader.error(
                            format!("target `{name}`: put tokens in `token`, not in the URL"),
                            u.span(),
                        );
                    }
                    url
                }
                _ => {
                    loader.error(
                        format!("target `{name}`: `{url}` is not an http(s) URL"),
                        u.span(),
                    );
                    return None;
                }
            }
        }
        (None, TargetKind::Circleci) => "https://circleci.com".to_owned(),
        (None, TargetKind::Gitlab) => {
            loader.push(
                Diagnostic::error(
                    format!("target `{name}`: `url` is required for gitlab targets"),
                    Some(raw.kind.span()),
                )
                .with_help("e.g. `url = \"https://gitlab.com\"`"),
            );
            return None;
        }
    };
    let token = raw.token.as_ref().and_then(|t| loader.secret(t));
    if kind == TargetKind::Circleci && raw.token.is_none() {
        loader.push(Diagnostic::error(
            format!("target `{name}`: `token` is required (a CircleCI personal API token)"),
            Some(raw.kind.span()),
        ));
    }
    let retry = match &raw.retry {
        Some(r) => retry.overlay(r, loader),
        None => retry.clone(),
    };
    Some(Target {
        name: name.to_owned(),
        kind,
        base_url,
        token,
        has_token: raw.token.is_some(),
        retry,
    })
}

/// A rule's trigger, compiled. Built once per config load, so variant size does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum TriggerTemplate {
    Circleci(circleci::Trigger),
    Gitlab(gitlab::Trigger),
}

impl TriggerTemplate {
    /// Compile `[rules.trigger]` for `target`, rejecting keys that target does not take.
    pub fn compile(
        rule: &str,
        raw: &Spanned<RawTrigger>,
        target: &Target,
        compiler: &mut TemplateCompiler,
        loader: &mut Loader,
    ) -> Option<TriggerTemplate> {
        let mut fields = Fields {
            rule,
            compiler,
            loader,
            ok: true,
        };
        let t = match target.kind {
            TargetKind::Circleci => {
                circleci::Trigger::compile(raw, &mut fields).map(TriggerTemplate::Circleci)
            }
            TargetKind::Gitlab => {
                gitlab::Trigger::compile(raw, target, &mut fields).map(TriggerTemplate::Gitlab)
            }
        };
        t.filter(|_| fields.ok)
    }

    /// Render against one event.
    pub fn render(
        &self,
        t: &Templates,
        scope: &minijinja::Value,
        event: &Event,
    ) -> Result<TriggerRequest, String> {
        match self {
            TriggerTemplate::Circleci(c) => c.render(t, scope, event),
            TriggerTemplate::Gitlab(g) => g.render(t, scope, event),
        }
    }

    /// A per-rule token that overrides the target's (GitLab).
    pub fn token(&self) -> Option<&Secret> {
        match self {
            TriggerTemplate::Gitlab(g) => g.token.as_ref(),
            TriggerTemplate::Circleci(_) => None,
        }
    }
}

/// Compile helpers shared by the trigger kinds.
pub struct Fields<'a> {
    pub rule: &'a str,
    pub compiler: &'a mut TemplateCompiler,
    pub loader: &'a mut Loader,
    pub ok: bool,
}

impl Fields<'_> {
    pub fn error(&mut self, message: impl Into<String>, span: std::ops::Range<usize>) {
        self.ok = false;
        self.loader
            .error(format!("rule `{}`: {}", self.rule, message.into()), span);
    }

    /// Reject keys this trigger kind does not take.
    pub fn allow(
        &mut self,
        raw: &RawTrigger,
        kind: &str,
        allowed: &[&str],
        hint: impl Fn(&str) -> Option<String>,
    ) {
        for (key, span) in raw.present_keys() {
            if !allowed.contains(&key) {
                let mut d = Diagnostic::error(
                    format!("rule `{}`: `{key}` is not valid for {kind}", self.rule),
                    Some(span),
                )
                .with_help(format!("{kind} takes: {}", allowed.join(", ")));
                if let Some(h) = hint(key) {
                    d = d.with_help(h);
                }
                self.ok = false;
                self.loader.push(d);
            }
        }
    }

    pub fn text(&mut self, key: &str, v: &Spanned<String>) -> Option<TemplateValue> {
        let name = format!("rule `{}` trigger.{key}", self.rule);
        match self.compiler.text(&name, v.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(format!("trigger.{key}: {e}"), v.span());
                None
            }
        }
    }

    pub fn opt_text(&mut self, key: &str, v: &Option<Spanned<String>>) -> Option<TemplateValue> {
        v.as_ref().and_then(|v| self.text(key, v))
    }

    pub fn value(&mut self, key: &str, v: &Spanned<toml::Value>) -> Option<TemplateValue> {
        let name = format!("rule `{}` trigger.{key}", self.rule);
        match self.compiler.value(&name, v.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(format!("trigger.{key}: {e}"), v.span());
                None
            }
        }
    }

    pub fn table(
        &mut self,
        key: &str,
        v: &Option<crate::config::raw::SpannedTable>,
        check_key: impl Fn(&str) -> Result<(), String>,
    ) -> BTreeMap<String, TemplateValue> {
        let mut out = BTreeMap::new();
        let Some(table) = v else {
            return out;
        };
        for (k, value) in table.get_ref() {
            if let Err(e) = check_key(k.get_ref()) {
                self.error(format!("trigger.{key}: {e}"), k.span());
                continue;
            }
            if let Some(t) = self.value(&format!("{key}.{}", k.get_ref()), value) {
                out.insert(k.get_ref().clone(), t);
            }
        }
        out
    }
}

/// Render a value that must be a non-empty string (numbers are written as text).
pub fn render_string(
    t: &Templates,
    v: &TemplateValue,
    scope: &minijinja::Value,
    key: &str,
) -> Result<String, String> {
    match t.render(v, scope)? {
        serde_json::Value::String(s) if !s.is_empty() => Ok(s),
        serde_json::Value::String(_) => Err(format!("trigger.{key} rendered an empty string")),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Null => Err(format!("trigger.{key} rendered null")),
        other => Err(format!("trigger.{key} must be text, got {}", json_type(&other))),
    }
}

pub fn render_opt_string(
    t: &Templates,
    v: &Option<TemplateValue>,
    scope: &minijinja::Value,
    key: &str,
) -> Result<Option<String>, String> {
    v.as_ref().map(|v| render_string(t, v, scope, key)).transpose()
}

pub fn render_table(
    t: &Templates,
    table: &BTreeMap<String, TemplateValue>,
    scope: &minijinja::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    table
        .iter()
        .map(|(k, v)| Ok((k.clone(), t.render(v, scope)?)))
        .collect()
}

pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a table",
    }
}

/// A branch or a tag (CircleCI `config` / `checkout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GitRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl GitRef {
    /// The event's branch, else its tag.
    pub fn of_event(event: &Event) -> Result<GitRef, String> {
        match (&event.branch, &event.tag) {
            (Some(b), _) => Ok(GitRef {
                branch: Some(b.clone()),
                tag: None,
            }),
            (None, Some(t)) => Ok(GitRef {
                branch: None,
                tag: Some(t.clone()),
            }),
            (None, None) => {
                Err("the event has no branch or tag; set `branch` or `tag` in the trigger".into())
            }
        }
    }
}

/// What a matched rule asks a target to do, fully rendered. Stored with the
/// job; it never holds a secret (tokens come from the config at send time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "api", rename_all = "snake_case")]
pub enum TriggerRequest {
    /// CircleCI API v1.1: run one job on a branch.
    CircleciJob(circleci::JobRequest),
    /// CircleCI API v2: trigger a pipeline (`/project/{slug}/pipeline`).
    CircleciPipeline(circleci::PipelineRequest),
    /// CircleCI API v2: run a pipeline definition (`/pipeline/run`).
    CircleciPipelineRun(circleci::PipelineRunRequest),
    /// GitLab: `/projects/:id/trigger/pipeline`.
    GitlabPipeline(gitlab::PipelineRequest),
}

impl TriggerRequest {
    pub fn target_kind(&self) -> TargetKind {
        match self {
            TriggerRequest::GitlabPipeline(_) => TargetKind::Gitlab,
            _ => TargetKind::Circleci,
        }
    }
}

/// Whether an outbound request shows its secrets or `***`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reveal {
    Secrets,
    Redacted,
}

/// One HTTP header of an outbound request.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    pub name: &'static str,
    pub value: String,
    #[serde(skip)]
    pub sensitive: bool,
}

/// The exact request a trigger sends.
#[derive(Debug, Clone, Serialize)]
pub struct OutboundRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<Header>,
    pub body: serde_json::Value,
}

pub const USER_AGENT: &str = concat!("hookbridge/", env!("CARGO_PKG_VERSION"));

fn json_headers() -> Vec<Header> {
    vec![
        Header {
            name: "Content-Type",
            value: "application/json".into(),
            sensitive: false,
        },
        Header {
            name: "Accept",
            value: "application/json".into(),
            sensitive: false,
        },
        Header {
            name: "User-Agent",
            value: USER_AGENT.into(),
            sensitive: false,
        },
    ]
}

/// The token text for a request: the secret, or `***`.
fn token_text(token: Option<&Secret>, reveal: Reveal) -> Result<String, String> {
    match (token, reveal) {
        (_, Reveal::Redacted) => Ok("***".into()),
        (Some(t), Reveal::Secrets) => Ok(t.expose().to_owned()),
        (None, Reveal::Secrets) => Err("no token is available for this target".into()),
    }
}

impl Target {
    /// The request for `req`, with the token from `rule_token` or the target's own.
    pub fn request(
        &self,
        req: &TriggerRequest,
        rule_token: Option<&Secret>,
        reveal: Reveal,
    ) -> Result<OutboundRequest, String> {
        let token = rule_token.or(self.token.as_ref());
        let token = token_text(token, reveal)?;
        match (self.kind, req) {
            (TargetKind::Circleci, TriggerRequest::GitlabPipeline(_))
            | (TargetKind::Gitlab, TriggerRequest::CircleciJob(_))
            | (TargetKind::Gitlab, TriggerRequest::CircleciPipeline(_))
            | (TargetKind::Gitlab, TriggerRequest::CircleciPipelineRun(_)) => Err(format!(
                "target `{}` is now a {} target and cannot send this {} trigger",
                self.name,
                self.kind.as_str(),
                req.target_kind().as_str()
            )),
            (TargetKind::Circleci, req) => circleci::request(&self.base_url, &token, req),
            (TargetKind::Gitlab, TriggerRequest::GitlabPipeline(r)) => {
                Ok(gitlab::request(&self.base_url, &token, r))
            }
        }
    }
}

/// The response of a trigger call, as the dispatcher saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// What was created on the CI side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// What a response means for the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The pipeline or job was created.
    Created(TriggerResult),
    /// The CI accepted the call but chose not to run (CircleCI `200 {message}`).
    Skipped(String),
    /// Not processed; try again (after `after` when the server said so).
    Retry { reason: String, after: Option<Duration> },
    /// Will not succeed as is; dead-letter with this reason.
    Permanent(String),
}

/// Truncate a response body for records and messages.
pub fn truncate_body(body: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], body.len())
}

/// The error message of a CI error body (`{"message": ...}` or `{"error": ...}`), else the text.
pub fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        message: Option<serde_json::Value>,
        error: Option<serde_json::Value>,
    }
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    match serde_json::from_slice::<E>(body) {
        Ok(E { message: Some(m), .. }) => truncate_body(text(m).as_bytes(), 500),
        Ok(E { error: Some(e), .. }) => truncate_body(text(e).as_bytes(), 500),
        _ => truncate_body(body, 500),
    }
}

/// Delay requested by `Retry-After` (seconds or HTTP date) or `RateLimit-Reset`
/// (seconds, or a Unix time as GitLab sends it).
pub fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(date) = httpdate::parse_http_date(v) {
            return Some(date.duration_since(now).unwrap_or_default());
        }
    }
    if let Some(v) = get("ratelimit-reset").and_then(|v| v.parse::<u64>().ok()) {
        // Values this large are Unix times (GitLab); smaller ones are seconds (CircleCI).
        if v > 1_000_000_000 {
            let reset = SystemTime::UNIX_EPOCH + Duration::from_secs(v);
            return Some(reset.duration_since(now).unwrap_or_default());
        }
        return Some(Duration::from_secs(v));
    }
    None
}

/// Classify a response for `req`.
pub fn classify(req: &TriggerRequest, response: &Response, now: SystemTime) -> Outcome {
    let status = response.status;
    if (200..300).contains(&status) {
        return match req {
            TriggerRequest::GitlabPipeline(_) => gitlab::created(&response.body),
            other => circleci::created(other, status, &response.body),
        };
    }
    let message = error_message(&response.body);
    if matches!(status, 408 | 425 | 429) || status >= 500 {
        return Outcome::Retry {
            reason: format!("HTTP {status}: {message}"),
            after: retry_after(&response.headers, now),
        };
    }
    if (300..400).contains(&status) {
        let location = response
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(no Location)");
        return Outcome::Permanent(format!(
            "HTTP {status} redirect to {location} was not followed: the project may have moved; update the trigger"
        ));
    }
    match req {
        TriggerRequest::GitlabPipeline(_) => gitlab::failed(status, &message, response, now),
        _ => circleci::failed(status, &message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Response {
            status,
            headers: h,
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    fn gitlab_req() -> TriggerRequest {
        TriggerRequest::GitlabPipeline(gitlab::PipelineRequest {
            project: "a/b".into(),
            git_ref: "main".into(),
            variables: BTreeMap::new(),
            inputs: serde_json::Map::new(),
            rule_token: false,
        })
    }

    fn circle_req() -> TriggerRequest {
        TriggerRequest::CircleciPipeline(circleci::PipelineRequest {
            project: "gh/a/b".into(),
            branch: Some("main".into()),
            tag: None,
            parameters: serde_json::Map::new(),
        })
    }

    #[test]
    fn status_table() {
        let now = SystemTime::now();
        let cases: &[(u16, &str, &str)] = &[
            (
                201,
                r#"{"id":"5034460f-c7c4-4c43-9457-de07e2029e7b","state":"created","number":25,"created_at":"2024-01-01T00:00:00Z"}"#,
                "created",
            ),
            (
                400,
                r#"{"message":"Unexpected request body provided."}"#,
                "permanent",
            ),
            (401, r#"{"message":"Invalid token provided."}"#, "permanent"),
            (404, r#"{"message":"Project not found"}"#, "permanent"),
            (408, "", "retry"),
            (425, "", "retry"),
            (429, "Retry later", "retry"),
            (500, "oops", "retry"),
            (502, "", "retry"),
            (503, "", "retry"),
            (301, "", "permanent"),
        ];
        for (status, body, want) in cases {
            let got = classify(&circle_req(), &response(*status, &[], body), now);
            let kind = match got {
                Outcome::Created(_) => "created",
                Outcome::Skipped(_) => "skipped",
                Outcome::Retry { .. } => "retry",
                Outcome::Permanent(_) => "permanent",
            };
            assert_eq!(kind, *want, "status {status}");
        }
    }

    #[test]
    fn gitlab_too_many_pipelines_is_retried() {
        let body =
            r#"{"message":{"base":["Too many pipelines created in the last minute. Try again later."]}}"#;
        let got = classify(&gitlab_req(), &response(400, &[], body), SystemTime::now());
        assert!(
            matches!(got, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(60)),
            "{got:?}"
        );
        let other = classify(
            &gitlab_req(),
            &response(400, &[], r#"{"message":{"base":["Reference not found"]}}"#),
            SystemTime::now(),
        );
        assert!(matches!(other, Outcome::Permanent(_)));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let h = response(429, &[("retry-after", "7")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let h = response(429, &[("retry-after", &date)], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let h = response(429, &[("ratelimit-reset", "2000000045")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(45)));
        let h = response(429, &[("ratelimit-reset", "12")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(12)));
    }
}
