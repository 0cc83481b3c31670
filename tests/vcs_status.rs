//! Commit statuses over real HTTP: `hookbridge::vcs::post_status` through the
//! daemon's HTTP client to a stand-in of each VCS (`support::vcs`), which
//! checks every post against the vendor's published schema.
//!
//! For GitHub, GitHub Enterprise Server, GitLab, Bitbucket Cloud and Data
//! Center, Gitea and Forgejo: every state lands as the VCS's word with the
//! right body; a 503 is retried after its `Retry-After`; a 401 or 404 is
//! permanent; no reason carries the token, however the VCS echoes it.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hookbridge::config::secret::Secret;
use hookbridge::store::status::{StatusState, Vcs};
use hookbridge::target::client::{Http, Transport};
use hookbridge::vcs::{self, Posted as Outcome, StatusPost};
use support::vcs::{BITBUCKET_USER, TOKENS, VcsStandIn};

const SHA: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";
const CONTEXT: &str = "hookbridge/deploy";
const PIPELINE: &str = "https://gitlab.example.com/g/p/-/pipelines/1234";
const TIMEOUT: Duration = Duration::from_secs(10);

const ALL: [StatusState; 6] = [
    StatusState::Pending,
    StatusState::Running,
    StatusState::Success,
    StatusState::Failure,
    StatusState::Error,
    StatusState::Canceled,
];

/// A stand-in to post to: a VCS, and GHES (GitHub under `/api/v3`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Github,
    Ghes,
    Gitlab,
    BitbucketCloud,
    BitbucketDc,
    Gitea,
    Forgejo,
}

impl Kind {
    fn vcs(self) -> Vcs {
        match self {
            Kind::Github | Kind::Ghes => Vcs::Github,
            Kind::Gitlab => Vcs::Gitlab,
            Kind::BitbucketCloud => Vcs::BitbucketCloud,
            Kind::BitbucketDc => Vcs::BitbucketDatacenter,
            Kind::Gitea => Vcs::Gitea,
            Kind::Forgejo => Vcs::Forgejo,
        }
    }

    async fn start(self) -> VcsStandIn {
        match self {
            Kind::Ghes => VcsStandIn::start_ghes().await,
            _ => VcsStandIn::start(self.vcs()).await,
        }
    }

    /// The repository as the VCS's source names it in events.
    fn repository(self) -> &'static str {
        match self {
            Kind::Gitlab => "group/sub/app",
            Kind::BitbucketCloud => "my-team/my-repo",
            Kind::BitbucketDc => "PRJ/my-repo",
            _ => "octo-org/hello-world",
        }
    }

    /// The VCS's word for each of [`ALL`].
    fn words(self) -> [&'static str; 6] {
        match self.vcs() {
            Vcs::Github | Vcs::Gitea | Vcs::Forgejo => {
                ["pending", "pending", "success", "failure", "error", "error"]
            }
            Vcs::Gitlab => ["pending", "running", "success", "failed", "failed", "canceled"],
            Vcs::BitbucketCloud => [
                "INPROGRESS",
                "INPROGRESS",
                "SUCCESSFUL",
                "FAILED",
                "FAILED",
                "STOPPED",
            ],
            Vcs::BitbucketDatacenter => [
                "INPROGRESS",
                "INPROGRESS",
                "SUCCESSFUL",
                "FAILED",
                "FAILED",
                "CANCELLED",
            ],
        }
    }

    /// The ref the VCS records for `refs/heads/main`.
    fn git_ref(self) -> Option<&'static str> {
        match self {
            Kind::Gitlab | Kind::BitbucketCloud => Some("main"),
            Kind::BitbucketDc => Some("refs/heads/main"),
            _ => None,
        }
    }
}

fn post(kind: Kind, state: StatusState, target_url: Option<&'static str>) -> StatusPost<'static> {
    StatusPost {
        repository: kind.repository(),
        sha: SHA,
        git_ref: Some("refs/heads/main"),
        context: CONTEXT,
        state,
        description: "GitLab pipeline #1234",
        target_url,
    }
}

async fn send(s: &VcsStandIn, api: &vcs::Api, p: &StatusPost<'_>) -> Outcome {
    let outcome = vcs::post_status(&Http::new(), s.vcs(), api, p, TIMEOUT, SystemTime::now()).await;
    assert_no_token(&outcome);
    outcome
}

/// No reason holds a token, as sent or as `Basic` base64 of `user:token`.
fn assert_no_token(outcome: &Outcome) {
    let reason = match outcome {
        Outcome::Done { .. } => return,
        Outcome::Retry { reason, .. } | Outcome::Permanent { reason, .. } => reason,
    };
    for token in TOKENS {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{BITBUCKET_USER}:{token}"));
        assert!(!reason.contains(token), "a token in {reason}");
        assert!(!reason.contains(&basic), "a Basic credential in {reason}");
    }
}

fn assert_clean(s: &VcsStandIn) {
    let problems = s.problems();
    assert!(
        problems.is_empty(),
        "the stand-in saw invalid requests:\n{}",
        problems.join("\n")
    );
}

/// Every state, the first without a pipeline yet: each is one accepted
/// post with the VCS's word, the commit, the context and the link.
async fn every_state_lands(kind: Kind, basic: bool) {
    let s = kind.start().await;
    let api = if basic { s.api_basic() } else { s.api() };
    for (i, state) in ALL.into_iter().enumerate() {
        let link = (i > 0).then_some(PIPELINE);
        let outcome = send(&s, &api, &post(kind, state, link)).await;
        let created = if kind == Kind::BitbucketDc { 204 } else { 201 };
        assert_eq!(outcome, Outcome::Done { status: created }, "{kind:?} {state:?}");
    }
    assert_clean(&s);
    let posts = s.posts();
    assert_eq!(posts.len(), ALL.len(), "{posts:#?}");
    let bitbucket = matches!(kind, Kind::BitbucketCloud | Kind::BitbucketDc);
    for (i, (p, word)) in posts.iter().zip(kind.words()).enumerate() {
        assert_eq!(p.repository, kind.repository());
        assert_eq!(p.sha, SHA);
        assert_eq!(p.context, CONTEXT);
        assert_eq!(p.state, word, "{kind:?} post {i}");
        assert_eq!(p.description.as_deref(), Some("GitLab pipeline #1234"));
        assert_eq!(p.git_ref.as_deref(), kind.git_ref(), "{kind:?}");
        let link = match (i, kind) {
            (0, Kind::BitbucketCloud) => Some(format!("https://bitbucket.org/my-team/my-repo/commits/{SHA}")),
            (0, Kind::BitbucketDc) => Some(format!("{}/projects/PRJ/repos/my-repo/commits/{SHA}", s.url())),
            (0, _) => None,
            _ => Some(PIPELINE.to_owned()),
        };
        assert_eq!(p.target_url, link, "{kind:?} post {i}");
        // One key per context: every post updates the same build.
        assert_eq!(p.key.as_deref(), bitbucket.then_some(CONTEXT));
    }
}

/// A 503 with `Retry-After: 1` is retried after a second and records
/// nothing; the next post lands.
async fn a_503_is_retried_after_its_retry_after(kind: Kind) {
    let s = kind.start().await;
    s.fail_next(503, 1);
    let p = post(kind, StatusState::Success, Some(PIPELINE));
    match send(&s, &s.api(), &p).await {
        Outcome::Retry {
            reason,
            after,
            status,
        } => {
            assert_eq!(status, Some(503));
            assert_eq!(after, Some(Duration::from_secs(1)));
            assert!(reason.starts_with("HTTP 503: scripted 503"), "{reason}");
        }
        other => panic!("{kind:?}: {other:?}"),
    }
    assert!(s.posts().is_empty());
    assert!(matches!(send(&s, &s.api(), &p).await, Outcome::Done { .. }));
    assert_eq!(s.posts().len(), 1);
    assert_clean(&s);
}

/// 401 and 404 are permanent; the VCS's echo of the credential is not in
/// the reason (Bitbucket: with Basic credentials too).
async fn a_401_or_404_is_permanent(kind: Kind) {
    let s = kind.start().await;
    let mut apis = vec![s.api()];
    if matches!(kind, Kind::BitbucketCloud | Kind::BitbucketDc) {
        apis.push(s.api_basic());
    }
    for api in apis {
        for status in [401, 404] {
            s.fail_next(status, 1);
            match send(&s, &api, &post(kind, StatusState::Failure, None)).await {
                Outcome::Permanent { reason, status: got } => {
                    assert_eq!(got, Some(status));
                    assert!(
                        reason.starts_with(&format!("HTTP {status}: scripted {status} for credential ")),
                        "{reason}"
                    );
                    assert!(
                        reason.contains("***"),
                        "the echoed credential is redacted: {reason}"
                    );
                }
                other => panic!("{kind:?}: {other:?}"),
            }
        }
    }
    assert!(s.posts().is_empty());
    assert_clean(&s);
}

/// The stand-in is no pushover: a wrong token is a 401 and a problem, and
/// a state outside the VCS's vocabulary is refused by its schema.
async fn the_stand_in_refuses_what_the_vcs_would(kind: Kind) {
    let s = kind.start().await;
    let wrong = vcs::Api {
        token: Secret::new("wrong-token-0123456789"),
        ..s.api()
    };
    let outcome = send(&s, &wrong, &post(kind, StatusState::Success, None)).await;
    assert!(
        matches!(
            outcome,
            Outcome::Permanent {
                status: Some(401),
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(!s.problems().is_empty());

    let s = kind.start().await;
    let mut request =
        vcs::status_request(s.vcs(), &s.api(), &post(kind, StatusState::Success, None)).unwrap();
    request.body["state"] = "running-ish".into();
    let response = Http::new()
        .send(&request, Some(&Secret::new(s.token())), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(response.status, 422);
    let problems = s.problems().join("\n");
    assert!(problems.contains("running-ish"), "{kind:?}: {problems}");
    assert!(s.posts().is_empty());
}

macro_rules! per_vcs {
    ($($name:ident => $kind:expr),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn every_state_lands() {
                super::every_state_lands($kind, false).await;
            }

            #[tokio::test]
            async fn a_503_is_retried_after_its_retry_after() {
                super::a_503_is_retried_after_its_retry_after($kind).await;
            }

            #[tokio::test]
            async fn a_401_or_404_is_permanent() {
                super::a_401_or_404_is_permanent($kind).await;
            }

            #[tokio::test]
            async fn the_stand_in_refuses_what_the_vcs_would() {
                super::the_stand_in_refuses_what_the_vcs_would($kind).await;
            }
        }
    )*};
}

per_vcs! {
    github => Kind::Github,
    ghes => Kind::Ghes,
    gitlab => Kind::Gitlab,
    bitbucket_cloud => Kind::BitbucketCloud,
    bitbucket_dc => Kind::BitbucketDc,
    gitea => Kind::Gitea,
    forgejo => Kind::Forgejo,
}

#[tokio::test]
async fn bitbucket_takes_basic_credentials_too() {
    every_state_lands(Kind::BitbucketCloud, true).await;
    every_state_lands(Kind::BitbucketDc, true).await;
}

/// A long context keys its Bitbucket build by a digest: the same key for
/// every post of that context, within Bitbucket's 40 characters.
#[tokio::test]
async fn a_long_context_keeps_one_bitbucket_key() {
    for kind in [Kind::BitbucketCloud, Kind::BitbucketDc] {
        let s = kind.start().await;
        let context = "hookbridge/a-rule-with-a-rather-long-name/and-a-workflow";
        for state in [StatusState::Pending, StatusState::Success] {
            let p = StatusPost {
                context,
                ..post(kind, state, Some(PIPELINE))
            };
            assert!(matches!(send(&s, &s.api(), &p).await, Outcome::Done { .. }));
        }
        assert_clean(&s);
        let posts = s.posts();
        assert_eq!(posts[0].context, context);
        let key = posts[0].key.clone().unwrap();
        assert_eq!(posts[1].key.as_deref(), Some(key.as_str()));
        assert!(key.len() <= 40 && key != context, "{key}");
    }
}

/// A repository the VCS cannot name, or a commit that is no sha, is
/// permanent before anything is sent.
#[tokio::test]
async fn outside_values_that_cannot_be_a_path_are_permanent_unsent() {
    let s = VcsStandIn::start(Vcs::Gitea).await;
    for (repository, sha) in [
        ("just-a-name", SHA),
        ("octo/../../admin", SHA),
        ("octo/app", "HEAD"),
    ] {
        let p = StatusPost {
            repository,
            sha,
            ..post(Kind::Gitea, StatusState::Pending, None)
        };
        let outcome = send(&s, &s.api(), &p).await;
        assert!(
            matches!(outcome, Outcome::Permanent { status: None, .. }),
            "{outcome:?}"
        );
    }
    assert_eq!(s.received(), 0);
}

/// GitLab refuses to move a status to the state it is in ("Cannot
/// transition status via :run from :running", 400): the commit shows
/// what was to be posted, so the post is done, not dead.
#[tokio::test]
async fn gitlab_refusing_the_state_it_is_in_counts_as_posted() {
    let s = Kind::Gitlab.start().await;
    let p = post(Kind::Gitlab, StatusState::Running, Some(PIPELINE));
    assert_eq!(send(&s, &s.api(), &p).await, Outcome::Done { status: 201 });
    assert_eq!(send(&s, &s.api(), &p).await, Outcome::Done { status: 400 });
    assert_eq!(s.posts().len(), 1);
    assert_clean(&s);
}

/// GitHub answers its rate limits with 403 and a time to come back: the
/// status is retried then, not given up.
#[tokio::test]
async fn a_github_rate_limit_403_is_retried() {
    let s = Kind::Github.start().await;
    s.fail_next_with(403, 1, Some(5));
    let p = post(Kind::Github, StatusState::Success, Some(PIPELINE));
    match send(&s, &s.api(), &p).await {
        Outcome::Retry { after, status, .. } => {
            assert_eq!((after, status), (Some(Duration::from_secs(5)), Some(403)));
        }
        other => panic!("{other:?}"),
    }
    // A 403 without a time to wait is a token without the scope: permanent.
    s.fail_next_with(403, 1, None);
    assert!(matches!(
        send(&s, &s.api(), &p).await,
        Outcome::Permanent {
            status: Some(403),
            ..
        }
    ));
    assert_clean(&s);
}
