//! GitHub's (and GHES 3.19's, under `/api/v3`) reads of changed files, as
//! its REST API pages and caps them:
//!
//! | call | operation | paging |
//! |---|---|---|
//! | `GET /repos/{o}/{r}` | `repos/get` | none |
//! | `GET /repos/{o}/{r}/compare/{base}...{head}` | `repos/compare-commits-with-basehead` | commits by `per_page` (≤ 100, default 30) and `page`; without either, the last 250 commits. Files on the first page only, at most 300 for the whole comparison |
//! | `GET /repos/{o}/{r}/commits/{sha}` | `repos/get-commit` | the commit's files, 300 a page (or `per_page`), at most 3000 |
//! | `GET /repos/{o}/{r}/pulls/{n}/files` | `pulls/list-files` | `per_page` (≤ 100, default 30), at most 3000 files |
//!
//! `Link` headers carry `rel="next"`, `"last"`, `"first"` and `"prev"`, and
//! point, as GitHub's do, at `/repositories/{id}/...`, which is served too:
//! a client must follow them rather than build its own.
//!
//! Every request is checked (path shape, query parameters and their
//! ranges, `Accept`, `X-GitHub-Api-Version`, `User-Agent`, no token in the
//! URL), and every answer is validated against the operation's response
//! schema in npm `@octokit/openapi` (api.github.com, or GHES 3.19): a
//! violation either way is a problem. A request without the stand-in's
//! token is answered 401 with the credential echoed in the message, as a
//! careless proxy might: a client must not repeat it.

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hookbridge::store::status::Vcs;
use jsonschema::Draft::Draft4;
use jsonschema::Validator;
use serde_json::{Value, json};
use sha2::Digest;

use super::super::super::targets::checks::{common_problems, header, schema_errors, validator_in};
use super::super::super::targets::{octokit_ghes_spec, octokit_spec};
use super::super::server::error;
use super::super::{GITHUB_STATUS_TOKEN, TOKENS};
use super::{Commit, FileChange, History, query};

/// The repository's id, in `/repositories/{id}` links.
const REPO_ID: u64 = 1_296_269;
/// Files a compare lists, for the whole comparison.
const COMPARE_FILES: usize = 300;
/// Commits a compare lists when not asked for pages.
const UNPAGED_COMMITS: usize = 250;
/// Files of one commit on one page when `per_page` is not given.
const COMMIT_PAGE: usize = 300;
/// The most files of one commit, or of one pull request.
const LIST_FILES: usize = 3000;

/// The response schemas of the four operations, and GitHub's example
/// repository (the base of `repos/get`'s answer).
struct Spec {
    repo: Validator,
    compare: Validator,
    commit: Validator,
    files: Validator,
    repo_example: Value,
}

fn spec(ghes: bool) -> &'static Spec {
    static API: OnceLock<Spec> = OnceLock::new();
    static GHES: OnceLock<Spec> = OnceLock::new();
    let (cell, file): (_, fn() -> std::path::PathBuf) = if ghes {
        (&GHES, octokit_ghes_spec)
    } else {
        (&API, octokit_spec)
    };
    cell.get_or_init(|| {
        let mut doc: Value = serde_json::from_slice(&std::fs::read(file()).unwrap()).unwrap();
        nullable(&mut doc);
        let ok = |path: &str| {
            format!(
                "/paths/{}/get/responses/200/content/application~1json/schema",
                path.replace('~', "~0").replace('/', "~1")
            )
        };
        let v = |path: &str| validator_in(&doc, &ok(path), Draft4);
        Spec {
            repo: v("/repos/{owner}/{repo}"),
            compare: v("/repos/{owner}/{repo}/compare/{basehead}"),
            commit: v("/repos/{owner}/{repo}/commits/{ref}"),
            files: v("/repos/{owner}/{repo}/pulls/{pull_number}/files"),
            repo_example: doc
                .pointer("/components/examples/full-repository-default-response/value")
                .unwrap()
                .clone(),
        }
    })
}

/// OpenAPI 3.0's `nullable: true`, which JSON Schema does not read, said in
/// its terms: the schema, or `null`. GitHub sends `null` where it says so
/// (a commit's unsigned `verification`, a repository's `homepage`).
fn nullable(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(nullable),
        Value::Object(map) => {
            map.values_mut().for_each(nullable);
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                let inner = Value::Object(std::mem::take(map));
                map.insert("anyOf".into(), json!([inner, {"type": "null"}]));
            }
        }
        _ => {}
    }
}

/// Where the answers point: the API root and the web root.
struct Site {
    /// `http://host` or `http://host/api/v3`.
    api: String,
    /// `http://host`.
    web: String,
    repository: String,
}

impl Site {
    fn repo_api(&self) -> String {
        format!("{}/repos/{}", self.api, self.repository)
    }

    fn repo_web(&self) -> String {
        format!("{}/{}", self.web, self.repository)
    }

    /// A `/repositories/{id}/...` link, as GitHub writes its pages.
    fn link(&self, rest: &str) -> String {
        format!("{}/repositories/{REPO_ID}/{rest}", self.api)
    }
}

/// The call a path names.
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

/// The call, or `Err(true)` for a path GitHub does not serve (a problem)
/// and `Err(false)` for another repository (a plain 404).
fn route(h: &History, path: &str) -> Result<Call, bool> {
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let (repo, rest) = match segs.as_slice() {
        ["repos", owner, repo, rest @ ..] => {
            let named = format!("{}/{}", decode(owner), decode(repo));
            (named.eq_ignore_ascii_case(&h.repository), rest)
        }
        ["repositories", id, rest @ ..] if !rest.is_empty() => (*id == REPO_ID.to_string(), rest),
        _ => return Err(true),
    };
    let call = match rest {
        [] if segs[0] == "repos" => Call::Repo,
        ["compare", basehead] => Call::Compare(decode(basehead)),
        ["commits", sha] => Call::Commit(decode(sha)),
        ["pulls", n, "files"] => Call::Files(n.parse().map_err(|_| true)?),
        _ => return Err(true),
    };
    if repo { Ok(call) } else { Err(false) }
}

pub(super) fn serve(
    ghes: bool,
    h: &History,
    uri: &Uri,
    headers: &HeaderMap,
    problems: &mut Vec<String>,
) -> Response {
    let prefix = if ghes { "/api/v3" } else { "" };
    let Some(path) = uri.path().strip_prefix(prefix) else {
        problems.push(format!("not under {prefix}"));
        return error(Vcs::Github, 404, "Not Found");
    };
    check_headers(uri, headers, problems);
    let authorization = header(headers, "authorization");
    if authorization != format!("Bearer {GITHUB_STATUS_TOKEN}") {
        return error(Vcs::Github, 401, &format!("Bad credentials: `{authorization}`"));
    }
    let host = match header(headers, "host") {
        "" => {
            problems.push("no Host header".into());
            "127.0.0.1"
        }
        host => host,
    };
    let site = Site {
        api: format!("http://{host}{prefix}"),
        web: format!("http://{host}"),
        repository: h.repository.clone(),
    };
    let call = match route(h, path) {
        Ok(call) => call,
        Err(unserved) => {
            if unserved {
                problems.push(format!("no GitHub file-read endpoint at {path}"));
            }
            return error(Vcs::Github, 404, "Not Found");
        }
    };
    let spec = spec(ghes);
    let q = query(uri);
    let answer = match &call {
        Call::Repo => {
            allowed(&q, &[], "repos/get", problems);
            Ok((repo(spec, &site, h), None))
        }
        Call::Compare(basehead) => {
            let paging = paging(&q, "repos/compare-commits-with-basehead", problems);
            compare(&site, h, basehead, paging, problems)
        }
        Call::Commit(sha) => {
            let paging = paging(&q, "repos/get-commit", problems);
            commit(&site, h, sha, paging)
        }
        Call::Files(n) => {
            let paging = paging(&q, "pulls/list-files", problems);
            pull_files(&site, h, *n, paging)
        }
    };
    let Ok((body, link)) = answer else {
        return error(Vcs::Github, 404, "Not Found");
    };
    let (validator, operation) = match call {
        Call::Repo => (&spec.repo, "repos/get"),
        Call::Compare(_) => (&spec.compare, "repos/compare-commits-with-basehead"),
        Call::Commit(_) => (&spec.commit, "repos/get-commit"),
        Call::Files(_) => (&spec.files, "pulls/list-files"),
    };
    let label = if ghes { "GHES 3.19 " } else { "" };
    problems.extend(schema_errors(
        validator,
        &format!("the stand-in's answer against {label}schema ({operation})"),
        &body,
    ));
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    if let Some(link) = link {
        response
            .headers_mut()
            .insert("link", HeaderValue::from_str(&link).unwrap());
    }
    response
}

/// GitHub's media type and dated API version, a User-Agent, no token in the URL.
fn check_headers(uri: &Uri, headers: &HeaderMap, problems: &mut Vec<String>) {
    problems.extend(common_problems(uri, headers));
    let url = uri.to_string();
    if TOKENS.iter().any(|t| url.contains(t)) {
        problems.push("a token in the URL".into());
    }
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
    if header(headers, "user-agent").is_empty() {
        problems.push("no User-Agent (GitHub refuses requests without one)".into());
    }
}

/// The query's keys are among `keys`.
fn allowed(
    q: &std::collections::BTreeMap<String, String>,
    keys: &[&str],
    op: &str,
    problems: &mut Vec<String>,
) {
    for k in q.keys() {
        if !keys.contains(&k.as_str()) {
            problems.push(format!("query parameter `{k}` is not one of {op}'s"));
        }
    }
}

/// `per_page` and `page` as asked, each checked against GitHub's ranges.
#[derive(Clone, Copy)]
struct Paging {
    per_page: Option<usize>,
    page: Option<usize>,
}

fn paging(q: &std::collections::BTreeMap<String, String>, op: &str, problems: &mut Vec<String>) -> Paging {
    allowed(q, &["per_page", "page"], op, problems);
    let mut number = |key: &str, max: usize| {
        let v = q.get(key)?;
        match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Some(n),
            _ => {
                problems.push(format!("{key} `{v}` is not an integer from 1 to {max}"));
                None
            }
        }
    };
    Paging {
        per_page: number("per_page", 100),
        page: number("page", usize::MAX),
    }
}

/// The page `page` (from 1) of `len` items, `per` a page: its range and
/// the number of pages.
fn page_of(len: usize, per: usize, page: usize) -> (std::ops::Range<usize>, usize) {
    let pages = len.div_ceil(per).max(1);
    let start = page.saturating_sub(1).saturating_mul(per).min(len);
    (start..(start + per).min(len), pages)
}

/// GitHub's `Link` for page `page` of `pages`, `url(n)` being page n's URL.
fn links(page: usize, pages: usize, url: impl Fn(usize) -> String) -> Option<String> {
    let mut out = Vec::new();
    if page < pages {
        out.push(format!("<{}>; rel=\"next\"", url(page + 1)));
        out.push(format!("<{}>; rel=\"last\"", url(pages)));
    }
    if page > 1 {
        out.push(format!("<{}>; rel=\"first\"", url(1)));
        out.push(format!("<{}>; rel=\"prev\"", url(page - 1)));
    }
    (!out.is_empty()).then(|| out.join(", "))
}

type Answer = Result<(Value, Option<String>), ()>;

fn repo(spec: &Spec, site: &Site, h: &History) -> Value {
    let text = spec
        .repo_example
        .to_string()
        .replace("https://api.github.com", &site.api)
        .replace("https://github.com", &site.web)
        .replace("octocat/Hello-World", &h.repository);
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let name = h.repository.split_once('/').map_or("", |(_, n)| n);
    v["id"] = REPO_ID.into();
    v["name"] = name.into();
    v["full_name"] = h.repository.clone().into();
    v["default_branch"] = h.default_branch.clone().into();
    // GitHub's example leaves out `language`, which its schema requires, and
    // lists `parent` and `source`, which only a fork has.
    v["language"] = "Rust".into();
    if let Value::Object(fields) = &mut v {
        fields.remove("parent");
        fields.remove("source");
    }
    v
}

fn compare(site: &Site, h: &History, basehead: &str, p: Paging, problems: &mut Vec<String>) -> Answer {
    let Some((base, head)) = basehead.split_once("...") else {
        problems.push(format!("compare `{basehead}` is not `base...head` (three dots)"));
        return Err(());
    };
    let commits = h.between(base, head).ok_or(())?;
    let base_at = h.position(base).ok_or(())?;
    let paged = p.per_page.is_some() || p.page.is_some();
    let (shown, link, first) = if paged {
        let (per, page) = (p.per_page.unwrap_or(30), p.page.unwrap_or(1));
        let (range, pages) = page_of(commits.len(), per, page);
        let link = links(page, pages, |n| {
            site.link(&format!("compare/{basehead}?per_page={per}&page={n}"))
        });
        (&commits[range], link, page == 1)
    } else {
        (
            &commits[commits.len().saturating_sub(UNPAGED_COMMITS)..],
            None,
            true,
        )
    };
    let base_commit = commit_json(site, h, &h.commits[base_at]);
    let head_sha = commits
        .last()
        .map_or(base_commit["sha"].clone(), |c| c.sha.clone().into());
    let owner = h.repository.split_once('/').map_or("", |(o, _)| o);
    let mut body = json!({
        "url": format!("{}/compare/{basehead}", site.repo_api()),
        "html_url": format!("{}/compare/{basehead}", site.repo_web()),
        "permalink_url": format!(
            "{}/compare/{owner}:{}...{owner}:{}",
            site.repo_web(),
            base_commit["sha"].as_str().unwrap(),
            head_sha.as_str().unwrap()
        ),
        "diff_url": format!("{}/compare/{basehead}.diff", site.repo_web()),
        "patch_url": format!("{}/compare/{basehead}.patch", site.repo_web()),
        "base_commit": base_commit.clone(),
        "merge_base_commit": base_commit,
        "status": if commits.is_empty() { "identical" } else { "ahead" },
        "ahead_by": commits.len(),
        "behind_by": 0,
        "total_commits": commits.len(),
        "commits": shown.iter().map(|c| commit_json(site, h, c)).collect::<Vec<_>>(),
    });
    if first {
        let head = head_sha.as_str().unwrap();
        body["files"] = History::compare_files(commits)
            .iter()
            .take(COMPARE_FILES)
            .map(|f| entry(site, f, head))
            .collect();
    }
    Ok((body, link))
}

fn commit(site: &Site, h: &History, sha: &str, p: Paging) -> Answer {
    let at = h.position(sha).ok_or(())?;
    let c = &h.commits[at];
    let files = &c.files[..c.files.len().min(LIST_FILES)];
    let per = p.per_page.unwrap_or(COMMIT_PAGE);
    let page = p.page.unwrap_or(1);
    let (range, pages) = page_of(files.len(), per, page);
    let link = links(page, pages, |n| {
        let per_page = p.per_page.map(|v| format!("per_page={v}&")).unwrap_or_default();
        site.link(&format!("commits/{}?{per_page}page={n}", c.sha))
    });
    let mut body = commit_json(site, h, c);
    let (additions, deletions) = c
        .files
        .iter()
        .map(lines)
        .fold((0, 0), |(a, d), (x, y)| (a + x, d + y));
    body["stats"] = json!({"additions": additions, "deletions": deletions, "total": additions + deletions});
    body["files"] = files[range].iter().map(|f| entry(site, f, &c.sha)).collect();
    Ok((body, link))
}

fn pull_files(site: &Site, h: &History, n: u64, p: Paging) -> Answer {
    let r = h.requests.get(&n).ok_or(())?;
    let all = History::compare_files(h.between(&r.base, &r.head).ok_or(())?);
    let files = &all[..all.len().min(LIST_FILES)];
    let (per, page) = (p.per_page.unwrap_or(30), p.page.unwrap_or(1));
    let (range, pages) = page_of(files.len(), per, page);
    let link = links(page, pages, |k| {
        site.link(&format!("pulls/{n}/files?per_page={per}&page={k}"))
    });
    let head = h
        .position(&r.head)
        .map_or(r.head.clone(), |i| h.commits[i].sha.clone());
    let body = files[range].iter().map(|f| entry(site, f, &head)).collect();
    Ok((body, link))
}

/// A deterministic hex digest of `what`, `len` digits.
fn hex_of(what: &str, len: usize) -> String {
    let digest = hex::encode(sha2::Sha256::digest(what.as_bytes()));
    digest[..len].to_owned()
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

fn user(site: &Site) -> Value {
    let u = format!("{}/users/octocat", site.api);
    json!({
        "login": "octocat", "id": 1, "node_id": "MDQ6VXNlcjE=",
        "avatar_url": "https://avatars.githubusercontent.com/u/1?v=4", "gravatar_id": "",
        "url": u, "html_url": format!("{}/octocat", site.web),
        "followers_url": format!("{u}/followers"), "following_url": format!("{u}/following{{/other_user}}"),
        "gists_url": format!("{u}/gists{{/gist_id}}"), "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{u}/subscriptions"), "organizations_url": format!("{u}/orgs"),
        "repos_url": format!("{u}/repos"), "events_url": format!("{u}/events{{/privacy}}"),
        "received_events_url": format!("{u}/received_events"), "type": "User",
        "user_view_type": "public", "site_admin": false,
    })
}

/// A `commit` as GitHub lists it (without `stats` and `files`).
fn commit_json(site: &Site, h: &History, c: &Commit) -> Value {
    let (api, web) = (site.repo_api(), site.repo_web());
    let sha = &c.sha;
    let person = json!({"name": "Mona Octocat", "email": "octocat@github.com", "date": when(h, c)});
    let tree = hex_of(&format!("tree {sha}"), 40);
    let parents: Vec<Value> = c
        .parent
        .iter()
        .map(|p| json!({"sha": p, "url": format!("{api}/commits/{p}"), "html_url": format!("{web}/commit/{p}")}))
        .collect();
    json!({
        "sha": sha,
        "node_id": format!("C_kwDOABPHjdoAKD{}", &sha[..16]),
        "url": format!("{api}/commits/{sha}"),
        "html_url": format!("{web}/commit/{sha}"),
        "comments_url": format!("{api}/commits/{sha}/comments"),
        "commit": {
            "url": format!("{api}/git/commits/{sha}"),
            "author": person, "committer": person,
            "message": c.message,
            "tree": {"sha": tree, "url": format!("{api}/git/trees/{tree}")},
            "comment_count": 0,
            "verification": {"verified": false, "reason": "unsigned", "signature": null, "payload": null, "verified_at": null},
        },
        "author": user(site),
        "committer": user(site),
        "parents": parents,
    })
}

/// Lines added and deleted, made up from the status.
fn lines(f: &FileChange) -> (u64, u64) {
    match f.status {
        "added" => (12, 0),
        "removed" => (0, 12),
        "renamed" => (0, 0),
        _ => (3, 1),
    }
}

/// A `diff-entry` of `f` as of commit `at`.
fn entry(site: &Site, f: &FileChange, at: &str) -> Value {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/');
    let path = percent_encoding::utf8_percent_encode(&f.path, SEGMENT).to_string();
    let (additions, deletions) = lines(f);
    let mut v = json!({
        "sha": hex_of(&format!("blob {} {at}", f.path), 40),
        "filename": f.path,
        "status": f.status,
        "additions": additions,
        "deletions": deletions,
        "changes": additions + deletions,
        "blob_url": format!("{}/blob/{at}/{path}", site.repo_web()),
        "raw_url": format!("{}/raw/{at}/{path}", site.repo_web()),
        "contents_url": format!("{}/contents/{path}?ref={at}", site.repo_api()),
    });
    match (f.status, &f.previous) {
        ("renamed", Some(previous)) => v["previous_filename"] = previous.clone().into(),
        ("added", _) => v["patch"] = "@@ -0,0 +1,12 @@\n+fn main() {}".into(),
        ("removed", _) => v["patch"] = "@@ -1,12 +0,0 @@\n-fn main() {}".into(),
        _ => v["patch"] = "@@ -1,3 +1,3 @@\n-old\n+new".into(),
    }
    v
}
