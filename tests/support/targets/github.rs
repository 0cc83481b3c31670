//! GitHub Actions: `POST {prefix}/repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches`
//! (workflow dispatch) and `POST {prefix}/repos/{owner}/{repo}/dispatches`
//! (repository dispatch), checked against GitHub's OpenAPI description from
//! npm [`OCTOKIT_OPENAPI`](super::OCTOKIT_OPENAPI).
//!
//! Under the prefix `/api/v3` the stand-in is GitHub Enterprise Server 3.19,
//! checked against that release's description from the same package
//! ([`octokit_ghes_spec`]). Its workflow dispatch body has no
//! `return_run_details` (api.github.com added it in February 2026) and it
//! answers only 204; a request carrying the field gets the 422 GHES 3.19
//! really answers, <https://github.com/benc-uk/workflow-dispatch/issues/86>.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::checks::{check_auth, header, schema_errors, validator_in};
use super::install::{octokit_ghes_spec, octokit_spec};
use super::server::Route;
use super::{GITHUB_TOKEN, Settings, Shared};

/// The schemas of one GitHub description.
pub(super) struct Schemas {
    /// `actions/create-workflow-dispatch`'s request body.
    workflow: jsonschema::Validator,
    /// `repos/create-dispatch-event`'s request body.
    repository: jsonschema::Validator,
    /// `workflow-dispatch-response`: checks the stand-in's own answer
    /// (api.github.com only; GHES 3.19 answers 204).
    workflow_answer: Option<jsonschema::Validator>,
    /// Before "schema (…)" in violations: "" or "GHES 3.19 ".
    label: &'static str,
}

fn load(path: &std::path::Path, label: &'static str) -> Schemas {
    use jsonschema::Draft::Draft4;
    let github: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let gh_body = |p: &str| {
        format!(
            "/paths/{}/post/requestBody/content/application~1json/schema",
            p.replace('/', "~1")
        )
    };
    let answer = "/components/schemas/workflow-dispatch-response";
    Schemas {
        workflow: validator_in(
            &github,
            &gh_body("/repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches"),
            Draft4,
        ),
        repository: validator_in(&github, &gh_body("/repos/{owner}/{repo}/dispatches"), Draft4),
        workflow_answer: github
            .pointer(answer)
            .map(|_| validator_in(&github, answer, Draft4)),
        label,
    }
}

/// api.github.com's schemas (installing its description if needed).
pub(super) fn validators() -> &'static Schemas {
    static V: OnceLock<Schemas> = OnceLock::new();
    V.get_or_init(|| load(&octokit_spec(), ""))
}

/// GitHub Enterprise Server 3.19's schemas (installing its description if needed).
pub(super) fn enterprise_validators() -> &'static Schemas {
    static V: OnceLock<Schemas> = OnceLock::new();
    V.get_or_init(|| load(&octokit_ghes_spec(), "GHES 3.19 "))
}

/// Whether GitHub's prefix makes the stand-in GitHub Enterprise Server.
pub(super) fn is_enterprise(prefix: &str) -> bool {
    prefix.ends_with("/api/v3")
}

/// Starts loading [`enterprise_validators`] on a thread of its own.
pub(super) fn load_enterprise_in_background() {
    std::thread::spawn(|| {
        enterprise_validators();
    });
}

/// The schemas that apply under these settings.
fn schemas(settings: &Settings) -> &'static Schemas {
    if is_enterprise(&settings.github_prefix) {
        enterprise_validators()
    } else {
        validators()
    }
}

/// What GHES 3.19 answers to a workflow dispatch with `return_run_details`.
const NOT_PERMITTED: &str = "\"return_run_details\" is not a permitted key.";

pub(super) fn check(
    route: &Route,
    settings: &Settings,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Value,
    problems: &mut Vec<String>,
) -> bool {
    let v = schemas(settings);
    let label = v.label;
    let auth = check_auth(headers, &format!("Bearer {GITHUB_TOKEN}"), problems);
    let accept = header(headers, "accept");
    if !accept
        .split(',')
        .any(|a| a.trim() == "application/vnd.github+json")
    {
        problems.push(format!("Accept is `{accept}`, not application/vnd.github+json"));
    }
    let version = header(headers, "x-github-api-version");
    let date_shaped = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !date_shaped {
        problems.push(format!(
            "X-GitHub-Api-Version is `{version}`, not a dated version"
        ));
    }
    if header(headers, "user-agent").is_empty() {
        problems.push("no User-Agent (GitHub refuses requests without one)".into());
    }
    if let Some(q) = uri.query() {
        problems.push(format!("query string `{q}`"));
    }
    match route {
        Route::GithubWorkflow {
            owner,
            repo,
            workflow,
        } => {
            if owner.is_empty() || repo.is_empty() || workflow.is_empty() {
                problems.push("empty owner, repo or workflow_id".into());
            }
            problems.extend(schema_errors(
                &v.workflow,
                &format!("{label}schema (actions/create-workflow-dispatch)"),
                body,
            ));
            if is_enterprise(&settings.github_prefix) && body.get("return_run_details").is_some() {
                problems.push(format!(
                    "`return_run_details` is not in GHES 3.19's workflow dispatch body (it answers 422 {NOT_PERMITTED})"
                ));
            }
            if let Some(inputs) = body.get("inputs").and_then(Value::as_object) {
                for (k, val) in inputs {
                    if !(val.is_string() || val.is_number() || val.is_boolean()) {
                        problems.push(format!("input `{k}` is not a string, number or boolean: {val}"));
                    }
                }
            }
        }
        Route::GithubRepository { owner, repo } => {
            if owner.is_empty() || repo.is_empty() {
                problems.push("empty owner or repo".into());
            }
            problems.extend(schema_errors(
                &v.repository,
                &format!("{label}schema (repos/create-dispatch-event)"),
                body,
            ));
            if let Some(payload) = body.get("client_payload") {
                let size = payload.to_string().len();
                if size >= 64 * 1024 {
                    problems.push(format!("client_payload is {size} bytes of JSON, not < 64 KiB"));
                }
            }
        }
        _ => unreachable!(),
    }
    auth
}

/// GHES's own refusal of an authorised call, if it makes one: 422 for a
/// workflow dispatch carrying `return_run_details`.
pub(super) fn refusal(route: &Route, settings: &Settings, body: &Value) -> Option<Response> {
    let refused = matches!(route, Route::GithubWorkflow { .. })
        && is_enterprise(&settings.github_prefix)
        && body.get("return_run_details").is_some();
    refused.then(|| {
        let answer = json!({
            "message": NOT_PERMITTED,
            "documentation_url": "https://docs.github.com/enterprise-server@3.19/rest/actions/workflows#create-a-workflow-dispatch-event",
        });
        (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(answer)).into_response()
    })
}

/// The normal answer to a valid dispatch: 204, or, for a workflow dispatch
/// to api.github.com with `return_run_details: true`, 200 with the run.
pub(super) fn success(
    shared: &Shared,
    route: &Route,
    settings: &Settings,
    body: &Value,
    problems: &mut Vec<String>,
) -> Response {
    let base = shared.url.get().unwrap();
    match route {
        Route::GithubWorkflow { owner, repo, .. } => {
            let Some(answer_schema) = &schemas(settings).workflow_answer else {
                return StatusCode::NO_CONTENT.into_response();
            };
            if body["return_run_details"] != true {
                return StatusCode::NO_CONTENT.into_response();
            }
            let id = 22_000_000_000 + shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let answer = json!({
                "workflow_run_id": id,
                "run_url": format!("{base}{}/repos/{owner}/{repo}/actions/runs/{id}", settings.github_prefix),
                "html_url": format!("https://github.com/{owner}/{repo}/actions/runs/{id}"),
            });
            problems.extend(schema_errors(answer_schema, "stand-in's own answer", &answer));
            (StatusCode::OK, axum::Json(answer)).into_response()
        }
        Route::GithubRepository { .. } => StatusCode::NO_CONTENT.into_response(),
        _ => unreachable!(),
    }
}
