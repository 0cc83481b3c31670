//! Stand-in CircleCI and GitLab servers on 127.0.0.1.
//!
//! Every request is checked against the official API descriptions vendored in
//! `tests/fixtures/openapi/` (request body schemas, path shapes, required
//! headers) and against the rules in the targets research (JSON content type,
//! token in a header or the body and never in the URL, no forwarded webhook
//! headers). Violations are collected; tests assert there are none. Replies
//! can be scripted to simulate outages.
//!
//! Like a real CI, the stand-in creates a pipeline when a valid trigger
//! arrives, before it answers (after [`StandIn::set_delay`], or never with
//! [`Reply::CreateThenHang`]): a caller that times out or dies meanwhile has
//! triggered it all the same. It keeps what each pipeline was created with
//! ([`reads`]) and serves the reads that find them again (GitLab's pipeline
//! list and pipeline variables, CircleCI's `pipeline/mine`), and those that
//! read a pipeline's state, which a test moves on ([`watch`]: how to finish
//! a pipeline, set a CircleCI pipeline's workflows, make the reads fail).
#![allow(dead_code, clippy::unwrap_used)]

#[path = "ci/reads.rs"]
pub(crate) mod reads;
#[path = "ci/watch.rs"]
pub(crate) mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The token the stand-ins expect (CircleCI `Circle-Token`, GitLab body `token`).
pub(crate) const CIRCLE_TOKEN: &str = "circle-token-for-tests";
pub(crate) const GITLAB_TRIGGER_TOKEN: &str = "glptt-trigger-token-for-tests";
/// The `PRIVATE-TOKEN` the GitLab trigger-token API expects.
pub(crate) const GITLAB_PRIVATE_TOKEN: &str = "glpat-private-token-for-tests";

/// A scripted reply, used before the normal (successful) behaviour resumes.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    Status(u16),
    /// A status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// A status with these headers, verbatim (rate-limit answers a CI may send).
    Headers(u16, Vec<(&'static str, String)>),
    /// Never answer (the client times out or goes away).
    Hang,
    /// A status whose JSON body echoes the request: its headers, its body,
    /// and "invalid token <the token received>" (as some CI APIs and
    /// proxies do).
    Echo(u16),
    /// As `Echo`, with the token encoded: in `Location` as a query
    /// parameter and a `Basic` credential (base64 of `token:`), and in a
    /// JSON body whose message writes it in `\u` escapes.
    EchoEncoded(u16),
    /// A status with this body, verbatim (an HTML page, say).
    Body(u16, &'static str),
    /// Create the pipeline (as a valid trigger does), then never answer:
    /// the caller times out, or dies, with its outcome unknown.
    CreateThenHang,
    /// Create the pipeline, then close the connection without an answer
    /// (a proxy or the CI's process cut off after the work was done).
    CreateThenDrop,
    /// Create the pipeline, then answer this status anyway (a gateway's
    /// `502`/`504` in front of a CI that did the work).
    CreateThenStatus(u16),
}

/// The token a request carried: CircleCI's header, or GitLab's body field.
fn token_received(record: &Recorded) -> String {
    record
        .headers
        .get("circle-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| record.body["token"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One received request, as the stand-in saw it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// `circleci-job`, `circleci-pipeline`, `circleci-pipeline-run`, `gitlab-trigger`.
    pub api: &'static str,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The status answered (0 when it hung).
    pub status: u16,
    /// When it arrived, in the order of every call to the stand-in.
    pub seq: u64,
    /// The query string, as sent (reads only; a trigger has none).
    pub query: Option<String>,
}

impl Recorded {
    pub(crate) fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A GitLab trigger token held by the stand-in: (id, description, token, expires_at).
type TriggerToken = (u64, String, String, Option<String>);

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    violations: Mutex<Vec<String>>,
    script: Mutex<VecDeque<Reply>>,
    hang: std::sync::atomic::AtomicBool,
    counter: AtomicU64,
    triggers: Mutex<Vec<TriggerToken>>,
    /// Milliseconds to wait before answering (a slow CI).
    delay_ms: AtomicU64,
    /// Pipelines created, for the calls that list and cancel them.
    pipelines: super::cancel::Pipelines,
    /// Those calls, in order.
    cancel_calls: Mutex<Vec<Recorded>>,
    /// Numbers every call, triggers and cancels alike.
    seq: AtomicU64,
    /// Statuses for the next cancel-side calls, before normal behaviour resumes.
    cancel_script: Mutex<VecDeque<u16>>,
    /// What each pipeline was created with, for the reads that find them.
    made: reads::Made,
    /// The reads that look for pipelines (reconcile), in order.
    read_calls: Mutex<Vec<Recorded>>,
    /// Replies for the next reads, before normal behaviour resumes.
    read_script: Mutex<VecDeque<Reply>>,
    /// What the reads of a pipeline's state need ([`watch`]).
    watch: watch::Watch,
}

/// A running stand-in; serves both the CircleCI and the GitLab API.
#[derive(Clone)]
pub(crate) struct StandIn {
    pub url: String,
    shared: Arc<Shared>,
}

impl StandIn {
    pub(crate) async fn start() -> StandIn {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StandIn { url, shared }
    }

    /// Queue replies for the next requests (any API).
    pub(crate) fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    /// While set, every request hangs.
    pub(crate) fn set_hang(&self, hang: bool) {
        self.shared.hang.store(hang, Ordering::SeqCst);
    }

    /// Wait this long before answering each request (a slow CI API).
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The calls that listed or cancelled pipelines, in order.
    pub(crate) fn cancel_calls(&self) -> Vec<Recorded> {
        self.shared.cancel_calls.lock().unwrap().clone()
    }

    /// Answer the next cancel-side calls with these statuses.
    pub(crate) fn script_cancels(&self, statuses: impl IntoIterator<Item = u16>) {
        self.shared.cancel_script.lock().unwrap().extend(statuses);
    }

    /// Every pipeline still running finishes with `status`.
    pub(crate) fn finish_pipelines(&self, status: &str) {
        self.shared.pipelines.finish_all(status);
    }

    /// A running CircleCI v2 pipeline hookbridge did not create (started in
    /// CircleCI's UI, say): cancelling any of it is a violation.
    pub(crate) fn foreign_pipeline(&self) -> String {
        let id = "5034460f-c7c4-4c43-9457-de07e2999999".to_owned();
        self.shared
            .pipelines
            .created(id.clone(), super::cancel::workflows_of(999_999), false);
        id
    }

    /// The reads that looked for pipelines (GitLab's pipeline list and
    /// pipeline variables, CircleCI's `pipeline/mine`), in order; `api` is
    /// `gitlab-pipelines`, `gitlab-pipeline-variables` or
    /// `circleci-pipeline-mine`.
    pub(crate) fn reconcile_calls(&self) -> Vec<Recorded> {
        self.shared.read_calls.lock().unwrap().clone()
    }

    /// Answer the next reads with these replies (`Status`, `RetryAfter`,
    /// `Headers`, `Body`, `Hang`), before normal behaviour resumes. A
    /// scripted `Status` carries the API's own error body (GitLab's 401
    /// `{"message":"401 Unauthorized"}`, 403 `insufficient_scope`, ...).
    pub(crate) fn script_reads(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.read_script.lock().unwrap().extend(replies);
    }

    /// Every GitLab pipeline, in the order they were created.
    pub(crate) fn gitlab_pipelines(&self) -> Vec<reads::GitlabPipeline> {
        self.shared.made.gitlab.lock().unwrap().clone()
    }

    /// Every CircleCI v2 pipeline, in the order they were created.
    pub(crate) fn circle_pipelines(&self) -> Vec<reads::CirclePipeline> {
        self.shared.made.circle.lock().unwrap().clone()
    }

    /// GitLab pipeline ids by the value of their variable `key` (pipelines
    /// without it are left out).
    pub(crate) fn gitlab_pipelines_by_variable(&self, key: &str) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for p in self.gitlab_pipelines() {
            if let Some(v) = p.variables.get(key) {
                out.entry(v.clone()).or_default().push(p.id);
            }
        }
        out
    }

    /// GitLab pipeline ids by the `HOOKBRIDGE_JOB` they carry: more than
    /// one for a job is a duplicate.
    pub(crate) fn gitlab_pipelines_per_job(&self) -> BTreeMap<String, Vec<u64>> {
        self.gitlab_pipelines_by_variable("HOOKBRIDGE_JOB")
    }

    /// CircleCI v2 pipeline ids by branch (tags as `tag:<name>`).
    pub(crate) fn circle_pipelines_per_branch(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in self.circle_pipelines() {
            let key = match (&p.branch, &p.tag) {
                (Some(b), _) => b.clone(),
                (None, Some(t)) => format!("tag:{t}"),
                (None, None) => String::new(),
            };
            out.entry(key).or_default().push(p.id.clone());
        }
        out
    }

    /// A GitLab pipeline that hookbridge did not trigger (a push, another
    /// tool's trigger): its id. Cancelling it is a violation.
    pub(crate) fn add_gitlab_pipeline(
        &self,
        project: &str,
        git_ref: &str,
        source: &str,
        variables: &[(&str, &str)],
    ) -> u64 {
        let n = self.shared.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let id = 1000 + n;
        self.shared.pipelines.created(
            id.to_string(),
            super::cancel::Pipeline::Gitlab("running".into()),
            false,
        );
        self.shared
            .made
            .gitlab
            .lock()
            .unwrap()
            .push(reads::GitlabPipeline {
                id,
                iid: n,
                project: project.to_owned(),
                git_ref: git_ref.to_owned(),
                sha: format!("{n:040x}"),
                source: source.to_owned(),
                variables: variables
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                created_at: SystemTime::now(),
                web_url: format!("https://gitlab.example/{project}/-/pipelines/{id}"),
                user: reads::GITLAB_USER.to_owned(),
                by_hookbridge: false,
            });
        id
    }

    /// A CircleCI v2 pipeline that hookbridge did not trigger, on `branch`
    /// of `project_slug`, triggered by `trigger_type` (`api`, `webhook`,
    /// ...), by the token's user when `mine`: its id.
    pub(crate) fn add_circle_pipeline(
        &self,
        project_slug: &str,
        branch: &str,
        trigger_type: &str,
        mine: bool,
    ) -> String {
        let n = self.shared.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let id = format!("5034460f-c7c4-4c43-9457-de07e2{n:06}");
        self.shared
            .pipelines
            .created(id.clone(), super::cancel::workflows_of(n), false);
        self.shared
            .made
            .circle
            .lock()
            .unwrap()
            .push(reads::CirclePipeline {
                id: id.clone(),
                number: n,
                project_slug: project_slug.to_owned(),
                branch: Some(branch.to_owned()),
                tag: None,
                revision: format!("{n:040x}"),
                created_at: SystemTime::now(),
                trigger_type: trigger_type.to_owned(),
                actor: if mine {
                    reads::CIRCLE_ACTOR.to_owned()
                } else {
                    "someone-else".to_owned()
                },
                api: "test".to_owned(),
                parameters: Value::Null,
            });
        id
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub(crate) fn accepted(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(Recorded::accepted).collect()
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }

    /// Panics with every schema or protocol violation seen so far.
    pub(crate) fn assert_clean(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "stand-in CI saw invalid requests:\n{}",
            v.join("\n")
        );
    }
}

/// Pipelines beyond the first, over every key of a `..._per_...` map.
pub(crate) fn duplicates<K, V>(per_key: &BTreeMap<K, Vec<V>>) -> usize {
    per_key.values().map(|v| v.len().saturating_sub(1)).sum()
}

pub(crate) fn load_json(rel: &str) -> Value {
    let path = super::fixtures().join("openapi").join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    if rel.ends_with(".yaml") {
        serde_yaml::from_str(&text).unwrap()
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

struct Validators {
    trigger_create: jsonschema::Validator,
    trigger_update: jsonschema::Validator,
    pipeline: jsonschema::Validator,
    pipeline_run: jsonschema::Validator,
    job: jsonschema::Validator,
    gitlab_trigger: jsonschema::Validator,
}

/// A validator for the schema at `pointer` inside an API document, with the
/// document's shared definitions available to `$ref`.
pub(crate) fn validator(doc: &Value, pointer: &str) -> jsonschema::Validator {
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
        .with_draft(jsonschema::Draft::Draft7)
        .should_validate_formats(true)
        .build(&root)
        .unwrap()
}

fn validators() -> &'static Validators {
    static V: OnceLock<Validators> = OnceLock::new();
    V.get_or_init(|| {
        let v2 = load_json("circleci-v2.json");
        let v1 = load_json("circleci-v1.1.json");
        let gitlab = load_json("gitlab-openapi_v2-ci_triggers.excerpt.yaml");
        Validators {
            trigger_create: validator(&gitlab, "/definitions/postApiV4ProjectsIdTriggers"),
            trigger_update: validator(&gitlab, "/definitions/putApiV4ProjectsIdTriggersTriggerId"),
            pipeline: validator(
                &v2,
                "/paths/~1project~1{project-slug}~1pipeline/post/requestBody/content/application~1json/schema",
            ),
            pipeline_run: validator(&v2, "/components/schemas/pipelineRequest"),
            job: validator(&v1, "/components/schemas/BuildParameters"),
            gitlab_trigger: validator(&gitlab, "/definitions/postApiV4ProjectsId(refRef)triggerPipeline"),
        }
    })
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').collect()
}

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

/// Which API a path addresses, or why it addresses none.
fn route(path: &str) -> Result<&'static str, String> {
    let s = segments(path);
    match s.as_slice() {
        ["api", "v2", "project", slug @ .., "pipeline", "run"] => {
            if slug.len() != 3 {
                return Err(format!(
                    "pipeline/run takes the slug as three segments, got {slug:?}"
                ));
            }
            Ok("circleci-pipeline-run")
        }
        ["api", "v2", "project", slug @ .., "pipeline"] => {
            let joined = slug.iter().map(|s| decode(s)).collect::<Vec<_>>().join("/");
            if joined.split('/').count() != 3 && !joined.starts_with("circleci/") {
                return Err(format!("project slug `{joined}` is not vcs/org/repo"));
            }
            Ok("circleci-pipeline")
        }
        ["api", "v1.1", "project", vcs, _user, _project, "tree", _branch] => {
            if !["github", "bitbucket"].contains(vcs) {
                return Err(format!("v1.1 vcs-type `{vcs}` is not github or bitbucket"));
            }
            Ok("circleci-job")
        }
        ["api", "v4", "projects", _id, "trigger", "pipeline"] => Ok("gitlab-trigger"),
        _ => Err(format!("no such endpoint: {path}")),
    }
}

fn check_request(api: &str, uri: &Uri, headers: &HeaderMap, body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("content-type") != "application/json" {
        problems.push(format!(
            "Content-Type is `{}`, not application/json",
            header("content-type")
        ));
    }
    if !header("accept").contains("application/json") {
        problems.push("Accept does not ask for application/json".into());
    }
    if uri.query().is_some() {
        problems.push(format!("query string in the URL: {uri}"));
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
    let v = validators();
    let (validator, circle) = match api {
        "circleci-pipeline" => (&v.pipeline, true),
        "circleci-pipeline-run" => (&v.pipeline_run, true),
        "circleci-job" => (&v.job, true),
        _ => (&v.gitlab_trigger, false),
    };
    for e in validator.iter_errors(body) {
        problems.push(format!("schema: {e} at {}", e.instance_path()));
    }
    if circle {
        if header("circle-token") != CIRCLE_TOKEN {
            problems.push("missing or wrong Circle-Token".into());
        }
    } else {
        if body["token"] != GITLAB_TRIGGER_TOKEN {
            problems.push("missing or wrong trigger token in the body".into());
        }
        if body["ref"].as_str().is_none_or(str::is_empty) {
            problems.push("`ref` missing".into());
        }
        if let Some(vars) = body.get("variables") {
            match vars.as_object() {
                Some(map) => {
                    for (k, val) in map {
                        if !val.is_string() {
                            problems.push(format!("variable `{k}` is not a string: {val}"));
                        }
                    }
                }
                None => problems.push("variables is not an object".into()),
            }
        }
    }
    if api == "circleci-pipeline" && body.get("branch").is_some() && body.get("tag").is_some() {
        problems.push("branch and tag are mutually exclusive".into());
    }
    if api == "circleci-job"
        && body
            .pointer("/build_parameters/CIRCLE_JOB")
            .and_then(Value::as_str)
            .is_none()
    {
        problems.push("build_parameters.CIRCLE_JOB missing".into());
    }
    problems
}

/// Create the pipeline a valid trigger asks for (numbered `n`), and the
/// answer that names it.
fn created(shared: &Shared, api: &'static str, n: u64, path: &str, body: &Value) -> Response {
    use super::cancel::{Pipeline, workflows_of};
    let id = format!("5034460f-c7c4-4c43-9457-de07e2{n:06}");
    let (key, pipeline) = match api {
        "circleci-job" => (n.to_string(), Pipeline::Build("running".into())),
        "gitlab-trigger" => ((1000 + n).to_string(), Pipeline::Gitlab("running".into())),
        _ => (id.clone(), workflows_of(n)),
    };
    shared.pipelines.created(key, pipeline, true);
    let now = SystemTime::now();
    let segs = segments(path);
    let web_url = format!(
        "https://gitlab.example/{}/-/pipelines/{}",
        segs.get(3).map(|p| decode(p)).unwrap_or_default(),
        1000 + n
    );
    match api {
        "gitlab-trigger" => {
            let variables = body["variables"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                        .collect()
                })
                .unwrap_or_default();
            shared.made.gitlab.lock().unwrap().push(reads::GitlabPipeline {
                id: 1000 + n,
                iid: n,
                project: decode(segs[3]),
                git_ref: body["ref"].as_str().unwrap_or_default().to_owned(),
                sha: format!("{n:040x}"),
                source: "trigger".into(),
                variables,
                created_at: now,
                web_url: web_url.clone(),
                user: reads::GITLAB_USER.into(),
                by_hookbridge: true,
            });
        }
        "circleci-pipeline" | "circleci-pipeline-run" => {
            // v2: `branch` or `tag`; pipeline/run: the code checked out.
            let (branch, tag) = if api == "circleci-pipeline" {
                (body["branch"].as_str(), body["tag"].as_str())
            } else {
                (
                    body["checkout"]["branch"]
                        .as_str()
                        .or(body["config"]["branch"].as_str()),
                    body["checkout"]["tag"]
                        .as_str()
                        .or(body["config"]["tag"].as_str()),
                )
            };
            let end = segs.len() - if api == "circleci-pipeline" { 1 } else { 2 };
            let slug = &segs[3..end];
            shared.made.circle.lock().unwrap().push(reads::CirclePipeline {
                id: id.clone(),
                number: n,
                project_slug: slug.iter().map(|s| decode(s)).collect::<Vec<_>>().join("/"),
                // CircleCI builds the branch's head when no tag is named.
                branch: branch
                    .map(str::to_owned)
                    .or_else(|| tag.is_none().then(|| "main".to_owned())),
                tag: tag.map(str::to_owned),
                revision: format!("{n:040x}"),
                created_at: now,
                trigger_type: "api".into(),
                actor: reads::CIRCLE_ACTOR.into(),
                api: api.into(),
                parameters: body["parameters"].clone(),
            });
        }
        _ => {}
    }
    match api {
        "circleci-job" => (
            StatusCode::OK,
            axum::Json(json!({
                "build_num": n,
                "build_url": format!("https://circleci.example/gh/acme/app/{n}"),
                "status": "not_running",
                "lifecycle": "not_running",
            })),
        )
            .into_response(),
        "gitlab-trigger" => (
            StatusCode::CREATED,
            axum::Json(json!({
                "id": 1000 + n,
                "iid": n,
                "project_id": 3,
                "sha": format!("{n:040x}"),
                "ref": body["ref"],
                "status": "created",
                "source": "trigger",
                "created_at": reads::iso(now),
                "updated_at": reads::iso(now),
                "web_url": web_url,
            })),
        )
            .into_response(),
        _ => (
            StatusCode::CREATED,
            axum::Json(json!({
                "id": id,
                "state": "created",
                "number": n,
                "created_at": reads::iso(now),
            })),
        )
            .into_response(),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if path.contains("/triggers") {
        return trigger_tokens(&shared, &method, &uri, &headers, &body);
    }
    if let Some(api) = reads::route(&path) {
        return read(&shared, api, method, uri, headers, body).await;
    }
    if let Some(api) = watch::route(&path) {
        return pipeline_read(&shared, api, method, uri, headers, body).await;
    }
    if let Some(api) = super::cancel::route(&path) {
        let scripted = shared.cancel_script.lock().unwrap().pop_front();
        // A scripted failure is checked like any call but changes nothing.
        let scratch = super::cancel::Pipelines {
            all: Mutex::new(shared.pipelines.all.lock().unwrap().clone()),
        };
        let pipelines = if scripted.is_some() {
            &scratch
        } else {
            &shared.pipelines
        };
        let (mut response, problems) = super::cancel::answer(pipelines, api, &method, &uri, &headers, &body);
        if let Some(code) = scripted {
            let status = StatusCode::from_u16(code).unwrap();
            response = (status, axum::Json(json!({"message": format!("scripted {code}")}))).into_response();
        }
        shared.violations.lock().unwrap().extend(
            problems
                .into_iter()
                .map(|p| format!("{api} {method} {path}: {p}")),
        );
        shared.cancel_calls.lock().unwrap().push(Recorded {
            api,
            path,
            headers,
            body: Value::Null,
            status: response.status().as_u16(),
            seq: shared.seq.fetch_add(1, Ordering::SeqCst),
            query: uri.query().map(str::to_owned),
        });
        return response;
    }
    let api = match route(&path) {
        Ok(api) => api,
        Err(problem) => {
            shared.violations.lock().unwrap().push(problem);
            return (StatusCode::NOT_FOUND, axum::Json(json!({"message": "Not Found"}))).into_response();
        }
    };
    let mut problems = Vec::new();
    if method != Method::POST {
        problems.push(format!("{method} instead of POST"));
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("body is not JSON: {e}"));
            Value::Null
        }
    };
    problems.extend(check_request(api, &uri, &headers, &parsed));
    let invalid = !problems.is_empty();
    shared
        .violations
        .lock()
        .unwrap()
        .extend(problems.into_iter().map(|p| format!("{api} {path}: {p}")));

    let scripted = shared.script.lock().unwrap().pop_front();
    let hang = shared.hang.load(Ordering::SeqCst) || matches!(scripted, Some(Reply::Hang));
    let mut record = Recorded {
        api,
        path: path.clone(),
        headers,
        body: parsed,
        status: 0,
        seq: shared.seq.fetch_add(1, Ordering::SeqCst),
        query: None,
    };
    if hang {
        shared.requests.lock().unwrap().push(record);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    let response = if invalid {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "invalid request"})),
        )
            .into_response()
    } else {
        match scripted {
            Some(Reply::Status(code)) => {
                let status = StatusCode::from_u16(code).unwrap();
                (status, axum::Json(json!({"message": format!("scripted {code}")}))).into_response()
            }
            Some(Reply::RetryAfter(code, secs)) => {
                let status = StatusCode::from_u16(code).unwrap();
                (
                    status,
                    [("retry-after", secs.to_string())],
                    axum::Json(json!({"message": format!("scripted {code}")})),
                )
                    .into_response()
            }
            Some(Reply::Headers(code, headers)) => {
                let status = StatusCode::from_u16(code).unwrap();
                let mut response =
                    (status, axum::Json(json!({"message": format!("scripted {code}")}))).into_response();
                for (name, value) in headers {
                    response
                        .headers_mut()
                        .insert(name, axum::http::HeaderValue::from_str(&value).unwrap());
                }
                response
            }
            Some(Reply::Echo(code)) => {
                let status = StatusCode::from_u16(code).unwrap();
                let headers: serde_json::Map<String, Value> = record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.to_str().unwrap_or("").to_owned())))
                    .collect();
                let token = token_received(&record);
                let echo = json!({
                    "message": format!("invalid token {token}"),
                    "received_headers": headers,
                    "received_body": record.body,
                });
                (status, axum::Json(echo)).into_response()
            }
            Some(Reply::EchoEncoded(code)) => {
                use base64::Engine as _;
                let token = token_received(&record);
                let basic = base64::engine::general_purpose::STANDARD.encode(format!("{token}:"));
                let escaped: String = token.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
                let body = format!(r#"{{"message":"invalid token {escaped}","auth":"Basic {basic}"}}"#);
                let location = format!("https://ci.example/login?circle-token={token}&auth={basic}");
                let mut response = (StatusCode::from_u16(code).unwrap(), body).into_response();
                response
                    .headers_mut()
                    .insert("location", location.parse().unwrap());
                response
            }
            Some(Reply::Body(code, body)) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
            Some(Reply::CreateThenHang) => {
                let n = shared.counter.fetch_add(1, Ordering::SeqCst) + 1;
                created(&shared, api, n, &path, &record.body);
                shared.requests.lock().unwrap().push(record);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return StatusCode::GATEWAY_TIMEOUT.into_response();
            }
            Some(Reply::CreateThenDrop) => {
                let n = shared.counter.fetch_add(1, Ordering::SeqCst) + 1;
                created(&shared, api, n, &path, &record.body);
                shared.requests.lock().unwrap().push(record);
                // Unwinding ends this connection's task: hyper closes the
                // socket with no answer at all (`resume_unwind` skips the
                // panic hook, so nothing is printed).
                std::panic::resume_unwind(Box::new("stand-in: connection dropped (CreateThenDrop)"));
            }
            Some(Reply::CreateThenStatus(code)) => {
                let n = shared.counter.fetch_add(1, Ordering::SeqCst) + 1;
                created(&shared, api, n, &path, &record.body);
                let status = StatusCode::from_u16(code).unwrap();
                (status, axum::Json(json!({"message": format!("scripted {code}")}))).into_response()
            }
            Some(Reply::Hang) | None => {
                let n = shared.counter.fetch_add(1, Ordering::SeqCst) + 1;
                created(&shared, api, n, &path, &record.body)
            }
        }
    };
    record.status = response.status().as_u16();
    shared.requests.lock().unwrap().push(record);
    // A slow CI: the work is done (and recorded) before the answer arrives,
    // so a caller that dies meanwhile has triggered it all the same.
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    response
}

/// A read of a pipeline's state: checked, recorded with the list and
/// cancel calls, answered (or as scripted: its own script or standing
/// failure first, else a status from `script_cancels`, as before).
async fn pipeline_read(
    shared: &Shared,
    api: &'static str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (mut response, problems) = watch::answer(shared, api, &method, &uri, &headers, &body);
    shared.violations.lock().unwrap().extend(
        problems
            .into_iter()
            .map(|p| format!("{api} {method} {}: {p}", uri.path())),
    );
    let mut record = Recorded {
        api,
        path: uri.path().to_owned(),
        headers,
        body: Value::Null,
        status: 0,
        seq: shared.seq.fetch_add(1, Ordering::SeqCst),
        query: uri.query().map(str::to_owned),
    };
    match watch::failure(&shared.watch, api) {
        Some(watch::Failed::Hang) => {
            shared.cancel_calls.lock().unwrap().push(record);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        Some(watch::Failed::Answer(r)) => response = r,
        None => {
            if let Some(code) = shared.cancel_script.lock().unwrap().pop_front() {
                let status = StatusCode::from_u16(code).unwrap();
                response =
                    (status, axum::Json(json!({"message": format!("scripted {code}")}))).into_response();
            }
        }
    }
    record.status = response.status().as_u16();
    shared.cancel_calls.lock().unwrap().push(record);
    response
}

/// A read that looks for pipelines: checked, recorded, answered (or as scripted).
async fn read(
    shared: &Shared,
    api: &'static str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let (mut response, problems) = reads::answer(
        &shared.made,
        &shared.pipelines,
        api,
        &method,
        &uri,
        &headers,
        &body,
    );
    shared.violations.lock().unwrap().extend(
        problems
            .into_iter()
            .map(|p| format!("{api} {method} {}: {p}", uri)),
    );
    let scripted = shared.read_script.lock().unwrap().pop_front();
    let mut record = Recorded {
        api,
        path,
        headers,
        body: Value::Null,
        status: 0,
        seq: shared.seq.fetch_add(1, Ordering::SeqCst),
        query: uri.query().map(str::to_owned),
    };
    let with_headers = |code: u16, extra: Vec<(&'static str, String)>| {
        let mut r = (
            StatusCode::from_u16(code).unwrap(),
            axum::Json(reads::error_body(api, code)),
        )
            .into_response();
        for (name, value) in extra {
            r.headers_mut()
                .insert(name, axum::http::HeaderValue::from_str(&value).unwrap());
        }
        r
    };
    match scripted {
        None => {}
        Some(Reply::Hang) => {
            shared.read_calls.lock().unwrap().push(record);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        Some(Reply::Status(code) | Reply::Echo(code) | Reply::EchoEncoded(code)) => {
            response = with_headers(code, vec![])
        }
        Some(Reply::RetryAfter(code, secs)) => {
            response = with_headers(code, vec![("retry-after", secs.to_string())])
        }
        Some(Reply::Headers(code, extra)) => response = with_headers(code, extra),
        Some(Reply::Body(code, text)) => {
            response = (StatusCode::from_u16(code).unwrap(), text).into_response()
        }
        Some(other) => panic!("{other:?} is a trigger's reply, not a read's"),
    }
    record.status = response.status().as_u16();
    shared.read_calls.lock().unwrap().push(record);
    response
}

fn trigger_json(t: &TriggerToken, full: bool) -> Value {
    json!({
        "id": t.0,
        "description": t.1,
        "token": if full { t.2.clone() } else { t.2[..4].to_owned() },
        "created_at": "2026-11-23T10:00:00.000Z",
        "updated_at": "2026-11-23T10:00:00.000Z",
        "last_used": null,
        "expires_at": t.3,
        "owner": {"id": 1, "username": "root", "name": "Administrator", "state": "active"},
    })
}

/// `/api/v4/projects/:id/triggers[/:trigger_id]`, checked against the GitLab excerpt.
fn trigger_tokens(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let path = uri.path();
    let segs = segments(path);
    let violation = |p: String| {
        shared
            .violations
            .lock()
            .unwrap()
            .push(format!("triggers {method} {path}: {p}"))
    };
    if headers.get("private-token").and_then(|v| v.to_str().ok()) != Some(GITLAB_PRIVATE_TOKEN) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "401 Unauthorized"})),
        )
            .into_response();
    }
    if uri.query().is_some_and(|q| q.contains("private_token")) {
        violation("token in the query string".into());
    }
    let (project, id) = match segs.as_slice() {
        ["api", "v4", "projects", project, "triggers"] => (*project, None),
        ["api", "v4", "projects", project, "triggers", id] => match id.parse::<u64>() {
            Ok(id) => (*project, Some(id)),
            Err(_) => {
                violation(format!("trigger_id `{id}` is not an integer"));
                return StatusCode::BAD_REQUEST.into_response();
            }
        },
        _ => {
            violation("no such endpoint".into());
            return StatusCode::NOT_FOUND.into_response();
        }
    };
    if decode(project).contains('/') && !project.contains("%2F") {
        violation("project path not URL-encoded".into());
    }
    let v = validators();
    let parsed = || -> Option<Value> {
        if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
            violation("body without Content-Type: application/json".into());
        }
        serde_json::from_slice(body).ok()
    };
    let mut triggers = shared.triggers.lock().unwrap();
    match (method.clone(), id) {
        (Method::GET, None) => axum::Json(Value::Array(
            triggers.iter().map(|t| trigger_json(t, false)).collect(),
        ))
        .into_response(),
        (Method::POST, None) => {
            let Some(b) = parsed() else {
                violation("body is not JSON".into());
                return StatusCode::BAD_REQUEST.into_response();
            };
            let errors: Vec<String> = v.trigger_create.iter_errors(&b).map(|e| e.to_string()).collect();
            if !errors.is_empty() {
                violation(format!("schema: {}", errors.join("; ")));
                return (StatusCode::BAD_REQUEST, axum::Json(json!({"message": errors}))).into_response();
            }
            let n = triggers.len() as u64 + 10;
            let t = (
                n,
                b["description"].as_str().unwrap_or_default().to_owned(),
                format!("glptt-{n:0>36}"),
                b["expires_at"].as_str().map(str::to_owned),
            );
            let out = trigger_json(&t, true);
            triggers.push(t);
            (StatusCode::CREATED, axum::Json(out)).into_response()
        }
        (m, Some(id)) => {
            let Some(pos) = triggers.iter().position(|t| t.0 == id) else {
                return (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"message": "404 Trigger Not Found"})),
                )
                    .into_response();
            };
            match m {
                Method::GET => axum::Json(trigger_json(&triggers[pos], false)).into_response(),
                Method::PUT => {
                    let Some(b) = parsed() else {
                        violation("body is not JSON".into());
                        return StatusCode::BAD_REQUEST.into_response();
                    };
                    let errors: Vec<String> =
                        v.trigger_update.iter_errors(&b).map(|e| e.to_string()).collect();
                    if !errors.is_empty() {
                        violation(format!("schema: {}", errors.join("; ")));
                        return StatusCode::BAD_REQUEST.into_response();
                    }
                    if let Some(d) = b["description"].as_str() {
                        triggers[pos].1 = d.to_owned();
                    }
                    axum::Json(trigger_json(&triggers[pos], false)).into_response()
                }
                Method::DELETE => {
                    triggers.remove(pos);
                    StatusCode::NO_CONTENT.into_response()
                }
                other => {
                    violation(format!("method {other} not in the API"));
                    StatusCode::METHOD_NOT_ALLOWED.into_response()
                }
            }
        }
        (other, None) => {
            violation(format!("method {other} not in the API"));
            StatusCode::METHOD_NOT_ALLOWED.into_response()
        }
    }
}
