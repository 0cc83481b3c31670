//! CircleCI: API v1.1 job trigger (`job` set), API v2 pipeline trigger, and API
//! v2 pipeline run (`definition_id` set).
//!
//! Requests send JSON with `Content-Type` and `Accept: application/json` (v2
//! ignores a body without the first; v1.1 answers EDN without the second), the
//! token in `Circle-Token`, the project slug as separate path segments and the
//! v1.1 branch percent-encoded as one segment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    Credential, Fields, GitRef, Header, OutboundRequest, Outcome, REDACTED, TriggerRequest, TriggerResult,
    json_headers, json_type, render_opt_string, render_string, render_table,
};
use crate::config::raw::RawTrigger;
use crate::event::Event;
use crate::template::{TemplateValue, Templates};

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

/// Parse and check a slug for `api`.
pub fn parse_slug(slug: &str, api: Api) -> Result<Slug<'_>, String> {
    let parts: Vec<&str> = slug.split('/').collect();
    let [provider, org, project] = parts[..] else {
        return Err(format!(
            "project `{slug}` is not a CircleCI project slug; expected `gh/ORG/REPO`, `bb/ORG/REPO` or `circleci/ORG_ID/PROJECT_ID`"
        ));
    };
    if org.is_empty() || project.is_empty() {
        return Err(format!("project `{slug}` has an empty segment"));
    }
    let valid = ["gh", "github", "bb", "bitbucket", "circleci"];
    if !valid.contains(&provider) {
        return Err(format!(
            "project `{slug}`: `{provider}` is not a CircleCI provider; use gh, github, bb, bitbucket or circleci"
        ));
    }
    if provider == "circleci" {
        match api {
            Api::Job => {
                return Err(format!(
                    "project `{slug}`: API v1.1 cannot trigger GitHub App, GitLab or Bitbucket Data Center projects; set `definition_id` to use a pipeline run"
                ));
            }
            Api::Pipeline => {
                return Err(format!(
                    "project `{slug}`: the v2 pipeline trigger is not available to GitHub App or GitLab projects; set `definition_id` to use a pipeline run"
                ));
            }
            Api::PipelineRun => {}
        }
    }
    Ok(Slug {
        provider,
        org,
        project,
    })
}

fn check_build_parameter(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "build parameter `{name}` must be letters, digits and `_`, not starting with a digit"
        ))
    }
}

fn check_parameter_key(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PARAMETER_KEY {
        return Err(format!("parameter names are 1 to {MAX_PARAMETER_KEY} characters"));
    }
    Ok(())
}

impl Trigger {
    pub fn compile(raw: &Spanned<RawTrigger>, f: &mut Fields<'_>) -> Option<Trigger> {
        let r = raw.get_ref();
        let api = match (&r.job, &r.definition_id) {
            (Some(_), None) => Api::Job,
            (None, Some(_)) => Api::PipelineRun,
            (None, None) => Api::Pipeline,
            (Some(j), Some(_)) => {
                f.error(
                    "set either `job` (API v1.1 job trigger) or `definition_id` (API v2 pipeline run), not both",
                    j.span(),
                );
                return None;
            }
        };
        let allowed: &[&str] = match api {
            Api::Job => &[
                "project",
                "job",
                "branch",
                "revision",
                "parallel",
                "build_parameters",
            ],
            Api::Pipeline => &["project", "branch", "tag", "parameters"],
            Api::PipelineRun => &[
                "project",
                "definition_id",
                "branch",
                "tag",
                "config",
                "checkout",
                "parameters",
            ],
        };
        f.allow(r, api.describe(), allowed, |key| match key {
            "variables" | "inputs" | "ref" => {
                Some("`variables`, `inputs` and `ref` belong to gitlab targets".into())
            }
            "parameters" if api == Api::Job => Some(
                "API v1.1 takes `build_parameters`; pipeline `parameters` need API v2 (drop `job`)".into(),
            ),
            "build_parameters" => {
                Some("pipelines take `parameters`; `build_parameters` are for `job` triggers".into())
            }
            "tag" if api == Api::Job => Some("API v1.1 jobs run on a branch".into()),
            _ => None,
        });
        let Some(project_raw) = &r.project else {
            f.error(
                "trigger needs `project`, the CircleCI project slug (e.g. `gh/acme/app`)",
                raw.span(),
            );
            return None;
        };
        let project = f.text("project", project_raw)?;
        if let Some(slug) = project.as_literal_str()
            && let Err(e) = parse_slug(slug, api)
        {
            f.error(e, project_raw.span());
        }
        if let (Some(b), Some(_)) = (&r.branch, &r.tag) {
            f.error("`branch` and `tag` are mutually exclusive", b.span());
        }
        let parameters = f.table("parameters", &r.parameters, check_parameter_key);
        if parameters.len() > MAX_PARAMETERS
            && let Some(p) = &r.parameters
        {
            f.error(
                format!("CircleCI takes at most {MAX_PARAMETERS} parameters"),
                p.span(),
            );
        }
        let build_parameters = f.table("build_parameters", &r.build_parameters, check_build_parameter);
        if build_parameters.contains_key("CIRCLE_JOB")
            && let Some(p) = &r.build_parameters
        {
            f.error(
                "set the job with `job`, not `build_parameters.CIRCLE_JOB`",
                p.span(),
            );
        }
        let config = ref_table(f, "config", &r.config);
        let checkout = ref_table(f, "checkout", &r.checkout);
        Some(Trigger {
            api,
            project,
            job: f.opt_text("job", &r.job),
            branch: f.opt_text("branch", &r.branch),
            tag: f.opt_text("tag", &r.tag),
            revision: f.opt_text("revision", &r.revision),
            parallel: r.parallel.as_ref().and_then(|p| f.value("parallel", p)),
            build_parameters,
            parameters,
            definition_id: f.opt_text("definition_id", &r.definition_id),
            config,
            checkout,
        })
    }

    pub fn render(
        &self,
        t: &Templates,
        scope: &minijinja::Value,
        event: &Event,
    ) -> Result<TriggerRequest, String> {
        let project = render_string(t, &self.project, scope, "project")?;
        parse_slug(&project, self.api)?;
        let branch = render_opt_string(t, &self.branch, scope, "branch")?;
        let tag = render_opt_string(t, &self.tag, scope, "tag")?;
        let git_ref = match (branch, tag) {
            (None, None) => GitRef::of_event(event)?,
            (branch, tag) => GitRef { branch, tag },
        };
        match self.api {
            Api::Job => {
                let branch = git_ref
                    .branch
                    .ok_or("API v1.1 jobs run on a branch and this event has none; set `branch`")?;
                let job = match &self.job {
                    Some(j) => render_string(t, j, scope, "job")?,
                    None => return Err("trigger.job is missing".into()),
                };
                let mut build_parameters = render_table(t, &self.build_parameters, scope)?;
                build_parameters.insert("CIRCLE_JOB".into(), job.clone().into());
                let parallel = match &self.parallel {
                    None => None,
                    Some(p) => match t.render(p, scope)? {
                        serde_json::Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => n.as_u64(),
                        serde_json::Value::String(s) => Some(
                            s.parse::<u64>()
                                .ok()
                                .filter(|n| *n > 0)
                                .ok_or_else(|| format!("trigger.parallel `{s}` is not a positive integer"))?,
                        ),
                        other => {
                            return Err(format!(
                                "trigger.parallel must be a positive integer, got {}",
                                json_type(&other)
                            ));
                        }
                    },
                };
                Ok(TriggerRequest::CircleciJob(JobRequest {
                    project,
                    branch,
                    job,
                    revision: render_opt_string(t, &self.revision, scope, "revision")?,
                    parallel,
                    build_parameters,
                }))
            }
            Api::Pipeline => Ok(TriggerRequest::CircleciPipeline(PipelineRequest {
                project,
                branch: git_ref.branch,
                tag: git_ref.tag,
                parameters: self.render_parameters(t, scope)?,
            })),
            Api::PipelineRun => {
                let definition_id = match &self.definition_id {
                    Some(d) => render_string(t, d, scope, "definition_id")?,
                    None => return Err("trigger.definition_id is missing".into()),
                };
                let config = render_ref(t, &self.config, scope, "config")?.unwrap_or_else(|| git_ref.clone());
                let checkout = render_ref(t, &self.checkout, scope, "checkout")?.unwrap_or(git_ref);
                Ok(TriggerRequest::CircleciPipelineRun(PipelineRunRequest {
                    project,
                    definition_id,
                    config,
                    checkout,
                    parameters: self.render_parameters(t, scope)?,
                }))
            }
        }
    }

    /// Pipeline parameters: integers, strings or booleans within CircleCI's limits.
    fn render_parameters(
        &self,
        t: &Templates,
        scope: &minijinja::Value,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let params = render_table(t, &self.parameters, scope)?;
        for (k, v) in &params {
            match v {
                serde_json::Value::Bool(_) => {}
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {}
                serde_json::Value::String(s) if s.chars().count() <= MAX_PARAMETER_VALUE => {}
                serde_json::Value::String(_) => {
                    return Err(format!(
                        "parameter `{k}` is longer than CircleCI's {MAX_PARAMETER_VALUE} characters"
                    ));
                }
                other => {
                    return Err(format!(
                        "parameter `{k}` must be a string, integer or boolean, got {}",
                        json_type(other)
                    ));
                }
            }
        }
        Ok(params)
    }
}

fn ref_table(
    f: &mut Fields<'_>,
    key: &str,
    table: &Option<crate::config::raw::SpannedTable>,
) -> Option<RefTemplate> {
    let table = table.as_ref()?;
    let mut out = RefTemplate {
        branch: None,
        tag: None,
    };
    for (k, v) in table.get_ref() {
        let compiled = f.value(&format!("{key}.{}", k.get_ref()), v);
        match k.get_ref().as_str() {
            "branch" => out.branch = compiled,
            "tag" => out.tag = compiled,
            other => f.error(
                format!("`{key}.{other}` is not valid; `{key}` takes `branch` or `tag`"),
                k.span(),
            ),
        }
    }
    if out.branch.is_some() && out.tag.is_some() {
        f.error(
            format!("`{key}.branch` and `{key}.tag` are mutually exclusive"),
            table.span(),
        );
    }
    if out.branch.is_none() && out.tag.is_none() {
        f.error(format!("`{key}` needs `branch` or `tag`"), table.span());
    }
    Some(out)
}

fn render_ref(
    t: &Templates,
    r: &Option<RefTemplate>,
    scope: &minijinja::Value,
    key: &str,
) -> Result<Option<GitRef>, String> {
    let Some(r) = r else { return Ok(None) };
    Ok(Some(GitRef {
        branch: render_opt_string(t, &r.branch, scope, &format!("{key}.branch"))?,
        tag: render_opt_string(t, &r.tag, scope, &format!("{key}.tag"))?,
    }))
}

/// Percent-encode one path segment (everything but unreserved characters).
pub fn segment(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// The v1.1 VCS type of a slug provider.
fn vcs_type(provider: &str) -> &str {
    match provider {
        "gh" => "github",
        "bb" => "bitbucket",
        other => other,
    }
}

/// The header CircleCI reads its personal API token from.
const TOKEN_HEADER: &str = "Circle-Token";

/// The request for `req`; the token header holds [`REDACTED`] until the wire.
pub(super) fn request(base: &str, req: &TriggerRequest) -> Result<OutboundRequest, String> {
    let mut headers = json_headers();
    headers.insert(
        0,
        Header {
            name: TOKEN_HEADER,
            value: REDACTED.to_owned(),
        },
    );
    let (url, body) = match req {
        TriggerRequest::CircleciJob(r) => {
            let s = parse_slug(&r.project, Api::Job)?;
            let url = format!(
                "{base}/api/v1.1/project/{}/{}/{}/tree/{}",
                segment(vcs_type(s.provider)),
                segment(s.org),
                segment(s.project),
                segment(&r.branch)
            );
            let mut body = serde_json::Map::new();
            body.insert("build_parameters".into(), r.build_parameters.clone().into());
            if let Some(rev) = &r.revision {
                body.insert("revision".into(), rev.clone().into());
            }
            if let Some(p) = r.parallel {
                body.insert("parallel".into(), p.into());
            }
            (url, serde_json::Value::Object(body))
        }
        TriggerRequest::CircleciPipeline(r) => {
            let s = parse_slug(&r.project, Api::Pipeline)?;
            let url = format!(
                "{base}/api/v2/project/{}/{}/{}/pipeline",
                segment(s.provider),
                segment(s.org),
                segment(s.project)
            );
            let mut body = serde_json::Map::new();
            if let Some(b) = &r.branch {
                body.insert("branch".into(), b.clone().into());
            }
            if let Some(t) = &r.tag {
                body.insert("tag".into(), t.clone().into());
            }
            if !r.parameters.is_empty() {
                body.insert("parameters".into(), r.parameters.clone().into());
            }
            (url, serde_json::Value::Object(body))
        }
        TriggerRequest::CircleciPipelineRun(r) => {
            let s = parse_slug(&r.project, Api::PipelineRun)?;
            let url = format!(
                "{base}/api/v2/project/{}/{}/{}/pipeline/run",
                segment(s.provider),
                segment(s.org),
                segment(s.project)
            );
            let mut body = serde_json::Map::new();
            body.insert("definition_id".into(), r.definition_id.clone().into());
            body.insert(
                "config".into(),
                serde_json::to_value(&r.config).map_err(|e| e.to_string())?,
            );
            body.insert(
                "checkout".into(),
                serde_json::to_value(&r.checkout).map_err(|e| e.to_string())?,
            );
            if !r.parameters.is_empty() {
                body.insert("parameters".into(), r.parameters.clone().into());
            }
            (url, serde_json::Value::Object(body))
        }
        TriggerRequest::GitlabPipeline(_) => return Err("not a CircleCI trigger".into()),
    };
    Ok(OutboundRequest {
        method: "POST",
        url,
        headers,
        body,
        credential: Credential::Header(TOKEN_HEADER),
    })
}

/// A 2xx answer: what was created, or CircleCI's "not triggered" message.
pub(super) fn created(req: &TriggerRequest, status: u16, body: &[u8]) -> Outcome {
    #[derive(Deserialize)]
    struct V2 {
        id: Option<String>,
        number: Option<i64>,
        state: Option<String>,
        message: Option<String>,
    }
    #[derive(Deserialize)]
    struct V1 {
        build_num: Option<i64>,
        build_url: Option<String>,
        status: Option<String>,
    }
    match req {
        TriggerRequest::CircleciJob(_) => {
            let v: Option<V1> = serde_json::from_slice(body).ok();
            Outcome::Created(v.map_or_else(TriggerResult::default, |v| TriggerResult {
                id: None,
                number: v.build_num,
                url: v.build_url,
                state: v.status,
            }))
        }
        TriggerRequest::CircleciPipeline(r) => {
            let v: Option<V2> = serde_json::from_slice(body).ok();
            Outcome::Created(pipeline_result(v.map(|v| (v.id, v.number, v.state)), &r.project))
        }
        TriggerRequest::CircleciPipelineRun(r) => {
            let v: Option<V2> = serde_json::from_slice(body).ok();
            match v {
                // `200 {"message": ...}` means CircleCI chose not to run (e.g. `[ci skip]`).
                Some(V2 {
                    message: Some(m),
                    id: None,
                    ..
                }) if status == 200 => Outcome::Skipped(m),
                v => Outcome::Created(pipeline_result(v.map(|v| (v.id, v.number, v.state)), &r.project)),
            }
        }
        TriggerRequest::GitlabPipeline(_) => Outcome::Created(TriggerResult::default()),
    }
}

fn pipeline_result(v: Option<(Option<String>, Option<i64>, Option<String>)>, project: &str) -> TriggerResult {
    let (id, number, state) = v.unwrap_or_default();
    // app.circleci.com shows a pipeline at /pipelines/<slug with long provider names>/<number>.
    let url = number.and_then(|n| {
        let s = parse_slug(project, Api::PipelineRun).ok()?;
        Some(format!(
            "https://app.circleci.com/pipelines/{}/{}/{}/{n}",
            vcs_type(s.provider),
            s.org,
            s.project
        ))
    });
    TriggerResult {
        id,
        number,
        url,
        state,
    }
}

/// A 4xx answer other than the retryable ones.
pub(super) fn failed(status: u16, message: &str) -> Outcome {
    let hint = match status {
        401 => " (the token is invalid, revoked, or an old-format token; v2 needs a personal API token)",
        403 => " (the token lacks permission on this project)",
        404 => {
            " (wrong project slug, no access to a private project, or a parameter not declared in the config's `parameters:`)"
        }
        400 => " (check the parameters' names and types against the project's config)",
        _ => "",
    };
    Outcome::Permanent(format!("HTTP {status}: {message}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(parse_slug("gh/acme/app", Api::Pipeline).is_ok());
        assert!(parse_slug("circleci/9d3c/7a1f", Api::PipelineRun).is_ok());
        assert!(parse_slug("circleci/9d3c/7a1f", Api::Job).is_err());
        assert!(parse_slug("circleci/9d3c/7a1f", Api::Pipeline).is_err());
        assert!(parse_slug("gitlab/a/b", Api::PipelineRun).is_err());
        assert!(parse_slug("gh/acme", Api::Pipeline).is_err());
    }

    #[test]
    fn branch_is_one_path_segment() {
        assert_eq!(segment("feature/x y"), "feature%2Fx%20y");
        assert_eq!(segment("release-1.2_rc~1"), "release-1.2_rc~1");
    }

    #[test]
    fn pipeline_run_200_message_is_skipped() {
        let req = TriggerRequest::CircleciPipelineRun(PipelineRunRequest {
            project: "gh/a/b".into(),
            definition_id: "x".into(),
            config: GitRef::default(),
            checkout: GitRef::default(),
            parameters: Default::default(),
        });
        assert_eq!(
            created(&req, 200, br#"{"message":"Pipeline skipped: [ci skip]"}"#),
            Outcome::Skipped("Pipeline skipped: [ci skip]".into())
        );
    }
}
