//! GitLab's reads of changed files, as GitLab serves them:
//!
//! - `GET /api/v4/projects/:id`: the project, with its `default_branch`.
//! - `GET /api/v4/projects/:id/repository/compare?from&to&straight`: one
//!   answer (not paged), `API_Entities_Compare`. Over GitLab's default diff
//!   limit of [`MAX_DIFF_FILES`] files the diff collection overflows: the
//!   answer says `compare_timeout: true` (GitLab exposes the overflow under
//!   that name) and its `diffs` are empty.
//! - `GET /api/v4/projects/:id/repository/commits/:sha/diff`: paged.
//! - `GET /api/v4/projects/:id/merge_requests/:iid`: `changes_count` (a
//!   string, `"1000+"` over the limit) and `diff_refs`.
//! - `GET /api/v4/projects/:id/merge_requests/:iid/diffs`: paged, holding at
//!   most [`MAX_DIFF_FILES`] files, as the merge request's stored diff does.
//!
//! Paged lists take `page` (from 1) and `per_page` (default 20, at most 100)
//! and answer `X-Page`, `X-Per-Page`, `X-Total`, `X-Total-Pages`,
//! `X-Next-Page` and `X-Prev-Page` (empty at the ends) and `Link`. Compare
//! answers are checked against `API_Entities_Compare` and each diff against
//! `API_Entities_Diff` of GitLab's description (the vendored excerpt); the
//! project and the merge request, which it does not describe, by hand. An
//! unknown project, commit or merge request is a 404 whose message echoes
//! the credential received, as a careless server might: a client must not
//! repeat it.
//!
//! The helpers every stand-in of this folder shares (request checks,
//! paging arithmetic) are here too, `pub(super)`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hookbridge::store::status::Vcs;
use jsonschema::Validator;
use serde_json::{Value, json};

use super::super::super::ci::load_json;
use super::super::super::targets::checks::{header, schema_errors, validator_in};
use super::super::TOKENS;
use super::super::server::error;
use super::{Commit, FileChange, History, query};

/// GitLab's default `diff_max_files`.
pub(crate) const MAX_DIFF_FILES: usize = 1000;
const PER_PAGE_DEFAULT: usize = 20;
const PER_PAGE_MAX: usize = 100;
/// Every date the stand-in shows.
const DATE: &str = "2026-01-05T10:00:00.000+00:00";

fn schema(name: &str) -> &'static Validator {
    static COMPARE: OnceLock<Validator> = OnceLock::new();
    static DIFF: OnceLock<Validator> = OnceLock::new();
    let cell = if name == "API_Entities_Compare" {
        &COMPARE
    } else {
        &DIFF
    };
    cell.get_or_init(|| {
        let doc = load_json("gitlab-openapi_v2-pipelines_statuses_compare_mr_diffs.excerpt.yaml");
        validator_in(&doc, &format!("/definitions/{name}"), jsonschema::Draft::Draft4)
    })
}

pub(super) fn serve(h: &History, uri: &Uri, headers: &HeaderMap, problems: &mut Vec<String>) -> Response {
    read_checks(uri, headers, problems);
    let path = uri.path();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let q = query(uri);
    let Some(["api", "v4", "projects", id, rest @ ..]) = Some(segs.as_slice()) else {
        problems.push(format!("no GitLab endpoint of changed files at {path}"));
        return error(Vcs::Gitlab, 404, "404 Not Found");
    };
    if !id.to_ascii_uppercase().contains("%2F") {
        problems.push(format!("project `{id}` is not a URL-encoded path"));
    }
    if decode(id) != h.repository {
        return not_found(headers, "404 Project Not Found");
    }
    let origin = origin(headers);
    match rest {
        [] => {
            known_params(&q, &[], problems);
            json_ok(project(h, &origin), HeaderMap::new())
        }
        ["repository", "compare"] => compare(h, &origin, &q, headers, problems),
        ["repository", "commits", sha, "diff"] => {
            known_params(&q, &["page", "per_page", "unidiff"], problems);
            if !is_sha(sha) {
                problems.push(format!("commit `{sha}` is not 7 to 64 hex digits"));
            }
            match h.position(sha).filter(|_| is_sha(sha)) {
                Some(at) => {
                    let items = h.commits[at].files.iter().map(diff).collect();
                    let items = checked_diffs(items, problems);
                    paged(&origin, uri, &q, items, problems)
                }
                None => not_found(headers, "404 Commit Not Found"),
            }
        }
        ["merge_requests", iid] => {
            known_params(&q, &[], problems);
            match request(h, iid) {
                Some(mr) => json_ok(merge_request(h, &origin, mr, problems), HeaderMap::new()),
                None => not_found(headers, "404 Not found"),
            }
        }
        ["merge_requests", iid, "diffs"] => {
            known_params(&q, &["page", "per_page", "unidiff"], problems);
            match request(h, iid).and_then(|mr| h.between(&mr.base, &mr.head)) {
                Some(commits) => {
                    let items = History::compare_files(commits)
                        .iter()
                        .take(MAX_DIFF_FILES)
                        .map(diff)
                        .collect();
                    let items = checked_diffs(items, problems);
                    paged(&origin, uri, &q, items, problems)
                }
                None => not_found(headers, "404 Not found"),
            }
        }
        _ => {
            problems.push(format!("no GitLab endpoint of changed files at {path}"));
            error(Vcs::Gitlab, 404, "404 Not Found")
        }
    }
}

fn request<'h>(h: &'h History, iid: &str) -> Option<&'h super::Request> {
    iid.parse::<u64>().ok().and_then(|n| h.requests.get(&n))
}

fn project(h: &History, origin: &str) -> Value {
    let name = h.repository.rsplit('/').next().unwrap_or_default();
    json!({
        "id": 4711,
        "name": name,
        "path": name,
        "path_with_namespace": h.repository,
        "default_branch": h.default_branch,
        "web_url": format!("{origin}/{}", h.repository),
    })
}

fn compare(
    h: &History,
    origin: &str,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    problems: &mut Vec<String>,
) -> Response {
    known_params(
        q,
        &["from", "to", "straight", "from_project_id", "unidiff"],
        problems,
    );
    let (Some(from), Some(to)) = (q.get("from"), q.get("to")) else {
        problems.push("compare without `from` and `to`".into());
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "from, to are missing"})),
        )
            .into_response();
    };
    if q.get("straight").is_some_and(|s| s != "false") {
        problems.push("compare with straight=true: a diff of trees, not from the merge base".into());
    }
    let (Some(b), Some(t)) = (h.position(from), h.position(to)) else {
        return not_found(headers, "404 Ref Not Found");
    };
    // On a line the merge base is the older of the two.
    let commits: &[Commit] = if b <= t { &h.commits[b + 1..=t] } else { &[] };
    let files = History::compare_files(commits);
    let overflow = files.len() > MAX_DIFF_FILES;
    let diffs: Vec<Value> = if overflow {
        Vec::new()
    } else {
        files.iter().map(diff).collect()
    };
    let body = json!({
        "commit": commits.last().map(|c| commit(c, origin, &h.repository)),
        "commits": commits.iter().map(|c| commit(c, origin, &h.repository)).collect::<Vec<_>>(),
        "diffs": diffs,
        "compare_timeout": overflow,
        "compare_same_ref": b == t,
        "web_url": format!("{origin}/{}/-/compare/{from}...{to}", h.repository),
    });
    // GitLab's description has no `nullable`; it sends `commit: null` for
    // an empty comparison.
    problems.extend(schema_errors(
        schema("API_Entities_Compare"),
        "GitLab answer (API_Entities_Compare)",
        &without_nulls(&body),
    ));
    json_ok(body, HeaderMap::new())
}

fn merge_request(h: &History, origin: &str, mr: &super::Request, problems: &mut Vec<String>) -> Value {
    let files = h
        .between(&mr.base, &mr.head)
        .map(|c| History::compare_files(c).len())
        .unwrap_or(0);
    let changes_count = if files > MAX_DIFF_FILES {
        format!("{MAX_DIFF_FILES}+")
    } else {
        files.to_string()
    };
    let body = json!({
        "id": 90_000 + mr.number,
        "iid": mr.number,
        "project_id": 4711,
        "title": format!("Merge request {}", mr.number),
        "state": "opened",
        "source_branch": mr.source_branch,
        "target_branch": mr.target_branch,
        "sha": mr.head,
        "diff_refs": {"base_sha": mr.base, "head_sha": mr.head, "start_sha": mr.base},
        "changes_count": changes_count,
        "web_url": format!("{origin}/{}/-/merge_requests/{}", h.repository, mr.number),
    });
    // GitLab's description of a merge request is not in the excerpt; the
    // documented fields read, by hand.
    for sha in ["base_sha", "head_sha", "start_sha"] {
        if !body["diff_refs"][sha]
            .as_str()
            .is_some_and(|s| s.len() == 40 && is_sha(s))
        {
            problems.push(format!("merge request diff_refs.{sha} is not a full sha"));
        }
    }
    body
}

fn commit(c: &Commit, origin: &str, repository: &str) -> Value {
    json!({
        "id": c.sha,
        "short_id": &c.sha[..8],
        "created_at": DATE,
        "parent_ids": c.parent.iter().collect::<Vec<_>>(),
        "title": c.message,
        "message": c.message,
        "author_name": "Dev",
        "author_email": "dev@example.com",
        "authored_date": DATE,
        "committer_name": "Dev",
        "committer_email": "dev@example.com",
        "committed_date": DATE,
        "trailers": {},
        "extended_trailers": {},
        "web_url": format!("{origin}/{repository}/-/commit/{}", c.sha),
    })
}

/// One file as GitLab's `API_Entities_Diff` (checked here, once per file).
fn diff(f: &FileChange) -> Value {
    let added = f.status == "added";
    let removed = f.status == "removed";
    let d = json!({
        "diff": if removed { "@@ -1 +0,0 @@\n-x\n" } else { "@@ -1 +1 @@\n-x\n+y\n" },
        "collapsed": false,
        "too_large": false,
        "new_path": f.path,
        "old_path": f.previous.as_ref().unwrap_or(&f.path),
        "a_mode": if added { "0" } else { "100644" },
        "b_mode": if removed { "0" } else { "100644" },
        "new_file": added,
        "renamed_file": f.status == "renamed",
        "deleted_file": removed,
        "generated_file": false,
    });
    d
}

/// `items` checked against `API_Entities_Diff`, each.
fn checked_diffs(items: Vec<Value>, problems: &mut Vec<String>) -> Vec<Value> {
    for d in &items {
        problems.extend(schema_errors(
            schema("API_Entities_Diff"),
            "GitLab answer (API_Entities_Diff)",
            d,
        ));
    }
    items
}

/// A page of `items` as GitLab pages a list, with its headers.
fn paged(
    origin: &str,
    uri: &Uri,
    q: &BTreeMap<String, String>,
    items: Vec<Value>,
    problems: &mut Vec<String>,
) -> Response {
    let number = |name: &str, default: usize| match q.get(name) {
        None => Some(default),
        Some(v) => v.parse::<usize>().ok().filter(|n| *n >= 1),
    };
    let (Some(page), Some(per_page)) = (number("page", 1), number("per_page", PER_PAGE_DEFAULT)) else {
        problems.push(format!("page or per_page is not a positive number: {q:?}"));
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "page is invalid"})),
        )
            .into_response();
    };
    let per_page = per_page.min(PER_PAGE_MAX);
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let start = (page - 1).saturating_mul(per_page).min(total);
    let end = start.saturating_add(per_page).min(total);
    let link = |n: usize| {
        let mut q = q.clone();
        q.insert("page".into(), n.to_string());
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&q)
            .finish();
        format!("{origin}{}?{query}", uri.path())
    };
    let mut rels = Vec::new();
    if page > 1 {
        rels.push(format!("<{}>; rel=\"prev\"", link(page - 1)));
    }
    if page < pages {
        rels.push(format!("<{}>; rel=\"next\"", link(page + 1)));
    }
    rels.push(format!("<{}>; rel=\"first\"", link(1)));
    rels.push(format!("<{}>; rel=\"last\"", link(pages)));
    let blank_or = |show: bool, n: usize| if show { n.to_string() } else { String::new() };
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-page", page.to_string()),
        ("x-per-page", per_page.to_string()),
        ("x-total", total.to_string()),
        ("x-total-pages", pages.to_string()),
        ("x-next-page", blank_or(page < pages, page + 1)),
        ("x-prev-page", blank_or(page > 1, page.saturating_sub(1))),
        ("link", rels.join(", ")),
    ] {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    }
    json_ok(Value::Array(items[start..end].to_vec()), headers)
}

fn json_ok(body: Value, headers: HeaderMap) -> Response {
    (StatusCode::OK, headers, axum::Json(body)).into_response()
}

/// A 404 in GitLab's shape, echoing the credential (see the module doc).
fn not_found(headers: &HeaderMap, message: &str) -> Response {
    let echoed = header(headers, "private-token");
    error(Vcs::Gitlab, 404, &format!("{message} (token {echoed})"))
}

// ---------------------------------------------------------------------------
// Shared by the stand-ins of this folder

/// What every read must be: JSON asked for, a User-Agent, no token in the URL.
pub(super) fn read_checks(uri: &Uri, headers: &HeaderMap, problems: &mut Vec<String>) {
    let accept = header(headers, "accept");
    if !accept.contains("json") && accept != "*/*" {
        problems.push(format!("Accept is `{accept}`, not JSON"));
    }
    if header(headers, "user-agent").is_empty() {
        problems.push("no User-Agent".into());
    }
    let url = uri.to_string();
    if TOKENS.iter().any(|t| url.contains(t)) {
        problems.push("a token in the URL".into());
    }
}

/// A problem for each query parameter the endpoint does not take.
pub(super) fn known_params(q: &BTreeMap<String, String>, known: &[&str], problems: &mut Vec<String>) {
    for k in q.keys() {
        if !known.contains(&k.as_str()) {
            problems.push(format!("unknown query parameter `{k}`"));
        }
    }
}

/// `http://host:port` as the client called it.
pub(super) fn origin(headers: &HeaderMap) -> String {
    format!("http://{}", header(headers, "host"))
}

pub(super) fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

pub(super) fn is_sha(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `v` without its `null` members: for descriptions that forget `nullable`.
pub(super) fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}
