//! CI targets: what a matched rule renders into, the exact HTTP request that
//! carries it, and what the answer means.
//!
//! A rule's trigger compiles into a [`TriggerTemplate`]; rendering it against an
//! event yields a [`TriggerRequest`], which is stored with the job and holds no
//! secret. At send time the [`Target`] (from the current config) turns it into
//! an [`OutboundRequest`], which holds `***` where the token goes; the
//! [`client`] puts the token there only while building the HTTP request, and
//! [`classify`] maps the response to an [`Outcome`] the dispatcher acts on with
//! one `match`.
//!
//! Error policy: a 2xx is success; 408, 425, 429, 5xx, connection errors,
//! timeouts and GitLab's "Too many pipelines" 400 are retried; any other answer
//! is permanent and dead-letters the job with its status and (truncated) body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::diagnostic::{Diagnostic, suggest};
use crate::config::loader::Loader;
use crate::config::raw::{RawTarget, RawTrigger};
use crate::config::retry::RetryPolicy;
use crate::config::secret::Secret;
use crate::event::Event;
use crate::template::{TemplateCompiler, TemplateValue, Templates};

pub mod circleci;
mod classify;
pub mod client;
pub mod gitlab;
mod outbound;

pub use classify::{Outcome, Response, TriggerResult, classify, error_message, retry_after, truncate_body};
use outbound::json_headers;
pub use outbound::{Credential, Header, OutboundRequest, REDACTED, USER_AGENT};

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

impl Target {
    /// The request for `req`, with [`REDACTED`] where the token goes: safe to
    /// print and store. The token joins it only on the wire ([`client`]).
    pub fn request(&self, req: &TriggerRequest) -> Result<OutboundRequest, String> {
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
            (TargetKind::Circleci, req) => circleci::request(&self.base_url, req),
            (TargetKind::Gitlab, TriggerRequest::GitlabPipeline(r)) => Ok(gitlab::request(&self.base_url, r)),
        }
    }

    /// The token a job sends: its rule's own (GitLab), else the target's.
    pub fn token_for<'a>(&'a self, rule_token: Option<&'a Secret>) -> Result<&'a Secret, String> {
        rule_token
            .or(self.token.as_ref())
            .ok_or_else(|| format!("no token is available for target `{}`", self.name))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TOKEN: &str = "live-token-7f3a9c";

    fn target(kind: TargetKind) -> Target {
        Target {
            name: kind.as_str().into(),
            kind,
            base_url: "https://ci.example.com".into(),
            token: Some(Secret::new(TOKEN)),
            has_token: true,
            retry: RetryPolicy::default(),
        }
    }

    fn requests() -> Vec<(TargetKind, TriggerRequest)> {
        let gitref = GitRef {
            branch: Some("main".into()),
            tag: None,
        };
        vec![
            (
                TargetKind::Circleci,
                TriggerRequest::CircleciJob(circleci::JobRequest {
                    project: "gh/acme/app".into(),
                    branch: "main".into(),
                    job: "build".into(),
                    revision: None,
                    parallel: None,
                    build_parameters: serde_json::Map::new(),
                }),
            ),
            (
                TargetKind::Circleci,
                TriggerRequest::CircleciPipeline(circleci::PipelineRequest {
                    project: "gh/acme/app".into(),
                    branch: Some("main".into()),
                    tag: None,
                    parameters: serde_json::Map::new(),
                }),
            ),
            (
                TargetKind::Circleci,
                TriggerRequest::CircleciPipelineRun(circleci::PipelineRunRequest {
                    project: "gh/acme/app".into(),
                    definition_id: "d".into(),
                    config: gitref.clone(),
                    checkout: gitref,
                    parameters: serde_json::Map::new(),
                }),
            ),
            (
                TargetKind::Gitlab,
                TriggerRequest::GitlabPipeline(gitlab::PipelineRequest {
                    project: "acme/app".into(),
                    git_ref: "main".into(),
                    variables: BTreeMap::new(),
                    inputs: serde_json::Map::new(),
                    rule_token: false,
                }),
            ),
        ]
    }

    /// Printing or storing an outbound request cannot leak the token: it is
    /// not in the request at all, only in the wire request built from it.
    #[test]
    fn no_printable_request_holds_a_token() {
        let client = client::http_client();
        for (kind, req) in requests() {
            let target = target(kind);
            let r = target.request(&req).unwrap();
            let debug = format!("{r:?}");
            assert!(!debug.contains(TOKEN), "{debug}");
            let pretty = format!("{r:#?}");
            assert!(!pretty.contains(TOKEN), "{pretty}");
            let json = serde_json::to_string(&r).unwrap();
            assert!(!json.contains(TOKEN), "{json}");
            assert!(json.contains(REDACTED), "{json}");

            let token = target.token_for(None).unwrap();
            assert_eq!(format!("{token:?}"), "Secret(***)");
            let wire = client::wire(&client, &r, token, Duration::from_secs(5)).unwrap();
            let body = String::from_utf8(wire.body().unwrap().as_bytes().unwrap().to_vec()).unwrap();
            let in_header = wire.headers().get("circle-token").is_some_and(|v| v == TOKEN);
            assert!(
                in_header != body.contains(TOKEN),
                "{kind:?}: the token goes in exactly one place"
            );
            assert!(!wire.url().as_str().contains(TOKEN));
        }
    }

    #[test]
    fn a_rule_token_wins_and_a_missing_token_is_an_error() {
        let mut t = target(TargetKind::Gitlab);
        let rule = Secret::new("rule-token");
        assert_eq!(t.token_for(Some(&rule)).unwrap().expose(), "rule-token");
        t.token = None;
        assert_eq!(
            t.token_for(None).unwrap_err(),
            "no token is available for target `gitlab`"
        );
    }
}
