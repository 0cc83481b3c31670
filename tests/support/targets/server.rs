//! The server: routes each request by path to its API, runs the checks,
//! records the request and any violations, and answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::checks::{check_json_request, common_problems};
use super::reply::{message, scripted_or};
use super::{Received, Settings, Shared, buildkite, gitea, github, http, jenkins};

// ---------------------------------------------------------------------------
// Routing

#[derive(Debug, Clone)]
pub(super) enum Route {
    GithubWorkflow {
        owner: String,
        repo: String,
        workflow: String,
    },
    GithubRepository {
        owner: String,
        repo: String,
    },
    Gitea {
        owner: String,
        repo: String,
    },
    Buildkite {
        org: String,
        pipeline: String,
    },
    JenkinsBuild {
        job: Vec<String>,
        /// `buildWithParameters` (else `build`).
        parameters: bool,
    },
    JenkinsQueue {
        item: String,
    },
    Http,
}

impl Route {
    pub(super) fn api(&self) -> &'static str {
        match self {
            Route::GithubWorkflow { .. } => "github-workflow-dispatch",
            Route::GithubRepository { .. } => "github-repository-dispatch",
            Route::Gitea { .. } => "gitea-dispatch",
            Route::Buildkite { .. } => "buildkite-build",
            Route::JenkinsBuild { .. } => "jenkins-build",
            Route::JenkinsQueue { .. } => "jenkins-queue",
            Route::Http => "http",
        }
    }
}

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

/// The path's segments after `prefix`, if it starts with it.
fn under<'a>(path: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
    let rest = path.strip_prefix(prefix)?;
    if !rest.starts_with('/') {
        return None;
    }
    Some(rest[1..].split('/').collect())
}

fn route(path: &str, s: &Settings) -> Result<Route, String> {
    let d = |seg: &str| decode(seg);
    if let Some(segs) = under(path, &s.github_prefix) {
        match segs.as_slice() {
            [
                "repos",
                owner,
                repo,
                "actions",
                "workflows",
                workflow,
                "dispatches",
            ] => {
                return Ok(Route::GithubWorkflow {
                    owner: d(owner),
                    repo: d(repo),
                    workflow: d(workflow),
                });
            }
            ["repos", owner, repo, "dispatches"] => {
                return Ok(Route::GithubRepository {
                    owner: d(owner),
                    repo: d(repo),
                });
            }
            _ => {}
        }
    }
    if let Some(segs) = under(path, &s.gitea_prefix)
        && let [
            "api",
            "v1",
            "repos",
            owner,
            repo,
            "actions",
            "workflows",
            _workflow,
            "dispatches",
        ] = segs.as_slice()
    {
        return Ok(Route::Gitea {
            owner: d(owner),
            repo: d(repo),
        });
    }
    if let Some(segs) = under(path, "")
        && let ["v2", "organizations", org, "pipelines", pipeline, "builds"] = segs.as_slice()
    {
        return Ok(Route::Buildkite {
            org: d(org),
            pipeline: d(pipeline),
        });
    }
    if let Some(segs) = under(path, &s.jenkins_prefix) {
        if let ["queue", "item", item, "api", "json"] = segs.as_slice() {
            return Ok(Route::JenkinsQueue { item: d(item) });
        }
        if let [jobs @ .., endpoint @ ("buildWithParameters" | "build")] = segs.as_slice()
            && !jobs.is_empty()
            && jobs.len() % 2 == 0
            && jobs.chunks(2).all(|c| c[0] == "job")
        {
            return Ok(Route::JenkinsBuild {
                job: jobs.chunks(2).map(|c| d(c[1])).collect(),
                parameters: *endpoint == "buildWithParameters",
            });
        }
    }
    if path == "/hook" || path.starts_with("/hook/") {
        return Ok(Route::Http);
    }
    Err(format!("no such endpoint: {path}"))
}

// ---------------------------------------------------------------------------
// Answering

/// The normal answer to a valid trigger call; problems found in the
/// stand-in's own answer (checked against the API's response schema) are
/// added to `problems`.
fn success(
    shared: &Shared,
    route: &Route,
    settings: &Settings,
    uri: &Uri,
    body: &Value,
    problems: &mut Vec<String>,
) -> Response {
    match route {
        Route::GithubWorkflow { .. } | Route::GithubRepository { .. } => {
            github::success(shared, route, settings, body, problems)
        }
        Route::Gitea { owner, repo } => gitea::success(shared, settings, owner, repo, uri, body, problems),
        Route::Buildkite { org, pipeline } => buildkite::success(shared, org, pipeline, body),
        Route::JenkinsBuild { job, parameters } => jenkins::build(shared, settings, job, *parameters),
        Route::Http => unreachable!("answered by http::receive"),
        Route::JenkinsQueue { .. } => unreachable!("answered by jenkins::queue"),
    }
}

pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let settings = shared.settings.lock().unwrap().clone();
    let route = match route(&path, &settings) {
        Ok(r) => r,
        Err(problem) => {
            shared
                .violations
                .lock()
                .unwrap()
                .push(format!("{method} {path}: {problem}"));
            return message(404, "Not Found");
        }
    };
    let api = route.api();
    let enterprise = matches!(
        route,
        Route::GithubWorkflow { .. } | Route::GithubRepository { .. }
    ) && github::is_enterprise(&settings.github_prefix);
    if enterprise && let Err(e) = tokio::task::spawn_blocking(github::enterprise_validators).await {
        shared.violations.lock().unwrap().push(format!(
            "{api} {method} {path}: GHES 3.19's description did not load: {e}"
        ));
        return message(500, "the stand-in could not load GHES 3.19's description");
    }
    let mut problems = Vec::new();
    let mut form = Vec::new();
    let mut hung = false;
    let mut body = Value::Null;
    let response = match &route {
        Route::JenkinsQueue { item } => {
            jenkins::queue(&shared, &settings, &method, &headers, item, &mut problems)
        }
        Route::Http => {
            let (json, response) = http::receive(&shared, &raw, &mut hung);
            body = json;
            response
        }
        _ => {
            if method != Method::POST {
                problems.push(format!("{method} instead of POST"));
            }
            problems.extend(common_problems(&uri, &headers));
            let authorised = match &route {
                Route::GithubWorkflow { .. } | Route::GithubRepository { .. } => {
                    body = check_json_request(&headers, &raw, &mut problems);
                    github::check(&route, &settings, &uri, &headers, &body, &mut problems)
                }
                Route::Gitea { .. } => {
                    body = check_json_request(&headers, &raw, &mut problems);
                    gitea::check(&uri, &headers, &body, &mut problems)
                }
                Route::Buildkite { .. } => {
                    body = check_json_request(&headers, &raw, &mut problems);
                    buildkite::check(&uri, &headers, &body, &mut problems)
                }
                Route::JenkinsBuild { job, parameters } => {
                    let (authorised, params) =
                        jenkins::check(&uri, &headers, &raw, (job, *parameters), &mut problems);
                    body = Value::Object(
                        params
                            .iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                            .collect(),
                    );
                    form = params;
                    authorised
                }
                _ => unreachable!(),
            };
            let scripted_reply = shared.script.lock().unwrap().pop_front();
            if !authorised {
                message(401, "Bad credentials")
            } else if let Some(refusal) = github::refusal(&route, &settings, &body) {
                refusal
            } else if !problems.is_empty() {
                message(422, &format!("invalid request: {}", problems.join("; ")))
            } else {
                scripted_or(scripted_reply, &mut hung, || {
                    success(&shared, &route, &settings, &uri, &body, &mut problems)
                })
            }
        }
    };
    shared.violations.lock().unwrap().extend(
        problems
            .into_iter()
            .map(|p| format!("{api} {method} {path}: {p}")),
    );
    let mut record = Received {
        api,
        method,
        path,
        query: uri.query().map(str::to_owned),
        headers,
        raw,
        body,
        form,
        status: response.status().as_u16(),
        seq: shared.seq.fetch_add(1, Ordering::SeqCst),
    };
    if hung {
        record.status = 0;
        shared.requests.lock().unwrap().push(record);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    shared.requests.lock().unwrap().push(record);
    response
}
