//! Buildkite: `POST /v2/organizations/{org}/pipelines/{pipeline}/builds`,
//! checked against the request shape its documentation gives.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::checks::{check_auth, schema_errors};
use super::{BUILDKITE_TOKEN, Shared};

/// The request shape of Buildkite's "Create a build", written from its docs:
/// <https://buildkite.com/docs/apis/rest-api/builds#create-a-build>.
/// Buildkite publishes no machine-readable description of its REST API
/// (`tests/fixtures/openapi/SOURCES.md`, "Buildkite").
fn buildkite_create_build_schema() -> Value {
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Buildkite REST API: create a build (request body)",
        "type": "object",
        "required": ["commit", "branch"],
        "additionalProperties": false,
        "properties": {
            "commit": {"type": "string", "minLength": 1},
            "branch": {"type": "string", "minLength": 1},
            "message": {"type": "string"},
            "author": {
                "type": "object",
                "additionalProperties": false,
                "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
            },
            "env": strings,
            "meta_data": strings,
            "clean_checkout": {"type": "boolean"},
            "ignore_pipeline_branch_filters": {"type": "boolean"},
            "pull_request_base_branch": {"type": "string"},
            "pull_request_id": {"type": "integer"},
            "pull_request_repository": {"type": "string"},
        },
    })
}

/// [`buildkite_create_build_schema`], compiled.
pub(super) fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| super::super::ci::validator(&buildkite_create_build_schema(), ""))
}

pub(super) fn check(uri: &Uri, headers: &HeaderMap, body: &Value, problems: &mut Vec<String>) -> bool {
    let auth = check_auth(headers, &format!("Bearer {BUILDKITE_TOKEN}"), problems);
    if let Some(q) = uri.query() {
        problems.push(format!("query string `{q}`"));
    }
    problems.extend(schema_errors(
        validator(),
        "schema (Buildkite create a build)",
        body,
    ));
    auth
}

/// The normal answer to a valid call: 201 with the build, its number counting
/// up per pipeline.
pub(super) fn success(shared: &Shared, org: &str, pipeline: &str, body: &Value) -> Response {
    let base = shared.url.get().unwrap();
    let number = {
        let mut numbers = shared.buildkite.lock().unwrap();
        let n = numbers.entry(format!("{org}/{pipeline}")).or_default();
        *n += 1;
        *n
    };
    let serial = shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let answer = json!({
        "id": format!("01890f3c-8d2e-4b7a-9c1d-{serial:012x}"),
        "url": format!("{base}/v2/organizations/{org}/pipelines/{pipeline}/builds/{number}"),
        "web_url": format!("https://buildkite.com/{org}/{pipeline}/builds/{number}"),
        "number": number,
        "state": "scheduled",
        "blocked": false,
        "message": body.get("message").cloned().unwrap_or(Value::Null),
        "commit": body["commit"],
        "branch": body["branch"],
        "env": body.get("env").cloned().unwrap_or(json!({})),
        "meta_data": body.get("meta_data").cloned().unwrap_or(json!({})),
        "source": "api",
        "created_at": "2026-11-23T10:00:00.000Z",
    });
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}
