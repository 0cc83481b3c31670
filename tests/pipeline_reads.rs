//! Reading a created pipeline's state (`target::watch`) through the real
//! HTTP client, from the stand-in CircleCI and GitLab APIs, which check each
//! read against the vendors' API documents and answer in their schemas: a
//! pipeline is triggered as hookbridge triggers it, the test moves it on
//! (workflows finish, a GitLab pipeline succeeds), and each read must tell
//! the state; refusals (401, 404) and outages (503, 429, a hang) must be
//! told apart, without the token in any reason.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime};

use hookbridge::config::{RetryPolicy, Secret};
use hookbridge::store::status::PipelineState;
use hookbridge::target::client::{Http, Transport};
use hookbridge::target::watch::{PipelineRead, WorkflowRun, read_pipeline, readable};
use hookbridge::target::{GitRef, Outcome, Target, TargetKind, TriggerRequest, circleci, classify, gitlab};
use support::ci::{CIRCLE_TOKEN, GITLAB_PRIVATE_TOKEN, GITLAB_TRIGGER_TOKEN, Reply, StandIn};

const TIMEOUT: Duration = Duration::from_secs(5);

fn target(kind: TargetKind, url: &str) -> Target {
    let circle = kind == TargetKind::Circleci;
    Target {
        name: kind.as_str().into(),
        kind,
        base_url: url.into(),
        token: Some(Secret::new(if circle {
            CIRCLE_TOKEN
        } else {
            GITLAB_TRIGGER_TOKEN
        })),
        has_token: true,
        api_token: (!circle).then(|| Secret::new(GITLAB_PRIVATE_TOKEN)),
        has_api_token: !circle,
        user: None,
        token_header: None,
        signing: None,
        signs: false,
        reconcile: true,
        retry: RetryPolicy::default(),
    }
}

fn gitlab_request() -> TriggerRequest {
    TriggerRequest::Gitlab(gitlab::Request {
        project: "acme/app".into(),
        git_ref: "main".into(),
        variables: Default::default(),
        inputs: Default::default(),
        rule_token: false,
    })
}

fn circle_request() -> TriggerRequest {
    TriggerRequest::Circleci(circleci::Request::Pipeline(circleci::PipelineRequest {
        project: "gh/acme/app".into(),
        branch: Some("main".into()),
        tag: None,
        parameters: Default::default(),
    }))
}

fn circle_run_request() -> TriggerRequest {
    let main = GitRef {
        branch: Some("main".into()),
        tag: None,
    };
    TriggerRequest::Circleci(circleci::Request::PipelineRun(circleci::PipelineRunRequest {
        project: "circleci/9d3c0b1e-0000-4000-8000-000000000001/7a1f0c2d-0000-4000-8000-000000000002".into(),
        definition_id: "0f4c7e2a-0000-4000-8000-000000000003".into(),
        config: main.clone(),
        checkout: main,
        parameters: Default::default(),
    }))
}

/// Trigger as hookbridge does: the pipeline's id and URL from the answer.
async fn trigger(t: &Target, request: &TriggerRequest) -> (String, Option<String>) {
    let outbound = t.request(request).unwrap();
    let response = Http::new()
        .send(&outbound, t.token_for(None).unwrap(), TIMEOUT)
        .await
        .unwrap();
    match classify(request, &response, SystemTime::now()) {
        Outcome::Created(r) => (r.id.unwrap(), r.url),
        other => panic!("{other:?}"),
    }
}

async fn read(t: &Target, request: &TriggerRequest, id: &str) -> PipelineRead {
    read_pipeline(t, &Http::new(), request, id, TIMEOUT, SystemTime::now()).await
}

fn state_in(read: &PipelineRead) -> PipelineState {
    match read {
        PipelineRead::State { state, .. } => *state,
        other => panic!("{other:?}"),
    }
}

fn statuses(read: &PipelineRead) -> Vec<(String, String)> {
    match read {
        PipelineRead::State { workflows, .. } => workflows
            .iter()
            .map(|w| (w.name.clone(), w.status.clone()))
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_pipeline_is_read_with_the_api_token_until_it_finishes() {
    let ci = StandIn::start().await;
    let t = target(TargetKind::Gitlab, &ci.url);
    let request = gitlab_request();
    assert_eq!(readable(&t, &request), Ok(()));
    let (id, url) = trigger(&t, &request).await;
    let first = read(&t, &request, &id).await;
    assert_eq!(
        first,
        PipelineRead::State {
            state: PipelineState::Running,
            workflows: vec![],
            url: url.clone(),
        }
    );
    assert_eq!(
        url.as_deref(),
        Some(format!("https://gitlab.example/acme/app/-/pipelines/{id}").as_str())
    );
    for (status, want) in [
        ("pending", PipelineState::Created),
        ("manual", PipelineState::Running),
        ("skipped", PipelineState::Success),
        ("canceled", PipelineState::Canceled),
        ("failed", PipelineState::Failed),
        ("success", PipelineState::Success),
    ] {
        ci.set_pipeline_status(&id, status);
        assert_eq!(state_in(&read(&t, &request, &id).await), want, "{status}");
    }
    ci.finish_pipeline(&id, "failed");
    assert_eq!(state_in(&read(&t, &request, &id).await), PipelineState::Failed);
    let reads = ci.pipeline_reads();
    assert_eq!(reads.len(), 8);
    for r in &reads {
        assert_eq!(r.api, "gitlab-pipeline");
        assert_eq!(r.path, format!("/api/v4/projects/acme%2Fapp/pipelines/{id}"));
        assert_eq!(r.headers["private-token"], GITLAB_PRIVATE_TOKEN);
        assert_eq!(r.status, 200);
    }
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circleci_pipeline_is_read_from_its_workflows() {
    let ci = StandIn::start().await;
    let t = target(TargetKind::Circleci, &ci.url);
    let request = circle_request();
    assert_eq!(readable(&t, &request), Ok(()));
    let (id, url) = trigger(&t, &request).await;
    let first = read(&t, &request, &id).await;
    let PipelineRead::State {
        state,
        workflows,
        url: read_url,
    } = &first
    else {
        panic!("{first:?}")
    };
    assert_eq!(*state, PipelineState::Running);
    assert_eq!(read_url, &url, "the read links the page the trigger did");
    let ids: Vec<String> = ci.workflows(&id).into_iter().map(|w| w.0).collect();
    let page = url.unwrap();
    assert_eq!(
        workflows,
        &[
            WorkflowRun {
                id: ids[0].clone(),
                name: "build".into(),
                status: "running".into(),
                url: Some(format!("{page}/workflows/{}", ids[0])),
            },
            WorkflowRun {
                id: ids[1].clone(),
                name: "test".into(),
                status: "running".into(),
                url: Some(format!("{page}/workflows/{}", ids[1])),
            },
        ]
    );

    ci.set_workflows(&id, [("build", "success"), ("test", "failed")]);
    let done = read(&t, &request, &id).await;
    assert_eq!(state_in(&done), PipelineState::Failed);
    assert_eq!(
        statuses(&done),
        pairs(&[("build", "success"), ("test", "failed")])
    );
    let again: Vec<String> = ci.workflows(&id).into_iter().map(|w| w.0).collect();
    assert_eq!(again, ids, "a workflow keeps its id");

    for (workflows, want) in [
        (
            vec![("build", "success"), ("test", "on_hold")],
            PipelineState::Running,
        ),
        (
            vec![("build", "success"), ("test", "failing")],
            PipelineState::Running,
        ),
        (
            vec![("build", "success"), ("deploy", "not_run")],
            PipelineState::Success,
        ),
        (
            vec![("build", "canceled"), ("test", "success")],
            PipelineState::Canceled,
        ),
        (
            vec![("build", "error"), ("test", "canceled")],
            PipelineState::Failed,
        ),
        (vec![("build", "unauthorized")], PipelineState::Failed),
        // "Rerun workflow from failed": the rerun, newer, decides.
        (
            vec![("build", "failed"), ("build", "success")],
            PipelineState::Success,
        ),
    ] {
        ci.set_workflows(&id, workflows.clone());
        assert_eq!(state_in(&read(&t, &request, &id).await), want, "{workflows:?}");
    }
    ci.finish_pipeline(&id, "success");
    assert_eq!(state_in(&read(&t, &request, &id).await), PipelineState::Success);
    for r in ci.pipeline_reads() {
        assert_eq!(r.api, "circleci-workflows");
        assert_eq!(r.path, format!("/api/v2/pipeline/{id}/workflow"));
        assert_eq!(r.headers["circle-token"], CIRCLE_TOKEN);
    }
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circleci_pipeline_run_is_read_too() {
    let ci = StandIn::start().await;
    let t = target(TargetKind::Circleci, &ci.url);
    let request = circle_run_request();
    let (id, _) = trigger(&t, &request).await;
    ci.set_workflows(&id, [("build", "success")]);
    let read = read(&t, &request, &id).await;
    assert_eq!(state_in(&read), PipelineState::Success);
    let PipelineRead::State { url, .. } = read else {
        unreachable!()
    };
    assert!(
        url.unwrap()
            .starts_with("https://app.circleci.com/pipelines/circleci/9d3c0b1e-0000-4000-8000-000000000001/"),
    );
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circleci_workflows_are_followed_over_pages() {
    let ci = StandIn::start().await;
    let t = target(TargetKind::Circleci, &ci.url);
    let request = circle_request();
    let (id, _) = trigger(&t, &request).await;
    ci.set_workflow_page_size(2);
    ci.set_workflows(
        &id,
        [
            ("a", "success"),
            ("b", "success"),
            ("c", "success"),
            ("d", "failed"),
            ("e", "success"),
        ],
    );
    let read_now = read(&t, &request, &id).await;
    assert_eq!(state_in(&read_now), PipelineState::Failed);
    assert_eq!(statuses(&read_now).len(), 5);
    let queries: Vec<Option<String>> = ci.pipeline_reads().into_iter().map(|r| r.query).collect();
    assert_eq!(
        queries,
        [
            None,
            Some("page-token=wp%2D2".into()),
            Some("page-token=wp%2D4".into())
        ]
    );
    // More pages than a read follows: all it saw finished, but the rest
    // may not have.
    ci.set_workflow_page_size(1);
    let many: Vec<(String, &str)> = (0..7).map(|i| (format!("w{i}"), "success")).collect();
    ci.set_workflows(&id, many.iter().map(|(n, s)| (n.as_str(), *s)));
    let read_now = read(&t, &request, &id).await;
    assert!(matches!(read_now, PipelineRead::Retry { .. }), "{read_now:?}");
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circleci_pipeline_without_workflows_is_created_or_errored() {
    let ci = StandIn::start().await;
    let t = target(TargetKind::Circleci, &ci.url);
    let request = circle_request();
    let (id, url) = trigger(&t, &request).await;
    ci.set_workflows(&id, []);
    assert_eq!(
        read(&t, &request, &id).await,
        PipelineRead::State {
            state: PipelineState::Created,
            workflows: vec![],
            url,
        }
    );
    ci.set_circle_state(&id, "errored");
    assert_eq!(state_in(&read(&t, &request, &id).await), PipelineState::Failed);
    let apis: Vec<&str> = ci.pipeline_reads().iter().map(|r| r.api).collect();
    assert_eq!(
        apis,
        [
            "circleci-workflows",
            "circleci-pipeline-by-id",
            "circleci-workflows",
            "circleci-pipeline-by-id"
        ]
    );
    ci.assert_clean();
}

/// 401 is refused, 503 and 429 are tried again (with the CI's
/// `Retry-After`), a hang times out; then the API recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_outages_are_told_apart_and_the_token_stays_out() {
    let ci = StandIn::start().await;
    for kind in [TargetKind::Gitlab, TargetKind::Circleci] {
        let t = target(kind, &ci.url);
        let request = if kind == TargetKind::Gitlab {
            gitlab_request()
        } else {
            circle_request()
        };
        let (id, _) = trigger(&t, &request).await;
        let secrets = [CIRCLE_TOKEN, GITLAB_TRIGGER_TOKEN, GITLAB_PRIVATE_TOKEN];
        let clean = |read: &PipelineRead| {
            let text = format!("{read:?}");
            for s in secrets {
                assert!(!text.contains(s), "{text}");
            }
        };

        ci.fail_pipeline_reads(Some(401));
        let refused = read(&t, &request, &id).await;
        assert!(
            matches!(&refused, PipelineRead::Refused(r) if r.contains("HTTP 401")),
            "{refused:?}"
        );
        clean(&refused);
        ci.fail_pipeline_reads(Some(503));
        let down = read(&t, &request, &id).await;
        assert!(
            matches!(&down, PipelineRead::Retry { reason, .. } if reason.contains("HTTP 503")),
            "{down:?}"
        );
        clean(&down);
        ci.fail_pipeline_reads(None);
        assert_eq!(state_in(&read(&t, &request, &id).await), PipelineState::Running);

        ci.script_pipeline_reads([Reply::RetryAfter(429, 7)]);
        let limited = read(&t, &request, &id).await;
        assert!(
            matches!(&limited, PipelineRead::Retry { after: Some(d), .. } if *d == Duration::from_secs(7)),
            "{limited:?}"
        );
        // A CI (or a proxy) that writes the token it received back.
        let echoes = if kind == TargetKind::Gitlab {
            [
                Reply::Body(
                    401,
                    r#"{"message":"invalid token glpat-private-token-for-tests"}"#,
                ),
                Reply::Body(500, "<p>token glpat-private-token-for-tests: upstream error</p>"),
            ]
        } else {
            [
                Reply::Body(401, r#"{"message":"invalid token circle-token-for-tests"}"#),
                Reply::Body(500, "<p>token circle-token-for-tests: upstream error</p>"),
            ]
        };
        ci.script_pipeline_reads(echoes);
        let echoed = read(&t, &request, &id).await;
        assert!(matches!(echoed, PipelineRead::Refused(_)), "{echoed:?}");
        clean(&echoed);
        let echoed = read(&t, &request, &id).await;
        assert!(matches!(echoed, PipelineRead::Retry { .. }), "{echoed:?}");
        clean(&echoed);

        ci.script_pipeline_reads([Reply::Hang]);
        let hung = read_pipeline(
            &t,
            &Http::new(),
            &request,
            &id,
            Duration::from_millis(300),
            SystemTime::now(),
        )
        .await;
        assert!(
            matches!(&hung, PipelineRead::Retry { reason, .. } if reason.contains("timed out")),
            "{hung:?}"
        );

        // A revoked token is the API's own 401 (no violation of the stand-in's).
        let revoked = Target {
            token: Some(Secret::new("circle-token-revoked-0000")),
            api_token: Some(Secret::new("glpat-revoked-0000000000")),
            ..target(kind, &ci.url)
        };
        let refused = read(&revoked, &request, &id).await;
        assert!(
            matches!(&refused, PipelineRead::Refused(r) if r.contains("HTTP 401")),
            "{refused:?}"
        );
        assert!(!format!("{refused:?}").contains("revoked"), "{refused:?}");
    }
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_pipeline_is_refused() {
    let ci = StandIn::start().await;
    let gl = target(TargetKind::Gitlab, &ci.url);
    let unknown = read(&gl, &gitlab_request(), "999999").await;
    assert!(
        matches!(&unknown, PipelineRead::Refused(r) if r.contains("HTTP 404")),
        "{unknown:?}"
    );
    // Another project's pipeline is not this one's.
    let (id, _) = trigger(&gl, &gitlab_request()).await;
    let mut other = gitlab_request();
    if let TriggerRequest::Gitlab(r) = &mut other {
        r.project = "acme/other".into();
    }
    assert!(matches!(read(&gl, &other, &id).await, PipelineRead::Refused(_)));
    let circle = target(TargetKind::Circleci, &ci.url);
    let unknown = read(&circle, &circle_request(), "5034460f-c7c4-4c43-9457-000000000000").await;
    assert!(
        matches!(&unknown, PipelineRead::Refused(r) if r.contains("HTTP 404")),
        "{unknown:?}"
    );
    // Not an id of the CI's shape: never sent.
    let before = ci.pipeline_reads().len();
    assert!(matches!(
        read(&circle, &circle_request(), "1234/../../me").await,
        PipelineRead::Refused(_)
    ));
    assert!(matches!(
        read(&gl, &gitlab_request(), "12?x=1").await,
        PipelineRead::Refused(_)
    ));
    assert_eq!(ci.pipeline_reads().len(), before);
    ci.assert_clean();
}

/// The stand-in holds hookbridge to the API: reading with the trigger
/// token (which cannot read) is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_reports_a_read_with_the_trigger_token() {
    let ci = StandIn::start().await;
    let t = target(TargetKind::Gitlab, &ci.url);
    let (id, _) = trigger(&t, &gitlab_request()).await;
    let wrong = Target {
        api_token: Some(Secret::new(GITLAB_TRIGGER_TOKEN)),
        ..target(TargetKind::Gitlab, &ci.url)
    };
    let refused = read(&wrong, &gitlab_request(), &id).await;
    assert!(
        matches!(&refused, PipelineRead::Refused(r) if r.contains("HTTP 401")),
        "{refused:?}"
    );
    let violations = ci.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains("the trigger token sent as PRIVATE-TOKEN"),
        "{violations:?}"
    );
}

#[test]
fn a_gitlab_target_without_api_token_cannot_be_read() {
    let t = Target {
        api_token: None,
        has_api_token: false,
        ..target(TargetKind::Gitlab, "http://127.0.0.1:9")
    };
    assert_eq!(
        readable(&t, &gitlab_request()),
        Err("target `gitlab` has no `api_token` to read its pipelines with (a trigger token cannot)".into())
    );
}
