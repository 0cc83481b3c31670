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
//! The code follows that path: `compile` (config time), `render` (event
//! time), `request` (the stored request and the printable one), [`client`]
//! (the wire), [`classify`] (the answer); [`circleci`] and [`gitlab`] hold
//! what is particular to each CI, and [`encode`] the URL path encoding both use.
//! Besides triggers, the CI's API is called to [`cancel`] a pipeline, to
//! [`reconcile`] an attempt whose answer was lost, and to [`watch`] a
//! created pipeline's state.
//!
//! Error policy: a 2xx is success; 408, 425, 429, 5xx, connection errors,
//! timeouts and GitLab's "Too many pipelines" 400 are retried; any other answer
//! is permanent and dead-letters the job with its status and (truncated) body.

use crate::config::retry::RetryPolicy;
use crate::config::secret::Secret;
use crate::event::Event;
use crate::template::Templates;

pub mod buildkite;
pub(crate) mod caller;
pub mod cancel;
pub mod circleci;
mod classify;
pub mod client;
mod compile;
pub mod encode;
pub mod gitea_actions;
pub mod github_actions;
pub mod gitlab;
pub mod http_endpoint;
pub mod jenkins;
mod outbound;
pub mod reconcile;
pub mod redact;
mod render;
mod request;
#[cfg(test)]
mod scripted;
pub mod watch;

pub use classify::{Outcome, Response, TriggerResult, classify, error_message, retry_after, truncate_body};
pub use compile::{TriggerCompiler, build, is_env_name};
use outbound::json_headers;
pub use outbound::{AUTHORIZATION, Credential, Encoding, Header, OutboundRequest, REDACTED, USER_AGENT};
pub use render::{
    GitRef, default_ref, json_type, owner_repo, render_opt_string, render_string, render_table,
    render_text_table,
};
pub use request::{RequestError, TriggerRequest};

/// The `type` of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Circleci,
    Gitlab,
    GithubActions,
    GiteaActions,
    Buildkite,
    Jenkins,
    Http,
}

impl TargetKind {
    /// Every kind, in the order `check` lists them.
    pub const ALL: [TargetKind; 7] = [
        TargetKind::Circleci,
        TargetKind::Gitlab,
        TargetKind::GithubActions,
        TargetKind::GiteaActions,
        TargetKind::Buildkite,
        TargetKind::Jenkins,
        TargetKind::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Circleci => "circleci",
            TargetKind::Gitlab => "gitlab",
            TargetKind::GithubActions => "github-actions",
            TargetKind::GiteaActions => "gitea-actions",
            TargetKind::Buildkite => "buildkite",
            TargetKind::Jenkins => "jenkins",
            TargetKind::Http => "http",
        }
    }

    pub fn parse(name: &str) -> Option<TargetKind> {
        TargetKind::ALL.into_iter().find(|k| k.as_str() == name)
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
    /// GitLab: an access token with the `api` scope, to cancel pipelines
    /// (`cancel_in_progress`); a trigger token cannot.
    pub api_token: Option<Secret>,
    /// Whether the config names an `api_token` at all.
    pub has_api_token: bool,
    /// Jenkins: the user whose API token `token` is.
    pub user: Option<String>,
    /// `http`: the header the token goes in as it is, instead of
    /// `Authorization: Bearer`.
    pub token_header: Option<String>,
    /// `http` with `signing = "standard"`: the key each request is signed with.
    pub signing: Option<crate::config::secret::HmacKey>,
    /// Whether the config asks for signing (the secret may be unresolved under `check`).
    pub signs: bool,
    /// Reconcile ambiguous attempts before sending again (GitLab: and mark
    /// every trigger with `HOOKBRIDGE_JOB`); `reconcile = false` turns it off.
    pub reconcile: bool,
    pub retry: RetryPolicy,
}

/// A rule's trigger, compiled. Built once per config load, so variant size does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum TriggerTemplate {
    Circleci(circleci::Trigger),
    Gitlab(gitlab::Trigger),
    GithubActions(github_actions::Trigger),
    GiteaActions(gitea_actions::Trigger),
    Buildkite(buildkite::Trigger),
    Jenkins(jenkins::Trigger),
    Http(http_endpoint::Trigger),
}

impl TriggerTemplate {
    /// Render against one event.
    pub fn render(
        &self,
        t: &Templates,
        scope: &minijinja::Value,
        event: &Event,
    ) -> Result<TriggerRequest, String> {
        match self {
            TriggerTemplate::Circleci(c) => c.render(t, scope, event).map(TriggerRequest::Circleci),
            TriggerTemplate::Gitlab(g) => g.render(t, scope, event).map(TriggerRequest::Gitlab),
            TriggerTemplate::GithubActions(g) => g.render(t, scope, event).map(TriggerRequest::GithubActions),
            TriggerTemplate::GiteaActions(g) => g.render(t, scope, event).map(TriggerRequest::GiteaActions),
            TriggerTemplate::Buildkite(b) => b.render(t, scope, event).map(TriggerRequest::Buildkite),
            TriggerTemplate::Jenkins(j) => j.render(t, scope).map(TriggerRequest::Jenkins),
            TriggerTemplate::Http(h) => h.render(t, scope).map(TriggerRequest::Http),
        }
    }

    /// A per-rule token that overrides the target's (GitLab).
    pub fn token(&self) -> Option<&Secret> {
        match self {
            TriggerTemplate::Gitlab(g) => g.token.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
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
            api_token: None,
            has_api_token: false,
            user: None,
            token_header: None,
            signing: None,
            signs: false,
            reconcile: true,
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
                TriggerRequest::Circleci(circleci::Request::Job(circleci::JobRequest {
                    project: "gh/acme/app".into(),
                    branch: "main".into(),
                    job: "build".into(),
                    revision: None,
                    parallel: None,
                    build_parameters: serde_json::Map::new(),
                })),
            ),
            (
                TargetKind::Circleci,
                TriggerRequest::Circleci(circleci::Request::Pipeline(circleci::PipelineRequest {
                    project: "gh/acme/app".into(),
                    branch: Some("main".into()),
                    tag: None,
                    parameters: serde_json::Map::new(),
                })),
            ),
            (
                TargetKind::Circleci,
                TriggerRequest::Circleci(circleci::Request::PipelineRun(circleci::PipelineRunRequest {
                    project: "gh/acme/app".into(),
                    definition_id: "d".into(),
                    config: gitref.clone(),
                    checkout: gitref,
                    parameters: serde_json::Map::new(),
                })),
            ),
            (
                TargetKind::Gitlab,
                TriggerRequest::Gitlab(gitlab::Request {
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

            let token = target.token_for(None).unwrap().unwrap();
            assert_eq!(format!("{token:?}"), "Secret(***)");
            let wire = client::wire(&client, &r, Some(token), Duration::from_secs(5)).unwrap();
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
        assert_eq!(t.token_for(Some(&rule)).unwrap().unwrap().expose(), "rule-token");
        t.token = None;
        let e = t.token_for(None).unwrap_err();
        assert_eq!(e, RequestError::NoToken("gitlab".into()));
        assert_eq!(e.to_string(), "no token is available for target `gitlab`");
    }
}
