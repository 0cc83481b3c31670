//! GitLab pipeline triggers: `POST /api/v4/projects/:id/trigger/pipeline` with a
//! JSON body `{ref, token, variables, inputs}`. The token travels in the body,
//! never the URL; `variables` are strings; `inputs` keep their JSON types; a
//! project path is percent-encoded as one segment.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::encode::path_segment;
use super::{
    Credential, OutboundRequest, Outcome, REDACTED, Response, Target, TriggerCompiler, TriggerResult,
    json_headers, json_type, render_string, render_table, retry_after,
};
use crate::config::raw::RawTrigger;
use crate::config::secret::Secret;
use crate::event::Event;
use crate::template::{TemplateValue, Templates};

/// GitLab's answer when its pipeline-creation rate limit is hit (sent as a 400).
const TOO_MANY_PIPELINES: &str = "Too many pipelines created";

#[derive(Debug)]
pub struct Trigger {
    project: TemplateValue,
    git_ref: Option<TemplateValue>,
    variables: BTreeMap<String, TemplateValue>,
    inputs: BTreeMap<String, TemplateValue>,
    /// A trigger token for this rule, overriding the target's.
    pub token: Option<Secret>,
}

/// A rendered GitLab pipeline trigger, stored inside a `TriggerRequest`
/// (`"api": "gitlab_pipeline"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Numeric id or full path (`group/sub/app`).
    pub project: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// The rule sets its own token (looked up in the config at send time).
    #[serde(default)]
    pub rule_token: bool,
}

/// The pipeline variable every trigger of a reconciling target carries:
/// the job's id ([`super::reconcile`]).
pub const MARKER: &str = "HOOKBRIDGE_JOB";

fn check_variable_key(key: &str) -> Result<(), String> {
    if key == MARKER {
        return Err(format!(
            "variable `{key}` is hookbridge's: it carries the job's id, by which an ambiguous attempt's pipeline is found"
        ));
    }
    let valid =
        !key.is_empty() && key.len() <= 255 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "variable `{key}`: GitLab variable names are letters, digits and `_` (at most 255)"
        ))
    }
}

fn check_input_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("input names cannot be empty".into());
    }
    Ok(())
}

impl Trigger {
    pub fn compile(
        raw: &Spanned<RawTrigger>,
        target: &Target,
        f: &mut TriggerCompiler<'_>,
    ) -> Option<Trigger> {
        let r = raw.get_ref();
        f.allow(
            r,
            "a GitLab pipeline trigger",
            &["project", "ref", "variables", "inputs", "token"],
            |key| match key {
                "branch" | "tag" => Some("GitLab takes the branch or tag as `ref`".into()),
                "parameters" | "build_parameters" => {
                    Some("GitLab takes `variables` (strings) and `inputs` (typed)".into())
                }
                _ => None,
            },
        );
        let Some(project_raw) = &r.project else {
            f.error(
                "trigger needs `project`, the GitLab project id or path (e.g. `acme/app`)",
                raw.span(),
            );
            return None;
        };
        let project = f.text("project", project_raw)?;
        if project
            .as_literal_str()
            .is_some_and(|p| p.trim_matches('/').is_empty())
        {
            f.error("project cannot be empty", project_raw.span());
        }
        let token = r.token.as_ref().and_then(|t| f.loader.secret(t));
        if r.token.is_none() && !target.has_token {
            f.error(
                format!(
                    "no trigger token: set `token` on target `{}` or on this trigger",
                    target.name
                ),
                raw.span(),
            );
        }
        Some(Trigger {
            project,
            git_ref: f.opt_text("ref", &r.git_ref),
            variables: f.table("variables", &r.variables, check_variable_key),
            inputs: f.table("inputs", &r.inputs, check_input_key),
            token,
        })
    }

    pub fn render(&self, t: &Templates, scope: &minijinja::Value, event: &Event) -> Result<Request, String> {
        let project = render_string(t, &self.project, scope, "project")?;
        let git_ref = match &self.git_ref {
            Some(r) => render_string(t, r, scope, "ref")?,
            None => event
                .branch
                .clone()
                .or_else(|| event.tag.clone())
                .ok_or("the event has no branch or tag; set `ref` in the trigger")?,
        };
        let mut variables = BTreeMap::new();
        for (k, v) in render_table(t, &self.variables, scope)? {
            // GitLab answers 400 unless every variable is a string.
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => return Err(format!("variable `{k}` rendered null")),
                other @ (serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {
                    return Err(format!("variable `{k}` must be text, got {}", json_type(&other)));
                }
            };
            variables.insert(k, text);
        }
        let inputs = render_table(t, &self.inputs, scope)?;
        // GitLab's input types: string, number, boolean, array. Refused here,
        // with the rule's verdict, rather than by GitLab after the request.
        for (k, v) in &inputs {
            match v {
                serde_json::Value::Null => return Err(format!("input `{k}` rendered null")),
                serde_json::Value::Object(_) => {
                    return Err(format!(
                        "input `{k}` must be a string, number, boolean or array, got an object"
                    ));
                }
                _ => {}
            }
        }
        Ok(Request {
            project,
            git_ref,
            variables,
            inputs,
            rule_token: self.token.is_some(),
        })
    }
}

/// The API root: the configured URL plus `/api/v4` unless it already ends so.
pub(super) fn api_root(base: &str) -> String {
    if base.ends_with("/api/v4") {
        base.to_owned()
    } else {
        format!("{base}/api/v4")
    }
}

/// The body field GitLab reads the trigger token from.
const TOKEN_FIELD: &str = "token";

/// The request for `r`; the body's `token` holds [`REDACTED`] until the wire.
pub(super) fn request(base: &str, r: &Request) -> OutboundRequest {
    let url = format!(
        "{}/projects/{}/trigger/pipeline",
        api_root(base),
        path_segment(&r.project)
    );
    let mut body = serde_json::Map::new();
    body.insert("ref".into(), r.git_ref.clone().into());
    body.insert(TOKEN_FIELD.into(), REDACTED.into());
    if !r.variables.is_empty() {
        body.insert(
            "variables".into(),
            serde_json::to_value(&r.variables).unwrap_or_default(),
        );
    }
    if !r.inputs.is_empty() {
        body.insert("inputs".into(), r.inputs.clone().into());
    }
    OutboundRequest {
        method: "POST",
        url,
        headers: json_headers(),
        body: serde_json::Value::Object(body),
        encoding: super::Encoding::Json,
        credential: Credential::BodyField(TOKEN_FIELD),
    }
}

pub(super) fn created(body: &[u8]) -> Outcome {
    #[derive(Deserialize)]
    struct Pipeline {
        id: Option<i64>,
        iid: Option<i64>,
        web_url: Option<String>,
        status: Option<String>,
    }
    let p: Option<Pipeline> = serde_json::from_slice(body).ok();
    Outcome::Created(p.map_or_else(TriggerResult::default, |p| TriggerResult {
        id: p.id.map(|id| id.to_string()),
        number: p.iid,
        url: p.web_url,
        state: p.status,
        follow: None,
    }))
}

pub(super) fn failed(status: u16, message: &str, response: &Response, now: SystemTime) -> Outcome {
    if status == 400 && message.contains(TOO_MANY_PIPELINES) {
        // Not persisted by GitLab; its window is one minute.
        return Outcome::Retry {
            reason: format!("HTTP 400: {message}"),
            after: Some(retry_after(&response.headers, now).unwrap_or(Duration::from_secs(60))),
        };
    }
    let hint = if message.contains("Insufficient permissions to set pipeline variables") {
        " (the project restricts pipeline variables: pass values as `inputs`, or allow the token owner to set variables; with an `api_token` every trigger carries HOOKBRIDGE_JOB, which `reconcile = false` on the target stops)"
    } else {
        match status {
            403 => " (the trigger token's owner lacks permission, or the project blocks triggers)",
            404 => " (unknown project, or an invalid, expired or revoked trigger token)",
            422 => " (GitLab created the pipeline record but its configuration failed)",
            _ => "",
        }
    };
    Outcome::Permanent(format!("HTTP {status}: {message}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths_are_one_segment_and_tokens_stay_out_of_the_url() {
        let r = Request {
            project: "group/sub/app".into(),
            git_ref: "main".into(),
            variables: BTreeMap::from([("A".into(), "1".into())]),
            inputs: serde_json::Map::from_iter([("level".to_owned(), serde_json::json!(3))]),
            rule_token: false,
        };
        let req = request("https://gitlab.example.com", &r);
        assert_eq!(
            req.url,
            "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fapp/trigger/pipeline"
        );
        assert_eq!(req.body["token"], REDACTED);
        assert_eq!(req.credential, Credential::BodyField("token"));
        assert_eq!(req.body["inputs"]["level"], 3);
        assert_eq!(api_root("https://g.example/api/v4"), "https://g.example/api/v4");
    }
}
