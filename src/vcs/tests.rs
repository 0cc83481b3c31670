//! What every VCS shares: the state tables, input checks, and how an answer
//! (or no answer) becomes a [`Posted`], with the token in no reason.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::*;

pub(crate) const SHA: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";
const TOKEN: &str = "vcs-live-token-1234567890";

/// Every state, in the order the tables of the VCS files list them.
pub(crate) const ALL: [StatusState; 6] = [
    StatusState::Pending,
    StatusState::Running,
    StatusState::Success,
    StatusState::Failure,
    StatusState::Error,
    StatusState::Canceled,
];

pub(crate) fn api(url: &str) -> Api {
    Api {
        url: url.into(),
        token: Secret::new(TOKEN),
        user: None,
    }
}

pub(crate) fn sample(state: StatusState) -> StatusPost<'static> {
    StatusPost {
        repository: "octo-org/hello-world",
        sha: SHA,
        git_ref: Some("refs/heads/main"),
        context: "hookbridge/deploy",
        state,
        description: "GitLab pipeline #1234 running",
        target_url: Some("https://gitlab.example.com/g/p/-/pipelines/1234"),
    }
}

const EVERY_VCS: [Vcs; 6] = [
    Vcs::Github,
    Vcs::Gitlab,
    Vcs::BitbucketCloud,
    Vcs::BitbucketDatacenter,
    Vcs::Gitea,
    Vcs::Forgejo,
];

#[test]
fn each_vcs_has_its_word_for_each_state() {
    let table = [
        (
            Vcs::Github,
            ["pending", "pending", "success", "failure", "error", "error"],
        ),
        (
            Vcs::Gitlab,
            ["pending", "running", "success", "failed", "failed", "canceled"],
        ),
        (
            Vcs::BitbucketCloud,
            [
                "INPROGRESS",
                "INPROGRESS",
                "SUCCESSFUL",
                "FAILED",
                "FAILED",
                "STOPPED",
            ],
        ),
        (
            Vcs::BitbucketDatacenter,
            [
                "INPROGRESS",
                "INPROGRESS",
                "SUCCESSFUL",
                "FAILED",
                "FAILED",
                "CANCELLED",
            ],
        ),
        (
            Vcs::Gitea,
            ["pending", "pending", "success", "failure", "error", "error"],
        ),
        (
            Vcs::Forgejo,
            ["pending", "pending", "success", "failure", "error", "error"],
        ),
    ];
    for (vcs, words) in table {
        assert_eq!(ALL.map(|s| wire_state(vcs, s)), words, "{vcs:?}");
    }
}

#[test]
fn public_apis_have_default_urls() {
    assert_eq!(
        EVERY_VCS.map(default_url),
        [
            Some("https://api.github.com"),
            Some("https://gitlab.com"),
            Some("https://api.bitbucket.org"),
            None,
            None,
            None
        ]
    );
}

#[test]
fn a_commit_is_7_to_64_hex_digits() {
    for sha in ["abc1234", SHA, &"a".repeat(64), "ABCDEF0"] {
        let mut p = sample(StatusState::Pending);
        p.sha = sha;
        for vcs in EVERY_VCS {
            let mut p = p;
            p.repository = if vcs == Vcs::Gitlab { "g/p" } else { "a/b" };
            assert!(
                status_request(vcs, &api("https://h"), &p).is_ok(),
                "{vcs:?} {sha}"
            );
        }
    }
    for sha in [
        "abc123",
        "",
        &"a".repeat(65),
        "9fceb02/../x",
        "zzzzzzz",
        "abc1234 ",
    ] {
        let mut p = sample(StatusState::Pending);
        p.sha = sha;
        for vcs in EVERY_VCS {
            let e = status_request(vcs, &api("https://h"), &p).unwrap_err();
            assert!(
                e.contains("is not a hex sha of 7 to 64 digits"),
                "{vcs:?} {sha}: {e}"
            );
        }
    }
}

#[test]
fn an_empty_context_or_api_url_is_refused() {
    let mut p = sample(StatusState::Pending);
    p.context = " ";
    let e = status_request(Vcs::Github, &api("https://h"), &p).unwrap_err();
    assert_eq!(e, "the status context is empty");
    let e = status_request(Vcs::Gitea, &api("/"), &sample(StatusState::Pending)).unwrap_err();
    assert_eq!(e, "no API URL for gitea");
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    Response {
        status,
        headers: map,
        body: body.to_owned().into(),
    }
}

#[test]
fn answers_are_done_retried_or_permanent() {
    let r = Redactor::new(TOKEN);
    let now = SystemTime::now();
    for status in [200, 201, 204] {
        assert_eq!(
            classify(&response(status, &[], ""), &r, now),
            Posted::Done { status }
        );
    }
    for status in [408, 425, 429, 500, 502, 503] {
        let got = classify(&response(status, &[("retry-after", "7")], "busy"), &r, now);
        assert_eq!(
            got,
            Posted::Retry {
                reason: format!("HTTP {status}: busy"),
                after: Some(Duration::from_secs(7)),
                status: Some(status)
            }
        );
    }
    let cases = [
        (
            401,
            r#"{"message":"Bad credentials"}"#,
            "HTTP 401: Bad credentials",
        ),
        (
            404,
            r#"{"message":"404 Project Not Found"}"#,
            "HTTP 404: 404 Project Not Found",
        ),
        (
            400,
            r#"{"type":"error","error":{"message":"key: too long"}}"#,
            "HTTP 400: key: too long",
        ),
        (
            400,
            r#"{"errors":[{"context":null,"message":"The build state is invalid"}]}"#,
            "HTTP 400: The build state is invalid",
        ),
        (422, "", "HTTP 422: "),
    ];
    for (status, body, reason) in cases {
        assert_eq!(
            classify(&response(status, &[], body), &r, now),
            Posted::Permanent {
                reason: reason.into(),
                status: Some(status)
            }
        );
    }
}

/// Answers with what it is given, and remembers the request.
struct Fake {
    answer: Mutex<Option<Result<Response, SendError>>>,
    seen: Mutex<Vec<OutboundRequest>>,
}

#[async_trait::async_trait]
impl Transport for Fake {
    async fn send(
        &self,
        request: &OutboundRequest,
        token: Option<&Secret>,
        _: Duration,
    ) -> Result<Response, SendError> {
        assert_eq!(token.map(Secret::expose), Some(TOKEN));
        self.seen.lock().unwrap().push(request.clone());
        self.answer.lock().unwrap().take().unwrap()
    }
}

async fn post_with(answer: Result<Response, SendError>, p: &StatusPost<'_>) -> (Posted, usize) {
    let fake = Fake {
        answer: Mutex::new(Some(answer)),
        seen: Mutex::new(Vec::new()),
    };
    let posted = post_status(
        &fake,
        Vcs::Github,
        &api("https://api.github.com"),
        p,
        Duration::from_secs(5),
        SystemTime::now(),
    )
    .await;
    let sent = fake.seen.lock().unwrap().len();
    (posted, sent)
}

#[tokio::test]
async fn the_token_is_in_no_reason() {
    let p = sample(StatusState::Success);
    let echo = format!(r#"{{"message":"token {TOKEN} is not valid"}}"#);
    let (posted, _) = post_with(Ok(response(401, &[], &echo)), &p).await;
    assert_eq!(
        posted,
        Posted::Permanent {
            reason: "HTTP 401: token *** is not valid".into(),
            status: Some(401)
        }
    );
    let (posted, _) = post_with(Ok(response(503, &[], &echo)), &p).await;
    assert!(
        matches!(&posted, Posted::Retry { reason, .. } if !reason.contains(TOKEN)),
        "{posted:?}"
    );
    let (posted, _) = post_with(Err(SendError::Connect(format!("refused for {TOKEN}"))), &p).await;
    assert_eq!(
        posted,
        Posted::Retry {
            reason: "cannot connect to the VCS API: refused for ***".into(),
            after: None,
            status: None
        }
    );
    let (posted, _) = post_with(Err(SendError::Build("bad header".into())), &p).await;
    assert!(
        matches!(posted, Posted::Permanent { status: None, .. }),
        "{posted:?}"
    );
}

#[tokio::test]
async fn a_request_that_cannot_be_built_is_permanent_and_not_sent() {
    let mut p = sample(StatusState::Success);
    p.repository = TOKEN;
    let (posted, sent) = post_with(Ok(response(201, &[], "")), &p).await;
    assert_eq!(sent, 0);
    assert_eq!(
        posted,
        Posted::Permanent {
            reason: "repository `***` is not `owner/repo`".into(),
            status: None
        }
    );
}

proptest::proptest! {
    /// Whatever the event and the template say, building a request returns
    /// (a request or a reason) and never panics; a request's URL starts at
    /// the API and keeps every value inside its segments.
    #[test]
    fn requests_never_panic(
        repository in "\\PC{0,40}",
        sha in "[0-9a-fA-F./%]{0,70}",
        context in "\\PC{0,60}",
        git_ref in proptest::option::of("\\PC{0,30}"),
        user in proptest::option::of("\\PC{0,10}"),
        which in 0usize..6,
        state in 0usize..6,
    ) {
        let vcs = EVERY_VCS[which];
        let a = Api { user, ..api("https://vcs.example.com/base") };
        let p = StatusPost {
            repository: &repository,
            sha: &sha,
            git_ref: git_ref.as_deref(),
            context: &context,
            state: ALL[state],
            description: "d",
            target_url: None,
        };
        if let Ok(r) = status_request(vcs, &a, &p) {
            proptest::prop_assert!(r.url.starts_with("https://vcs.example.com/base/"), "{}", r.url);
            proptest::prop_assert!(!crate::target::encode::has_dot_segment(&r.url), "{}", r.url);
            proptest::prop_assert!(!r.url.contains(['?', '#', ' ']), "{}", r.url);
        }
    }

    /// Any status, body and `Retry-After` is classified without a panic, and
    /// the token never survives into the reason.
    #[test]
    fn classification_never_panics(
        status in 0u16..1000,
        body in "\\PC{0,80}",
        retry in "\\PC{0,20}",
    ) {
        let r = Redactor::new(TOKEN);
        let mut response = response(status, &[], &format!("{body}{TOKEN}"));
        if let Ok(v) = http::HeaderValue::from_str(&retry) {
            response.headers.insert("retry-after", v);
        }
        match classify(&response, &r, SystemTime::now()) {
            Posted::Done { .. } => proptest::prop_assert!((200..300).contains(&status)),
            Posted::Retry { reason, .. } | Posted::Permanent { reason, .. } => {
                proptest::prop_assert!(!reason.contains(TOKEN), "{reason}");
            }
        }
    }
}
