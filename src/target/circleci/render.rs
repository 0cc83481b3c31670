//! Event time: render a CircleCI trigger into the request stored with the job.

use super::{
    Api, JobRequest, MAX_PARAMETER_VALUE, PipelineRequest, PipelineRunRequest, RefTemplate, Request, Trigger,
    parse_slug,
};
use crate::event::Event;
use crate::target::{GitRef, json_type, render_opt_string, render_string, render_table};
use crate::template::Templates;

impl Trigger {
    pub fn render(&self, t: &Templates, scope: &minijinja::Value, event: &Event) -> Result<Request, String> {
        let project = render_string(t, &self.project, scope, "project")?;
        parse_slug(&project, self.api).map_err(|e| e.to_string())?;
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
                Ok(Request::Job(JobRequest {
                    project,
                    branch,
                    job,
                    revision: render_opt_string(t, &self.revision, scope, "revision")?,
                    parallel,
                    build_parameters,
                }))
            }
            Api::Pipeline => Ok(Request::Pipeline(PipelineRequest {
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
                Ok(Request::PipelineRun(PipelineRunRequest {
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
