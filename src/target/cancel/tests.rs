//! The cancel protocol against a scripted CI: which calls go out, what
//! each answer means, and that no answer panics or leaks the token.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use proptest::prelude::*;

use super::*;
use crate::target::TargetKind;
use crate::target::scripted::{Script, TOKEN, gl, target, v2};

fn pipeline(id: &str) -> TriggerResult {
    TriggerResult {
        id: Some(id.into()),
        number: Some(7),
        url: None,
        state: None,
        follow: None,
    }
}

async fn run(request: TriggerRequest, answers: Vec<(u16, &str)>) -> (Cancelled, Vec<String>) {
    let kind = request.target_kind();
    let script = Script::new(answers);
    let (c, _) = cancel(
        &script,
        &target(kind),
        &request,
        &pipeline("1234"),
        Duration::from_secs(5),
        SystemTime::now(),
    )
    .await;
    (c, script.calls.into_inner().unwrap())
}

#[tokio::test]
async fn only_running_workflows_are_cancelled_across_pages() {
    let page1 = r#"{"items":[{"id":"w1","name":"build","status":"running"},{"id":"w2","name":"lint","status":"success"}],"next_page_token":"p/2"}"#;
    let page2 = r#"{"items":[{"id":"w3","name":"deploy","status":"on_hold"}],"next_page_token":null}"#;
    let (c, calls) = run(v2(), vec![(200, page1), (200, page2), (202, "{}"), (202, "{}")]).await;
    assert_eq!(
        c,
        Cancelled::Cancelled("cancelled 2 workflows of pipeline 1234: build, deploy".into())
    );
    assert_eq!(
        calls,
        [
            "GET https://ci.example/api/v2/pipeline/1234/workflow",
            "GET https://ci.example/api/v2/pipeline/1234/workflow?page-token=p%2F2",
            "POST https://ci.example/api/v2/workflow/w1/cancel",
            "POST https://ci.example/api/v2/workflow/w3/cancel",
        ]
    );
}

/// A pipeline still being set up lists no workflow: the cancel is retried
/// for the workflows to come; an errored one has nothing to cancel.
#[tokio::test]
async fn a_pipeline_without_workflows_yet_is_retried() {
    let empty = r#"{"items":[],"next_page_token":null}"#;
    let (c, calls) = run(
        v2(),
        vec![(200, empty), (200, r#"{"id":"1234","state":"setup"}"#)],
    )
    .await;
    assert_eq!(
        c,
        Cancelled::Retry {
            reason: "pipeline 1234 has no workflow yet (setup)".into(),
            after: None
        }
    );
    assert_eq!(calls[1], "GET https://ci.example/api/v2/pipeline/1234");
    let (c, _) = run(v2(), vec![(200, empty), (200, r#"{"state":"errored"}"#)]).await;
    assert_eq!(
        c,
        Cancelled::Finished("pipeline 1234 runs no workflow (errored)".into())
    );
}

/// One workflow's refused cancel does not keep the others running.
#[tokio::test]
async fn every_running_workflow_gets_its_cancel() {
    let list =
        r#"{"items":[{"id":"w1","name":"a","status":"running"},{"id":"w2","name":"b","status":"running"}]}"#;
    let (c, calls) = run(v2(), vec![(200, list), (400, r#"{"message":"no"}"#), (202, "{}")]).await;
    assert_eq!(c, Cancelled::Permanent("HTTP 400: no".into()));
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[2].ends_with("/workflow/w2/cancel"));
}

/// A v1.1 build still running after its cancel is tried again.
#[tokio::test]
async fn a_build_still_running_after_its_cancel_is_retried() {
    let job = TriggerRequest::Circleci(circleci::Request::Job(circleci::JobRequest {
        project: "gh/acme/app".into(),
        branch: "main".into(),
        job: "build".into(),
        revision: None,
        parallel: None,
        build_parameters: serde_json::Map::new(),
    }));
    let (c, calls) = run(job.clone(), vec![(200, r#"{"status":"running"}"#)]).await;
    assert!(matches!(c, Cancelled::Retry { .. }), "{c:?}");
    assert_eq!(
        calls,
        ["POST https://ci.example/api/v1.1/project/github/acme/app/7/cancel"]
    );
    let (c, _) = run(job, vec![(200, r#"{"status":"success"}"#)]).await;
    assert_eq!(c, Cancelled::Finished("build 7 had ended: success".into()));
}

#[tokio::test]
async fn errors_are_classified_like_a_triggers() {
    let (c, _) = run(v2(), vec![(503, r#"{"message":"down"}"#)]).await;
    assert!(
        matches!(c, Cancelled::Retry { ref reason, .. } if reason == "HTTP 503: down"),
        "{c:?}"
    );
    let (c, _) = run(v2(), vec![(404, "")]).await;
    assert_eq!(c, Cancelled::Finished("pipeline 1234 not found".into()));
    let (c, _) = run(v2(), vec![(403, r#"{"message":"Permission denied"}"#)]).await;
    assert_eq!(c, Cancelled::Permanent("HTTP 403: Permission denied".into()));
    let (c, _) = run(v2(), vec![]).await;
    assert!(matches!(c, Cancelled::Retry { .. }), "{c:?}");
}

#[tokio::test]
async fn gitlab_reads_the_state_after_its_cancel() {
    let (c, calls) = run(gl(), vec![(201, "{}"), (200, r#"{"status":"canceled"}"#)]).await;
    assert_eq!(c, Cancelled::Cancelled("cancelled pipeline 1234".into()));
    assert_eq!(
        calls,
        [
            "POST https://ci.example/api/v4/projects/acme%2Fapp/pipelines/1234/cancel",
            "GET https://ci.example/api/v4/projects/acme%2Fapp/pipelines/1234",
        ]
    );
    let (c, _) = run(gl(), vec![(201, "{}"), (200, r#"{"status":"success"}"#)]).await;
    assert_eq!(c, Cancelled::Finished("pipeline 1234 had ended: success".into()));
    let (c, _) = run(gl(), vec![(201, "{}"), (200, r#"{"status":"running"}"#)]).await;
    assert!(matches!(c, Cancelled::Retry { .. }), "{c:?}");
}

#[tokio::test]
async fn without_an_api_token_gitlab_cannot_cancel() {
    let mut t = target(TargetKind::Gitlab);
    t.api_token = None;
    let script = Script {
        answers: Mutex::new(Vec::new()),
        calls: Mutex::new(Vec::new()),
    };
    let (c, _) = cancel(
        &script,
        &t,
        &gl(),
        &pipeline("1"),
        Duration::from_secs(1),
        SystemTime::now(),
    )
    .await;
    assert_eq!(
        c,
        Cancelled::Permanent("target `ci` has no `api_token` to cancel with".into())
    );
    assert!(script.calls.into_inner().unwrap().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the CI answers (any status, any bytes), a cancel ends
    /// in an outcome: no panic, no loop past its pages, and the token
    /// in no text it keeps.
    #[test]
    fn any_answer_is_an_outcome(
        answers in proptest::collection::vec((100u16..600, proptest::collection::vec(any::<u8>(), 0..200)), 0..14),
        gitlab in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let request = if gitlab { gl() } else { v2() };
        let n = answers.len();
        let script = Script {
            answers: Mutex::new(answers.into_iter().map(|(s, mut b)| { b.extend_from_slice(TOKEN.as_bytes()); (s, b) }).collect()),
            calls: Mutex::new(Vec::new()),
        };
        let kind = request.target_kind();
        let (c, exchange) = rt.block_on(cancel(&script, &target(kind), &request, &pipeline("42"), Duration::from_secs(1), SystemTime::now()));
        let calls = script.calls.into_inner().unwrap();
        // Each answer takes a call; the call after the last fails to connect.
        prop_assert!(calls.len() <= n + 1);
        let text = format!("{c:?} {:?}", exchange.response);
        prop_assert!(!text.contains(TOKEN), "{}", text);
    }
}
