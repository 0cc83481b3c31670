//! Bitbucket's reads of changed files, as each product serves them.
//!
//! Cloud (under `/2.0/repositories/{workspace}/{slug}`):
//! - the repository, with `mainbranch`; `refs/branches/{name}`, with its
//!   `target.hash` (checked against `repository` and `branch` of the
//!   vendored description);
//! - `diffstat/{spec}`: `A..B` is the changes of `A` since its merge base
//!   with `B` (the description: the first commit holds the changes, the
//!   second is what it is compared with, the opposite of `git diff`); a
//!   spec naming the older commit first is a problem. Paged by `page` and
//!   `pagelen` (default and most 500) with `next`, `page`, `pagelen` and
//!   `size` in the body, checked against `paginated_diffstats` (which has no
//!   `nullable`, while Bitbucket sends `old: null` for an added file and
//!   `new: null` for a removed one, so nulls are dropped before checking);
//! - `pullrequests/{id}/diffstat`: a 302 to the diffstat of the request's
//!   commits, `diffstat/{workspace}/{slug}:{head}%0D{base}?from_pullrequest_id={id}&topic=true`,
//!   as Bitbucket answers it (with whole shas, where Bitbucket shows 12
//!   digits: the model's shas share longer prefixes).
//!
//! Data Center (under `/rest/api/latest/projects/{KEY}/repos/{slug}`):
//! `default-branch`; `changes?since&until`; `compare/changes?from&to` (the
//! changes on `from` not on `to`); `pull-requests/{id}/changes`. Paged by
//! `start` (from 0) and `limit` (default 25, at most 1000) with `size`,
//! `limit`, `isLastPage`, `start` and, unless last, `nextPageStart`.
//! Atlassian publishes no machine-readable description, so each page is
//! checked by hand against the documented paged shape and `RestChange`.
//!
//! Unknown repositories, commits and requests are 404s in each product's
//! error shape, echoing the credential received (see `gitlab.rs`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hookbridge::store::status::Vcs;
use jsonschema::Validator;
use serde_json::{Value, json};

use super::super::super::ci::load_json;
use super::super::super::targets::checks::{header, schema_errors, validator_in};
use super::super::server::error;
use super::gitlab::{decode, is_sha, known_params, origin, read_checks, without_nulls};
use super::{FileChange, History, query};

const CLOUD_PAGELEN: usize = 500;
const DC_LIMIT_DEFAULT: usize = 25;
const DC_LIMIT_MAX: usize = 1000;

fn cloud_schema(name: &str) -> &'static Validator {
    static SCHEMAS: OnceLock<BTreeMap<&'static str, Validator>> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| {
        let doc = load_json("bitbucket-cloud-openapi.json");
        ["paginated_diffstats", "repository", "branch"]
            .into_iter()
            .map(|n| {
                let v = validator_in(
                    &doc,
                    &format!("/components/schemas/{n}"),
                    jsonschema::Draft::Draft4,
                );
                (n, v)
            })
            .collect()
    });
    &all[name]
}

fn bad_request(vcs: Vcs, message: &str, problems: &mut Vec<String>) -> Response {
    problems.push(message.to_owned());
    error(vcs, 400, message)
}

/// A 404 in the product's shape, echoing the credential.
fn not_found(vcs: Vcs, headers: &HeaderMap, message: &str) -> Response {
    let echoed = header(headers, "authorization");
    error(vcs, 404, &format!("{message} (credential {echoed})"))
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

// ---------------------------------------------------------------------------
// Cloud

pub(super) fn serve_cloud(
    h: &History,
    uri: &Uri,
    headers: &HeaderMap,
    problems: &mut Vec<String>,
) -> Response {
    const VCS: Vcs = Vcs::BitbucketCloud;
    read_checks(uri, headers, problems);
    let path = uri.path();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let q = query(uri);
    let Some(["2.0", "repositories", ws, slug, rest @ ..]) = Some(segs.as_slice()) else {
        problems.push(format!("no Bitbucket Cloud endpoint of changed files at {path}"));
        return error(VCS, 404, "Resource not found");
    };
    if format!("{}/{}", decode(ws), decode(slug)) != h.repository {
        return not_found(VCS, headers, "Repository not found");
    }
    let origin = origin(headers);
    let repo_url = format!("{origin}/2.0/repositories/{ws}/{slug}");
    match rest {
        [] => {
            known_params(&q, &[], problems);
            let body = json!({
                "type": "repository",
                "full_name": h.repository,
                "name": decode(slug),
                "is_private": true,
                "mainbranch": {"type": "branch", "name": h.default_branch},
                "links": {"html": {"href": format!("https://bitbucket.org/{}", h.repository)}},
            });
            problems.extend(schema_errors(
                cloud_schema("repository"),
                "Bitbucket answer (repository)",
                &body,
            ));
            ok(body)
        }
        ["refs", "branches", name] => {
            known_params(&q, &[], problems);
            let name = decode(name);
            let Some(hash) = h.branches.get(&name) else {
                return not_found(VCS, headers, &format!("Branch \"{name}\" does not exist"));
            };
            let body = json!({
                "type": "branch",
                "name": name,
                "target": {"type": "commit", "hash": hash, "date": "2026-01-05T10:00:00+00:00"},
                "links": {"html": {"href": format!("https://bitbucket.org/{}/branch/{name}", h.repository)}},
            });
            problems.extend(schema_errors(
                cloud_schema("branch"),
                "Bitbucket answer (branch)",
                &body,
            ));
            ok(body)
        }
        ["pullrequests", id, "diffstat"] => {
            known_params(&q, &[], problems);
            let Some(pr) = id.parse::<u64>().ok().and_then(|n| h.requests.get(&n)) else {
                return not_found(VCS, headers, "Pull request not found");
            };
            // Bitbucket shortens both commits to 12 digits; the model's
            // shas share longer prefixes, so they stay whole here.
            let location = format!(
                "{repo_url}/diffstat/{ws}/{slug}:{}%0D{}?from_pullrequest_id={}&topic=true",
                pr.head, pr.base, pr.number
            );
            (StatusCode::FOUND, [("location", location)]).into_response()
        }
        ["diffstat", spec @ ..] if !spec.is_empty() => {
            diffstat(h, &origin, uri, &decode(&spec.join("/")), &q, headers, problems)
        }
        _ => {
            problems.push(format!("no Bitbucket Cloud endpoint of changed files at {path}"));
            error(VCS, 404, "Resource not found")
        }
    }
}

fn diffstat(
    h: &History,
    origin: &str,
    uri: &Uri,
    spec: &str,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    problems: &mut Vec<String>,
) -> Response {
    const VCS: Vcs = Vcs::BitbucketCloud;
    let known = [
        "pagelen",
        "page",
        "topic",
        "merge",
        "renames",
        "ignore_whitespace",
        "path",
        "from_pullrequest_id",
    ];
    known_params(q, &known, problems);
    if q.get("topic").or(q.get("merge")).is_some_and(|t| t == "false") {
        problems.push("diffstat with topic=false: a diff of trees, not from the merge base".into());
    }
    // `A..B`, a pull request's `{workspace}/{slug}:A\rB`, or one commit
    // (against its first parent).
    let (source, dest) = if let Some((a, b)) = spec.split_once("..") {
        (a.to_owned(), Some(b.to_owned()))
    } else if let Some((repo, pair)) = spec.split_once(':') {
        if repo != h.repository {
            problems.push(format!("diffstat spec `{spec}` names another repository"));
        }
        match pair.split_once('\r') {
            Some((a, b)) => (a.to_owned(), Some(b.to_owned())),
            None => (pair.to_owned(), None),
        }
    } else {
        (spec.to_owned(), None)
    };
    let Some(s) = h.position(&source) else {
        return not_found(VCS, headers, &format!("Commit not found: {source}"));
    };
    let d = match &dest {
        Some(dest) => match h.position(dest) {
            Some(d) => d,
            None => return not_found(VCS, headers, &format!("Commit not found: {dest}")),
        },
        None => s.saturating_sub(1),
    };
    if d > s {
        problems.push(format!(
            "diffstat spec `{spec}` names the older commit first: Bitbucket reads the first as the changes, the second as what they are compared with"
        ));
    }
    let commits = if d < s { &h.commits[d + 1..=s] } else { &[] };
    let items: Vec<Value> = History::compare_files(commits).iter().map(stat).collect();
    let number = |name: &str, default: usize| match q.get(name) {
        None => Some(default),
        Some(v) => v.parse::<usize>().ok().filter(|n| *n >= 1),
    };
    let (Some(page), Some(pagelen)) = (number("page", 1), number("pagelen", CLOUD_PAGELEN)) else {
        return bad_request(VCS, "page or pagelen is not a positive number", problems);
    };
    let pagelen = pagelen.min(CLOUD_PAGELEN);
    let total = items.len();
    let start = (page - 1).saturating_mul(pagelen).min(total);
    let end = start.saturating_add(pagelen).min(total);
    let mut body = json!({
        "pagelen": pagelen,
        "values": items[start..end],
        "page": page,
        "size": total,
    });
    if end < total {
        let mut q = q.clone();
        q.insert("page".into(), (page + 1).to_string());
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&q)
            .finish();
        body["next"] = json!(format!("{origin}{}?{query}", uri.path()));
    }
    problems.extend(schema_errors(
        cloud_schema("paginated_diffstats"),
        "Bitbucket answer (paginated_diffstats)",
        &without_nulls(&body),
    ));
    ok(body)
}

/// One file as a Cloud `diffstat`.
fn stat(f: &FileChange) -> Value {
    let file = |path: &str| json!({"path": path, "escaped_path": path, "type": "commit_file"});
    let old = match f.status {
        "added" => Value::Null,
        _ => file(f.previous.as_deref().unwrap_or(&f.path)),
    };
    let new = match f.status {
        "removed" => Value::Null,
        _ => file(&f.path),
    };
    json!({"type": "diffstat", "status": f.status, "lines_added": 1, "lines_removed": 1, "old": old, "new": new})
}

// ---------------------------------------------------------------------------
// Data Center

pub(super) fn serve_datacenter(
    h: &History,
    uri: &Uri,
    headers: &HeaderMap,
    problems: &mut Vec<String>,
) -> Response {
    const VCS: Vcs = Vcs::BitbucketDatacenter;
    read_checks(uri, headers, problems);
    let path = uri.path();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let q = query(uri);
    let Some(
        [
            "rest",
            "api",
            "latest" | "1.0",
            "projects",
            key,
            "repos",
            slug,
            rest @ ..,
        ],
    ) = Some(segs.as_slice())
    else {
        problems.push(format!(
            "no Bitbucket Data Center endpoint of changed files at {path}"
        ));
        return error(VCS, 404, "Not found");
    };
    if format!("{}/{}", decode(key), decode(slug)) != h.repository {
        return not_found(VCS, headers, "Repository does not exist");
    }
    // (since, until) of the changes asked for, as positions on the line.
    let range = |from: &str, to: &str| h.position(from).zip(h.position(to));
    let unknown = || not_found(VCS, headers, "Commit does not exist in the repository");
    let (since, until, extra) = match rest {
        ["default-branch"] => {
            known_params(&q, &[], problems);
            let name = &h.default_branch;
            return ok(json!({"id": format!("refs/heads/{name}"), "displayId": name, "type": "BRANCH"}));
        }
        ["changes"] => {
            known_params(&q, &["since", "until", "start", "limit"], problems);
            let Some(until) = q.get("until") else {
                return bad_request(VCS, "The until parameter was not supplied.", problems);
            };
            let Some(since) = q.get("since") else {
                return bad_request(
                    VCS,
                    "changes without `since`: only the first parent of `until`",
                    problems,
                );
            };
            for c in [since, until] {
                if !is_sha(c) {
                    problems.push(format!("commit `{c}` is not 7 to 64 hex digits"));
                }
            }
            match range(since, until) {
                Some((a, b)) => (a, b, json!({})),
                None => return unknown(),
            }
        }
        ["compare", "changes"] => {
            known_params(&q, &["from", "to", "fromRepo", "start", "limit"], problems);
            let default = format!("refs/heads/{}", h.default_branch);
            let from = q.get("from").cloned().unwrap_or(default.clone());
            let to = q.get("to").cloned().unwrap_or(default);
            match range(&to, &from) {
                Some((a, b)) => (a, b, json!({})),
                None => return unknown(),
            }
        }
        ["pull-requests", id, "changes"] => {
            known_params(
                &q,
                &[
                    "start",
                    "limit",
                    "changeScope",
                    "sinceId",
                    "untilId",
                    "withComments",
                ],
                problems,
            );
            let Some(pr) = id.parse::<u64>().ok().and_then(|n| h.requests.get(&n)) else {
                return not_found(VCS, headers, "Pull request does not exist");
            };
            match range(&pr.base, &pr.head) {
                Some((a, b)) => (
                    a,
                    b,
                    json!({"fromHash": pr.head, "toHash": pr.base, "properties": {"changeScope": "ALL"}}),
                ),
                None => return unknown(),
            }
        }
        _ => {
            problems.push(format!(
                "no Bitbucket Data Center endpoint of changed files at {path}"
            ));
            return error(VCS, 404, "Not found");
        }
    };
    let commits = if since < until {
        &h.commits[since + 1..=until]
    } else {
        &[]
    };
    let items: Vec<Value> = History::compare_files(commits).iter().map(change).collect();
    let number = |name: &str, default: usize, min: usize| match q.get(name) {
        None => Some(default),
        Some(v) => v.parse::<usize>().ok().filter(|n| *n >= min),
    };
    let (Some(start), Some(limit)) = (number("start", 0, 0), number("limit", DC_LIMIT_DEFAULT, 1)) else {
        return bad_request(VCS, "start or limit is not a number", problems);
    };
    let limit = limit.min(DC_LIMIT_MAX);
    let from = start.min(items.len());
    let end = from.saturating_add(limit).min(items.len());
    let last = end >= items.len();
    let mut body = json!({
        "size": end - from,
        "limit": limit,
        "isLastPage": last,
        "values": items[from..end],
        "start": start,
    });
    if !last {
        body["nextPageStart"] = json!(end);
    }
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    datacenter_page(&body, problems);
    ok(body)
}

/// `/`-split parts of a path as Data Center's `RestPath`.
fn rest_path(path: &str) -> Value {
    let components: Vec<&str> = path.split('/').collect();
    let name = components.last().copied().unwrap_or_default();
    let mut v = json!({
        "components": components,
        "parent": components[..components.len() - 1].join("/"),
        "name": name,
        "toString": path,
    });
    if let Some((_, ext)) = name.rsplit_once('.') {
        v["extension"] = json!(ext);
    }
    v
}

/// One file as Data Center's `RestChange`.
fn change(f: &FileChange) -> Value {
    let kind = match f.status {
        "added" => "ADD",
        "removed" => "DELETE",
        "renamed" => "MOVE",
        _ => "MODIFY",
    };
    let mut v = json!({
        "contentId": "e1c2a4f0b3d5e7f9a1c3e5f7b9d1f3a5c7e9b1d3",
        "fromContentId": "0000000000000000000000000000000000000000",
        "path": rest_path(&f.path),
        "executable": false,
        "percentUnchanged": -1,
        "type": kind,
        "nodeType": "FILE",
        "srcExecutable": false,
        "properties": {"gitChangeType": kind},
    });
    if let Some(prev) = &f.previous {
        v["srcPath"] = rest_path(prev);
    }
    v
}

/// The documented paged shape (`size`, `limit`, `isLastPage`, `start`,
/// `values`, `nextPageStart` unless last) and each `RestChange`'s `path`,
/// `type` and, for a move or copy, `srcPath`.
fn datacenter_page(body: &Value, problems: &mut Vec<String>) {
    let mut bad = |what: String| problems.push(format!("Data Center page: {what}"));
    let values = body["values"].as_array().cloned().unwrap_or_default();
    if body["size"].as_u64() != Some(values.len() as u64) {
        bad("size is not the number of values".into());
    }
    for k in ["limit", "start"] {
        if body[k].as_u64().is_none() {
            bad(format!("`{k}` is not a count"));
        }
    }
    match (body["isLastPage"].as_bool(), body.get("nextPageStart")) {
        (Some(true), None) => {}
        (Some(false), Some(n)) if n.as_u64().is_some() => {}
        _ => bad("isLastPage and nextPageStart disagree".into()),
    }
    for v in &values {
        let kind = v["type"].as_str().unwrap_or("");
        if !["ADD", "COPY", "DELETE", "MODIFY", "MOVE", "UNKNOWN"].contains(&kind) {
            bad(format!("change type `{kind}`"));
        }
        if v["path"]["toString"].as_str().is_none_or(str::is_empty) {
            bad("a change without path.toString".into());
        }
        if ["MOVE", "COPY"].contains(&kind) != v.get("srcPath").is_some() {
            bad(format!("a {kind} with srcPath {:?}", v.get("srcPath")));
        }
    }
}
