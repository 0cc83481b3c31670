//! The stand-in CI's pipelines after they are created, as the reads that
//! learn their state see them (`poll`, and a CircleCI pipeline's final
//! state from its workflows), and what a test does to them.
//!
//! Reads served, each checked against the vendored API documents (method,
//! path parameter by its schema, the token header, no body, the query) and
//! each answer checked against the response schema, so that hookbridge is
//! tested against the shapes the real APIs send:
//! - CircleCI `GET /api/v2/pipeline/{pipeline-id}/workflow`
//!   (`listWorkflowsByPipelineId`, answer `WorkflowListResponse`), paged by
//!   `page-token` ([`StandIn::set_workflow_page_size`]), with `Circle-Token`;
//! - CircleCI `GET /api/v2/pipeline/{pipeline-id}` (`getPipelineById`, the
//!   `Pipeline` schema), with `Circle-Token`;
//! - GitLab `GET /api/v4/projects/{id}/pipelines/{pipeline_id}`
//!   (`getApiV4ProjectsIdPipelinesPipelineId`, answer
//!   `API_Entities_Ci_PipelineWithMetadata` of the excerpt
//!   `gitlab-openapi_v2-pipelines_statuses_compare_mr_diffs.excerpt.yaml`),
//!   with `PRIVATE-TOKEN` (the `api_token`; the trigger token cannot read).
//!
//! A missing token, or the GitLab trigger token sent to read, is a
//! violation (and a 401); any other wrong token is the API's own 401 (a
//! revoked token, as hookbridge may meet one), not a violation.
//!
//! # For test writers
//!
//! A pipeline is created when a trigger arrives: a GitLab one `running`
//! (id `1000 + n`, as the trigger's answer and [`StandIn::gitlab_pipelines`]
//! name it), a CircleCI v2 one with two workflows, `build` and `test`, both
//! `running`. Then:
//!
//! ```ignore
//! gitlab.finish_pipeline(id, "success");                  // or "failed", "canceled", "skipped"
//! gitlab.set_pipeline_status(id, "pending");              // any status, final or not
//! circleci.set_workflows(pipeline_id, [("build", "success"), ("test", "failed")]);
//! circleci.set_workflows(pipeline_id, [("build", "failed"), ("build", "success")]); // a rerun: the later is newer
//! circleci.finish_pipeline(pipeline_id, "success");       // every workflow
//! circleci.set_workflows(pipeline_id, []);                // still being set up...
//! circleci.set_circle_state(pipeline_id, "errored");      // ...or errored (no workflow will run)
//! ci.fail_pipeline_reads(Some(503));                      // every read answers 503 (401, 429, ...)
//! ci.fail_pipeline_reads(None);                           // until the API recovers
//! ci.script_pipeline_reads([Reply::Status(401)]);         // the next read only (also RetryAfter, Body, Hang)
//! ci.pipeline_reads();                                    // the reads received, in order
//! ```
//!
//! The ids are those hookbridge records as the job's result (`result.id`).
//! The reads are recorded with the list and cancel calls too
//! ([`StandIn::cancel_calls`]: the cancel of a CircleCI pipeline lists its
//! workflows, a GitLab cancel reads the pipeline again), and a status from
//! [`StandIn::script_cancels`] applies to them as before.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::super::cancel::{Pipeline, Pipelines, nullable};
use super::reads::{CirclePipeline, GitlabPipeline, Made, circle_json, iso};
use super::{CIRCLE_TOKEN, GITLAB_PRIVATE_TOKEN, GITLAB_TRIGGER_TOKEN, Reply, StandIn, load_json, validator};

/// Workflows per page, unless a test says otherwise.
pub(crate) const WORKFLOW_PAGE: usize = 20;
/// Who started every workflow (a user id, a UUID).
const STARTED_BY: &str = "5034460f-c7c4-4c43-9457-de07e2029e7b";

/// The statuses of CircleCI's `Workflow.status` enum that are final.
const CIRCLE_FINAL: [&str; 6] = [
    "success",
    "failed",
    "error",
    "canceled",
    "unauthorized",
    "not_run",
];
/// GitLab's final pipeline statuses.
const GITLAB_FINAL: [&str; 4] = ["success", "failed", "canceled", "skipped"];

/// What the reads need besides the pipelines themselves.
#[derive(Default)]
pub(crate) struct Watch {
    /// CircleCI v2 pipeline id → its `state` (`created` unless a test set one).
    states: Mutex<BTreeMap<String, String>>,
    /// Replies for the next reads, before normal answers resume.
    script: Mutex<VecDeque<Reply>>,
    /// While set, every read answers this status.
    failing: Mutex<Option<u16>>,
    /// Workflows per page (0: [`WORKFLOW_PAGE`]).
    page_size: AtomicUsize,
    /// Numbers the workflows a test adds.
    workflows: AtomicU64,
}

/// Which read a path addresses, if any.
pub(crate) fn route(path: &str) -> Option<&'static str> {
    let s: Vec<&str> = path.trim_matches('/').split('/').collect();
    match s.as_slice() {
        ["api", "v2", "pipeline", _, "workflow"] => Some("circleci-workflows"),
        ["api", "v2", "pipeline", _] => Some("circleci-pipeline-by-id"),
        ["api", "v4", "projects", _, "pipelines", id] if *id != "latest" => Some("gitlab-pipeline"),
        _ => None,
    }
}

struct Schemas {
    pipeline_id: jsonschema::Validator,
    workflow_list: jsonschema::Validator,
    workflow_status: Vec<String>,
    pipeline: jsonschema::Validator,
    pipeline_state: Vec<String>,
    gitlab_pipeline_id: jsonschema::Validator,
    gitlab_pipeline: jsonschema::Validator,
    gitlab_status: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| {
        let mut v2 = load_json("circleci-v2.json");
        nullable(&mut v2);
        let gitlab = load_json("gitlab-openapi_v2-pipelines_statuses_compare_mr_diffs.excerpt.yaml");
        let list =
            "/paths/~1pipeline~1{pipeline-id}~1workflow/get/responses/200/content/application~1json/schema";
        let one = "/paths/~1pipeline~1{pipeline-id}/get/responses/200/content/application~1json/schema";
        let get = "/paths/~1api~1v4~1projects~1{id}~1pipelines~1{pipeline_id}/get";
        // Swagger 2.0 puts a path parameter's type on the parameter itself.
        let param = gitlab
            .pointer(&format!("{get}/parameters"))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "pipeline_id")
            .unwrap();
        let param = json!({"type": param["type"], "format": param["format"]});
        // The excerpt's entity leaves `status` a string; the list's `status`
        // parameter names its values.
        let status = gitlab
            .pointer("/paths/~1api~1v4~1projects~1{id}~1pipelines/get/parameters")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "status")
            .unwrap();
        Schemas {
            pipeline_id: validator(
                &v2,
                "/paths/~1pipeline~1{pipeline-id}~1workflow/get/parameters/0/schema",
            ),
            workflow_list: validator(&v2, list),
            workflow_status: strings(
                v2.pointer(&format!("{list}/properties/items/items/properties/status/enum"))
                    .unwrap(),
            ),
            pipeline: validator(&v2, one),
            pipeline_state: strings(v2.pointer(&format!("{one}/properties/state/enum")).unwrap()),
            gitlab_pipeline_id: validator(&json!({"s": param}), "/s"),
            gitlab_pipeline: validator(&gitlab, &format!("{get}/responses/200/schema")),
            gitlab_status: strings(&status["enum"]),
        }
    })
}

fn check(v: &jsonschema::Validator, value: &Value, what: &str, problems: &mut Vec<String>) {
    for e in v.iter_errors(value) {
        problems.push(format!("{what}: {e} at {}", e.instance_path()));
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Each API's own error bodies.
pub(crate) fn error_body(api: &str, code: u16) -> Value {
    match (api.starts_with("gitlab"), code) {
        (true, 401) => json!({"message": "401 Unauthorized"}),
        (true, 403) => json!({"message": "403 Forbidden"}),
        (true, 404) => json!({"message": "404 Not found"}),
        (true, 429) => json!({"message": "Retry later"}),
        (true, c) if c >= 500 => json!({"message": format!("{c} Internal Server Error")}),
        (false, 401) => json!({"message": "You must log in first."}),
        (false, 404) => json!({"message": "Pipeline not found"}),
        (false, 429) => json!({"message": "Rate limit exceeded"}),
        (_, c) => json!({"message": format!("scripted {c}")}),
    }
}

/// What a read answers instead of the state (which it does not change).
pub(crate) enum Failed {
    Answer(Response),
    /// Never answer: the caller's deadline passes.
    Hang,
}

/// The scripted or standing failure for this read, if any.
pub(crate) fn failure(watch: &Watch, api: &str) -> Option<Failed> {
    let with = |code: u16, extra: Vec<(&'static str, String)>| {
        let mut r = json_response(StatusCode::from_u16(code).unwrap(), error_body(api, code));
        for (name, value) in extra {
            r.headers_mut().insert(name, value.parse().unwrap());
        }
        Some(Failed::Answer(r))
    };
    match watch.script.lock().unwrap().pop_front() {
        None => {}
        Some(Reply::Status(code) | Reply::Echo(code) | Reply::EchoEncoded(code)) => {
            return with(code, vec![]);
        }
        Some(Reply::RetryAfter(code, secs)) => return with(code, vec![("retry-after", secs.to_string())]),
        Some(Reply::Headers(code, extra)) => return with(code, extra),
        Some(Reply::Body(code, text)) => {
            return Some(Failed::Answer(
                (StatusCode::from_u16(code).unwrap(), text).into_response(),
            ));
        }
        Some(Reply::Hang) => return Some(Failed::Hang),
        Some(other) => panic!("{other:?} is a trigger's reply, not a read's"),
    }
    let failing = *watch.failing.lock().unwrap();
    failing.and_then(|code| with(code, vec![]))
}

/// Answer a read; the problems found with the call, and with the answer
/// the stand-in built (a bug here must not pass for a hookbridge one).
pub(super) fn answer(
    shared: &super::Shared,
    api: &'static str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, Vec<String>) {
    let (made, pipelines, watch) = (&shared.made, &shared.pipelines, &shared.watch);
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
    let segs: Vec<String> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let unauthorized = || json_response(StatusCode::UNAUTHORIZED, error_body(api, 401));
    if api == "gitlab-pipeline" {
        match header("private-token") {
            None => {
                problems.push("no PRIVATE-TOKEN (reading a GitLab pipeline needs an access token)".into());
                return (unauthorized(), problems);
            }
            Some(GITLAB_TRIGGER_TOKEN) => {
                problems.push("the trigger token sent as PRIVATE-TOKEN (it cannot read pipelines)".into());
                return (unauthorized(), problems);
            }
            Some(t) if t != GITLAB_PRIVATE_TOKEN => return (unauthorized(), problems),
            Some(_) => {}
        }
        if let Some(q) = uri.query() {
            problems.push(format!("unexpected query string `{q}` (the call takes none)"));
        }
        let response = gitlab_pipeline(made, pipelines, &segs[3], &segs[5], &mut problems);
        return (response, problems);
    }
    match header("circle-token") {
        None => {
            problems.push("no Circle-Token".into());
            return (unauthorized(), problems);
        }
        Some(t) if t != CIRCLE_TOKEN => return (unauthorized(), problems),
        Some(_) => {}
    }
    let sc = schemas();
    let id = &segs[3];
    check(
        &sc.pipeline_id,
        &Value::String(id.clone()),
        "pipeline-id",
        &mut problems,
    );
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if api == "circleci-pipeline-by-id" {
        if let Some(q) = uri.query() {
            problems.push(format!(
                "unexpected query string `{q}` (getPipelineById takes none)"
            ));
        }
        return (circle_pipeline(made, watch, id, &mut problems), problems);
    }
    let mut offset = 0;
    for (k, v) in &query {
        if k != "page-token" {
            problems.push(format!(
                "query parameter `{k}` is not one listWorkflowsByPipelineId takes"
            ));
            continue;
        }
        match v.strip_prefix("wp-").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => offset = n,
            None if v.is_empty() => {}
            None => {
                problems.push(format!("page-token `{v}` is not one the stand-in gave"));
                return (
                    json_response(StatusCode::BAD_REQUEST, json!({"message": "Invalid page-token."})),
                    problems,
                );
            }
        }
    }
    let all = pipelines.all.lock().unwrap();
    let Some((Pipeline::Workflows(workflows), _)) = all.get(id.as_str()) else {
        return (
            json_response(StatusCode::NOT_FOUND, error_body(api, 404)),
            problems,
        );
    };
    let made = made.circle.lock().unwrap();
    let pipeline = made.iter().find(|p| &p.id == id);
    let size = match watch.page_size.load(Ordering::SeqCst) {
        0 => WORKFLOW_PAGE,
        n => n,
    };
    let items: Vec<Value> = workflows
        .iter()
        .enumerate()
        .skip(offset)
        .take(size)
        .map(|(i, w)| workflow_json(id, pipeline, i, w))
        .collect();
    let next = (offset + size < workflows.len()).then(|| format!("wp-{}", offset + size));
    let list = json!({"items": items, "next_page_token": next});
    check(&sc.workflow_list, &list, "stand-in answer", &mut problems);
    (json_response(StatusCode::OK, list), problems)
}

/// The `i`th workflow of pipeline `id`: created a second after the one
/// before it (so a rerun listed later is newer), stopped when final.
fn workflow_json(
    id: &str,
    pipeline: Option<&CirclePipeline>,
    i: usize,
    w: &(String, String, String),
) -> Value {
    let created = pipeline.map_or(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_558_400), |p| {
        p.created_at
    }) + Duration::from_secs(i as u64 + 1);
    let stopped = CIRCLE_FINAL
        .contains(&w.2.as_str())
        .then(|| iso(created + Duration::from_secs(60)));
    json!({
        "pipeline_id": id,
        "id": w.0,
        "name": w.1,
        "project_slug": pipeline.map_or("gh/acme/app", |p| p.project_slug.as_str()),
        "status": w.2,
        "started_by": STARTED_BY,
        "pipeline_number": pipeline.map_or(1, |p| p.number),
        "created_at": iso(created),
        "stopped_at": stopped,
    })
}

fn circle_pipeline(made: &Made, watch: &Watch, id: &str, problems: &mut Vec<String>) -> Response {
    let made = made.circle.lock().unwrap();
    let Some(p) = made.iter().find(|p| p.id == id) else {
        return json_response(StatusCode::NOT_FOUND, error_body("circleci", 404));
    };
    let mut answer = circle_json(p);
    let state = watch
        .states
        .lock()
        .unwrap()
        .get(id)
        .cloned()
        .unwrap_or_else(|| "created".into());
    if state == "errored" {
        answer["errors"] = json!([{"type": "config", "message": "Config does not conform to schema: ..."}]);
    }
    answer["state"] = json!(state);
    check(&schemas().pipeline, &answer, "stand-in answer", problems);
    json_response(StatusCode::OK, answer)
}

fn gitlab_pipeline(
    made: &Made,
    pipelines: &Pipelines,
    project: &str,
    id: &str,
    problems: &mut Vec<String>,
) -> Response {
    let sc = schemas();
    let n: Value = id
        .parse::<i64>()
        .map_or(Value::String(id.to_owned()), Value::from);
    check(&sc.gitlab_pipeline_id, &n, "pipeline_id", problems);
    let not_found = || json_response(StatusCode::NOT_FOUND, error_body("gitlab", 404));
    let Ok(id) = id.parse::<u64>() else {
        return not_found();
    };
    let all = made.gitlab.lock().unwrap();
    let Some(p) = all.iter().find(|p| p.id == id && p.project == project) else {
        return not_found();
    };
    let status = match pipelines.all.lock().unwrap().get(&id.to_string()) {
        Some((Pipeline::Gitlab(s), _)) => s.clone(),
        _ => "created".into(),
    };
    let answer = gitlab_json(p, &status);
    check(&sc.gitlab_pipeline, &answer, "stand-in answer", problems);
    json_response(StatusCode::OK, answer)
}

/// A pipeline as GitLab's "Get a single pipeline" writes it.
fn gitlab_json(p: &GitlabPipeline, status: &str) -> Value {
    let started = ![
        "created",
        "waiting_for_resource",
        "preparing",
        "pending",
        "scheduled",
    ]
    .contains(&status);
    let finished = GITLAB_FINAL.contains(&status);
    let (group, text) = match status {
        "success" => ("success", "Passed"),
        "failed" => ("failed", "Failed"),
        "canceled" => ("canceled", "Canceled"),
        "skipped" => ("skipped", "Skipped"),
        "running" => ("running", "Running"),
        other => (other, "Pending"),
    };
    let mut answer = json!({
        "id": p.id,
        "iid": p.iid,
        "project_id": super::reads::GITLAB_PROJECT_ID,
        "sha": p.sha,
        "ref": p.git_ref,
        "status": status,
        "source": p.source,
        "created_at": iso(p.created_at),
        "updated_at": iso(p.created_at + Duration::from_secs(if finished { 60 } else { 1 })),
        "web_url": p.web_url,
        "before_sha": "0000000000000000000000000000000000000000",
        "tag": false,
        "user": {
            "id": 1,
            "username": p.user,
            "name": "Administrator",
            "state": "active",
            "locked": false,
            "avatar_url": "https://gitlab.example/uploads/-/system/user/avatar/1/avatar.png",
            "web_url": format!("https://gitlab.example/{}", p.user),
        },
        "committed_at": iso(p.created_at),
        "queued_duration": 1,
        "detailed_status": {
            "icon": format!("status_{group}"),
            "text": text,
            "label": text.to_lowercase(),
            "group": group,
            "tooltip": text.to_lowercase(),
            "has_details": true,
            "details_path": format!("/{}/-/pipelines/{}", p.project, p.id),
            "favicon": format!("/assets/ci_favicons/favicon_status_{group}.png"),
        },
        "archived": false,
    });
    if started {
        answer["started_at"] = json!(iso(p.created_at + Duration::from_secs(1)));
    }
    if finished {
        answer["finished_at"] = json!(iso(p.created_at + Duration::from_secs(60)));
        answer["duration"] = json!(59);
    }
    answer
}

impl StandIn {
    /// Set the workflows of CircleCI v2 pipeline `pipeline_id`, in the order
    /// listed, as `(name, status)`; a workflow keeps its id while its name
    /// does (the first of that name first). A name listed twice is a rerun,
    /// the later one newer. No workflows: the pipeline is still being set
    /// up ([`StandIn::set_circle_state`] says whether it errored).
    pub(crate) fn set_workflows<'a>(
        &self,
        pipeline_id: &str,
        workflows: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let sc = schemas();
        let mut all = self.shared.pipelines.all.lock().unwrap();
        let Some((Pipeline::Workflows(current), _)) = all.get_mut(pipeline_id) else {
            panic!("no CircleCI v2 pipeline `{pipeline_id}` in the stand-in");
        };
        let mut old: Vec<(String, String, String)> = std::mem::take(current);
        for (name, status) in workflows {
            assert!(
                sc.workflow_status.iter().any(|s| s == status),
                "`{status}` is not a CircleCI workflow status ({:?})",
                sc.workflow_status
            );
            let id = match old.iter().position(|w| w.1 == name) {
                Some(i) => old.remove(i).0,
                None => {
                    let n = self.shared.watch.workflows.fetch_add(1, Ordering::SeqCst) + 1;
                    format!("7a1f0c2d-0000-4000-9000-{n:012}")
                }
            };
            current.push((id, name.to_owned(), status.to_owned()));
        }
    }

    /// The workflows of CircleCI v2 pipeline `pipeline_id`: (id, name, status).
    pub(crate) fn workflows(&self, pipeline_id: &str) -> Vec<(String, String, String)> {
        match self.shared.pipelines.all.lock().unwrap().get(pipeline_id) {
            Some((Pipeline::Workflows(w), _)) => w.clone(),
            _ => panic!("no CircleCI v2 pipeline `{pipeline_id}` in the stand-in"),
        }
    }

    /// A GitLab pipeline's status (any of GitLab's: `pending`, `running`,
    /// `success`, ...), or every workflow's of a CircleCI v2 pipeline (a
    /// CircleCI workflow status).
    pub(crate) fn set_pipeline_status(&self, id: impl ToString, status: &str) {
        let id = id.to_string();
        let sc = schemas();
        let mut all = self.shared.pipelines.all.lock().unwrap();
        match all.get_mut(&id) {
            Some((Pipeline::Gitlab(s), _)) => {
                assert!(
                    sc.gitlab_status.iter().any(|v| v == status),
                    "`{status}` is not a GitLab pipeline status ({:?})",
                    sc.gitlab_status
                );
                *s = status.to_owned();
            }
            Some((Pipeline::Workflows(w), _)) => {
                assert!(
                    sc.workflow_status.iter().any(|v| v == status),
                    "`{status}` is not a CircleCI workflow status ({:?})",
                    sc.workflow_status
                );
                w.iter_mut().for_each(|w| w.2 = status.to_owned());
            }
            Some((Pipeline::Build(s), _)) => *s = status.to_owned(),
            None => panic!("no pipeline `{id}` in the stand-in"),
        }
    }

    /// [`StandIn::set_pipeline_status`] with a final status (GitLab
    /// `success`, `failed`, `canceled`, `skipped`; CircleCI `success`,
    /// `failed`, `error`, `canceled`, `unauthorized`, `not_run`).
    pub(crate) fn finish_pipeline(&self, id: impl ToString, status: &str) {
        assert!(
            GITLAB_FINAL.contains(&status) || CIRCLE_FINAL.contains(&status),
            "`{status}` is not a final status"
        );
        self.set_pipeline_status(id, status);
    }

    /// The `state` `GET /api/v2/pipeline/{id}` answers for CircleCI v2
    /// pipeline `pipeline_id` (`created`, `errored`, `setup-pending`,
    /// `setup`, `pending`); `created` until set.
    pub(crate) fn set_circle_state(&self, pipeline_id: &str, state: &str) {
        let sc = schemas();
        assert!(
            sc.pipeline_state.iter().any(|s| s == state),
            "`{state}` is not a CircleCI pipeline state ({:?})",
            sc.pipeline_state
        );
        self.shared
            .watch
            .states
            .lock()
            .unwrap()
            .insert(pipeline_id.to_owned(), state.to_owned());
    }

    /// Workflows per page of a workflow list (20 until set).
    pub(crate) fn set_workflow_page_size(&self, size: usize) {
        self.shared.watch.page_size.store(size.max(1), Ordering::SeqCst);
    }

    /// Answer the next pipeline reads with these replies (`Status`,
    /// `RetryAfter`, `Headers`, `Body`, `Hang`), each with the API's own
    /// error body, before normal answers resume. The state does not change.
    pub(crate) fn script_pipeline_reads(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.watch.script.lock().unwrap().extend(replies);
    }

    /// While `Some(status)`, every pipeline read answers it (`401`: the
    /// token was revoked; `503`: the API is down); `None` to recover.
    pub(crate) fn fail_pipeline_reads(&self, status: Option<u16>) {
        *self.shared.watch.failing.lock().unwrap() = status;
    }

    /// The pipeline reads received (`circleci-workflows`,
    /// `circleci-pipeline-by-id`, `gitlab-pipeline`), in order.
    pub(crate) fn pipeline_reads(&self) -> Vec<super::Recorded> {
        self.cancel_calls()
            .into_iter()
            .filter(|r| route(&r.path).is_some())
            .collect()
    }
}
