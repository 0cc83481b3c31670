//! Config time: check a CircleCI trigger's keys, project slug and parameter
//! names, and compile its templates.

use toml::Spanned;

use super::{Api, MAX_PARAMETER_KEY, MAX_PARAMETERS, RefTemplate, Trigger, parse_slug};
use crate::config::raw::RawTrigger;
use crate::target::TriggerCompiler;

fn check_build_parameter(name: &str) -> Result<(), String> {
    if crate::target::is_env_name(name) {
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
    pub fn compile(raw: &Spanned<RawTrigger>, f: &mut TriggerCompiler<'_>) -> Option<Trigger> {
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
            f.error(e.to_string(), project_raw.span());
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
}

fn ref_table(
    f: &mut TriggerCompiler<'_>,
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
