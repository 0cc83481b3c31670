//! What a read refuses, what it tries again, and that neither panics nor
//! leaks the token, whatever the CI answers.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::target::circleci as trigger;

#[tokio::test]
async fn refusals_and_outages_are_told_apart() {
    for answer in [
        (401, r#"{"message":"You must log in first."}"#),
        (403, r#"{"message":"Permission denied"}"#),
        (404, r#"{"message":"Pipeline not found"}"#),
        (400, r#"{"message":"Bad request"}"#),
    ] {
        let (read, _) = circle(vec![answer]).await;
        assert!(matches!(read, PipelineRead::Refused(_)), "{answer:?}: {read:?}");
        let (read, _) = gl_read(vec![answer]).await;
        assert!(matches!(read, PipelineRead::Refused(_)), "{answer:?}: {read:?}");
    }
    let (read, _) = gl_read(vec![(401, r#"{"message":"401 Unauthorized"}"#)]).await;
    assert_eq!(
        read,
        PipelineRead::Refused("cannot read GitLab pipeline 1234: HTTP 401: 401 Unauthorized".into())
    );
    let (read, _) = circle(vec![(404, r#"{"message":"Pipeline not found"}"#)]).await;
    assert_eq!(
        read,
        PipelineRead::Refused(format!(
            "CircleCI does not know pipeline {PIPELINE} (HTTP 404), or does not show it to the token"
        ))
    );
    for answer in [
        (503, r#"{"message":"down"}"#),
        (429, r#"{"message":"slow down"}"#),
        (500, "<html>oops</html>"),
        (408, ""),
        // A 2xx that is not the CI's JSON: a proxy's login page, say.
        (200, "<html>login</html>"),
        (200, "[]"),
    ] {
        let (read, _) = circle(vec![answer]).await;
        assert!(matches!(read, PipelineRead::Retry { .. }), "{answer:?}: {read:?}");
        let (read, _) = gl_read(vec![answer]).await;
        assert!(matches!(read, PipelineRead::Retry { .. }), "{answer:?}: {read:?}");
    }
    let (read, _) = gl_read(vec![(503, r#"{"message":"down"}"#)]).await;
    assert_eq!(
        read,
        PipelineRead::Retry {
            reason: "cannot read GitLab pipeline 1234: HTTP 503: down".into(),
            after: None
        }
    );
    // No answer at all (the script has none left: a connection error).
    let (read, _) = gl_read(vec![]).await;
    assert!(matches!(read, PipelineRead::Retry { .. }), "{read:?}");
    // A GitLab answer without a status cannot say.
    let (read, _) = gl_read(vec![(200, r#"{"id":1234}"#)]).await;
    assert!(matches!(read, PipelineRead::Retry { .. }), "{read:?}");
}

/// A transport that answers once, with headers, or fails.
struct Once(Mutex<Option<Result<Response, SendError>>>);

#[async_trait::async_trait]
impl Transport for Once {
    async fn send(
        &self,
        _: &OutboundRequest,
        _: Option<&Secret>,
        _: Duration,
    ) -> Result<Response, SendError> {
        self.0
            .lock()
            .unwrap()
            .take()
            .unwrap_or(Err(SendError::Connect("no more".into())))
    }
}

#[tokio::test]
async fn a_retry_after_is_kept_and_a_timeout_is_tried_again() {
    let mut headers = http::HeaderMap::new();
    headers.insert("retry-after", "120".parse().unwrap());
    let once = Once(Mutex::new(Some(Ok(Response {
        status: 429,
        headers,
        body: r#"{"message":"Retry later"}"#.into(),
    }))));
    let read = read_pipeline(&gitlab(), &once, &gl(), "1", Duration::from_secs(1), now()).await;
    assert_eq!(
        read,
        PipelineRead::Retry {
            reason: "cannot read GitLab pipeline 1: HTTP 429: Retry later".into(),
            after: Some(Duration::from_secs(120)),
        }
    );
    let once = Once(Mutex::new(Some(Err(SendError::Timeout))));
    let read = read_pipeline(
        &target(TargetKind::Circleci),
        &once,
        &v2(),
        PIPELINE,
        Duration::from_secs(1),
        now(),
    )
    .await;
    assert_eq!(
        read,
        PipelineRead::Retry {
            reason: format!("cannot read CircleCI pipeline {PIPELINE}: timed out waiting for the CI API"),
            after: None,
        }
    );
}

#[tokio::test]
async fn an_id_not_of_the_cis_shape_never_reaches_a_url() {
    for id in [
        "",
        "1234",
        "../../api/v2/me",
        "5034460f-c7c4-4c43-9457-de07e2029e7g",
        &"a".repeat(500),
    ] {
        let (read, calls) = read_any(&target(TargetKind::Circleci), &v2(), id).await;
        assert!(calls.is_empty(), "{id}: {calls:?}");
        let PipelineRead::Refused(why) = read else {
            panic!("{id}: {read:?}")
        };
        assert!(why.contains("is not a CircleCI pipeline id"), "{why}");
        assert!(why.chars().count() < 120, "{why}");
    }
    for id in [
        "",
        "12a",
        "1/cancel",
        "-1",
        "1 ",
        PIPELINE,
        "99999999999999999999",
    ] {
        let (read, calls) = read_any(&gitlab(), &gl(), id).await;
        assert!(calls.is_empty(), "{id}: {calls:?}");
        assert!(matches!(read, PipelineRead::Refused(_)), "{id}: {read:?}");
    }
}

async fn read_any(t: &Target, request: &TriggerRequest, id: &str) -> (PipelineRead, Vec<String>) {
    read_with(t, request, id, vec![(200, "{}")]).await
}

#[test]
fn what_cannot_be_read_says_why() {
    assert_eq!(readable(&target(TargetKind::Circleci), &v2()), Ok(()));
    assert_eq!(readable(&gitlab(), &gl()), Ok(()));
    let job = TriggerRequest::Circleci(trigger::Request::Job(trigger::JobRequest {
        project: "gh/acme/app".into(),
        branch: "main".into(),
        job: "build".into(),
        revision: None,
        parallel: None,
        build_parameters: serde_json::Map::new(),
    }));
    assert_eq!(
        readable(&target(TargetKind::Circleci), &job),
        Err("a CircleCI API v1.1 job has no pipeline to read (its workflows are not listed)".into())
    );
    let no_api_token = Target {
        api_token: None,
        has_api_token: false,
        ..gitlab()
    };
    assert_eq!(
        readable(&no_api_token, &gl()),
        Err("target `ci` has no `api_token` to read its pipelines with (a trigger token cannot)".into())
    );
    // Under `check` the secret is named but not resolved: readable.
    let unresolved = Target {
        api_token: None,
        has_api_token: true,
        ..gitlab()
    };
    assert_eq!(readable(&unresolved, &gl()), Ok(()));
    assert_eq!(
        readable(&target(TargetKind::Gitlab), &v2()),
        Err("the job was rendered for a circleci target, and target `ci` is now gitlab".into())
    );
    let no_token = Target {
        token: None,
        has_token: false,
        ..target(TargetKind::Circleci)
    };
    assert!(readable(&no_token, &v2()).is_err());
}

#[tokio::test]
async fn what_cannot_be_read_is_refused_without_a_call() {
    let no_api_token = Target {
        api_token: None,
        has_api_token: false,
        ..gitlab()
    };
    let (read, calls) = read_any(&no_api_token, &gl(), "1").await;
    assert!(matches!(read, PipelineRead::Refused(_)), "{read:?}");
    assert!(calls.is_empty());
    // Named but unresolved at read time: refused, not sent without a token.
    let unresolved = Target {
        api_token: None,
        has_api_token: true,
        ..gitlab()
    };
    let (read, calls) = read_any(&unresolved, &gl(), "1").await;
    assert!(matches!(read, PipelineRead::Refused(_)), "{read:?}");
    assert!(calls.is_empty());
}

/// A CI (or a proxy) that writes back the token it received, plainly, in
/// JSON escapes or percent-encoded: the reason holds none of it.
#[tokio::test]
async fn a_token_echoed_back_never_reaches_a_reason() {
    let escaped = |t: &str| {
        t.chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect::<String>()
    };
    for status in [401, 403, 404, 500, 503, 422] {
        for (t, request, id, sent) in [
            (target(TargetKind::Circleci), v2(), PIPELINE, TOKEN),
            (gitlab(), gl(), "77", API_TOKEN),
        ] {
            for echo in [
                format!(r#"{{"message":"invalid token {sent}"}}"#),
                format!(r#"{{"message":"invalid token {}"}}"#, escaped(sent)),
                format!("<p>token {} refused</p>", sent.replace('-', "%2D")),
            ] {
                let (read, _) = read_with(&t, &request, id, vec![(status, &echo)]).await;
                let text = format!("{read:?}");
                assert!(!text.contains(sent), "{text}");
                assert!(text.contains("HTTP "), "{text}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever the CI answers, a read comes to a decision without a panic;
    /// a state comes only from a 2xx.
    #[test]
    fn any_answer_is_read_without_panicking(
        statuses in proptest::collection::vec(prop_oneof![Just(200u16), Just(404), Just(503), Just(401), 100u16..600], 1..8),
        bodies in proptest::collection::vec(prop_oneof![
            Just(r#"{"items":[],"next_page_token":null}"#.to_owned()),
            Just(r#"{"items":[{"id":"a","name":"b","status":"success","pipeline_number":-5}],"next_page_token":"n"}"#.to_owned()),
            Just(r#"{"items":[{"id":"a","status":7}]}"#.to_owned()),
            Just(r#"{"items":[{"id":"a","name":"x","status":"failed","created_at":"9999-99-99T99:99:99Z"},{"id":"b","name":"x","status":"success","created_at":"2026-01-01T00:00:00+02:00"}]}"#.to_owned()),
            Just(r#"{"state":"errored","number":9223372036854775807}"#.to_owned()),
            Just(r#"{"status":"success","web_url":null}"#.to_owned()),
            Just(r#"{"status":["x"]}"#.to_owned()),
            Just("null".to_owned()),
            ".{0,64}",
        ], 1..8),
        gitlab_target in any::<bool>(),
    ) {
        let answers: Vec<(u16, &str)> = statuses.iter().copied().zip(bodies.iter().map(String::as_str)).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (t, request, id) = if gitlab_target { (gitlab(), gl(), "12") } else { (target(TargetKind::Circleci), v2(), PIPELINE) };
        let (read, calls) = runtime.block_on(read_with(&t, &request, id, answers.clone()));
        prop_assert!(calls.len() <= answers.len() + 1);
        prop_assert!(calls.len() <= PAGES + 1);
        if let PipelineRead::State { .. } = read {
            let answered: Vec<u16> = statuses.iter().copied().take(calls.len()).collect();
            prop_assert!(answered.iter().all(|s| (200..300).contains(s)), "{answered:?}");
        }
    }
}
