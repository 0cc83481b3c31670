//! The server: routes a post to its commit, runs the checks, records the
//! post or the problems, and answers as the VCS does.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hookbridge::store::status::Vcs;
use serde_json::{Value, json};

use super::super::targets::checks::{check_json_request, common_problems, header};
use super::{Failure, Posted, Shared, TOKENS, checks};

/// What the handler knows about its stand-in.
pub(super) struct State {
    pub vcs: Vcs,
    pub ghes: bool,
    pub shared: Arc<Shared>,
}

/// The repository and commit a status path names.
struct Target {
    repository: String,
    sha: String,
}

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

/// The commit the path posts to, or why it is no status endpoint of `vcs`.
fn route(vcs: Vcs, ghes: bool, path: &str) -> Result<Target, String> {
    let prefix = if ghes { "/api/v3" } else { "" };
    let segs: Vec<&str> = path
        .strip_prefix(prefix)
        .and_then(|p| p.strip_prefix('/'))
        .map(|p| p.split('/').collect())
        .unwrap_or_default();
    let two = |a: &str, b: &str, sha: &str| Target {
        repository: format!("{}/{}", decode(a), decode(b)),
        sha: decode(sha),
    };
    let found = match (vcs, segs.as_slice()) {
        (Vcs::Github, ["repos", owner, repo, "statuses", sha]) => Some(two(owner, repo, sha)),
        (Vcs::Gitlab, ["api", "v4", "projects", id, "statuses", sha]) => Some(Target {
            repository: decode(id),
            sha: decode(sha),
        }),
        (
            Vcs::BitbucketCloud,
            [
                "2.0",
                "repositories",
                ws,
                slug,
                "commit",
                sha,
                "statuses",
                "build",
            ],
        ) => Some(two(ws, slug, sha)),
        (
            Vcs::BitbucketDatacenter,
            [
                "rest",
                "api",
                "latest" | "1.0",
                "projects",
                key,
                "repos",
                slug,
                "commits",
                sha,
                "builds",
            ],
        ) => Some(two(key, slug, sha)),
        (Vcs::Gitea | Vcs::Forgejo, ["api", "v1", "repos", owner, repo, "statuses", sha]) => {
            Some(two(owner, repo, sha))
        }
        _ => None,
    };
    found.ok_or_else(|| format!("no {} status endpoint at {path}", vcs.as_str()))
}

pub(super) async fn handle(
    extract::State(state): extract::State<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let shared = &state.shared;
    shared.received.fetch_add(1, Ordering::SeqCst);
    let path = uri.path().to_owned();
    let mut problems = Vec::new();
    // Reads of changed files (`files/`); every other request is a status post.
    let response = if method == Method::GET {
        super::files::serve(&state, &uri, &headers, &mut problems)
    } else {
        answer(&state, &method, &uri, &headers, &raw, &mut problems)
    };
    shared
        .problems
        .lock()
        .unwrap()
        .extend(problems.into_iter().map(|p| format!("{method} {path}: {p}")));
    response
}

fn answer(
    state: &State,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    raw: &[u8],
    problems: &mut Vec<String>,
) -> Response {
    let vcs = state.vcs;
    let target = match route(vcs, state.ghes, uri.path()) {
        Ok(t) => t,
        Err(problem) => {
            problems.push(problem);
            return error(vcs, 404, "Not Found");
        }
    };
    if method != Method::POST {
        problems.push(format!("{method} instead of POST"));
    }
    problems.extend(common_problems(uri, headers));
    let url = uri.to_string();
    if TOKENS.iter().any(|t| url.contains(t)) {
        problems.push("a token in the URL".into());
    }
    if let Some(q) = uri.query() {
        problems.push(format!("query string `{q}`"));
    }
    let sha = &target.sha;
    if !((7..=64).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit())) {
        problems.push(format!("commit `{sha}` is not 7 to 64 hex digits"));
    }
    let authorised = checks::auth(vcs, headers, problems);
    let body = check_json_request(headers, raw, problems);
    checks::body(vcs, state.ghes, headers, &target.repository, &body, problems);
    if !authorised {
        return error(vcs, 401, "Unauthorized");
    }
    if !problems.is_empty() {
        return error(vcs, 422, &format!("invalid request: {}", problems.join("; ")));
    }
    let failure = state.shared.failures.lock().unwrap().pop_front();
    if let Some(Failure { status, retry_after }) = failure {
        // Echo the credential, as a careless server or proxy may.
        let text = format!("scripted {status} for credential {}", echoed(vcs, headers));
        let mut response = error(vcs, status, &text);
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        return response;
    }
    let posted = record(vcs, target, body);
    // GitLab keeps one status per commit and name while it is not
    // finished, and refuses to move it to the state it is in.
    if vcs == Vcs::Gitlab {
        let posts = state.shared.posts.lock().unwrap();
        let last = posts
            .iter()
            .rev()
            .find(|p| p.sha == posted.sha && p.context == posted.context);
        if let Some(last) =
            last.filter(|l| l.state == posted.state && ["pending", "running"].contains(&l.state.as_str()))
        {
            let via = if last.state == "running" { "run" } else { "enqueue" };
            return error(
                vcs,
                400,
                &format!("Cannot transition status via :{via} from :{}", last.state),
            );
        }
    }
    let answer = success(vcs, &posted);
    state.shared.posts.lock().unwrap().push(posted);
    answer
}

/// The credential as received.
fn echoed(vcs: Vcs, headers: &HeaderMap) -> String {
    match vcs {
        Vcs::Gitlab => header(headers, "private-token").to_owned(),
        _ => header(headers, "authorization").to_owned(),
    }
}

fn text(body: &Value, field: &str) -> Option<String> {
    body.get(field).and_then(Value::as_str).map(str::to_owned)
}

/// The post as the VCS stores it.
fn record(vcs: Vcs, target: Target, body: Value) -> Posted {
    let (context, target_url, key, git_ref) = match vcs {
        Vcs::Github | Vcs::Gitea | Vcs::Forgejo => (
            text(&body, "context").unwrap_or_else(|| "default".into()),
            text(&body, "target_url"),
            None,
            None,
        ),
        Vcs::Gitlab => (
            text(&body, "name")
                .or_else(|| text(&body, "context"))
                .unwrap_or_else(|| "default".into()),
            text(&body, "target_url"),
            None,
            text(&body, "ref"),
        ),
        Vcs::BitbucketCloud | Vcs::BitbucketDatacenter => (
            text(&body, "name").unwrap_or_default(),
            text(&body, "url"),
            text(&body, "key"),
            text(&body, "refname").or_else(|| text(&body, "ref")),
        ),
    };
    Posted {
        repository: target.repository,
        sha: target.sha,
        context,
        state: text(&body, "state").unwrap_or_default(),
        description: text(&body, "description"),
        target_url,
        key,
        git_ref,
        body,
    }
}

/// The VCS's answer to a status it took.
fn success(vcs: Vcs, p: &Posted) -> Response {
    let created = |body: Value| (StatusCode::CREATED, axum::Json(body)).into_response();
    match vcs {
        Vcs::Github | Vcs::Gitea | Vcs::Forgejo => created(json!({
            "id": 1,
            "state": p.state,
            "context": p.context,
            "description": p.description,
            "target_url": p.target_url,
        })),
        Vcs::Gitlab => created(json!({
            "id": 93,
            "sha": p.sha,
            "ref": p.git_ref,
            "status": p.state,
            "name": p.context,
            "target_url": p.target_url,
            "description": p.description,
        })),
        Vcs::BitbucketCloud => created(json!({
            "type": "build",
            "key": p.key,
            "state": p.state,
            "name": p.context,
            "url": p.target_url,
            "description": p.description,
        })),
        // Data Center answers "204 No Content" to a stored build status.
        Vcs::BitbucketDatacenter => StatusCode::NO_CONTENT.into_response(),
    }
}

/// An error answer in the VCS's own shape.
pub(super) fn error(vcs: Vcs, status: u16, message: &str) -> Response {
    let body = match vcs {
        Vcs::BitbucketCloud => json!({"type": "error", "error": {"message": message}}),
        Vcs::BitbucketDatacenter => {
            json!({"errors": [{"context": null, "message": message, "exceptionName": null}]})
        }
        _ => json!({ "message": message }),
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}
