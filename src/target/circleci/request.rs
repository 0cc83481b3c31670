//! The HTTP request for a stored CircleCI trigger, and what CircleCI's answer
//! means.

use serde::Deserialize;

use super::{Api, Request, SlugError, parse_slug, vcs_type};
use crate::target::encode::path_segment;
use crate::target::{Credential, Header, OutboundRequest, Outcome, REDACTED, TriggerResult, json_headers};

/// The header CircleCI reads its personal API token from.
const TOKEN_HEADER: &str = "Circle-Token";

/// The request for `req`; the token header holds [`REDACTED`] until the wire.
pub(in crate::target) fn request(base: &str, req: &Request) -> Result<OutboundRequest, SlugError> {
    let mut headers = json_headers();
    headers.insert(
        0,
        Header {
            name: TOKEN_HEADER.into(),
            value: REDACTED.to_owned(),
        },
    );
    let (url, body) = match req {
        Request::Job(r) => {
            let s = parse_slug(&r.project, Api::Job)?;
            let url = format!(
                "{base}/api/v1.1/project/{}/{}/{}/tree/{}",
                path_segment(vcs_type(s.provider)),
                path_segment(s.org),
                path_segment(s.project),
                path_segment(&r.branch)
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
        Request::Pipeline(r) => {
            let s = parse_slug(&r.project, Api::Pipeline)?;
            let url = format!(
                "{base}/api/v2/project/{}/{}/{}/pipeline",
                path_segment(s.provider),
                path_segment(s.org),
                path_segment(s.project)
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
        Request::PipelineRun(r) => {
            let s = parse_slug(&r.project, Api::PipelineRun)?;
            let url = format!(
                "{base}/api/v2/project/{}/{}/{}/pipeline/run",
                path_segment(s.provider),
                path_segment(s.org),
                path_segment(s.project)
            );
            let mut body = serde_json::Map::new();
            body.insert("definition_id".into(), r.definition_id.clone().into());
            body.insert("config".into(), r.config.to_json());
            body.insert("checkout".into(), r.checkout.to_json());
            if !r.parameters.is_empty() {
                body.insert("parameters".into(), r.parameters.clone().into());
            }
            (url, serde_json::Value::Object(body))
        }
    };
    Ok(OutboundRequest {
        method: "POST",
        url,
        headers,
        body,
        encoding: crate::target::Encoding::Json,
        credential: Credential::Header(TOKEN_HEADER.into()),
    })
}

/// A 2xx answer: what was created, or CircleCI's "not triggered" message.
pub(in crate::target) fn created(req: &Request, status: u16, body: &[u8]) -> Outcome {
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
        Request::Job(_) => {
            let v: Option<V1> = serde_json::from_slice(body).ok();
            Outcome::Created(v.map_or_else(TriggerResult::default, |v| TriggerResult {
                id: None,
                number: v.build_num,
                url: v.build_url,
                state: v.status,
                follow: None,
            }))
        }
        Request::Pipeline(r) => {
            let v: Option<V2> = serde_json::from_slice(body).ok();
            Outcome::Created(pipeline_result(v.map(|v| (v.id, v.number, v.state)), &r.project))
        }
        Request::PipelineRun(r) => {
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
    }
}

pub(in crate::target) fn pipeline_result(
    v: Option<(Option<String>, Option<i64>, Option<String>)>,
    project: &str,
) -> TriggerResult {
    let (id, number, state) = v.unwrap_or_default();
    // app.circleci.com shows a pipeline at /pipelines/<slug with long provider names>/<number>.
    let url = number.and_then(|n| {
        let s = parse_slug(project, Api::PipelineRun).ok()?;
        Some(format!(
            "https://app.circleci.com/pipelines/{}/{}/{}/{n}",
            vcs_type(s.provider),
            path_segment(s.org),
            path_segment(s.project)
        ))
    });
    TriggerResult {
        id,
        number,
        url,
        state,
        follow: None,
    }
}

/// A 4xx answer other than the retryable ones.
pub(in crate::target) fn failed(status: u16, message: &str) -> Outcome {
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
    use crate::target::GitRef;
    use crate::target::circleci::PipelineRunRequest;

    #[test]
    fn pipeline_run_200_message_is_skipped() {
        let req = Request::PipelineRun(PipelineRunRequest {
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
