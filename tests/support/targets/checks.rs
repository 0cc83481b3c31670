//! Checks every API shares: headers, credentials, JSON bodies, and schema
//! validation against API descriptions.

use axum::http::{HeaderMap, Uri};
use serde_json::Value;

use super::{BUILDKITE_TOKEN, GITEA_TOKEN, GITHUB_TOKEN, JENKINS_TOKEN};

/// As `ci::validator`, with a choice of draft: the schema at `pointer` in an
/// API document, with its `components` / `definitions` there for `$ref`.
/// Swagger 2.0 and OpenAPI 3.0 schemas are (extended subsets of) Draft 4.
pub(crate) fn validator_in(doc: &Value, pointer: &str, draft: jsonschema::Draft) -> jsonschema::Validator {
    let schema = doc
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema at {pointer}"));
    let mut root = schema.clone();
    for shared in ["components", "definitions"] {
        if let Some(v) = doc.get(shared) {
            root[shared] = v.clone();
        }
    }
    jsonschema::options()
        .with_draft(draft)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema at {pointer}: {e}"))
}

/// Each schema error, as `<what>: <error> at `<instance path>``, its text
/// cut to a readable length (an error quotes the offending value).
pub(crate) fn schema_errors(validator: &jsonschema::Validator, what: &str, value: &Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| {
            let mut text = e.to_string();
            if let Some((cut, _)) = text.char_indices().nth(300) {
                text.truncate(cut);
                text.push('…');
            }
            format!("{what}: {text} at `{}`", e.instance_path())
        })
        .collect()
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';').map(str::trim);
    parts.next() == Some("application/json")
        && parts.all(|p| p.is_empty() || p.eq_ignore_ascii_case("charset=utf-8"))
}

/// Problems common to the CI APIs: forwarded webhook headers, tokens in the URL.
pub(crate) fn common_problems(uri: &Uri, headers: &HeaderMap) -> Vec<String> {
    let mut problems = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        let forwarded = [
            "x-github-",
            "x-hub-",
            "x-gitlab-",
            "x-gitea-",
            "x-gogs-",
            "x-forgejo-",
            "webhook-",
        ]
        .iter()
        .any(|p| n.starts_with(p));
        if forwarded && n != "x-github-api-version" {
            problems.push(format!("forwarded webhook header `{n}`"));
        }
    }
    let url = uri.to_string();
    for token in [GITHUB_TOKEN, GITEA_TOKEN, BUILDKITE_TOKEN, JENKINS_TOKEN] {
        if url.contains(token) {
            problems.push("a token in the URL".into());
        }
    }
    problems
}

pub(crate) fn check_auth(headers: &HeaderMap, expected: &str, problems: &mut Vec<String>) -> bool {
    let got = header(headers, "authorization");
    if got == expected {
        return true;
    }
    let scheme = got.split(' ').next().unwrap_or("");
    let want = expected.split(' ').next().unwrap_or("");
    problems.push(if got.is_empty() {
        format!("no Authorization header (expected `{want} ***`)")
    } else {
        format!("wrong Authorization (scheme `{scheme}`, expected `{want} ***` with the test token)")
    });
    false
}

pub(crate) fn check_json_request(headers: &HeaderMap, raw: &[u8], problems: &mut Vec<String>) -> Value {
    let ct = header(headers, "content-type");
    if !is_json(ct) {
        problems.push(format!("Content-Type is `{ct}`, not application/json"));
    }
    match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("body is not JSON: {e}"));
            Value::Null
        }
    }
}
