//! Each VCS's checks: its credential, its request body against its
//! published schema, and what its documentation says beyond the schema.

use std::sync::OnceLock;

use axum::http::HeaderMap;
use base64::Engine as _;
use hookbridge::store::status::Vcs;
use jsonschema::Draft::Draft4;
use jsonschema::Validator;
use serde_json::Value;

use super::super::ci::load_json;
use super::super::targets::checks::{check_auth, header, schema_errors, validator_in};
use super::super::targets::{octokit_ghes_spec, octokit_spec};
use super::{BITBUCKET_USER, token_of};

/// `/paths/<path>/post/requestBody/content/application~1json/schema` (OpenAPI 3).
fn request_body(path: &str) -> String {
    format!(
        "/paths/{}/post/requestBody/content/application~1json/schema",
        path.replace('~', "~0").replace('/', "~1")
    )
}

/// GitHub's `repos/create-commit-status` body, from npm `@octokit/openapi`.
fn github(ghes: bool) -> &'static Validator {
    static API: OnceLock<Validator> = OnceLock::new();
    static GHES: OnceLock<Validator> = OnceLock::new();
    let (cell, spec): (_, fn() -> std::path::PathBuf) = if ghes {
        (&GHES, octokit_ghes_spec)
    } else {
        (&API, octokit_spec)
    };
    cell.get_or_init(|| {
        let doc: Value = serde_json::from_slice(&std::fs::read(spec()).unwrap()).unwrap();
        validator_in(
            &doc,
            &request_body("/repos/{owner}/{repo}/statuses/{sha}"),
            Draft4,
        )
    })
}

/// GitLab's `postApiV4ProjectsIdStatusesSha` (Swagger 2.0 excerpt).
fn gitlab() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| {
        let doc = load_json("gitlab-openapi_v2-pipelines_statuses_compare_mr_diffs.excerpt.yaml");
        validator_in(&doc, "/definitions/postApiV4ProjectsIdStatusesSha", Draft4)
    })
}

/// Bitbucket Cloud's build-status POST body (`commitstatus`).
fn bitbucket_cloud() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| {
        let doc = load_json("bitbucket-cloud-openapi.json");
        let path = "/repositories/{workspace}/{repo_slug}/commit/{commit}/statuses/build";
        validator_in(&doc, &request_body(path), Draft4)
    })
}

/// Gitea's or Forgejo's `CreateStatusOption` (Swagger 2.0).
fn gitea(forgejo: bool) -> &'static Validator {
    static GITEA: OnceLock<Validator> = OnceLock::new();
    static FORGEJO: OnceLock<Validator> = OnceLock::new();
    let (cell, file) = if forgejo {
        (&FORGEJO, "forgejo-swagger-v1.json")
    } else {
        (&GITEA, "gitea-swagger-v1.json")
    };
    cell.get_or_init(|| validator_in(&load_json(file), "/definitions/CreateStatusOption", Draft4))
}

/// Loads (installing GitHub's, if needed) the description `vcs` checks against.
pub(super) fn load(vcs: Vcs, ghes: bool) {
    match vcs {
        Vcs::Github => drop(github(ghes)),
        Vcs::Gitlab => drop(gitlab()),
        Vcs::BitbucketCloud => drop(bitbucket_cloud()),
        Vcs::BitbucketDatacenter => {}
        Vcs::Gitea => drop(gitea(false)),
        Vcs::Forgejo => drop(gitea(true)),
    }
}

/// Whether the request carries the stand-in's credential where the VCS
/// reads it; a problem if not.
pub(super) fn auth(vcs: Vcs, headers: &HeaderMap, problems: &mut Vec<String>) -> bool {
    let token = token_of(vcs);
    match vcs {
        Vcs::Github => check_auth(headers, &format!("Bearer {token}"), problems),
        Vcs::Gitea | Vcs::Forgejo => check_auth(headers, &format!("token {token}"), problems),
        Vcs::Gitlab => {
            if !header(headers, "authorization").is_empty() {
                problems.push("an Authorization header beside PRIVATE-TOKEN".into());
            }
            let ok = header(headers, "private-token") == token;
            if !ok {
                problems.push("no PRIVATE-TOKEN with the test token".into());
            }
            ok
        }
        Vcs::BitbucketCloud | Vcs::BitbucketDatacenter => {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{BITBUCKET_USER}:{token}"));
            if header(headers, "authorization") == format!("Basic {basic}") {
                return true;
            }
            check_auth(headers, &format!("Bearer {token}"), problems)
        }
    }
}

/// The body's problems: the schema, then what the docs add.
pub(super) fn body(
    vcs: Vcs,
    ghes: bool,
    headers: &HeaderMap,
    repository: &str,
    body: &Value,
    problems: &mut Vec<String>,
) {
    let accept = header(headers, "accept");
    match vcs {
        Vcs::Github => {
            let label = if ghes { "GHES 3.19 " } else { "" };
            problems.extend(schema_errors(
                github(ghes),
                &format!("{label}schema (repos/create-commit-status)"),
                body,
            ));
            github_headers(headers, problems);
            owner_repo(repository, problems);
        }
        Vcs::Gitlab => {
            problems.extend(schema_errors(
                gitlab(),
                "schema (postApiV4ProjectsIdStatusesSha)",
                body,
            ));
            // `ref` is a branch or tag name; a full ref names no branch.
            if let Some(r) = body.get("ref").and_then(Value::as_str)
                && r.starts_with("refs/")
            {
                problems.push(format!("ref `{r}` is a full ref, not a branch or tag name"));
            }
            let numeric = !repository.is_empty() && repository.bytes().all(|b| b.is_ascii_digit());
            if !numeric && !repository.contains('/') {
                problems.push(format!("project `{repository}` is neither an id nor a path"));
            }
        }
        Vcs::BitbucketCloud => {
            problems.extend(schema_errors(bitbucket_cloud(), "schema (commitstatus)", body));
            bitbucket_documented(body, 40, problems);
            if let Some(r) = body.get("refname").and_then(Value::as_str)
                && r.starts_with("refs/")
            {
                problems.push(format!("refname `{r}` is a full ref, not a branch or tag name"));
            }
            owner_repo(repository, problems);
        }
        Vcs::BitbucketDatacenter => {
            bitbucket_datacenter(body, problems);
            owner_repo(repository, problems);
        }
        Vcs::Gitea | Vcs::Forgejo => {
            let forgejo = vcs == Vcs::Forgejo;
            let what = if forgejo {
                "Forgejo schema (CreateStatusOption)"
            } else {
                "Gitea schema (CreateStatusOption)"
            };
            problems.extend(schema_errors(gitea(forgejo), what, body));
            // Forgejo's `CommitStatusState` has no enum; its description
            // lists the states.
            let state = body.get("state").and_then(Value::as_str).unwrap_or("");
            if forgejo && !["pending", "success", "error", "failure", "warning"].contains(&state) {
                problems.push(format!("state `{state}` is not one Forgejo documents"));
            }
            owner_repo(repository, problems);
        }
    }
    if !matches!(vcs, Vcs::Github) && !accept.is_empty() && !accept.contains("json") && accept != "*/*" {
        problems.push(format!("Accept is `{accept}`, not JSON"));
    }
    if header(headers, "user-agent").is_empty() {
        problems.push("no User-Agent".into());
    }
}

fn owner_repo(repository: &str, problems: &mut Vec<String>) {
    match repository.split_once('/') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('/') => {}
        _ => problems.push(format!("repository `{repository}` is not two path segments")),
    }
}

/// GitHub's media type and dated API version.
fn github_headers(headers: &HeaderMap, problems: &mut Vec<String>) {
    let accept = header(headers, "accept");
    if !accept
        .split(',')
        .any(|a| a.trim() == "application/vnd.github+json")
    {
        problems.push(format!("Accept is `{accept}`, not application/vnd.github+json"));
    }
    let version = header(headers, "x-github-api-version");
    let dated = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !dated {
        problems.push(format!(
            "X-GitHub-Api-Version is `{version}`, not a dated version"
        ));
    }
}

/// What both Bitbucket products' docs require beyond a schema: a `key` of
/// at most `key_max` characters (Cloud: 40), a `url` (Bitbucket answers 400
/// without one), and a `name` to show.
fn bitbucket_documented(body: &Value, key_max: usize, problems: &mut Vec<String>) {
    let key = body.get("key").and_then(Value::as_str).unwrap_or("");
    if key.is_empty() || key.chars().count() > key_max {
        problems.push(format!("key `{key}` is not 1 to {key_max} characters"));
    }
    match body.get("url").and_then(Value::as_str) {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
        other => problems.push(format!(
            "url {other:?} is not an http(s) URL (Bitbucket requires one)"
        )),
    }
    if body.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
        problems.push("no name".into());
    }
}

/// Bitbucket Data Center publishes no machine-readable description, so this
/// checks by hand the documented `RestBuildStatusSetRequest` of "Store a
/// build status" (`POST /rest/api/latest/projects/{projectKey}/repos/
/// {repositorySlug}/commits/{commitId}/builds`): `key`, `state` and `url`
/// required; `state` one of SUCCESSFUL, FAILED, INPROGRESS, CANCELLED,
/// UNKNOWN; `key` and `name` at most 255 characters, `url` at most 450;
/// `ref` fully qualified (`refs/heads/main`); no other fields than the
/// documented ones.
fn bitbucket_datacenter(body: &Value, problems: &mut Vec<String>) {
    let Some(fields) = body.as_object() else {
        problems.push("Data Center body is not an object".into());
        return;
    };
    let documented = [
        "buildNumber",
        "description",
        "duration",
        "key",
        "lastUpdated",
        "name",
        "parent",
        "ref",
        "state",
        "testResults",
        "url",
    ];
    for k in fields.keys() {
        if !documented.contains(&k.as_str()) {
            problems.push(format!(
                "Data Center: field `{k}` is not in RestBuildStatusSetRequest"
            ));
        }
    }
    for (k, v) in fields {
        if !["duration", "lastUpdated", "testResults"].contains(&k.as_str()) && !v.is_string() {
            problems.push(format!("Data Center: `{k}` is not a string"));
        }
    }
    bitbucket_documented(body, 255, problems);
    let state = body.get("state").and_then(Value::as_str).unwrap_or("");
    if !["SUCCESSFUL", "FAILED", "INPROGRESS", "CANCELLED", "UNKNOWN"].contains(&state) {
        problems.push(format!("Data Center: state `{state}` is not a build state"));
    }
    if body
        .get("url")
        .and_then(Value::as_str)
        .is_some_and(|u| u.chars().count() > 450)
    {
        problems.push("Data Center: url is longer than 450 characters".into());
    }
    if body
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n.chars().count() > 255)
    {
        problems.push("Data Center: name is longer than 255 characters".into());
    }
    if let Some(r) = body.get("ref").and_then(Value::as_str)
        && !r.starts_with("refs/")
    {
        problems.push(format!("Data Center: ref `{r}` is not fully qualified"));
    }
}
