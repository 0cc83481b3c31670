//! Gitea and Forgejo Actions: `POST {prefix}/api/v1/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches`,
//! checked against both Swagger documents vendored in
//! `tests/fixtures/openapi/` (a request must suit either server).

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::checks::{check_auth, header, schema_errors, validator_in};
use super::{GITEA_TOKEN, Settings, Shared};

/// How the Gitea route answers a valid dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum GiteaMode {
    /// Gitea 1.26: reads the `return_run_details` query parameter; 200 `RunDetails`.
    #[default]
    Gitea,
    /// Forgejo 15: reads the body's `return_run_info`; 201 `DispatchWorkflowRun`.
    Forgejo,
    /// Either, older: 204 without a body.
    NoContent,
}

pub(super) struct Validators {
    gitea: jsonschema::Validator,
    forgejo: jsonschema::Validator,
    gitea_answer: jsonschema::Validator,
    forgejo_answer: jsonschema::Validator,
    /// The schema of Gitea's `return_run_details` query parameter.
    gitea_query: jsonschema::Validator,
}

pub(super) fn validators() -> &'static Validators {
    static V: OnceLock<Validators> = OnceLock::new();
    V.get_or_init(|| {
        use jsonschema::Draft::Draft4;
        let gitea = super::super::ci::load_json("gitea-swagger-v1.json");
        let forgejo = super::super::ci::load_json("forgejo-swagger-v1.json");
        let query = gitea
            .pointer("/paths/~1repos~1{owner}~1{repo}~1actions~1workflows~1{workflow_id}~1dispatches/post/parameters")
            .and_then(Value::as_array)
            .and_then(|ps| ps.iter().find(|p| p["name"] == "return_run_details" && p["in"] == "query"))
            .expect("Gitea's swagger has the return_run_details query parameter")
            .clone();
        let mut query_schema = serde_json::Map::new();
        for key in ["type", "enum", "format"] {
            if let Some(v) = query.get(key) {
                query_schema.insert(key.into(), v.clone());
            }
        }
        Validators {
            gitea: validator_in(&gitea, "/definitions/CreateActionWorkflowDispatch", Draft4),
            forgejo: validator_in(&forgejo, "/definitions/DispatchWorkflowOption", Draft4),
            gitea_answer: validator_in(&gitea, "/definitions/RunDetails", Draft4),
            forgejo_answer: validator_in(&forgejo, "/definitions/DispatchWorkflowRun", Draft4),
            gitea_query: validator_in(&Value::Object(query_schema), "", Draft4),
        }
    })
}

pub(super) fn check(uri: &Uri, headers: &HeaderMap, body: &Value, problems: &mut Vec<String>) -> bool {
    let v = validators();
    let auth = check_auth(headers, &format!("token {GITEA_TOKEN}"), problems);
    let accept = header(headers, "accept");
    if !accept.contains("application/json") {
        problems.push(format!("Accept is `{accept}`, not application/json"));
    }
    match uri.query() {
        Some("return_run_details=true") => {}
        other => problems.push(format!(
            "query is `{}`, not `return_run_details=true`",
            other.unwrap_or("")
        )),
    }
    // Each query value, as the swagger's parameter type says (a boolean).
    for (k, val) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if k == "return_run_details" {
            let typed = serde_json::from_str::<Value>(&val).unwrap_or(Value::String(val.into_owned()));
            problems.extend(schema_errors(&v.gitea_query, "query return_run_details", &typed));
        }
    }
    problems.extend(schema_errors(
        &v.gitea,
        "Gitea schema (CreateActionWorkflowDispatch)",
        body,
    ));
    problems.extend(schema_errors(
        &v.forgejo,
        "Forgejo schema (DispatchWorkflowOption)",
        body,
    ));
    auth
}

/// The normal answer to a valid dispatch, as [`GiteaMode`] says.
pub(super) fn success(
    shared: &Shared,
    settings: &Settings,
    owner: &str,
    repo: &str,
    uri: &Uri,
    body: &Value,
    problems: &mut Vec<String>,
) -> Response {
    let base = shared.url.get().unwrap();
    let v = validators();
    let n = shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let prefix = &settings.gitea_prefix;
    match settings.gitea_mode {
        GiteaMode::Gitea if uri.query() == Some("return_run_details=true") => {
            let answer = json!({
                "workflow_run_id": n,
                "run_url": format!("{base}{prefix}/api/v1/repos/{owner}/{repo}/actions/runs/{n}"),
                "html_url": format!("{base}{prefix}/{owner}/{repo}/actions/runs/{n}"),
            });
            problems.extend(schema_errors(&v.gitea_answer, "stand-in's own answer", &answer));
            (StatusCode::OK, axum::Json(answer)).into_response()
        }
        GiteaMode::Forgejo if body["return_run_info"] == true => {
            let answer = json!({"id": n, "run_number": n, "jobs": ["build"]});
            problems.extend(schema_errors(&v.forgejo_answer, "stand-in's own answer", &answer));
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}
