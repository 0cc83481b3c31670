//! Gitea's (1.26) and Forgejo's (15) reads of changed files, as their REST
//! API answers them (`routers/api/v1/repo/compare.go`, `pull.go`,
//! `services/convert/git_commit.go`):
//!
//! | call | operation | shape |
//! |---|---|---|
//! | `GET /api/v1/repos/{o}/{r}` | `repoGet` | `Repository` |
//! | `GET /api/v1/repos/{o}/{r}/compare/{base}...{head}` | `repoCompareDiff` | `Compare`: every commit at once, each with its `files` (`CommitAffectedFiles`: `added`, `removed`, `modified`; a rename is its old path removed and its new one added, as `git log --no-renames` lists it); Forgejo adds a top-level `files`, the commits' lists one after another |
//! | `GET /api/v1/repos/{o}/{r}/git/commits/{sha}` | `repoGetSingleCommit` | `Commit` with `files` (unless `files=false`) |
//! | `GET /api/v1/repos/{o}/{r}/pulls/{index}/files` | `repoGetPullRequestFiles` | `ChangedFile`s (`added`, `deleted`, `changed`, `renamed` with `previous_filename`), paged by `limit` (default 30, at most 50) and `page`, with `Link` (written with the server's root URL), `X-Total-Count`, `X-Page`, `X-PerPage`, `X-PageCount` and `X-HasMore` |
//!
//! A commit whose message contains [`FILES_UNLISTED`] is listed by the
//! compare with no files (as Forgejo 15 was seen to answer), while its own
//! `git/commits/{sha}` lists them: the reader's fallback.
//!
//! Every request is checked (path, query parameters and their values,
//! `Accept`, `User-Agent`, no token in the URL) and every answer validated
//! against the fork's own swagger (`tests/fixtures/openapi/`), with each
//! object closed to the fields it documents, so an answer cannot carry
//! what the fork does not send. A request without the stand-in's token is
//! answered 401 with the credential echoed, as a careless proxy might.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hookbridge::store::status::Vcs;
use jsonschema::Draft::Draft4;
use jsonschema::Validator;
use serde_json::{Value, json};

use super::super::super::ci::load_json;
use super::super::super::targets::checks::{common_problems, header, schema_errors, validator_in};
use super::super::server::error;
use super::super::{TOKENS, token_of};
use super::{Commit, FileChange, History, query};

/// In a commit's message: the compare lists the commit without its files.
pub(crate) const FILES_UNLISTED: &str = "[files unlisted]";
/// `[api] MAX_RESPONSE_ITEMS` and `DEFAULT_PAGING_NUM`, as both forks ship them.
const MAX_LIMIT: usize = 50;
const DEFAULT_LIMIT: usize = 30;
/// Go's zero time, which both forks print for a parent's `created`.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

struct Spec {
    repo: Validator,
    compare: Validator,
    commit: Validator,
    files: Validator,
}

fn spec(forgejo: bool) -> &'static Spec {
    static GITEA: OnceLock<Spec> = OnceLock::new();
    static FORGEJO: OnceLock<Spec> = OnceLock::new();
    let (cell, file) = if forgejo {
        (&FORGEJO, "forgejo-swagger-v1.json")
    } else {
        (&GITEA, "gitea-swagger-v1.json")
    };
    cell.get_or_init(|| {
        let mut doc = load_json(file);
        // Closed objects: a field the fork does not document is a problem.
        if let Some(Value::Object(defs)) = doc.get_mut("definitions") {
            for def in defs.values_mut() {
                if def.get("properties").is_some() && def.get("additionalProperties").is_none() {
                    def["additionalProperties"] = false.into();
                }
            }
        }
        // Swagger 2.0: the 200 answer is a `#/responses/X` whose `schema` it is.
        let ok = |path: &str| {
            let at = format!(
                "/paths/{}/get/responses/200/$ref",
                path.replace('~', "~0").replace('/', "~1")
            );
            let reference = doc.pointer(&at).and_then(Value::as_str).unwrap();
            format!("{}/schema", reference.trim_start_matches('#'))
        };
        let v = |path: &str| validator_in(&doc, &ok(path), Draft4);
        Spec {
            repo: v("/repos/{owner}/{repo}"),
            compare: v("/repos/{owner}/{repo}/compare/{basehead}"),
            commit: v("/repos/{owner}/{repo}/git/commits/{sha}"),
            files: v("/repos/{owner}/{repo}/pulls/{index}/files"),
        }
    })
}

enum Call {
    Repo,
    Compare(String),
    Commit(String),
    Files(u64),
}

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

/// The call, or `Err(true)` for a path neither fork serves (a problem) and
/// `Err(false)` for another repository (a plain 404).
fn route(h: &History, path: &str) -> Result<Call, bool> {
    let segs: Vec<&str> = path.split('/').collect();
    let ["", "api", "v1", "repos", owner, repo, rest @ ..] = segs.as_slice() else {
        return Err(true);
    };
    let call = match rest {
        [] => Call::Repo,
        ["compare", basehead] => Call::Compare(decode(basehead)),
        ["git", "commits", sha] => Call::Commit(decode(sha)),
        ["pulls", n, "files"] => Call::Files(n.parse().map_err(|_| true)?),
        _ => return Err(true),
    };
    let named = format!("{}/{}", decode(owner), decode(repo));
    if named.eq_ignore_ascii_case(&h.repository) {
        Ok(call)
    } else {
        Err(false)
    }
}

struct Site {
    /// `http://host/api/v1/repos/{o}/{r}`.
    api: String,
    /// `http://host/{o}/{r}`.
    web: String,
    /// `http://host`.
    root: String,
}

pub(super) fn serve(
    vcs: Vcs,
    h: &History,
    uri: &Uri,
    headers: &HeaderMap,
    problems: &mut Vec<String>,
) -> Response {
    let forgejo = vcs == Vcs::Forgejo;
    check_headers(uri, headers, problems);
    let authorization = header(headers, "authorization");
    if authorization != format!("token {}", token_of(vcs)) {
        return error(vcs, 401, &format!("invalid credentials: `{authorization}`"));
    }
    let call = match route(h, uri.path()) {
        Ok(call) => call,
        Err(unserved) => {
            if unserved {
                problems.push(format!(
                    "no {} file-read endpoint at {}",
                    vcs.as_str(),
                    uri.path()
                ));
            }
            return error(vcs, 404, "not found");
        }
    };
    let host = match header(headers, "host") {
        "" => {
            problems.push("no Host header".into());
            "127.0.0.1"
        }
        host => host,
    };
    let root = format!("http://{host}");
    let site = Site {
        api: format!("{root}/api/v1/repos/{}", h.repository),
        web: format!("{root}/{}", h.repository),
        root,
    };
    let q = query(uri);
    let spec = spec(forgejo);
    let (answer, validator, operation) = match &call {
        Call::Repo => {
            allowed(&q, &[], "repoGet", problems);
            (
                Some((repo(&site, h, forgejo), HeaderMap::new())),
                &spec.repo,
                "repoGet",
            )
        }
        Call::Compare(basehead) => {
            allowed(&q, &[], "repoCompareDiff", problems);
            let answer = compare(&site, h, basehead, forgejo, problems);
            (
                answer.map(|a| (a, HeaderMap::new())),
                &spec.compare,
                "repoCompareDiff",
            )
        }
        Call::Commit(sha) => {
            let files = commit_query(&q, problems);
            let answer = h
                .position(sha)
                .map(|at| commit_json(&site, h, &h.commits[at], files.then_some(false)));
            (
                answer.map(|a| (a, HeaderMap::new())),
                &spec.commit,
                "repoGetSingleCommit",
            )
        }
        Call::Files(n) => {
            let answer = pull_files(&site, uri, h, *n, &q, problems);
            (answer, &spec.files, "repoGetPullRequestFiles")
        }
    };
    let Some((body, extra)) = answer else {
        return error(vcs, 404, "not found");
    };
    let what = if forgejo { "Forgejo 15" } else { "Gitea 1.26" };
    problems.extend(schema_errors(
        validator,
        &format!("the stand-in's answer against {what}'s swagger ({operation})"),
        &body,
    ));
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response.headers_mut().extend(extra);
    response
}

fn check_headers(uri: &Uri, headers: &HeaderMap, problems: &mut Vec<String>) {
    problems.extend(common_problems(uri, headers));
    let url = uri.to_string();
    if TOKENS.iter().any(|t| url.contains(t)) {
        problems.push("a token in the URL".into());
    }
    let accept = header(headers, "accept");
    if !accept.is_empty() && !accept.contains("json") && accept != "*/*" {
        problems.push(format!("Accept is `{accept}`, not JSON"));
    }
    if header(headers, "user-agent").is_empty() {
        problems.push("no User-Agent".into());
    }
}

fn allowed(q: &BTreeMap<String, String>, keys: &[&str], op: &str, problems: &mut Vec<String>) {
    for k in q.keys() {
        if !keys.contains(&k.as_str()) {
            problems.push(format!("query parameter `{k}` is not one of {op}'s"));
        }
    }
}

/// `stat`, `verification` and `files` are booleans; whether files are listed.
fn commit_query(q: &BTreeMap<String, String>, problems: &mut Vec<String>) -> bool {
    allowed(
        q,
        &["stat", "verification", "files"],
        "repoGetSingleCommit",
        problems,
    );
    for (k, v) in q {
        if !["true", "false"].contains(&v.as_str()) {
            problems.push(format!("{k} `{v}` is not a boolean"));
        }
    }
    q.get("files").is_none_or(|v| v != "false")
}

fn user(site: &Site) -> Value {
    json!({
        "id": 1, "login": "dev", "login_name": "", "source_id": 0, "full_name": "Dev Eloper",
        "email": "dev@example.com", "avatar_url": format!("{}/avatars/1", site.root),
        "html_url": format!("{}/dev", site.root), "language": "", "is_admin": false,
        "last_login": ZERO_TIME, "created": "2026-01-02T03:04:05Z", "restricted": false,
        "active": true, "prohibit_login": false, "location": "", "website": "", "description": "",
        "visibility": "public", "followers_count": 0, "following_count": 0, "starred_repos_count": 0,
    })
}

fn repo(site: &Site, h: &History, forgejo: bool) -> Value {
    let name = h.repository.split_once('/').map_or("", |(_, n)| n);
    let mut v = json!({
        "id": 7, "owner": user(site), "name": name, "full_name": h.repository,
        "description": "", "empty": false, "private": false, "fork": false, "template": false,
        "mirror": false, "size": 1024, "language": "Rust",
        "languages_url": format!("{}/languages", site.api), "html_url": site.web,
        "url": site.api, "link": "", "ssh_url": format!("git@127.0.0.1:{}.git", h.repository),
        "clone_url": format!("{}.git", site.web), "original_url": "", "website": "",
        "stars_count": 0, "forks_count": 0, "watchers_count": 1, "open_issues_count": 0,
        "open_pr_counter": h.requests.len(), "release_counter": 0,
        "default_branch": h.default_branch, "archived": false,
        "created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-05-01T00:00:00Z",
        "archived_at": "1970-01-01T00:00:00Z",
        "permissions": {"admin": false, "push": false, "pull": true},
    });
    // Two objects: one would pass `json!`'s recursion limit.
    let more = json!({
        "has_issues": true,
        "internal_tracker": {"enable_time_tracker": true, "allow_only_contributors_to_track_time": true, "enable_issue_dependencies": true},
        "has_wiki": true, "has_pull_requests": true, "has_projects": true, "has_releases": true,
        "has_packages": true, "has_actions": true, "ignore_whitespace_conflicts": false,
        "allow_merge_commits": true, "allow_rebase": true, "allow_rebase_explicit": true,
        "allow_squash_merge": true, "allow_fast_forward_only_merge": true, "allow_rebase_update": true,
        "default_delete_branch_after_merge": false, "default_merge_style": "merge",
        "default_allow_maintainer_edit": false, "avatar_url": "", "internal": false,
        "mirror_interval": "", "object_format_name": "sha1",
        "mirror_updated": ZERO_TIME, "topics": [],
    });
    if let (Value::Object(v), Value::Object(more)) = (&mut v, more) {
        v.extend(more);
    }
    if forgejo {
        v["has_wiki_contents"] = false.into();
        v["wiki_branch"] = "main".into();
        v["globally_editable_wiki"] = false.into();
        v["default_update_style"] = "merge".into();
    } else {
        v["has_code"] = true.into();
        v["licenses"] = json!([]);
        v["projects_mode"] = "all".into();
    }
    v
}

fn when(h: &History, c: &Commit) -> String {
    let i = h.commits.iter().position(|x| x.sha == c.sha).unwrap_or(0);
    format!(
        "2026-05-{:02}T{:02}:{:02}:{:02}Z",
        1 + i / 86_400 % 28,
        i / 3600 % 24,
        i / 60 % 60,
        i % 60
    )
}

/// A commit's files as `git log --name-status --no-renames` gives them.
fn affected(c: &Commit) -> Vec<Value> {
    c.files
        .iter()
        .flat_map(|f| match (&f.previous, f.status) {
            (Some(previous), _) => vec![
                json!({"filename": previous, "status": "removed"}),
                json!({"filename": f.path, "status": "added"}),
            ],
            (None, status) => vec![json!({"filename": f.path, "status": status})],
        })
        .collect()
}

/// A `Commit`; `unlisted` is `Some(true)` when its files are left out of
/// the list (it is then `[]`), `Some(false)` to list them, `None` for no
/// `files` at all (`files=false`).
fn commit_json(site: &Site, h: &History, c: &Commit, unlisted: Option<bool>) -> Value {
    let (sha, date) = (&c.sha, when(h, c));
    let person = json!({"name": "Dev Eloper", "email": "dev@example.com", "date": date});
    let (additions, deletions) = (12 * c.files.len(), 2 * c.files.len());
    let mut v = json!({
        "url": format!("{}/git/commits/{sha}", site.api),
        "sha": sha,
        "created": date,
        "html_url": format!("{}/commit/{sha}", site.web),
        "commit": {
            "url": format!("{}/git/commits/{sha}", site.api),
            "author": person, "committer": person,
            "message": format!("{}\n", c.message),
            "tree": {"url": format!("{}/git/trees/{sha}", site.api), "sha": sha, "created": date},
            "verification": {"verified": false, "reason": "gpg.error.not_signed_commit", "signature": "", "payload": ""},
        },
        "author": user(site),
        "committer": user(site),
        "parents": c.parent.iter().map(|p| json!({
            "url": format!("{}/git/commits/{p}", site.api), "sha": p, "created": ZERO_TIME,
        })).collect::<Vec<_>>(),
        "stats": {"total": additions + deletions, "additions": additions, "deletions": deletions},
    });
    match unlisted {
        Some(true) => v["files"] = json!([]),
        Some(false) => v["files"] = affected(c).into(),
        None => {}
    }
    v
}

fn compare(
    site: &Site,
    h: &History,
    basehead: &str,
    forgejo: bool,
    problems: &mut Vec<String>,
) -> Option<Value> {
    let Some((base, head)) = basehead.split_once("...") else {
        problems.push(format!("compare `{basehead}` is not `base...head` (three dots)"));
        return None;
    };
    let commits = h.between(base, head)?;
    let listed: Vec<Value> = commits
        .iter()
        .map(|c| commit_json(site, h, c, Some(c.message.contains(FILES_UNLISTED))))
        .collect();
    let mut v = json!({"total_commits": commits.len(), "commits": listed});
    if forgejo {
        let files: Vec<Value> = listed
            .iter()
            .flat_map(|c| c["files"].as_array().cloned().unwrap_or_default())
            .collect();
        v["files"] = files.into();
    }
    Some(v)
}

/// A `ChangedFile` of a pull request whose head is `head`.
fn changed(site: &Site, f: &FileChange, head: &str) -> Value {
    let status = match f.status {
        "removed" => "deleted",
        "modified" => "changed",
        other => other,
    };
    let (additions, deletions) = match status {
        "added" => (12, 0),
        "deleted" => (0, 12),
        "renamed" => (0, 0),
        _ => (3, 1),
    };
    let path = percent_encoding::utf8_percent_encode(&f.path, percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut v = json!({
        "filename": f.path, "status": status,
        "additions": additions, "deletions": deletions, "changes": additions + deletions,
        "html_url": format!("{}/src/commit/{head}/{path}", site.web),
        "contents_url": format!("{}/contents/{path}?ref={head}", site.api),
        "raw_url": format!("{}/raw/commit/{head}/{path}", site.web),
    });
    if let Some(previous) = &f.previous {
        v["previous_filename"] = previous.clone().into();
    }
    v
}

fn pull_files(
    site: &Site,
    uri: &Uri,
    h: &History,
    n: u64,
    q: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Option<(Value, HeaderMap)> {
    allowed(
        q,
        &["skip-to", "whitespace", "page", "limit"],
        "repoGetPullRequestFiles",
        problems,
    );
    let mut number = |key: &str, max: usize, default: usize| match q.get(key) {
        None => default,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                problems.push(format!("{key} `{v}` is not an integer from 1 to {max}"));
                default
            }
        },
    };
    let limit = number("limit", MAX_LIMIT, DEFAULT_LIMIT);
    let page = number("page", usize::MAX, 1);
    if let Some(w) = q.get("whitespace")
        && !["ignore-all", "ignore-change", "ignore-eol", "show-all"].contains(&w.as_str())
    {
        problems.push(format!("whitespace `{w}` is not one the swagger lists"));
    }
    let r = h.requests.get(&n)?;
    let files = History::compare_files(h.between(&r.base, &r.head)?);
    let head = h.commits[h.position(&r.head)?].sha.clone();
    let pages = files.len().div_ceil(limit);
    let start = page.saturating_sub(1).saturating_mul(limit).min(files.len());
    let body: Vec<Value> = files[start..(start + limit).min(files.len())]
        .iter()
        .map(|f| changed(site, f, &head))
        .collect();
    // As `genAPILinks` writes them: the root URL, the path, the query with
    // the page set, its keys sorted.
    let link = |p: usize| {
        let mut query = q.clone();
        query.insert("page".into(), p.to_string());
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query.iter())
            .finish();
        format!("<{}{}?{query}>", site.root, uri.path())
    };
    let mut links = Vec::new();
    if page < pages {
        links.push(format!("{}; rel=\"next\"", link(page + 1)));
        links.push(format!("{}; rel=\"last\"", link(pages)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", link(1)));
        links.push(format!("{}; rel=\"prev\"", link(page - 1)));
    }
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    };
    if !links.is_empty() {
        set("link", links.join(","));
    }
    set("x-total-count", files.len().to_string());
    set("x-page", page.to_string());
    set("x-perpage", limit.to_string());
    set("x-pagecount", pages.to_string());
    set("x-hasmore", (page < pages).to_string());
    set(
        "access-control-expose-headers",
        "Link, X-Total-Count, X-Page, X-PerPage, X-PageCount, X-HasMore".into(),
    );
    Some((body.into(), headers))
}
