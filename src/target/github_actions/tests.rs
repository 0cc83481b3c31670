//! GitHub Actions: requests, answers and rate limits.
#![allow(clippy::unwrap_used)]

use super::*;

fn response(status: u16, headers: &[(&str, &str)]) -> Response {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Response {
        status,
        headers: h,
        body: bytes::Bytes::new(),
    }
}

#[test]
fn the_workflow_dispatch_asks_for_the_run_and_keeps_the_token_out() {
    let r = Request::Workflow(WorkflowDispatch {
        repository: "acme/app".into(),
        workflow: "deploy.yml".into(),
        git_ref: "feature/x".into(),
        inputs: serde_json::from_str(r#"{"env":"staging","dry":true,"n":3}"#).unwrap(),
    });
    let out = request("https://api.github.com", &r).unwrap();
    assert_eq!(
        out.url,
        "https://api.github.com/repos/acme/app/actions/workflows/deploy.yml/dispatches"
    );
    assert_eq!(out.body["return_run_details"], true);
    assert_eq!(out.body["ref"], "feature/x");
    assert_eq!(out.body["inputs"]["dry"], true);
    let auth = out.headers.iter().find(|h| h.name == AUTHORIZATION).unwrap();
    assert_eq!(auth.value, "Bearer ***");
    let Outcome::Created(run) = created(
        br#"{"workflow_run_id":42,"run_url":"https://api.github.com/repos/acme/app/actions/runs/42","html_url":"https://github.com/acme/app/actions/runs/42"}"#,
    ) else {
        panic!()
    };
    assert_eq!(run.id.as_deref(), Some("42"));
    assert_eq!(
        run.url.as_deref(),
        Some("https://github.com/acme/app/actions/runs/42")
    );
}

#[test]
fn a_repository_that_is_not_owner_slash_repo_is_refused() {
    for bad in ["acme", "acme/app/x", "/app", "acme/"] {
        let r = Request::Repository(RepositoryDispatch {
            repository: bad.into(),
            event_type: "deploy".into(),
            client_payload: serde_json::Map::new(),
        });
        assert!(request("https://api.github.com", &r).is_err(), "{bad}");
    }
}

#[test]
fn rate_limits_are_waited_out() {
    let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let primary = response(
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "2000000030"),
        ],
    );
    assert_eq!(
        failed(403, "API rate limit exceeded", &primary, now),
        Outcome::Retry {
            reason: "HTTP 403: API rate limit exceeded".into(),
            after: Some(Duration::from_secs(30))
        }
    );
    let secondary = response(403, &[("retry-after", "7")]);
    assert!(matches!(
        failed(403, "You have exceeded a secondary rate limit", &secondary, now),
        Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(7)
    ));
    let unstated = response(403, &[]);
    assert!(matches!(
        failed(403, "You have exceeded a secondary rate limit", &unstated, now),
        Outcome::Retry { after: Some(d), .. } if d == SECONDARY_WAIT
    ));
    assert!(matches!(
        failed(403, "Resource not accessible by integration", &unstated, now),
        Outcome::Permanent(_)
    ));
    let absurd = response(
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "99999999999999999999"),
        ],
    );
    assert!(matches!(
        failed(403, "x", &absurd, now),
        Outcome::Retry { .. } | Outcome::Permanent(_)
    ));
}

proptest::proptest! {
    /// Any header values: no panic.
    #[test]
    fn rate_limit_headers_never_panic(
        remaining in "\\PC{0,12}",
        reset in proptest::prop_oneof!["\\PC{0,25}", "[0-9]{1,25}"],
        retry in "\\PC{0,25}",
        now in 0u64..=400_000_000_000,
    ) {
        let mut h = http::HeaderMap::new();
        for (k, v) in [("x-ratelimit-remaining", remaining), ("x-ratelimit-reset", reset), ("retry-after", retry)] {
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        let r = Response { status: 403, headers: h, body: bytes::Bytes::new() };
        let _ = failed(403, "m", &r, UNIX_EPOCH + Duration::from_secs(now));
    }
}

/// A 429 naming the secondary rate limit without a time waits a minute,
/// as a 403 does; GitHub Enterprise Server is not sent `return_run_details`.
#[test]
fn a_secondary_rate_limit_429_waits_a_minute_and_ghes_gets_no_run_details() {
    let r = Request::Workflow(WorkflowDispatch {
        repository: "acme/app".into(),
        workflow: "deploy.yml".into(),
        git_ref: "main".into(),
        inputs: serde_json::Map::new(),
    });
    let req = crate::target::TriggerRequest::GithubActions(r.clone());
    let body = br#"{"message":"You have exceeded a secondary rate limit."}"#;
    let answer = Response {
        status: 429,
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::from_static(body),
    };
    let outcome = crate::target::classify(&req, &answer, UNIX_EPOCH);
    assert!(
        matches!(outcome, Outcome::Retry { after: Some(d), .. } if d == SECONDARY_WAIT),
        "{outcome:?}"
    );
    let ghes = request("https://ghe.example.com/api/v3", &r).unwrap();
    assert!(ghes.body.get("return_run_details").is_none(), "{}", ghes.body);
    assert_eq!(
        ghes.url,
        "https://ghe.example.com/api/v3/repos/acme/app/actions/workflows/deploy.yml/dispatches"
    );
    let refused = failed(
        422,
        "\"return_run_details\" is not a permitted key.",
        &response(422, &[]),
        UNIX_EPOCH,
    );
    assert!(
        matches!(refused, Outcome::Permanent(ref why) if why.contains("/api/v3")),
        "{refused:?}"
    );
}
