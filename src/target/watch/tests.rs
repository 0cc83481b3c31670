//! Reading a pipeline's state from a scripted CI: which reads go out (and
//! with which token) and what each answer maps to; what is refused or tried
//! again, and that no answer panics or leaks the token, in [`failures`].
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::config::secret::Secret;
use crate::target::client::SendError;
use crate::target::scripted::{Script, TOKEN, gl, target, v2};
use crate::target::{OutboundRequest, Response};

mod failures;

const PIPELINE: &str = "5034460f-c7c4-4c43-9457-de07e2029e7b";
const API_TOKEN: &str = "glpat-api-9c1e77";

/// 2026-12-06T12:00:00Z.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_558_400)
}

/// A GitLab target whose trigger token and `api_token` differ.
fn gitlab() -> Target {
    Target {
        api_token: Some(Secret::new(API_TOKEN)),
        ..target(TargetKind::Gitlab)
    }
}

async fn read_with(
    t: &Target,
    request: &TriggerRequest,
    id: &str,
    answers: Vec<(u16, &str)>,
) -> (PipelineRead, Vec<String>) {
    let script = Script::new(answers);
    let read = read_pipeline(t, &script, request, id, Duration::from_secs(5), now()).await;
    (read, script.calls())
}

async fn circle(answers: Vec<(u16, &str)>) -> (PipelineRead, Vec<String>) {
    read_with(&target(TargetKind::Circleci), &v2(), PIPELINE, answers).await
}

async fn gl_read(answers: Vec<(u16, &str)>) -> (PipelineRead, Vec<String>) {
    read_with(&gitlab(), &gl(), "1234", answers).await
}

fn workflow(id: &str, name: &str, status: &str, created: &str) -> String {
    format!(
        r#"{{"pipeline_id":"{PIPELINE}","id":"{id}","name":"{name}","project_slug":"gh/acme/app","status":"{status}","started_by":"{PIPELINE}","pipeline_number":42,"created_at":"{created}","stopped_at":null}}"#
    )
}

fn page(items: &[String], next: Option<&str>) -> String {
    let next = next.map_or("null".to_owned(), |n| format!("\"{n}\""));
    format!(r#"{{"items":[{}],"next_page_token":{next}}}"#, items.join(","))
}

fn state(read: &PipelineRead) -> PipelineState {
    match read {
        PipelineRead::State { state, .. } => *state,
        other => panic!("{other:?}"),
    }
}

#[test]
fn circleci_workflow_statuses_make_the_pipelines_state() {
    use PipelineState::*;
    let cases: &[(&[&str], PipelineState)] = &[
        (&[], Created),
        (&["running"], Running),
        (&["on_hold", "success"], Running),
        (&["failing", "failed"], Running),
        (&["success", "a-status-from-2030"], Running),
        (&["success"], Success),
        (&["success", "not_run"], Success),
        (&["not_run"], Success),
        (&["success", "failed"], Failed),
        (&["error", "canceled"], Failed),
        (&["unauthorized", "success"], Failed),
        (&["canceled", "success"], Canceled),
        (&["canceled", "not_run"], Canceled),
    ];
    for (statuses, want) in cases {
        assert_eq!(
            circleci::state_of(statuses.iter().copied()),
            *want,
            "{statuses:?}"
        );
    }
}

#[test]
fn gitlab_statuses_make_the_pipelines_state() {
    use PipelineState::*;
    // Every value of the `status` enum in GitLab's OpenAPI document.
    let cases = [
        ("created", Created),
        ("waiting_for_resource", Created),
        ("preparing", Created),
        ("pending", Created),
        ("scheduled", Created),
        ("waiting_for_callback", Running),
        ("running", Running),
        ("manual", Running),
        ("success", Success),
        ("skipped", Success),
        ("failed", Failed),
        ("canceled", Canceled),
        ("canceling", Canceled),
        ("a-status-from-2030", Running),
    ];
    for (status, want) in cases {
        assert_eq!(gitlab::state_of(status), want, "{status}");
    }
}

#[tokio::test]
async fn circleci_reads_the_workflows_and_links_each() {
    let list = page(
        &[
            workflow(
                "7a1f0c2d-0000-4000-8000-000000000001",
                "build",
                "success",
                "2026-12-06T11:00:00Z",
            ),
            workflow(
                "7a1f0c2d-0000-4000-8000-000000000002",
                "test",
                "failed",
                "2026-12-06T11:00:00Z",
            ),
        ],
        None,
    );
    let (read, calls) = circle(vec![(200, &list)]).await;
    assert_eq!(
        calls,
        [format!(
            "GET https://ci.example/api/v2/pipeline/{PIPELINE}/workflow"
        )]
    );
    let url = "https://app.circleci.com/pipelines/github/acme/app/42";
    assert_eq!(
        read,
        PipelineRead::State {
            state: PipelineState::Failed,
            workflows: vec![
                WorkflowRun {
                    id: "7a1f0c2d-0000-4000-8000-000000000001".into(),
                    name: "build".into(),
                    status: "success".into(),
                    url: Some(format!("{url}/workflows/7a1f0c2d-0000-4000-8000-000000000001")),
                },
                WorkflowRun {
                    id: "7a1f0c2d-0000-4000-8000-000000000002".into(),
                    name: "test".into(),
                    status: "failed".into(),
                    url: Some(format!("{url}/workflows/7a1f0c2d-0000-4000-8000-000000000002")),
                },
            ],
            url: Some(url.into()),
        }
    );
}

#[tokio::test]
async fn circleci_follows_pages_and_a_rerun_replaces_the_run_it_reran() {
    let first = page(
        &[workflow("w-1", "build", "failed", "2026-12-06T11:00:00Z")],
        Some("p/2"),
    );
    let second = page(
        &[
            // The same workflow again (pages overlap), then its rerun.
            workflow("w-1", "build", "failed", "2026-12-06T11:00:00Z"),
            workflow("w-2", "build", "success", "2026-12-06T11:30:00.250Z"),
            workflow("w-3", "deploy", "not_run", "2026-12-06T11:00:00Z"),
        ],
        Some(""),
    );
    let (read, calls) = circle(vec![(200, &first), (200, &second)]).await;
    assert_eq!(
        calls,
        [
            format!("GET https://ci.example/api/v2/pipeline/{PIPELINE}/workflow"),
            format!("GET https://ci.example/api/v2/pipeline/{PIPELINE}/workflow?page-token=p%2F2"),
        ]
    );
    let PipelineRead::State { state, workflows, .. } = read else {
        panic!("{read:?}")
    };
    assert_eq!(state, PipelineState::Success);
    let runs: Vec<(&str, &str)> = workflows
        .iter()
        .map(|w| (w.id.as_str(), w.status.as_str()))
        .collect();
    assert_eq!(runs, [("w-2", "success"), ("w-3", "not_run")]);
}

#[tokio::test]
async fn circleci_with_more_pages_than_it_reads_does_not_call_a_final_state() {
    let done = page(
        &[workflow("w", "build", "success", "2026-12-06T11:00:00Z")],
        Some("more"),
    );
    let answers: Vec<(u16, &str)> = std::iter::repeat_n((200, done.as_str()), PAGES + 1).collect();
    let (read, calls) = circle(answers).await;
    assert_eq!(calls.len(), PAGES);
    assert_eq!(
        read,
        PipelineRead::Retry {
            reason: format!(
                "CircleCI pipeline {PIPELINE} lists more than 5 pages of workflows: whether all have finished is not known from the first 1"
            ),
            after: None
        }
    );
    // One running is enough to say it runs, whatever the rest.
    let running = page(
        &[workflow("w", "build", "running", "2026-12-06T11:00:00Z")],
        Some("more"),
    );
    let answers: Vec<(u16, &str)> = std::iter::repeat_n((200, running.as_str()), PAGES).collect();
    let (read, _) = circle(answers).await;
    assert_eq!(state(&read), PipelineState::Running);
}

#[tokio::test]
async fn circleci_without_workflows_is_created_unless_it_errored() {
    let none = page(&[], None);
    let setup = format!(r#"{{"id":"{PIPELINE}","number":7,"state":"setup-pending"}}"#);
    let (read, calls) = circle(vec![(200, &none), (200, &setup)]).await;
    assert_eq!(
        calls,
        [
            format!("GET https://ci.example/api/v2/pipeline/{PIPELINE}/workflow"),
            format!("GET https://ci.example/api/v2/pipeline/{PIPELINE}"),
        ]
    );
    assert_eq!(
        read,
        PipelineRead::State {
            state: PipelineState::Created,
            workflows: vec![],
            url: Some("https://app.circleci.com/pipelines/github/acme/app/7".into()),
        }
    );
    let errored = format!(
        r#"{{"id":"{PIPELINE}","number":8,"state":"errored","errors":[{{"type":"config","message":"bad yaml"}}]}}"#
    );
    let (read, _) = circle(vec![(200, &none), (200, &errored)]).await;
    assert_eq!(state(&read), PipelineState::Failed);
}

#[tokio::test]
async fn gitlab_reads_the_status_and_the_web_url_with_the_api_token() {
    let body = r#"{"id":1234,"iid":9,"project_id":3,"status":"running","web_url":"https://gitlab.example/acme/app/-/pipelines/1234"}"#;
    let (read, calls) = gl_read(vec![(200, body)]).await;
    assert_eq!(
        calls,
        ["GET https://ci.example/api/v4/projects/acme%2Fapp/pipelines/1234"]
    );
    assert_eq!(
        read,
        PipelineRead::State {
            state: PipelineState::Running,
            workflows: vec![],
            url: Some("https://gitlab.example/acme/app/-/pipelines/1234".into()),
        }
    );
    let (read, _) = gl_read(vec![(200, r#"{"id":1234,"status":"skipped"}"#)]).await;
    assert_eq!(
        read,
        PipelineRead::State {
            state: PipelineState::Success,
            workflows: vec![],
            url: None
        }
    );
    // A base URL that already ends in /api/v4 is not doubled.
    let t = Target {
        base_url: "https://ci.example/api/v4".into(),
        ..gitlab()
    };
    let (_, calls) = read_with(&t, &gl(), "1234", vec![(200, body)]).await;
    assert_eq!(
        calls,
        ["GET https://ci.example/api/v4/projects/acme%2Fapp/pipelines/1234"]
    );
}

/// The token each read carries, and in which header.
struct Seen {
    script: Script,
    tokens: Mutex<Vec<(String, String)>>,
}

#[async_trait::async_trait]
impl Transport for Seen {
    async fn send(
        &self,
        r: &OutboundRequest,
        token: Option<&Secret>,
        t: Duration,
    ) -> Result<Response, SendError> {
        let header = match &r.credential {
            crate::target::Credential::Header(h) => h.to_string(),
            other => format!("{other:?}"),
        };
        let token = token.map(|s| s.expose().to_owned()).unwrap_or_default();
        self.tokens.lock().unwrap().push((header, token));
        self.script.send(r, None, t).await
    }
}

#[tokio::test]
async fn each_ci_is_read_with_its_reading_token() {
    for (t, request, id, answer, want) in [
        (
            target(TargetKind::Circleci),
            v2(),
            PIPELINE,
            page(&[workflow("w", "b", "running", "x")], None),
            ("Circle-Token", TOKEN),
        ),
        (
            gitlab(),
            gl(),
            "5",
            r#"{"status":"pending"}"#.to_owned(),
            ("PRIVATE-TOKEN", API_TOKEN),
        ),
    ] {
        let seen = Seen {
            script: Script::new(vec![(200, &answer)]),
            tokens: Mutex::new(vec![]),
        };
        let read = read_pipeline(&t, &seen, &request, id, Duration::from_secs(1), now()).await;
        assert!(matches!(read, PipelineRead::State { .. }), "{read:?}");
        let tokens = seen.tokens.into_inner().unwrap();
        assert_eq!(tokens, [(want.0.to_owned(), want.1.to_owned())]);
    }
}
