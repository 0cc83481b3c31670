//! The stand-in CI's pipelines after they are created, and the calls that
//! cancel them: CircleCI v2 workflows, CircleCI v1.1 builds and GitLab
//! pipelines (the reads of their state, the workflow list among them, are
//! in `ci/watch.rs`). Each call is checked against the official API
//! descriptions in `tests/fixtures/openapi/` (method, path parameters by
//! their schema, the token header, no body), and each answer the stand-in
//! gives is checked against the response schema too, so that hookbridge is
//! tested against the shapes the real APIs send.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ci::{CIRCLE_TOKEN, GITLAB_PRIVATE_TOKEN, load_json, validator};

/// A pipeline the stand-in holds: CircleCI v2 (with its workflows), a
/// CircleCI v1.1 build, or a GitLab pipeline.
#[derive(Debug, Clone)]
pub(crate) enum Pipeline {
    Workflows(Vec<(String, String, String)>),
    Build(String),
    Gitlab(String),
}

/// Every pipeline by id (v2 UUID, v1.1 build number, GitLab id), and
/// whether hookbridge created it (`false`: one the test made elsewhere).
#[derive(Default)]
pub(crate) struct Pipelines {
    pub all: Mutex<BTreeMap<String, (Pipeline, bool)>>,
}

impl Pipelines {
    pub(crate) fn created(&self, id: String, p: Pipeline, by_hookbridge: bool) {
        self.all.lock().unwrap().insert(id, (p, by_hookbridge));
    }

    /// Every workflow, build or pipeline still running moves to `status`.
    pub(crate) fn finish_all(&self, status: &str) {
        for (p, _) in self.all.lock().unwrap().values_mut() {
            match p {
                Pipeline::Workflows(w) => w.iter_mut().for_each(|w| w.2 = status.into()),
                Pipeline::Build(s) | Pipeline::Gitlab(s) => *s = status.into(),
            }
        }
    }
}

/// A v2 pipeline's workflows, as created: two, running.
pub(crate) fn workflows_of(n: u64) -> Pipeline {
    Pipeline::Workflows(vec![
        (
            format!("7a1f0c2d-0000-4000-8000-{:012}", n * 10 + 1),
            "build".into(),
            "running".into(),
        ),
        (
            format!("7a1f0c2d-0000-4000-8000-{:012}", n * 10 + 2),
            "test".into(),
            "running".into(),
        ),
    ])
}

struct Schemas {
    workflow_id: jsonschema::Validator,
    build_num: jsonschema::Validator,
    gitlab_pipeline_id: jsonschema::Validator,
    message: jsonschema::Validator,
}

/// CircleCI's document marks a field that may be `null` with `x-nullable`
/// (as the API sends a running workflow's `stopped_at` and the last page's
/// `next_page_token`), which JSON Schema does not read: say it in its terms.
pub(crate) fn nullable(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("x-nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".into(), json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = map.get_mut("enum") {
                    e.push(Value::Null);
                }
            }
            map.values_mut().for_each(nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(nullable),
        _ => {}
    }
}

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| {
        let mut v2 = load_json("circleci-v2.json");
        nullable(&mut v2);
        let v1 = load_json("circleci-v1.1.json");
        let gitlab = load_json("gitlab-openapi_v2-pipelines_statuses_compare_mr_diffs.excerpt.yaml");
        // Swagger 2.0 puts a path parameter's type on the parameter itself.
        let gitlab_param = gitlab
            .pointer("/paths/~1api~1v4~1projects~1{id}~1pipelines~1{pipeline_id}~1cancel/post/parameters/1")
            .unwrap();
        let gitlab_param = json!({"type": gitlab_param["type"], "format": gitlab_param["format"]});
        Schemas {
            workflow_id: validator(&v2, "/paths/~1workflow~1{id}~1cancel/post/parameters/0/schema"),
            build_num: validator(
                &v1,
                "/paths/~1project~1{vcs-type}~1{username}~1{project}~1{build_num}~1cancel/post/parameters/3/schema",
            ),
            gitlab_pipeline_id: validator(&json!({"s": gitlab_param}), "/s"),
            message: validator(
                &v2,
                "/paths/~1workflow~1{id}~1cancel/post/responses/202/content/application~1json/schema",
            ),
        }
    })
}

fn check(v: &jsonschema::Validator, value: &Value, what: &str, problems: &mut Vec<String>) {
    for e in v.iter_errors(value) {
        problems.push(format!("{what}: {e}"));
    }
}

/// Which cancel-side API a path addresses, if any.
pub(crate) fn route(path: &str) -> Option<&'static str> {
    let s: Vec<&str> = path.trim_matches('/').split('/').collect();
    match s.as_slice() {
        ["api", "v2", "workflow", _, "cancel"] => Some("circleci-workflow-cancel"),
        ["api", "v1.1", "project", _, _, _, num, "cancel"] if *num != "tree" => Some("circleci-build-cancel"),
        ["api", "v4", "projects", _, "pipelines", _, "cancel"] => Some("gitlab-pipeline-cancel"),
        _ => None,
    }
}

/// Answer a cancel-side call; the problems found with it are returned.
pub(crate) fn answer(
    pipelines: &Pipelines,
    api: &'static str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, Vec<String>) {
    let mut problems = Vec::new();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let s: Vec<String> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .map(|seg| {
            percent_encoding::percent_decode_str(seg)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    if *method != Method::POST {
        problems.push(format!("{method} instead of POST"));
    }
    if !body.is_empty() {
        problems.push(format!(
            "a body on a call that takes none: {}",
            String::from_utf8_lossy(body)
        ));
    }
    if !header("accept").contains("application/json") {
        problems.push("Accept does not ask for application/json".into());
    }
    let gitlab = api.starts_with("gitlab");
    if gitlab {
        if header("private-token") != GITLAB_PRIVATE_TOKEN {
            problems.push("missing or wrong PRIVATE-TOKEN (a trigger token cannot cancel)".into());
        }
    } else if header("circle-token") != CIRCLE_TOKEN {
        problems.push("missing or wrong Circle-Token".into());
    }
    if let Some(q) = uri.query() {
        problems.push(format!("unexpected query string `{q}`"));
    }
    let sc = schemas();
    let mut all = pipelines.all.lock().unwrap();
    let not_found = || (StatusCode::NOT_FOUND, axum::Json(json!({"message": "Not Found"}))).into_response();
    let response = match api {
        "circleci-workflow-cancel" => {
            let id = &s[3];
            check(
                &sc.workflow_id,
                &Value::String(id.clone()),
                "workflow id",
                &mut problems,
            );
            let found = all.iter_mut().find_map(|(pid, (p, mine))| match p {
                Pipeline::Workflows(w) => w.iter_mut().find(|w| &w.0 == id).map(|w| (pid.clone(), w, *mine)),
                _ => None,
            });
            match found {
                Some((pid, w, mine)) => {
                    if !mine {
                        problems.push(format!(
                            "cancelled workflow {id} of pipeline {pid}, which hookbridge did not create"
                        ));
                    }
                    if !["running", "on_hold", "failing"].contains(&w.2.as_str()) {
                        problems.push(format!("cancelled workflow {id}, which was {}", w.2));
                    }
                    w.2 = "canceled".into();
                    let msg = json!({"message": "Accepted."});
                    check(&sc.message, &msg, "stand-in answer", &mut problems);
                    (StatusCode::ACCEPTED, axum::Json(msg)).into_response()
                }
                None => not_found(),
            }
        }
        "circleci-build-cancel" => {
            let n: Value = s[6]
                .parse::<i64>()
                .map_or(Value::String(s[6].clone()), Value::from);
            check(&sc.build_num, &n, "build_num", &mut problems);
            match all.get_mut(&s[6]) {
                Some((Pipeline::Build(status), mine)) => {
                    if !*mine {
                        problems.push(format!(
                            "cancelled build {}, which hookbridge did not create",
                            s[6]
                        ));
                    }
                    if !["success", "failed", "canceled", "skipped"].contains(&status.as_str()) {
                        *status = "canceled".into();
                    }
                    (
                        StatusCode::OK,
                        axum::Json(json!({"build_num": n, "status": status.clone()})),
                    )
                        .into_response()
                }
                _ => not_found(),
            }
        }
        _ => {
            let id = &s[5];
            let n: Value = id.parse::<i64>().map_or(Value::String(id.clone()), Value::from);
            check(&sc.gitlab_pipeline_id, &n, "pipeline_id", &mut problems);
            match all.get_mut(id) {
                Some((Pipeline::Gitlab(status), mine)) => {
                    if !*mine {
                        problems.push(format!(
                            "cancelled pipeline {id}, which hookbridge did not create"
                        ));
                    }
                    // GitLab answers whatever the state; it moves through `canceling`.
                    let answer = json!({"id": n, "iid": 1, "project_id": 3, "status": status.clone()});
                    if !["success", "failed", "canceled", "skipped"].contains(&status.as_str()) {
                        *status = "canceled".into();
                    }
                    (StatusCode::CREATED, axum::Json(answer)).into_response()
                }
                _ => not_found(),
            }
        }
    };
    (response, problems)
}
