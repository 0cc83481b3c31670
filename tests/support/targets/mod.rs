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
//! Under the GitHub prefix `/api/v3` the stand-in is GitHub Enterprise Server
//! 3.19, checked against its own description from the same package (see
//! [`github`]).
//!
//! [`verify_standard_webhook`] checks a signed request with the reference
//! Standard Webhooks library (npm `standardwebhooks`, installed into `target/`).
//!
//! Files: this one holds the shared state and [`TargetStandIn`]; `server.rs`
//! routes and answers requests, `reply.rs` scripts replies, `checks.rs` holds
//! the checks every API shares, `install.rs` the npm installs, and one file
//! per API family (`github.rs`, `gitea.rs`, `buildkite.rs`, `jenkins.rs`,
//! `http.rs`) its checks and answers.
#![allow(dead_code, clippy::unwrap_used)]

mod buildkite;
pub(crate) mod checks;
mod gitea;
mod github;
mod http;
mod install;
mod jenkins;
mod reply;
mod server;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use serde_json::Value;

#[allow(unused_imports)]
pub(crate) use gitea::GiteaMode;
#[allow(unused_imports)]
pub(crate) use install::{
    OCTOKIT_GHES_SPEC_SHA256, OCTOKIT_OPENAPI, OCTOKIT_SPEC_SHA256, OCTOKIT_TARBALL_SHA256,
    STANDARDWEBHOOKS_NPM, octokit_ghes_spec, octokit_spec, standardwebhooks_dir, target_dir,
    verify_standard_webhook,
};
#[allow(unused_imports)]
pub(crate) use jenkins::QueueOutcome;
#[allow(unused_imports)]
pub(crate) use reply::Reply;

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
// Modes

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
    jenkins: Mutex<jenkins::Jenkins>,
}

// ---------------------------------------------------------------------------
// The stand-in

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
            github::validators();
            gitea::validators();
            buildkite::validator();
        })
        .await
        .unwrap();
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        shared.url.set(url.clone()).unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TargetStandIn { url, shared }
    }

    /// GitHub's API under a path prefix (GHES: `/api/v3`); "" for none.
    ///
    /// Under `/api/v3` the stand-in answers as GitHub Enterprise Server 3.19
    /// (see [`octokit_ghes_spec`]); its description starts loading now, in
    /// the background, and the first request to it waits for it.
    pub(crate) fn set_github_prefix(&self, prefix: &str) {
        let prefix = normalise_prefix(prefix);
        if github::is_enterprise(&prefix) {
            github::load_enterprise_in_background();
        }
        self.shared.settings.lock().unwrap().github_prefix = prefix;
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
