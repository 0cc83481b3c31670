//! The stand-in CI's memory of the pipelines it created, and the read-only
//! calls that find them again: what hookbridge does before it retries an
//! attempt whose outcome is unknown ("reconcile before retry").
//!
//! - GitLab `GET /api/v4/projects/{id}/pipelines`, checked against the
//!   vendored excerpt of GitLab's OpenAPI document (every query parameter by
//!   its declared name, type, enum and format; the answer by
//!   `API_Entities_Ci_PipelineBasic`), filtered, ordered and paged as GitLab
//!   does (`page`/`per_page`, `X-Next-Page`, `X-Total`, ...).
//! - GitLab `GET /api/v4/projects/{id}/pipelines/{pipeline_id}/variables`,
//!   which the excerpt does not hold: <https://docs.gitlab.com/api/pipelines/#get-variables-of-a-pipeline>
//!   ("Get variables of a pipeline": an array of `{variable_type, key, value}`;
//!   the variables a pipeline was started with, which for a trigger are the
//!   `variables` of the trigger request).
//! - CircleCI `GET /api/v2/project/{project-slug}/pipeline/mine`, checked
//!   against `circleci-v2.json` (only `page-token` is a parameter; the answer
//!   by its response schema), newest first, 20 a page.
//!
//! Both APIs need a token that can read: GitLab's `PRIVATE-TOKEN` (a trigger
//! token cannot list pipelines), CircleCI's `Circle-Token`.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::super::cancel::{Pipeline, Pipelines};
use super::{CIRCLE_TOKEN, GITLAB_PRIVATE_TOKEN, GITLAB_TRIGGER_TOKEN, load_json, validator};

/// The login of the user who owns [`CIRCLE_TOKEN`]: its pipelines are "mine".
pub(crate) const CIRCLE_ACTOR: &str = "hookbridge-bot";
/// The GitLab user a trigger token's pipelines run as (the trigger's owner).
pub(crate) const GITLAB_USER: &str = "root";
/// GitLab's `project_id` of every pipeline (the stand-in holds one project per path).
pub(crate) const GITLAB_PROJECT_ID: u64 = 3;
/// CircleCI's page size for pipeline lists.
pub(crate) const CIRCLE_PAGE: usize = 20;

/// A GitLab pipeline as the stand-in holds it.
#[derive(Debug, Clone)]
pub(crate) struct GitlabPipeline {
    pub id: u64,
    pub iid: u64,
    /// The project as the URL named it, decoded (`acme/app`, `42`).
    pub project: String,
    pub git_ref: String,
    pub sha: String,
    /// `trigger` for the trigger API; what a test says for the others.
    pub source: String,
    /// The `variables` it was started with.
    pub variables: BTreeMap<String, String>,
    pub created_at: SystemTime,
    pub web_url: String,
    pub user: String,
    /// `false`: one a test made elsewhere (a push, another tool).
    pub by_hookbridge: bool,
}

impl GitlabPipeline {
    /// `HOOKBRIDGE_JOB`, when the trigger carried it.
    pub(crate) fn job(&self) -> Option<&str> {
        self.variables.get("HOOKBRIDGE_JOB").map(String::as_str)
    }
}

/// A CircleCI v2 pipeline as the stand-in holds it.
#[derive(Debug, Clone)]
pub(crate) struct CirclePipeline {
    pub id: String,
    pub number: u64,
    /// Decoded, `gh/acme/app` or `circleci/<org>/<project>`.
    pub project_slug: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub revision: String,
    pub created_at: SystemTime,
    /// `api` for the trigger APIs; `webhook`, `explicit`, `scheduled_pipeline`.
    pub trigger_type: String,
    pub actor: String,
    /// `circleci-pipeline` or `circleci-pipeline-run`, or `test` for one a test made.
    pub api: String,
    pub parameters: Value,
}

/// Every pipeline the stand-in created, in the order it created them.
#[derive(Default)]
pub(crate) struct Made {
    pub gitlab: Mutex<Vec<GitlabPipeline>>,
    pub circle: Mutex<Vec<CirclePipeline>>,
}

/// RFC 3339 with milliseconds, in UTC (`2026-12-06T16:40:00.000Z`), as both APIs write times.
pub(crate) fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// An RFC 3339 / ISO 8601 date-time with `Z` or a `±hh:mm` offset.
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    let (local, offset) = if let Some(rest) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        (rest, 0i64)
    } else if s.len() > 6
        && matches!(&s[s.len() - 6..s.len() - 5], "+" | "-")
        && &s[s.len() - 3..s.len() - 2] == ":"
    {
        let (local, off) = s.split_at(s.len() - 6);
        let h: i64 = off[1..3].parse().ok()?;
        let m: i64 = off[4..6].parse().ok()?;
        let secs = h * 3600 + m * 60;
        (local, if off.starts_with('-') { -secs } else { secs })
    } else {
        return None;
    };
    if !local.contains('T') && !local.contains('t') {
        return None;
    }
    let t = humantime::parse_rfc3339_weak(local).ok()?;
    // Local time minus its offset is UTC.
    Some(if offset >= 0 {
        t - Duration::from_secs(offset as u64)
    } else {
        t + Duration::from_secs((-offset) as u64)
    })
}

/// Which read a path addresses, if any.
pub(crate) fn route(path: &str) -> Option<&'static str> {
    let s: Vec<&str> = path.trim_matches('/').split('/').collect();
    match s.as_slice() {
        ["api", "v4", "projects", _, "pipelines"] => Some("gitlab-pipelines"),
        ["api", "v4", "projects", _, "pipelines", _, "variables"] => Some("gitlab-pipeline-variables"),
        ["api", "v2", "project", .., "pipeline", "mine"] => Some("circleci-pipeline-mine"),
        _ => None,
    }
}

/// One query parameter GitLab's document declares, and its validator.
struct Param {
    name: String,
    kind: String,
    format: Option<String>,
    check: jsonschema::Validator,
}

struct Schemas {
    /// The list's query parameters, from the excerpt.
    gitlab_params: Vec<Param>,
    gitlab_list: jsonschema::Validator,
    circle_mine: jsonschema::Validator,
    /// CircleCI's only query parameter here.
    circle_params: Vec<String>,
}

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| {
        let gitlab = load_json("gitlab-openapi_v2-pipelines_statuses_compare_mr_diffs.excerpt.yaml");
        let get = gitlab
            .pointer("/paths/~1api~1v4~1projects~1{id}~1pipelines/get")
            .unwrap();
        let gitlab_params = get["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| {
                // Swagger 2.0 puts the schema on the parameter itself.
                let mut schema = serde_json::Map::new();
                for key in ["type", "format", "enum"] {
                    if let Some(v) = p.get(key) {
                        schema.insert(key.into(), v.clone());
                    }
                }
                let schema = Value::Object(schema);
                Param {
                    name: p["name"].as_str().unwrap().to_owned(),
                    kind: p["type"].as_str().unwrap_or("string").to_owned(),
                    format: p["format"].as_str().map(str::to_owned),
                    check: validator(&json!({ "s": schema }), "/s"),
                }
            })
            .collect();
        let gitlab_list = validator(
            &gitlab,
            "/paths/~1api~1v4~1projects~1{id}~1pipelines/get/responses/200/schema",
        );
        let mut v2 = load_json("circleci-v2.json");
        super::super::cancel::nullable(&mut v2);
        let mine = "/paths/~1project~1{project-slug}~1pipeline~1mine/get";
        let circle_params = v2
            .pointer(&format!("{mine}/parameters"))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        Schemas {
            gitlab_params,
            gitlab_list,
            circle_mine: validator(
                &v2,
                &format!("{mine}/responses/200/content/application~1json/schema"),
            ),
            circle_params,
        }
    })
}

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// What each API answers a status with (their own error bodies).
pub(crate) fn error_body(api: &str, code: u16) -> Value {
    let gitlab = api.starts_with("gitlab");
    match (gitlab, code) {
        (true, 401) => json!({"message": "401 Unauthorized"}),
        // A valid token without `read_api`/`api`.
        (true, 403) => json!({
            "error": "insufficient_scope",
            "error_description": "The request requires higher privileges than provided by the access token.",
            "scope": "api read_api",
        }),
        (true, 404) => json!({"message": "404 Not found"}),
        (true, 429) => json!({"message": "Retry later"}),
        (true, c) if c >= 500 => json!({"message": format!("{c} Internal Server Error")}),
        (false, 401) => json!({"message": "You must log in first."}),
        (false, 404) => json!({"message": "Project not found"}),
        (_, c) => json!({"message": format!("scripted {c}")}),
    }
}

/// Answer a read; the problems found with the call (and with the answer the
/// stand-in built: a bug here must not pass for a hookbridge one) are returned.
pub(crate) fn answer(
    made: &Made,
    statuses: &Pipelines,
    api: &'static str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, Vec<String>) {
    let mut problems = Vec::new();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if *method != Method::GET {
        problems.push(format!("{method} instead of GET"));
    }
    if !body.is_empty() {
        problems.push(format!("a body on a GET: {}", String::from_utf8_lossy(body)));
    }
    if !header("accept").unwrap_or("").contains("application/json") {
        problems.push("Accept does not ask for application/json".into());
    }
    for (name, _) in headers {
        let n = name.as_str();
        if n.starts_with("x-github-")
            || n.starts_with("x-gitlab-")
            || n.starts_with("x-hub-")
            || n.starts_with("x-gitea-")
            || n.starts_with("webhook-")
            || n == "authorization"
        {
            problems.push(format!("forwarded or unexpected header `{n}`"));
        }
    }
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    if api.starts_with("gitlab") {
        for (k, _) in &query {
            if k == "private_token" || k == "job_token" || k == "token" {
                problems.push(format!("a token in the query string (`{k}`)"));
            }
        }
        match header("private-token") {
            None => {
                problems.push("no PRIVATE-TOKEN (a GitLab pipeline list needs an access token)".into());
                return (
                    json_response(StatusCode::UNAUTHORIZED, error_body(api, 401)),
                    problems,
                );
            }
            Some(GITLAB_TRIGGER_TOKEN) => {
                problems.push("the trigger token sent as PRIVATE-TOKEN (it cannot read pipelines)".into());
                return (
                    json_response(StatusCode::UNAUTHORIZED, error_body(api, 401)),
                    problems,
                );
            }
            // A wrong or revoked token: GitLab's 401, which hookbridge may meet in production.
            Some(t) if t != GITLAB_PRIVATE_TOKEN => {
                return (
                    json_response(StatusCode::UNAUTHORIZED, error_body(api, 401)),
                    problems,
                );
            }
            Some(_) => {}
        }
        let project = decode(segs[3]);
        if api == "gitlab-pipelines" {
            let response = gitlab_list(made, statuses, &project, &query, &mut problems);
            return (response, problems);
        }
        if let Some(q) = uri.query() {
            problems.push(format!(
                "unexpected query string `{q}` (the variables call takes none)"
            ));
        }
        let id = segs[5];
        let Ok(id) = id.parse::<u64>() else {
            problems.push(format!("pipeline_id `{id}` is not an integer"));
            return (
                json_response(StatusCode::NOT_FOUND, error_body(api, 404)),
                problems,
            );
        };
        let all = made.gitlab.lock().unwrap();
        let Some(p) = all.iter().find(|p| p.id == id && p.project == project) else {
            return (
                json_response(StatusCode::NOT_FOUND, error_body(api, 404)),
                problems,
            );
        };
        let vars: Vec<Value> = p
            .variables
            .iter()
            .map(|(k, v)| json!({"variable_type": "env_var", "key": k, "value": v}))
            .collect();
        return (json_response(StatusCode::OK, Value::Array(vars)), problems);
    }
    // CircleCI.
    match header("circle-token") {
        None => {
            problems.push("no Circle-Token".into());
            return (
                json_response(StatusCode::UNAUTHORIZED, error_body(api, 401)),
                problems,
            );
        }
        Some(t) if t != CIRCLE_TOKEN => {
            return (
                json_response(StatusCode::UNAUTHORIZED, error_body(api, 401)),
                problems,
            );
        }
        Some(_) => {}
    }
    let sc = schemas();
    let mut page_token = None;
    for (k, v) in &query {
        if !sc.circle_params.contains(k) {
            problems.push(format!(
                "query parameter `{k}` is not one {} takes",
                "listMyPipelines"
            ));
        } else if page_token.replace(v.clone()).is_some() {
            problems.push(format!("query parameter `{k}` given twice"));
        }
    }
    let slug = segs[3..segs.len() - 2]
        .iter()
        .map(|s| decode(s))
        .collect::<Vec<_>>()
        .join("/");
    if slug.split('/').count() != 3 {
        problems.push(format!("project slug `{slug}` is not vcs/org/repo"));
    }
    let offset = match page_token.as_deref() {
        None | Some("") => 0,
        Some(t) => match t.strip_prefix("pt-").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => {
                problems.push(format!("page-token `{t}` is not one the stand-in gave"));
                return (
                    json_response(StatusCode::BAD_REQUEST, json!({"message": "Invalid page-token."})),
                    problems,
                );
            }
        },
    };
    let all = made.circle.lock().unwrap();
    let mut mine: Vec<&CirclePipeline> = all
        .iter()
        .filter(|p| p.project_slug == slug && p.actor == CIRCLE_ACTOR)
        .collect();
    mine.sort_by_key(|p| std::cmp::Reverse(p.number));
    let items: Vec<Value> = mine
        .iter()
        .skip(offset)
        .take(CIRCLE_PAGE)
        .map(|p| circle_json(p))
        .collect();
    let next = (offset + CIRCLE_PAGE < mine.len()).then(|| format!("pt-{}", offset + CIRCLE_PAGE));
    let list = json!({"items": items, "next_page_token": next});
    for e in sc.circle_mine.iter_errors(&list) {
        problems.push(format!("stand-in answer: {e} at {}", e.instance_path()));
    }
    (json_response(StatusCode::OK, list), problems)
}

pub(crate) fn circle_json(p: &CirclePipeline) -> Value {
    let repo = p.project_slug.split_once('/').map_or("", |x| x.1);
    let mut vcs = json!({
        "provider_name": "GitHub",
        "origin_repository_url": format!("https://github.com/{repo}"),
        "target_repository_url": format!("https://github.com/{repo}"),
        "revision": p.revision,
        "commit": {"subject": "the commit", "body": ""},
    });
    if let Some(b) = &p.branch {
        vcs["branch"] = json!(b);
    }
    if let Some(t) = &p.tag {
        vcs["tag"] = json!(t);
    }
    json!({
        "id": p.id,
        "errors": [],
        "project_slug": p.project_slug,
        "updated_at": iso(p.created_at),
        "number": p.number,
        "state": "created",
        "created_at": iso(p.created_at),
        "trigger": {
            "type": p.trigger_type,
            "received_at": iso(p.created_at),
            "actor": {"login": p.actor, "avatar_url": null},
        },
        "vcs": vcs,
    })
}

fn gitlab_status(statuses: &Pipelines, id: u64) -> String {
    match statuses.all.lock().unwrap().get(&id.to_string()) {
        Some((Pipeline::Gitlab(s), _)) => s.clone(),
        _ => "created".into(),
    }
}

/// Check the list's query against the declared parameters; `None` when a
/// value GitLab would refuse (400) was given.
fn gitlab_query(query: &[(String, String)], problems: &mut Vec<String>) -> Option<BTreeMap<String, String>> {
    let sc = schemas();
    let mut out = BTreeMap::new();
    let mut refused = false;
    for (k, v) in query {
        let Some(param) = sc.gitlab_params.iter().find(|p| &p.name == k) else {
            problems.push(format!(
                "query parameter `{k}` is not one getApiV4ProjectsIdPipelines declares"
            ));
            continue;
        };
        if out.insert(k.clone(), v.clone()).is_some() {
            problems.push(format!("query parameter `{k}` given twice"));
        }
        let value = match param.kind.as_str() {
            "integer" => v
                .parse::<i64>()
                .map_or_else(|_| Value::String(v.clone()), Value::from),
            "boolean" => match v.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(v.clone()),
            },
            _ => Value::String(v.clone()),
        };
        let errors: Vec<String> = param.check.iter_errors(&value).map(|e| e.to_string()).collect();
        // `format: int32` is not checked by JSON Schema: do it here.
        let int32 = param.kind == "integer" && value.as_i64().is_some_and(|n| i32::try_from(n).is_err());
        if !errors.is_empty() || int32 {
            problems.push(format!("query parameter `{k}={v}`: {}", errors.join("; ")));
            refused = true;
        } else if param.format.as_deref() == Some("date-time") && parse_time(v).is_none() {
            problems.push(format!(
                "query parameter `{k}={v}` is not a date-time the stand-in reads"
            ));
            refused = true;
        }
    }
    (!refused).then_some(out)
}

fn gitlab_list(
    made: &Made,
    statuses: &Pipelines,
    project: &str,
    query: &[(String, String)],
    problems: &mut Vec<String>,
) -> Response {
    let Some(q) = gitlab_query(query, problems) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid query parameter"}),
        );
    };
    let time = |k: &str| q.get(k).and_then(|v| parse_time(v));
    let all = made.gitlab.lock().unwrap();
    let mut rows: Vec<(GitlabPipeline, String)> = all
        .iter()
        .filter(|p| p.project == project)
        .map(|p| (p.clone(), gitlab_status(statuses, p.id)))
        .filter(|(p, status)| {
            let finished = ["success", "failed", "canceled", "skipped"].contains(&status.as_str());
            // (A tag/branch scope keeps each ref's newest: not needed here; all
            // the stand-in's refs are branches.)
            let scope = match q.get("scope").map(String::as_str) {
                Some("running") => status == "running",
                Some("pending") => status == "pending",
                Some("finished") => finished,
                Some("tags") => false,
                _ => true,
            };
            scope
                && q.get("status").is_none_or(|s| s == status)
                && q.get("ref").is_none_or(|r| *r == p.git_ref)
                && q.get("sha").is_none_or(|s| *s == p.sha)
                && q.get("source").is_none_or(|s| *s == p.source)
                && q.get("username").is_none_or(|u| *u == p.user)
                // No pipeline here has a name (`workflow:name`) or YAML errors.
                && !q.contains_key("name")
                && q.get("yaml_errors").is_none_or(|y| y == "false")
                // GitLab's `created_after` and `created_before` are inclusive
                // (`CreatedAtFilterable`: `gteq`, `lteq`); so are `updated_*`.
                && time("created_after").is_none_or(|t| p.created_at >= t)
                && time("created_before").is_none_or(|t| p.created_at <= t)
                && time("updated_after").is_none_or(|t| p.created_at >= t)
                && time("updated_before").is_none_or(|t| p.created_at <= t)
        })
        .collect();
    drop(all);
    match q.get("order_by").map(String::as_str).unwrap_or("id") {
        "ref" => rows.sort_by(|a, b| a.0.git_ref.cmp(&b.0.git_ref).then(a.0.id.cmp(&b.0.id))),
        "status" => rows.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.id.cmp(&b.0.id))),
        "updated_at" => rows.sort_by(|a, b| a.0.created_at.cmp(&b.0.created_at).then(a.0.id.cmp(&b.0.id))),
        _ => rows.sort_by_key(|r| r.0.id),
    }
    if q.get("sort").is_none_or(|s| s == "desc") {
        rows.reverse();
    }
    let page = q
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    // Kaminari's `max_per_page` is 100; more is served as 100.
    let per_page = q
        .get("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let total = rows.len();
    let pages = total.div_ceil(per_page).max(1);
    let items: Vec<Value> = rows
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|(p, status)| {
            json!({
                "id": p.id,
                "iid": p.iid,
                "project_id": GITLAB_PROJECT_ID,
                "sha": p.sha,
                "ref": p.git_ref,
                "status": status,
                "source": p.source,
                "created_at": iso(p.created_at),
                "updated_at": iso(p.created_at),
                "web_url": p.web_url,
            })
        })
        .collect();
    let list = Value::Array(items);
    for e in schemas().gitlab_list.iter_errors(&list) {
        problems.push(format!("stand-in answer: {e} at {}", e.instance_path()));
    }
    let mut response = json_response(StatusCode::OK, list);
    let h = response.headers_mut();
    let next = if page < pages {
        (page + 1).to_string()
    } else {
        String::new()
    };
    let prev = if page > 1 {
        (page - 1).to_string()
    } else {
        String::new()
    };
    for (name, value) in [
        ("x-page", page.to_string()),
        ("x-per-page", per_page.to_string()),
        ("x-next-page", next),
        ("x-prev-page", prev),
        ("x-total", total.to_string()),
        ("x-total-pages", pages.to_string()),
    ] {
        h.insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}
