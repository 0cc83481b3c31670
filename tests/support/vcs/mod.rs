//! Stand-in VCS commit-status APIs on 127.0.0.1, one server per VCS:
//! GitHub (and GitHub Enterprise Server under `/api/v3`), GitLab, Bitbucket
//! Cloud, Bitbucket Data Center, Gitea and Forgejo.
//!
//! Every status post is checked against the vendor's published description
//! (`checks.rs`): GitHub's `repos/create-commit-status` request body from
//! npm `@octokit/openapi` (api.github.com, or GHES 3.19 under `/api/v3`),
//! GitLab's `postApiV4ProjectsIdStatusesSha`, Bitbucket Cloud's
//! `commitstatus`, Gitea's and Forgejo's `CreateStatusOption` (all in
//! `tests/fixtures/openapi/`), and, for Bitbucket Data Center, which
//! publishes none, the documented shape by hand. Also checked: the method,
//! the path and its commit (7 to 64 hex digits), the credential, the
//! content type, and no token in the URL. Violations are collected, never
//! answered with a panic; tests assert there are none.
//!
//! How to use it from any test binary (`mod support;`):
//!
//! ```ignore
//! let vcs = VcsStandIn::start(Vcs::Gitea).await;    // or VcsStandIn::start_ghes()
//! // [sources.gitea.api] url = vcs.url(), token = vcs.token()
//! // ... or hookbridge::vcs::Api from vcs.api() / vcs.api_basic() (Bitbucket)
//! vcs.fail_next(503, 2);                              // the next 2 posts get 503 + Retry-After: 1
//! let posts = vcs.wait_for(|p| p.len() == 3, Duration::from_secs(10)).await;
//! assert_eq!(posts[2].state, "failure");
//! assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
//! ```
//!
//! - [`VcsStandIn::url`]: the value of `[sources.NAME.api] url` (with
//!   `/api/v3` for GHES); [`VcsStandIn::token`]: the token it accepts.
//!   Bitbucket also accepts `Basic` [`BITBUCKET_USER`]`:token`.
//! - [`VcsStandIn::posts`]: the accepted posts, in order, as [`Posted`]
//!   (sha, context, wire state, description, target URL, Bitbucket key).
//!   Posts refused for a problem or answered by [`VcsStandIn::fail_next`]
//!   are not among them.
//! - [`VcsStandIn::problems`]: every schema or shape violation seen.
//! - [`VcsStandIn::fail_next`]: answer the next posts with an error status
//!   (in the VCS's error body, which echoes the credential received, as a
//!   careless server might: a client must not repeat it), with
//!   `Retry-After: 1` on 408, 425, 429 and 5xx.
//! - [`VcsStandIn::wait_for`]: poll the posts until a predicate holds.
#![allow(dead_code, clippy::unwrap_used)]

mod checks;
pub(crate) mod files;
mod server;

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookbridge::config::secret::Secret;
use hookbridge::store::status::Vcs;
use serde_json::Value;

/// `Authorization: Bearer` on the GitHub stand-ins.
pub(crate) const GITHUB_STATUS_TOKEN: &str = "ghp_vcsStandInCommitStatusToken0000000001";
/// `PRIVATE-TOKEN` on the GitLab stand-in.
pub(crate) const GITLAB_STATUS_TOKEN: &str = "glpat-vcs-stand-in-status-token-0123456789";
/// `Authorization: Bearer` (or Basic's password) on the Bitbucket Cloud stand-in.
pub(crate) const BITBUCKET_CLOUD_TOKEN: &str = "ATCTT3xFfGN0-vcs-stand-in-cloud-token-0123456789";
/// `Authorization: Bearer` (or Basic's password) on the Bitbucket Data Center stand-in.
pub(crate) const BITBUCKET_DC_TOKEN: &str = "BBDC-vcs-stand-in-datacenter-token-0123456789";
/// `Authorization: token` on the Gitea stand-in.
pub(crate) const GITEA_STATUS_TOKEN: &str = "gitea-vcs-stand-in-status-token-0123456789abcdef";
/// `Authorization: token` on the Forgejo stand-in.
pub(crate) const FORGEJO_STATUS_TOKEN: &str = "forgejo-vcs-stand-in-status-token-0123456789abcdef";
/// The user of `Authorization: Basic` on both Bitbucket stand-ins.
pub(crate) const BITBUCKET_USER: &str = "dev@example.com";

/// Every token of these stand-ins (none may appear in a URL or a reason).
pub(crate) const TOKENS: [&str; 6] = [
    GITHUB_STATUS_TOKEN,
    GITLAB_STATUS_TOKEN,
    BITBUCKET_CLOUD_TOKEN,
    BITBUCKET_DC_TOKEN,
    GITEA_STATUS_TOKEN,
    FORGEJO_STATUS_TOKEN,
];

/// One accepted status post, as the VCS would store it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Posted {
    /// As the path named it, decoded: `owner/repo`, GitLab's project path or
    /// id, Bitbucket's `workspace/slug` or `KEY/slug`.
    pub repository: String,
    pub sha: String,
    /// `context` (GitHub, Gitea, Forgejo; GitHub's default `default`), or
    /// `name` (GitLab, Bitbucket).
    pub context: String,
    /// The VCS's word (`pending`, `failed`, `INPROGRESS`, ...).
    pub state: String,
    pub description: Option<String>,
    /// `target_url`, or Bitbucket's `url`.
    pub target_url: Option<String>,
    /// Bitbucket's build `key`.
    pub key: Option<String>,
    /// GitLab's `ref`, Bitbucket Cloud's `refname`, Data Center's `ref`.
    pub git_ref: Option<String>,
    /// The whole JSON body.
    pub body: Value,
}

/// An error answer queued by [`VcsStandIn::fail_next`].
#[derive(Debug, Clone, Copy)]
struct Failure {
    status: u16,
    retry_after: Option<u64>,
}

#[derive(Default)]
struct Shared {
    posts: Mutex<Vec<Posted>>,
    problems: Mutex<Vec<String>>,
    failures: Mutex<VecDeque<Failure>>,
    /// Every request that reached the server.
    received: AtomicUsize,
    /// What the file reads see (`files::History`), and their log.
    history: Mutex<files::History>,
    reads: Mutex<Vec<String>>,
    /// Answers queued for the next reads of changed files.
    read_failures: Mutex<VecDeque<Failure>>,
}

/// A running stand-in for one VCS's commit-status API.
#[derive(Clone)]
pub(crate) struct VcsStandIn {
    vcs: Vcs,
    /// GitHub Enterprise Server 3.19 under `/api/v3`.
    ghes: bool,
    /// `http://127.0.0.1:<port>`.
    origin: String,
    shared: Arc<Shared>,
}

impl VcsStandIn {
    /// Loads the VCS's description (GitHub's is installed from npm on first
    /// use), then serves on a free port.
    pub(crate) async fn start(vcs: Vcs) -> VcsStandIn {
        VcsStandIn::serve(vcs, false).await
    }

    /// GitHub Enterprise Server 3.19: GitHub under `/api/v3`, checked
    /// against that release's description.
    pub(crate) async fn start_ghes() -> VcsStandIn {
        VcsStandIn::serve(Vcs::Github, true).await
    }

    async fn serve(vcs: Vcs, ghes: bool) -> VcsStandIn {
        tokio::task::spawn_blocking(move || checks::load(vcs, ghes))
            .await
            .unwrap();
        let shared = Arc::new(Shared::default());
        let state = server::State {
            vcs,
            ghes,
            shared: shared.clone(),
        };
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(Arc::new(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        VcsStandIn {
            vcs,
            ghes,
            origin,
            shared,
        }
    }

    pub(crate) fn vcs(&self) -> Vcs {
        self.vcs
    }

    /// The value of `[sources.NAME.api] url`.
    pub(crate) fn url(&self) -> String {
        if self.ghes {
            format!("{}/api/v3", self.origin)
        } else {
            self.origin.clone()
        }
    }

    /// The token this stand-in accepts.
    pub(crate) fn token(&self) -> &'static str {
        token_of(self.vcs)
    }

    /// The client's `[sources.NAME.api]` for this stand-in (Bearer, or the
    /// VCS's own header).
    pub(crate) fn api(&self) -> hookbridge::vcs::Api {
        hookbridge::vcs::Api {
            url: self.url(),
            token: Secret::new(self.token()),
            user: None,
        }
    }

    /// As [`VcsStandIn::api`] with `user` = [`BITBUCKET_USER`]: Basic auth
    /// (Bitbucket only).
    pub(crate) fn api_basic(&self) -> hookbridge::vcs::Api {
        hookbridge::vcs::Api {
            user: Some(BITBUCKET_USER.into()),
            ..self.api()
        }
    }

    /// The accepted posts, in arrival order.
    pub(crate) fn posts(&self) -> Vec<Posted> {
        self.shared.posts.lock().unwrap().clone()
    }

    /// Every schema or shape violation seen so far.
    pub(crate) fn problems(&self) -> Vec<String> {
        self.shared.problems.lock().unwrap().clone()
    }

    /// How many requests reached the server, valid or not, failed or not.
    pub(crate) fn received(&self) -> usize {
        self.shared.received.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answer the next `count` valid posts with `status` (not recording
    /// them), with `Retry-After: 1` when the status is one to retry.
    pub(crate) fn fail_next(&self, status: u16, count: usize) {
        let retryable = matches!(status, 408 | 425 | 429 | 500..=599);
        self.fail_next_with(status, count, retryable.then_some(1));
    }

    /// Answer normally again: drop the failures still queued.
    pub(crate) fn recover(&self) {
        self.shared.failures.lock().unwrap().clear();
    }

    /// As [`VcsStandIn::fail_next`], with this `Retry-After` (or none).
    pub(crate) fn fail_next_with(&self, status: u16, count: usize, retry_after: Option<u64>) {
        let mut failures = self.shared.failures.lock().unwrap();
        failures.extend(std::iter::repeat_n(Failure { status, retry_after }, count));
    }

    /// Set what the repository's file reads see.
    pub(crate) fn set_history(&self, history: files::History) {
        *self.shared.history.lock().unwrap() = history;
    }

    /// Every read of changed files (GET), as `path?query`, in order.
    pub(crate) fn reads(&self) -> Vec<String> {
        self.shared.reads.lock().unwrap().clone()
    }

    /// Answer the next `count` reads of changed files with `status`, with
    /// `Retry-After: 1` when the status is one to retry.
    pub(crate) fn fail_reads(&self, status: u16, count: usize) {
        let retryable = matches!(status, 408 | 425 | 429 | 500..=599);
        let failure = Failure {
            status,
            retry_after: retryable.then_some(1),
        };
        self.shared
            .read_failures
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(failure, count));
    }

    /// Answer reads normally again.
    pub(crate) fn recover_reads(&self) {
        self.shared.read_failures.lock().unwrap().clear();
    }

    /// Poll the posts until `pred` holds, at most `timeout`; then panic,
    /// showing the posts and problems seen.
    pub(crate) async fn wait_for(&self, pred: impl Fn(&[Posted]) -> bool, timeout: Duration) -> Vec<Posted> {
        super::wait_for(
            timeout,
            &format!("posts to the {:?} stand-in", self.vcs),
            async || {
                let posts = self.posts();
                if pred(&posts) {
                    Ok(posts)
                } else {
                    Err(format!("posts {posts:#?}\nproblems {:#?}", self.problems()))
                }
            },
        )
        .await
    }
}

/// The token the stand-in of `vcs` accepts.
pub(crate) fn token_of(vcs: Vcs) -> &'static str {
    match vcs {
        Vcs::Github => GITHUB_STATUS_TOKEN,
        Vcs::Gitlab => GITLAB_STATUS_TOKEN,
        Vcs::BitbucketCloud => BITBUCKET_CLOUD_TOKEN,
        Vcs::BitbucketDatacenter => BITBUCKET_DC_TOKEN,
        Vcs::Gitea => GITEA_STATUS_TOKEN,
        Vcs::Forgejo => FORGEJO_STATUS_TOKEN,
    }
}
