//! Stand-in servers for the targets of issue 19, on 127.0.0.1: GitHub Actions
//! (workflow and repository dispatch), Gitea and Forgejo Actions, Buildkite,
//! Jenkins (build and queue polling) and a plain HTTP receiver, all served by
//! one server and told apart by path, as in `ci.rs`.
//!
//! Every trigger call is checked against the published API descriptions:
//! GitHub's official OpenAPI document (npm `@octokit/openapi`, installed by the
//! tests into `target/`, see `tests/fixtures/openapi/SOURCES.md`), the Gitea
//! and Forgejo Swagger documents vendored in `tests/fixtures/openapi/`, and,
//! where no machine-readable description exists (Buildkite, Jenkins), the
//! documented request shape. Violations are collected; tests assert there are
//! none. Replies can be scripted to simulate outages and rate limits.
//!
//! [`verify_standard_webhook`] checks a signed request with the reference
//! Standard Webhooks library (npm `standardwebhooks`, installed into `target/`).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

/// `Authorization: Bearer <GITHUB_TOKEN>` (GitHub Actions).
pub(crate) const GITHUB_TOKEN: &str = "ghp_targetsStandInGithubToken0000000001";
/// `Authorization: token <GITEA_TOKEN>` (Gitea and Forgejo).
pub(crate) const GITEA_TOKEN: &str = "gitea-token-for-tests-0123456789abcdef";
/// `Authorization: Bearer <BUILDKITE_TOKEN>` (Buildkite, scope write_builds).
pub(crate) const BUILDKITE_TOKEN: &str = "bkua_buildkite_token_for_tests_0123456789";
/// The Jenkins user whose API token [`JENKINS_TOKEN`] is.
pub(crate) const JENKINS_USER: &str = "hookbridge";
/// `Authorization: Basic base64(JENKINS_USER:JENKINS_TOKEN)`.
pub(crate) const JENKINS_TOKEN: &str = "11aa22bb33cc44dd55ee66ff77aa88bb99";
/// A Standard Webhooks signing secret (`whsec_` + base64 of 24 bytes) for tests.
pub(crate) const DEPLOY_WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// npm `@octokit/openapi`: GitHub's official OpenAPI description.
pub(crate) const OCTOKIT_OPENAPI: &str = "@octokit/openapi@23.0.2";
/// sha256 of its npm tarball, as in `tests/fixtures/openapi/SOURCES.md`.
pub(crate) const OCTOKIT_TARBALL_SHA256: &str =
    "71a18407dd5e8464f4e0525daf03deabbe65abd9287d6adc7b5d98f516cd0d0c";
/// sha256 of `package/generated/api.github.com.json`, as in `SOURCES.md`.
pub(crate) const OCTOKIT_SPEC_SHA256: &str =
    "829b4bebb19a53133289f7b0bc819f4f1118115821db2ca9f25e9ee995a7da2a";
/// The npm `standardwebhooks` version [`verify_standard_webhook`] runs.
pub(crate) const STANDARDWEBHOOKS_NPM: &str = "standardwebhooks@1.3.0";

/// The API names a [`Received`] carries.
pub(crate) const APIS: [&str; 7] = [
    "github-workflow-dispatch",
    "github-repository-dispatch",
    "gitea-dispatch",
    "buildkite-build",
    "jenkins-build",
    "jenkins-queue",
    "http",
];

// ---------------------------------------------------------------------------
// Scripted replies and modes

/// A scripted reply for the next trigger call (any API but `jenkins-queue`),
/// used before the normal (successful) behaviour resumes.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// This status, body `{"message": "scripted <status>"}`.
    Status(u16),
    /// This status, body `{"message": <message>}`.
    Message(u16, String),
    /// This status with these headers, body `{"message": "scripted <status>"}`.
    Headers(u16, Vec<(&'static str, String)>),
    /// This status, these headers, this JSON body.
    Json(u16, Vec<(&'static str, String)>, Value),
    /// This status and headers with `x-ratelimit-remaining: 0` and
    /// `x-ratelimit-reset` = unix time at the answer + `secs` (GitHub's
    /// primary rate limit).
    RateLimitReset(u16, u64),
    /// This status with this body, verbatim (an HTML error page, say).
    Body(u16, String),
    /// Never answer (the client times out or goes away).
    Hang,
}

impl Reply {
    /// `status` with `Retry-After: <secs>`.
    pub(crate) fn retry_after(status: u16, secs: u64) -> Reply {
        Reply::Headers(status, vec![("retry-after", secs.to_string())])
    }

    /// GitHub's primary rate limit: 403, remaining 0, reset in `secs`.
    pub(crate) fn github_rate_limit(secs: u64) -> Reply {
        Reply::RateLimitReset(403, secs)
    }

    /// GitHub's secondary rate limit: 403, its message, and `retry-after` if given.
    pub(crate) fn github_secondary_rate_limit(retry_after: Option<u64>) -> Reply {
        let headers = retry_after
            .map(|s| vec![("retry-after", s.to_string())])
            .unwrap_or_default();
        Reply::Json(
            403,
            headers,
            json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID ABCD:1234:5678.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                "status": "403",
            }),
        )
    }
}

/// How the Gitea route answers a valid dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum GiteaMode {
    /// Gitea 1.26: reads the `return_run_details` query parameter; 200 `RunDetails`.
    #[default]
    Gitea,
    /// Forgejo 15: reads the body's `return_run_info`; 201 `DispatchWorkflowRun`.
    Forgejo,
    /// Either, older: 204 without a body.
    NoContent,
}

/// What a Jenkins queue item becomes after its waiting polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum QueueOutcome {
    /// A `LeftItem` whose `executable` is the build.
    #[default]
    Build,
    /// A `LeftItem` with `cancelled: true`, `executable: null`.
    Cancelled,
    /// Every poll answers 404 (the item is gone).
    NotFound,
}

#[derive(Debug, Clone)]
struct Settings {
    github_prefix: String,
    gitea_prefix: String,
    jenkins_prefix: String,
    gitea_mode: GiteaMode,
    queue_outcome: QueueOutcome,
    waiting_polls: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            github_prefix: String::new(),
            gitea_prefix: String::new(),
            jenkins_prefix: String::new(),
            gitea_mode: GiteaMode::Gitea,
            queue_outcome: QueueOutcome::Build,
            waiting_polls: 2,
        }
    }
}

/// `/api/v3/` → `/api/v3`; `` → ``.
fn normalise_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("/{p}")
    }
}

// ---------------------------------------------------------------------------
// What was received

/// One received request, as the stand-in saw it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// One of [`APIS`].
    pub api: &'static str,
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body's bytes, as received.
    pub raw: Bytes,
    /// The JSON body (Null when not JSON); for `jenkins-build`, the form
    /// parameters as an object of strings.
    pub body: Value,
    /// `jenkins-build`: the form parameters, in order.
    pub form: Vec<(String, String)>,
    /// The status answered (0 when it hung).
    pub status: u16,
    /// Numbers every request to the stand-in, in arrival order.
    pub seq: u64,
}

impl Received {
    pub(crate) fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A header's value, or "".
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

#[derive(Debug, Clone)]
struct QueueItem {
    job: Vec<String>,
    polls: u32,
    build: Option<u64>,
}

#[derive(Default)]
struct Jenkins {
    next_item: u64,
    items: HashMap<u64, QueueItem>,
    /// The last build number of each job path (`a/b`).
    builds: HashMap<String, u64>,
}

#[derive(Default)]
struct Shared {
    url: OnceLock<String>,
    settings: Mutex<Settings>,
    requests: Mutex<Vec<Received>>,
    violations: Mutex<Vec<String>>,
    script: Mutex<VecDeque<Reply>>,
    seq: AtomicU64,
    runs: AtomicU64,
    buildkite: Mutex<HashMap<String, u64>>,
    jenkins: Mutex<Jenkins>,
}

/// A running stand-in serving all five target APIs and the HTTP receiver.
#[derive(Clone)]
pub(crate) struct TargetStandIn {
    /// `http://127.0.0.1:<port>`, without any prefix.
    pub url: String,
    shared: Arc<Shared>,
}

impl TargetStandIn {
    /// Installs GitHub's OpenAPI document if needed (see [`octokit_spec`]),
    /// compiles the schemas, and starts serving.
    pub(crate) async fn start() -> TargetStandIn {
        tokio::task::spawn_blocking(|| {
            validators();
        })
        .await
        .unwrap();
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        shared.url.set(url.clone()).unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TargetStandIn { url, shared }
    }

    /// GitHub's API under a path prefix (GHES: `/api/v3`); "" for none.
    pub(crate) fn set_github_prefix(&self, prefix: &str) {
        self.shared.settings.lock().unwrap().github_prefix = normalise_prefix(prefix);
    }

    /// Gitea's sub-URL (`ROOT_URL` path), before `/api/v1`; "" for none.
    pub(crate) fn set_gitea_prefix(&self, prefix: &str) {
        self.shared.settings.lock().unwrap().gitea_prefix = normalise_prefix(prefix);
    }

    /// Jenkins' context path (`/jenkins`); "" for none.
    pub(crate) fn set_jenkins_prefix(&self, prefix: &str) {
        self.shared.settings.lock().unwrap().jenkins_prefix = normalise_prefix(prefix);
    }

    /// The `url` of a `github-actions` target (with the prefix).
    pub(crate) fn github_url(&self) -> String {
        format!(
            "{}{}",
            self.url,
            self.shared.settings.lock().unwrap().github_prefix
        )
    }

    /// The `url` of a `gitea-actions` target (with the sub-URL, without `/api/v1`).
    pub(crate) fn gitea_url(&self) -> String {
        format!(
            "{}{}",
            self.url,
            self.shared.settings.lock().unwrap().gitea_prefix
        )
    }

    /// The `url` of a `buildkite` target.
    pub(crate) fn buildkite_url(&self) -> String {
        self.url.clone()
    }

    /// The `url` of a `jenkins` target (with the context path).
    pub(crate) fn jenkins_url(&self) -> String {
        format!(
            "{}{}",
            self.url,
            self.shared.settings.lock().unwrap().jenkins_prefix
        )
    }

    /// The `url` of an `http` target: `<url>/hook`; rules' paths follow it.
    pub(crate) fn hook_url(&self) -> String {
        format!("{}/hook", self.url)
    }

    /// Answer Gitea dispatches as Gitea, Forgejo, or with 204.
    pub(crate) fn set_gitea_mode(&self, mode: GiteaMode) {
        self.shared.settings.lock().unwrap().gitea_mode = mode;
    }

    /// What queue items become once their waiting polls are over.
    pub(crate) fn set_queue_outcome(&self, outcome: QueueOutcome) {
        self.shared.settings.lock().unwrap().queue_outcome = outcome;
    }

    /// How many polls of a queue item answer `WaitingItem` first (default 2).
    pub(crate) fn set_waiting_polls(&self, polls: u32) {
        self.shared.settings.lock().unwrap().waiting_polls = polls;
    }

    /// Queue replies for the next trigger calls (any API but `jenkins-queue`).
    pub(crate) fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    /// Every request received, in order.
    pub(crate) fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The requests to one API (one of [`APIS`]).
    pub(crate) fn requests_to(&self, api: &str) -> Vec<Received> {
        self.requests().into_iter().filter(|r| r.api == api).collect()
    }

    /// The requests answered with a 2xx.
    pub(crate) fn accepted(&self) -> Vec<Received> {
        self.requests().into_iter().filter(Received::accepted).collect()
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }

    /// Panics with every schema or protocol violation seen so far.
    pub(crate) fn assert_clean(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "stand-in targets saw invalid requests:\n{}",
            v.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Installs under target/

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `<crate>/target`).
pub(crate) fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => manifest.join(dir),
        None => manifest.join("target"),
    }
}

/// `dest` if it exists; otherwise, holding the lock file `<dest>.lock` (so
/// parallel test processes install once), `build` fills a fresh scratch
/// directory and returns the path inside it that is then renamed to `dest`.
/// `dest` therefore only ever exists complete and checked.
fn install_once(dest: &Path, build: impl FnOnce(&Path) -> Result<PathBuf, String>) -> PathBuf {
    if dest.exists() {
        return dest.to_owned();
    }
    let parent = dest.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    let name = dest.file_name().unwrap().to_string_lossy().into_owned();
    let lock = std::fs::File::create(parent.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    if dest.exists() {
        return dest.to_owned();
    }
    let scratch = parent.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let result = build(&scratch);
    let outcome = result.and_then(|built| {
        std::fs::rename(&built, dest)
            .map_err(|e| format!("rename {} → {}: {e}", built.display(), dest.display()))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    drop(lock);
    if let Err(e) = outcome {
        panic!("installing {}: {e}", dest.display());
    }
    dest.to_owned()
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// The path of `package/generated/api.github.com.json` from npm
/// [`OCTOKIT_OPENAPI`], in `target/octokit-openapi/`. The first call on a
/// machine runs `npm pack` and `tar`, and checks both sha256 sums (the
/// tarball's and the file's) against `tests/fixtures/openapi/SOURCES.md`.
pub(crate) fn octokit_spec() -> PathBuf {
    let sources = std::fs::read_to_string(super::fixtures().join("openapi/SOURCES.md")).unwrap();
    for sum in [OCTOKIT_TARBALL_SHA256, OCTOKIT_SPEC_SHA256] {
        assert!(sources.contains(sum), "SOURCES.md does not list sha256 {sum}");
    }
    let dest = target_dir().join("octokit-openapi/23.0.2/api.github.com.json");
    install_once(&dest, |scratch| {
        run(Command::new("npm")
            .args(["pack", OCTOKIT_OPENAPI, "--silent", "--pack-destination"])
            .arg(scratch)
            .current_dir(scratch))?;
        let tarball = scratch.join("octokit-openapi-23.0.2.tgz");
        let sum = sha256_file(&tarball)?;
        if sum != OCTOKIT_TARBALL_SHA256 {
            return Err(format!("tarball sha256 {sum}, expected {OCTOKIT_TARBALL_SHA256}"));
        }
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(scratch)
            .arg("package/generated/api.github.com.json"))?;
        let file = scratch.join("package/generated/api.github.com.json");
        let sum = sha256_file(&file)?;
        if sum != OCTOKIT_SPEC_SHA256 {
            return Err(format!(
                "api.github.com.json sha256 {sum}, expected {OCTOKIT_SPEC_SHA256}"
            ));
        }
        Ok(file)
    })
}

/// The directory holding `node_modules/standardwebhooks` (npm
/// [`STANDARDWEBHOOKS_NPM`]), installed on first use into
/// `target/standardwebhooks-js/`.
pub(crate) fn standardwebhooks_dir() -> PathBuf {
    let dest = target_dir().join("standardwebhooks-js");
    install_once(&dest, |scratch| {
        let dir = scratch.join("standardwebhooks-js");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("package.json"), "{\"private\": true}\n").unwrap();
        run(Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--save-exact",
                STANDARDWEBHOOKS_NPM,
            ])
            .current_dir(&dir))?;
        if !dir.join("node_modules/standardwebhooks/package.json").exists() {
            return Err("npm install left no node_modules/standardwebhooks".into());
        }
        Ok(dir)
    })
}

/// Verifies a Standard Webhooks request (its `webhook-id`,
/// `webhook-timestamp`, `webhook-signature` headers and raw body) with the
/// reference library, npm `standardwebhooks`, run by
/// `tests/support/swhook_verify.mjs` under Node. `secret` is `whsec_<base64>`
/// or, otherwise, raw key text. `Err` carries the library's reason.
pub(crate) fn verify_standard_webhook(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let modules = {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(standardwebhooks_dir).clone()
    };
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        map.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    let input = json!({
        "secret": secret,
        "headers": map,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(body),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/swhook_verify.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(&modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("node: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) if stdout == "ok" => Ok(()),
        Some(1) => Err(stdout),
        _ => panic!(
            "swhook_verify.mjs failed ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

// ---------------------------------------------------------------------------
// Schemas

/// The request shape of Buildkite's "Create a build", written from its docs:
/// <https://buildkite.com/docs/apis/rest-api/builds#create-a-build>.
/// Buildkite publishes no machine-readable description of its REST API
/// (`tests/fixtures/openapi/SOURCES.md`, "Buildkite").
fn buildkite_create_build_schema() -> Value {
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Buildkite REST API: create a build (request body)",
        "type": "object",
        "required": ["commit", "branch"],
        "additionalProperties": false,
        "properties": {
            "commit": {"type": "string", "minLength": 1},
            "branch": {"type": "string", "minLength": 1},
            "message": {"type": "string"},
            "author": {
                "type": "object",
                "additionalProperties": false,
                "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
            },
            "env": strings,
            "meta_data": strings,
            "clean_checkout": {"type": "boolean"},
            "ignore_pipeline_branch_filters": {"type": "boolean"},
            "pull_request_base_branch": {"type": "string"},
            "pull_request_id": {"type": "integer"},
            "pull_request_repository": {"type": "string"},
        },
    })
}

struct Validators {
    github_workflow: jsonschema::Validator,
    github_repository: jsonschema::Validator,
    /// GitHub's `workflow-dispatch-response`: checks the stand-in's own answer.
    github_workflow_answer: jsonschema::Validator,
    gitea: jsonschema::Validator,
    forgejo: jsonschema::Validator,
    gitea_answer: jsonschema::Validator,
    forgejo_answer: jsonschema::Validator,
    /// The schema of Gitea's `return_run_details` query parameter.
    gitea_query: jsonschema::Validator,
    buildkite: jsonschema::Validator,
}

/// As `ci::validator`, with a choice of draft: the schema at `pointer` in an
/// API document, with its `components` / `definitions` there for `$ref`.
/// Swagger 2.0 and OpenAPI 3.0 schemas are (extended subsets of) Draft 4.
fn validator_in(doc: &Value, pointer: &str, draft: jsonschema::Draft) -> jsonschema::Validator {
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

fn validators() -> &'static Validators {
    static V: OnceLock<Validators> = OnceLock::new();
    V.get_or_init(|| {
        use jsonschema::Draft::Draft4;
        let path = octokit_spec();
        let github: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let gitea = super::ci::load_json("gitea-swagger-v1.json");
        let forgejo = super::ci::load_json("forgejo-swagger-v1.json");
        let gh_body = |p: &str| format!("/paths/{}/post/requestBody/content/application~1json/schema", p.replace('/', "~1"));
        let query = gitea
            .pointer("/paths/~1repos~1{owner}~1{repo}~1actions~1workflows~1{workflow_id}~1dispatches/post/parameters")
            .and_then(Value::as_array)
            .and_then(|ps| ps.iter().find(|p| p["name"] == "return_run_details" && p["in"] == "query"))
            .expect("Gitea's swagger has the return_run_details query parameter")
            .clone();
        let mut query_schema = serde_json::Map::new();
        for key in ["type", "enum", "format"] {
            if let Some(v) = query.get(key) {
                query_schema.insert(key.into(), v.clone());
            }
        }
        let buildkite = buildkite_create_build_schema();
        Validators {
            github_workflow: validator_in(
                &github,
                &gh_body("/repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches"),
                Draft4,
            ),
            github_repository: validator_in(&github, &gh_body("/repos/{owner}/{repo}/dispatches"), Draft4),
            github_workflow_answer: validator_in(
                &github,
                "/components/schemas/workflow-dispatch-response",
                Draft4,
            ),
            gitea: validator_in(&gitea, "/definitions/CreateActionWorkflowDispatch", Draft4),
            forgejo: validator_in(&forgejo, "/definitions/DispatchWorkflowOption", Draft4),
            gitea_answer: validator_in(&gitea, "/definitions/RunDetails", Draft4),
            forgejo_answer: validator_in(&forgejo, "/definitions/DispatchWorkflowRun", Draft4),
            gitea_query: validator_in(&Value::Object(query_schema), "", Draft4),
            buildkite: super::ci::validator(&buildkite, ""),
        }
    })
}

/// Each schema error, as `<what>: <error> at `<instance path>``, its text
/// cut to a readable length (an error quotes the offending value).
fn schema_errors(validator: &jsonschema::Validator, what: &str, value: &Value) -> Vec<String> {
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

// ---------------------------------------------------------------------------
// Routing

#[derive(Debug, Clone)]
enum Route {
    GithubWorkflow {
        owner: String,
        repo: String,
        workflow: String,
    },
    GithubRepository {
        owner: String,
        repo: String,
    },
    Gitea {
        owner: String,
        repo: String,
    },
    Buildkite {
        org: String,
        pipeline: String,
    },
    JenkinsBuild {
        job: Vec<String>,
    },
    JenkinsQueue {
        item: String,
    },
    Http,
}

impl Route {
    fn api(&self) -> &'static str {
        match self {
            Route::GithubWorkflow { .. } => "github-workflow-dispatch",
            Route::GithubRepository { .. } => "github-repository-dispatch",
            Route::Gitea { .. } => "gitea-dispatch",
            Route::Buildkite { .. } => "buildkite-build",
            Route::JenkinsBuild { .. } => "jenkins-build",
            Route::JenkinsQueue { .. } => "jenkins-queue",
            Route::Http => "http",
        }
    }
}

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

/// The path's segments after `prefix`, if it starts with it.
fn under<'a>(path: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
    let rest = path.strip_prefix(prefix)?;
    if !rest.starts_with('/') {
        return None;
    }
    Some(rest[1..].split('/').collect())
}

fn route(path: &str, s: &Settings) -> Result<Route, String> {
    let d = |seg: &str| decode(seg);
    if let Some(segs) = under(path, &s.github_prefix) {
        match segs.as_slice() {
            [
                "repos",
                owner,
                repo,
                "actions",
                "workflows",
                workflow,
                "dispatches",
            ] => {
                return Ok(Route::GithubWorkflow {
                    owner: d(owner),
                    repo: d(repo),
                    workflow: d(workflow),
                });
            }
            ["repos", owner, repo, "dispatches"] => {
                return Ok(Route::GithubRepository {
                    owner: d(owner),
                    repo: d(repo),
                });
            }
            _ => {}
        }
    }
    if let Some(segs) = under(path, &s.gitea_prefix)
        && let [
            "api",
            "v1",
            "repos",
            owner,
            repo,
            "actions",
            "workflows",
            _workflow,
            "dispatches",
        ] = segs.as_slice()
    {
        return Ok(Route::Gitea {
            owner: d(owner),
            repo: d(repo),
        });
    }
    if let Some(segs) = under(path, "")
        && let ["v2", "organizations", org, "pipelines", pipeline, "builds"] = segs.as_slice()
    {
        return Ok(Route::Buildkite {
            org: d(org),
            pipeline: d(pipeline),
        });
    }
    if let Some(segs) = under(path, &s.jenkins_prefix) {
        if let ["queue", "item", item, "api", "json"] = segs.as_slice() {
            return Ok(Route::JenkinsQueue { item: d(item) });
        }
        if let [jobs @ .., "buildWithParameters"] = segs.as_slice()
            && !jobs.is_empty()
            && jobs.len() % 2 == 0
            && jobs.chunks(2).all(|c| c[0] == "job")
        {
            return Ok(Route::JenkinsBuild {
                job: jobs.chunks(2).map(|c| d(c[1])).collect(),
            });
        }
    }
    if path == "/hook" || path.starts_with("/hook/") {
        return Ok(Route::Http);
    }
    Err(format!("no such endpoint: {path}"))
}

// ---------------------------------------------------------------------------
// Checks

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';').map(str::trim);
    parts.next() == Some("application/json")
        && parts.all(|p| p.is_empty() || p.eq_ignore_ascii_case("charset=utf-8"))
}

/// Problems common to the CI APIs: forwarded webhook headers, tokens in the URL.
fn common_problems(uri: &Uri, headers: &HeaderMap) -> Vec<String> {
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

fn check_auth(headers: &HeaderMap, expected: &str, problems: &mut Vec<String>) -> bool {
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

fn check_json_request(headers: &HeaderMap, raw: &[u8], problems: &mut Vec<String>) -> Value {
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

fn basic(user: &str, token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
    )
}

fn check_github(
    route: &Route,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Value,
    problems: &mut Vec<String>,
) -> bool {
    let v = validators();
    let auth = check_auth(headers, &format!("Bearer {GITHUB_TOKEN}"), problems);
    let accept = header(headers, "accept");
    if !accept
        .split(',')
        .any(|a| a.trim() == "application/vnd.github+json")
    {
        problems.push(format!("Accept is `{accept}`, not application/vnd.github+json"));
    }
    let version = header(headers, "x-github-api-version");
    let date_shaped = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !date_shaped {
        problems.push(format!(
            "X-GitHub-Api-Version is `{version}`, not a dated version"
        ));
    }
    if header(headers, "user-agent").is_empty() {
        problems.push("no User-Agent (GitHub refuses requests without one)".into());
    }
    if let Some(q) = uri.query() {
        problems.push(format!("query string `{q}`"));
    }
    match route {
        Route::GithubWorkflow {
            owner,
            repo,
            workflow,
        } => {
            if owner.is_empty() || repo.is_empty() || workflow.is_empty() {
                problems.push("empty owner, repo or workflow_id".into());
            }
            problems.extend(schema_errors(
                &v.github_workflow,
                "schema (actions/create-workflow-dispatch)",
                body,
            ));
            if let Some(inputs) = body.get("inputs").and_then(Value::as_object) {
                for (k, val) in inputs {
                    if !(val.is_string() || val.is_number() || val.is_boolean()) {
                        problems.push(format!("input `{k}` is not a string, number or boolean: {val}"));
                    }
                }
            }
        }
        Route::GithubRepository { owner, repo } => {
            if owner.is_empty() || repo.is_empty() {
                problems.push("empty owner or repo".into());
            }
            problems.extend(schema_errors(
                &v.github_repository,
                "schema (repos/create-dispatch-event)",
                body,
            ));
            if let Some(payload) = body.get("client_payload") {
                let size = payload.to_string().len();
                if size >= 64 * 1024 {
                    problems.push(format!("client_payload is {size} bytes of JSON, not < 64 KiB"));
                }
            }
        }
        _ => unreachable!(),
    }
    auth
}

fn check_gitea(uri: &Uri, headers: &HeaderMap, body: &Value, problems: &mut Vec<String>) -> bool {
    let v = validators();
    let auth = check_auth(headers, &format!("token {GITEA_TOKEN}"), problems);
    let accept = header(headers, "accept");
    if !accept.contains("application/json") {
        problems.push(format!("Accept is `{accept}`, not application/json"));
    }
    match uri.query() {
        Some("return_run_details=true") => {}
        other => problems.push(format!(
            "query is `{}`, not `return_run_details=true`",
            other.unwrap_or("")
        )),
    }
    // Each query value, as the swagger's parameter type says (a boolean).
    for (k, val) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if k == "return_run_details" {
            let typed = serde_json::from_str::<Value>(&val).unwrap_or(Value::String(val.into_owned()));
            problems.extend(schema_errors(&v.gitea_query, "query return_run_details", &typed));
        }
    }
    problems.extend(schema_errors(
        &v.gitea,
        "Gitea schema (CreateActionWorkflowDispatch)",
        body,
    ));
    problems.extend(schema_errors(
        &v.forgejo,
        "Forgejo schema (DispatchWorkflowOption)",
        body,
    ));
    auth
}

fn check_buildkite(uri: &Uri, headers: &HeaderMap, body: &Value, problems: &mut Vec<String>) -> bool {
    let auth = check_auth(headers, &format!("Bearer {BUILDKITE_TOKEN}"), problems);
    if let Some(q) = uri.query() {
        problems.push(format!("query string `{q}`"));
    }
    problems.extend(schema_errors(
        &validators().buildkite,
        "schema (Buildkite create a build)",
        body,
    ));
    auth
}

/// Jenkins' remote access API, <https://www.jenkins.io/doc/book/using/remote-access-api/>:
/// `POST …/job/<a>/job/<b>/buildWithParameters` with the parameters
/// form-encoded, authenticated with the user's API token over HTTP Basic
/// (which also exempts the call from CSRF crumbs).
fn check_jenkins(
    uri: &Uri,
    headers: &HeaderMap,
    raw: &[u8],
    job: &[String],
    problems: &mut Vec<String>,
) -> (bool, Vec<(String, String)>) {
    let auth = check_auth(headers, &basic(JENKINS_USER, JENKINS_TOKEN), problems);
    if job.iter().any(String::is_empty) {
        problems.push(format!("empty job segment in {job:?}"));
    }
    if let Some(q) = uri.query()
        && (q.to_ascii_lowercase().contains("token") || q.contains(JENKINS_TOKEN))
    {
        problems.push("a token in the query string".into());
    }
    let mut form = Vec::new();
    if !raw.is_empty() {
        let ct = header(headers, "content-type");
        if ct.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
            problems.push(format!(
                "Content-Type is `{ct}`, not application/x-www-form-urlencoded"
            ));
        }
        match std::str::from_utf8(raw) {
            Ok(_) => {
                form = form_urlencoded::parse(raw)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
            }
            Err(e) => problems.push(format!("form body is not UTF-8: {e}")),
        }
    }
    (auth, form)
}

// ---------------------------------------------------------------------------
// Answers

fn message(status: u16, text: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({ "message": text })),
    )
        .into_response()
}

fn with_headers(mut response: Response, headers: Vec<(&'static str, String)>) -> Response {
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}

fn scripted(reply: Reply) -> Response {
    match reply {
        Reply::Status(code) => message(code, &format!("scripted {code}")),
        Reply::Message(code, text) => message(code, &text),
        Reply::Headers(code, headers) => with_headers(message(code, &format!("scripted {code}")), headers),
        Reply::Json(code, headers, body) => with_headers(
            (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response(),
            headers,
        ),
        Reply::RateLimitReset(code, secs) => with_headers(
            message(
                code,
                "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID ABCD:1234:5678.",
            ),
            vec![
                ("x-ratelimit-limit", "5000".into()),
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-used", "5000".into()),
                ("x-ratelimit-reset", (super::unix_now() + secs).to_string()),
                ("x-ratelimit-resource", "core".into()),
            ],
        ),
        Reply::Body(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Reply::Hang => unreachable!("handled before"),
    }
}

/// The normal answer to a valid trigger call; problems found in the
/// stand-in's own answer (checked against the API's response schema) are
/// added to `problems`.
fn success(
    shared: &Shared,
    route: &Route,
    settings: &Settings,
    uri: &Uri,
    body: &Value,
    problems: &mut Vec<String>,
) -> Response {
    let base = shared.url.get().unwrap();
    let v = validators();
    match route {
        Route::GithubWorkflow { owner, repo, .. } => {
            if body["return_run_details"] != true {
                return StatusCode::NO_CONTENT.into_response();
            }
            let id = 22_000_000_000 + shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let answer = json!({
                "workflow_run_id": id,
                "run_url": format!("{base}{}/repos/{owner}/{repo}/actions/runs/{id}", settings.github_prefix),
                "html_url": format!("https://github.com/{owner}/{repo}/actions/runs/{id}"),
            });
            problems.extend(schema_errors(
                &v.github_workflow_answer,
                "stand-in's own answer",
                &answer,
            ));
            (StatusCode::OK, axum::Json(answer)).into_response()
        }
        Route::GithubRepository { .. } => StatusCode::NO_CONTENT.into_response(),
        Route::Gitea { owner, repo } => {
            let n = shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let prefix = &settings.gitea_prefix;
            match settings.gitea_mode {
                GiteaMode::Gitea if uri.query() == Some("return_run_details=true") => {
                    let answer = json!({
                        "workflow_run_id": n,
                        "run_url": format!("{base}{prefix}/api/v1/repos/{owner}/{repo}/actions/runs/{n}"),
                        "html_url": format!("{base}{prefix}/{owner}/{repo}/actions/runs/{n}"),
                    });
                    problems.extend(schema_errors(&v.gitea_answer, "stand-in's own answer", &answer));
                    (StatusCode::OK, axum::Json(answer)).into_response()
                }
                GiteaMode::Forgejo if body["return_run_info"] == true => {
                    let answer = json!({"id": n, "run_number": n, "jobs": ["build"]});
                    problems.extend(schema_errors(&v.forgejo_answer, "stand-in's own answer", &answer));
                    (StatusCode::CREATED, axum::Json(answer)).into_response()
                }
                _ => StatusCode::NO_CONTENT.into_response(),
            }
        }
        Route::Buildkite { org, pipeline } => {
            let number = {
                let mut numbers = shared.buildkite.lock().unwrap();
                let n = numbers.entry(format!("{org}/{pipeline}")).or_default();
                *n += 1;
                *n
            };
            let serial = shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let answer = json!({
                "id": format!("01890f3c-8d2e-4b7a-9c1d-{serial:012x}"),
                "url": format!("{base}/v2/organizations/{org}/pipelines/{pipeline}/builds/{number}"),
                "web_url": format!("https://buildkite.com/{org}/{pipeline}/builds/{number}"),
                "number": number,
                "state": "scheduled",
                "blocked": false,
                "message": body.get("message").cloned().unwrap_or(Value::Null),
                "commit": body["commit"],
                "branch": body["branch"],
                "env": body.get("env").cloned().unwrap_or(json!({})),
                "meta_data": body.get("meta_data").cloned().unwrap_or(json!({})),
                "source": "api",
                "created_at": "2026-11-23T10:00:00.000Z",
            });
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        Route::JenkinsBuild { job } => {
            let n = {
                let mut jenkins = shared.jenkins.lock().unwrap();
                jenkins.next_item += 1;
                let n = 100 + jenkins.next_item;
                jenkins.items.insert(
                    n,
                    QueueItem {
                        job: job.clone(),
                        polls: 0,
                        build: None,
                    },
                );
                n
            };
            let location = format!("{base}{}/queue/item/{n}/", settings.jenkins_prefix);
            (StatusCode::CREATED, [("location", location)]).into_response()
        }
        Route::Http => StatusCode::OK.into_response(),
        Route::JenkinsQueue { .. } => unreachable!("answered by jenkins_queue"),
    }
}

/// `GET {prefix}/queue/item/{n}/api/json`.
fn jenkins_queue(
    shared: &Shared,
    settings: &Settings,
    method: &Method,
    headers: &HeaderMap,
    item: &str,
    problems: &mut Vec<String>,
) -> Response {
    if method != Method::GET {
        problems.push(format!("{method} instead of GET"));
    }
    if !check_auth(headers, &basic(JENKINS_USER, JENKINS_TOKEN), problems) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            "<html><body><h2>HTTP ERROR 404 Not Found</h2></body></html>",
        )
    };
    let Ok(n) = item.parse::<u64>() else {
        problems.push(format!("queue item `{item}` is not a number"));
        return not_found().into_response();
    };
    if settings.queue_outcome == QueueOutcome::NotFound {
        return not_found().into_response();
    }
    let base = shared.url.get().unwrap();
    let prefix = &settings.jenkins_prefix;
    let mut jenkins = shared.jenkins.lock().unwrap();
    let Some(mut entry) = jenkins.items.get(&n).cloned() else {
        problems.push(format!("queue item {n} was never created"));
        return not_found().into_response();
    };
    entry.polls += 1;
    let job_path: String = entry.job.iter().map(|s| format!("/job/{s}")).collect();
    let name = entry.job.last().cloned().unwrap_or_default();
    let mut answer = json!({
        "actions": [{"_class": "hudson.model.ParametersAction"}],
        "blocked": false,
        "buildable": false,
        "id": n,
        "inQueueSince": 1_795_000_000_000u64,
        "params": "",
        "stuck": false,
        "task": {
            "_class": "hudson.model.FreeStyleProject",
            "name": name,
            "url": format!("{base}{prefix}{job_path}/"),
            "color": "blue",
        },
        "url": format!("queue/item/{n}/"),
    });
    if entry.polls <= settings.waiting_polls {
        answer["_class"] = "hudson.model.Queue$WaitingItem".into();
        answer["why"] = "Waiting for next available executor".into();
        answer["timestamp"] = 1_795_000_005_000u64.into();
        answer["executable"] = Value::Null;
    } else {
        answer["_class"] = "hudson.model.Queue$LeftItem".into();
        answer["why"] = Value::Null;
        match settings.queue_outcome {
            QueueOutcome::Cancelled => {
                answer["cancelled"] = true.into();
                answer["executable"] = Value::Null;
            }
            _ => {
                let number = match entry.build {
                    Some(b) => b,
                    None => {
                        let counter = jenkins.builds.entry(entry.job.join("/")).or_default();
                        *counter += 1;
                        entry.build = Some(*counter);
                        *counter
                    }
                };
                answer["cancelled"] = false.into();
                answer["executable"] = json!({
                    "_class": "hudson.model.FreeStyleBuild",
                    "number": number,
                    "url": format!("{base}{prefix}{job_path}/{number}/"),
                });
            }
        }
    }
    jenkins.items.insert(n, entry);
    axum::Json(answer).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let settings = shared.settings.lock().unwrap().clone();
    let route = match route(&path, &settings) {
        Ok(r) => r,
        Err(problem) => {
            shared
                .violations
                .lock()
                .unwrap()
                .push(format!("{method} {path}: {problem}"));
            return message(404, "Not Found");
        }
    };
    let api = route.api();
    let mut problems = Vec::new();
    let mut form = Vec::new();
    let mut hung = false;
    let mut body = Value::Null;
    let response = match &route {
        Route::JenkinsQueue { item } => {
            jenkins_queue(&shared, &settings, &method, &headers, item, &mut problems)
        }
        Route::Http => {
            body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            let scripted_reply = shared.script.lock().unwrap().pop_front();
            match scripted_reply {
                None => success(&shared, &route, &settings, &uri, &body, &mut problems),
                Some(Reply::Hang) => {
                    hung = true;
                    StatusCode::GATEWAY_TIMEOUT.into_response()
                }
                Some(reply) => scripted(reply),
            }
        }
        _ => {
            if method != Method::POST {
                problems.push(format!("{method} instead of POST"));
            }
            problems.extend(common_problems(&uri, &headers));
            let authorised = match &route {
                Route::GithubWorkflow { .. } | Route::GithubRepository { .. } => {
                    body = check_json_request(&headers, &raw, &mut problems);
                    check_github(&route, &uri, &headers, &body, &mut problems)
                }
                Route::Gitea { .. } => {
                    body = check_json_request(&headers, &raw, &mut problems);
                    check_gitea(&uri, &headers, &body, &mut problems)
                }
                Route::Buildkite { .. } => {
                    body = check_json_request(&headers, &raw, &mut problems);
                    check_buildkite(&uri, &headers, &body, &mut problems)
                }
                Route::JenkinsBuild { job } => {
                    let (authorised, params) = check_jenkins(&uri, &headers, &raw, job, &mut problems);
                    body = Value::Object(
                        params
                            .iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                            .collect(),
                    );
                    form = params;
                    authorised
                }
                _ => unreachable!(),
            };
            let scripted_reply = shared.script.lock().unwrap().pop_front();
            if !authorised {
                message(401, "Bad credentials")
            } else if !problems.is_empty() {
                message(422, &format!("invalid request: {}", problems.join("; ")))
            } else {
                match scripted_reply {
                    None => success(&shared, &route, &settings, &uri, &body, &mut problems),
                    Some(Reply::Hang) => {
                        hung = true;
                        StatusCode::GATEWAY_TIMEOUT.into_response()
                    }
                    Some(reply) => scripted(reply),
                }
            }
        }
    };
    shared.violations.lock().unwrap().extend(
        problems
            .into_iter()
            .map(|p| format!("{api} {method} {path}: {p}")),
    );
    let mut record = Received {
        api,
        method,
        path,
        query: uri.query().map(str::to_owned),
        headers,
        raw,
        body,
        form,
        status: response.status().as_u16(),
        seq: shared.seq.fetch_add(1, Ordering::SeqCst),
    };
    if hung {
        record.status = 0;
        shared.requests.lock().unwrap().push(record);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    shared.requests.lock().unwrap().push(record);
    response
}
