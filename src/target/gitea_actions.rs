//! Gitea and Forgejo Actions: `workflow_dispatch`.
//!
//! `POST /api/v1/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches`
//! with `{ref, inputs}` and `Authorization: token`. The two forks ask for the
//! created run differently, and one request asks both: Gitea 1.26 reads the
//! query parameter `return_run_details=true` and answers 200 `{workflow_run_id,
//! run_url, html_url}`; Forgejo 15 reads the body field `return_run_info` and
//! answers 201 `{id, run_number, jobs}`. Each ignores the other's. Either may
//! answer 204 (an older release), which records no run.
//!
//! Inputs are strings only (both documents say `additionalProperties:
//! string`): a number or boolean is refused, at config time when it is a
//! literal, as the rule's error when a template renders one.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::encode::path_segment;
use super::github_actions::{WorkflowDispatch, check_repository};
use super::{
    Credential, Encoding, OutboundRequest, Outcome, RequestError, TriggerCompiler, TriggerResult,
    default_ref, json_headers, owner_repo, render_string, render_text_table,
};
use crate::config::raw::RawTrigger;
use crate::event::Event;
use crate::template::{TemplateValue, Templates};

/// A rendered Gitea/Forgejo dispatch (`"api": "gitea_workflow_dispatch"`):
/// the fields of GitHub's, with string inputs.
pub type Request = WorkflowDispatch;

/// Inputs per dispatch: Gitea sets no limit; GitHub's keeps a typo'd table
/// from growing without one.
const MAX_INPUTS: usize = 100;

#[derive(Debug)]
pub struct Trigger {
    repository: TemplateValue,
    workflow: TemplateValue,
    git_ref: Option<TemplateValue>,
    inputs: BTreeMap<String, TemplateValue>,
}

impl Trigger {
    pub fn compile(raw: &Spanned<RawTrigger>, f: &mut TriggerCompiler<'_>) -> Option<Trigger> {
        let r = raw.get_ref();
        f.allow(
            r,
            "a Gitea/Forgejo Actions workflow_dispatch",
            &["repository", "workflow", "ref", "inputs"],
            |key| match key {
                "event_type" | "client_payload" => {
                    Some("Gitea and Forgejo have no repository_dispatch; use `workflow`".into())
                }
                "branch" | "tag" => Some("the branch or tag to run on is `ref`".into()),
                _ => None,
            },
        );
        let repository = f.required(raw, "repository", &r.repository, "the repository as `owner/repo`")?;
        check_repository(f, &r.repository, &repository);
        let workflow = f.required(
            raw,
            "workflow",
            &r.workflow,
            "the workflow's file name (`deploy.yml`)",
        )?;
        Some(Trigger {
            repository,
            workflow,
            git_ref: f.opt_text("ref", &r.git_ref),
            inputs: f.text_table("inputs", &r.inputs, MAX_INPUTS, true, |k| {
                if k.is_empty() {
                    Err("input names cannot be empty".into())
                } else {
                    Ok(())
                }
            }),
        })
    }

    pub fn render(&self, t: &Templates, scope: &minijinja::Value, event: &Event) -> Result<Request, String> {
        let repository = render_string(t, &self.repository, scope, "repository")?;
        owner_repo(&repository)?;
        Ok(WorkflowDispatch {
            repository,
            workflow: render_string(t, &self.workflow, scope, "workflow")?,
            git_ref: match &self.git_ref {
                Some(r) => render_string(t, r, scope, "ref")?,
                None => default_ref(event, "ref")?,
            },
            inputs: render_text_table(t, &self.inputs, scope, "inputs", true)?,
        })
    }
}

/// The API root: the configured URL plus `/api/v1` unless it already ends so.
fn api_root(base: &str) -> String {
    if base.ends_with("/api/v1") {
        base.to_owned()
    } else {
        format!("{base}/api/v1")
    }
}

pub(super) fn request(base: &str, r: &Request) -> Result<OutboundRequest, RequestError> {
    let (owner, repo) = owner_repo(&r.repository).map_err(RequestError::Invalid)?;
    let url = format!(
        "{}/repos/{}/{}/actions/workflows/{}/dispatches?return_run_details=true",
        api_root(base),
        path_segment(owner),
        path_segment(repo),
        path_segment(&r.workflow)
    );
    let mut body = serde_json::Map::new();
    body.insert("ref".into(), r.git_ref.clone().into());
    if !r.inputs.is_empty() {
        body.insert("inputs".into(), r.inputs.clone().into());
    }
    body.insert("return_run_info".into(), true.into());
    let mut headers = json_headers();
    headers.push(super::Header {
        name: super::AUTHORIZATION.into(),
        value: format!("token {}", super::REDACTED),
    });
    Ok(OutboundRequest {
        method: "POST",
        url,
        headers,
        body: serde_json::Value::Object(body),
        encoding: Encoding::Json,
        credential: Credential::Authorization("token"),
    })
}

/// Gitea's `RunDetails` or Forgejo's `DispatchWorkflowRun`.
pub(super) fn created(body: &[u8]) -> Outcome {
    #[derive(Deserialize)]
    struct Run {
        workflow_run_id: Option<i64>,
        html_url: Option<String>,
        id: Option<i64>,
        run_number: Option<i64>,
    }
    let run: Option<Run> = serde_json::from_slice(body).ok();
    Outcome::Created(TriggerResult {
        id: run
            .as_ref()
            .and_then(|r| r.workflow_run_id.or(r.id))
            .map(|id| id.to_string()),
        number: run.as_ref().and_then(|r| r.run_number),
        url: run.and_then(|r| r.html_url),
        state: Some("dispatched".into()),
        ..TriggerResult::default()
    })
}

pub(super) fn failed(status: u16, message: &str) -> Outcome {
    let hint = match status {
        401 => " (the token is invalid or expired)",
        403 => " (the token needs the write:repository scope, or Actions are disabled for the repository)",
        404 => " (no such repository or workflow file, or the token cannot see it)",
        422 => " (the workflow has no `workflow_dispatch` trigger, or an input is not declared)",
        _ => "",
    };
    Outcome::Permanent(format!("HTTP {status}: {message}{hint}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_request_asks_gitea_and_forgejo_for_the_run() {
        let r = WorkflowDispatch {
            repository: "acme/app".into(),
            workflow: "ci.yaml".into(),
            git_ref: "main".into(),
            inputs: serde_json::from_str(r#"{"env":"staging"}"#).unwrap(),
        };
        let out = request("https://gitea.example.com", &r).unwrap();
        assert_eq!(
            out.url,
            "https://gitea.example.com/api/v1/repos/acme/app/actions/workflows/ci.yaml/dispatches?return_run_details=true"
        );
        assert_eq!(out.body["return_run_info"], true);
        assert_eq!(api_root("https://g.example/api/v1"), "https://g.example/api/v1");
        let gitea = created(br#"{"workflow_run_id":7,"run_url":"u","html_url":"https://gitea.example.com/acme/app/actions/runs/7"}"#);
        let forgejo = created(br#"{"id":9,"run_number":3,"jobs":["build"]}"#);
        assert!(
            matches!(gitea, Outcome::Created(TriggerResult { id: Some(ref id), url: Some(_), .. }) if id == "7")
        );
        assert!(
            matches!(forgejo, Outcome::Created(TriggerResult { id: Some(ref id), number: Some(3), .. }) if id == "9")
        );
    }
}
