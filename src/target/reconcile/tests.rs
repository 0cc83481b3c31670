//! Reconcile against a scripted CI: which reads go out, what each answer
//! decides, and that the token never reaches a decision's text.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::target::scripted::{Script, TOKEN, gl, target, v2};

const JOB: &str = "01JOBAAAAAAAAAAAAAAAAAAAAA";

/// 2026-12-06T12:00:00Z.
fn since() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_558_400)
}

async fn run(
    kind: TargetKind,
    request: TriggerRequest,
    recorded: &[&str],
    answers: Vec<(u16, &str)>,
) -> (Reconciled, Vec<String>) {
    let script = Script::new(answers);
    let recorded: Vec<String> = recorded.iter().map(|s| s.to_string()).collect();
    let (looked, _) = look(
        &script,
        &target(kind),
        Subject {
            id: JOB,
            request: &request,
            previous: None,
        },
        since(),
        (Duration::from_secs(5), since()),
    )
    .await;
    let decided = match looked {
        Looked::Decided(d) => d,
        Looked::Candidates(c) => c.decide(&recorded, 0),
    };
    (decided, script.calls())
}

#[tokio::test]
async fn gitlab_finds_the_pipeline_carrying_the_jobs_id() {
    let list = r#"[{"id":12,"iid":3,"web_url":"https://gl/p/12","status":"running"},{"id":11,"iid":2,"web_url":"https://gl/p/11","status":"success"}]"#;
    let theirs = r#"[{"variable_type":"env_var","key":"HOOKBRIDGE_JOB","value":"01OTHER"}]"#;
    let ours = format!(
        r#"[{{"variable_type":"env_var","key":"A","value":"1"}},{{"variable_type":"env_var","key":"HOOKBRIDGE_JOB","value":"{JOB}"}}]"#
    );
    let (decided, calls) = run(
        TargetKind::Gitlab,
        gl(),
        &[],
        vec![(200, list), (200, theirs), (200, &ours)],
    )
    .await;
    assert_eq!(
        calls,
        [
            "GET https://ci.example/api/v4/projects/acme%2Fapp/pipelines?source=trigger&ref=main&created_after=2026-12-06T11%3A59%3A00.000Z&order_by=id&sort=desc&per_page=100&page=1",
            "GET https://ci.example/api/v4/projects/acme%2Fapp/pipelines/12/variables",
            "GET https://ci.example/api/v4/projects/acme%2Fapp/pipelines/11/variables",
        ]
    );
    let Reconciled::Found { result, why } = &decided else {
        panic!("{decided:?}")
    };
    assert_eq!(result.id.as_deref(), Some("11"));
    assert_eq!(result.number, Some(2));
    assert_eq!(result.url.as_deref(), Some("https://gl/p/11"));
    assert_eq!(
        why,
        &format!(
            "GitLab pipeline 11 carries HOOKBRIDGE_JOB={JOB} (the 2nd newest trigger pipeline on `main` since 2026-12-06T11:59:00.000Z)"
        )
    );
    assert_eq!(decided.outcome(), "found");
}

#[tokio::test]
async fn gitlab_without_the_marker_sends_again_and_says_why() {
    let (decided, _) = run(TargetKind::Gitlab, gl(), &[], vec![(200, "[]")]).await;
    assert_eq!(
        decided,
        Reconciled::NotFound(format!(
            "none of the 0 trigger pipelines on `main` since 2026-12-06T11:59:00.000Z carries HOOKBRIDGE_JOB={JOB}"
        ))
    );
    assert_eq!(
        decided.describe(),
        format!(
            "not found: none of the 0 trigger pipelines on `main` since 2026-12-06T11:59:00.000Z carries HOOKBRIDGE_JOB={JOB}; triggered"
        )
    );
    // No api_token, or reconcile turned off: nothing is asked.
    for t in [
        Target {
            api_token: None,
            ..target(TargetKind::Gitlab)
        },
        Target {
            reconcile: false,
            ..target(TargetKind::Gitlab)
        },
    ] {
        let script = Script::new(vec![]);
        let (looked, _) = look(
            &script,
            &t,
            Subject {
                id: JOB,
                request: &gl(),
                previous: None,
            },
            since(),
            (Duration::from_secs(1), since()),
        )
        .await;
        let Looked::Decided(decided) = looked else {
            panic!("{looked:?}")
        };
        assert_eq!(decided.outcome(), "skipped");
        assert!(script.calls().is_empty());
        assert!(!marks(&t));
    }
    assert!(marks(&target(TargetKind::Gitlab)));
}

#[tokio::test]
async fn a_ci_that_cannot_answer_is_asked_again_and_one_that_refuses_is_not() {
    let (decided, _) = run(
        TargetKind::Gitlab,
        gl(),
        &[],
        vec![(503, r#"{"message":"down"}"#)],
    )
    .await;
    assert_eq!(
        decided,
        Reconciled::Failed {
            reason: "cannot ask the CI: HTTP 503: down".into(),
            after: None
        }
    );
    let (decided, _) = run(
        TargetKind::Gitlab,
        gl(),
        &[],
        vec![(403, r#"{"message":"403 Forbidden - insufficient_scope"}"#)],
    )
    .await;
    assert_eq!(
        decided,
        Reconciled::Skipped("the CI refused the lookup: HTTP 403: 403 Forbidden - insufficient_scope".into())
    );
    // Not GitLab's JSON: cannot say, asked again later.
    let (decided, _) = run(TargetKind::Gitlab, gl(), &[], vec![(200, "<html>login</html>")]).await;
    assert_eq!(decided.outcome(), "failed");
    // A token echoed back never reaches the decision.
    let echo = format!(r#"{{"message":"bad token {TOKEN}"}}"#);
    let (decided, _) = run(TargetKind::Gitlab, gl(), &[], vec![(500, &echo)]).await;
    assert!(!decided.describe().contains(TOKEN), "{decided:?}");
}

fn item(id: &str, number: i64, created: &str, branch: &str, kind: &str) -> String {
    format!(
        r#"{{"id":"{id}","errors":[],"project_slug":"gh/acme/app","number":{number},"state":"created","created_at":"{created}","trigger":{{"type":"{kind}","received_at":"{created}","actor":{{"login":"bot","avatar_url":null}}}},"vcs":{{"provider_name":"GitHub","origin_repository_url":"u","target_repository_url":"u","revision":"abc","branch":"{branch}"}}}}"#
    )
}

#[tokio::test]
async fn circleci_adopts_the_one_api_pipeline_on_the_branch_since_the_attempt() {
    let page = format!(
        r#"{{"items":[{},{},{},{}],"next_page_token":"more"}}"#,
        item("p-new", 9, "2026-12-06T12:00:03.120Z", "main", "api"),
        item("p-other-branch", 8, "2026-12-06T12:00:02Z", "dev", "api"),
        item("p-webhook", 7, "2026-12-06T12:00:01Z", "main", "webhook"),
        item("p-old", 6, "2026-12-06T11:50:00Z", "main", "api"),
    );
    let (decided, calls) = run(TargetKind::Circleci, v2(), &[], vec![(200, &page)]).await;
    // The old one ends the listing: no second page.
    assert_eq!(
        calls,
        ["GET https://ci.example/api/v2/project/gh/acme/app/pipeline/mine"]
    );
    let Reconciled::Found { result, why } = decided else {
        panic!("{decided:?}")
    };
    assert_eq!(result.id.as_deref(), Some("p-new"));
    assert_eq!(result.number, Some(9));
    assert!(why.starts_with("pipeline #9 (p-new) is the one API pipeline the token's user started on branch `main` since 2026-12-06T11:59:00.000Z"), "{why}");
}

#[tokio::test]
async fn circleci_leaves_out_what_other_jobs_recorded_and_cannot_choose_among_several() {
    let two = format!(
        r#"{{"items":[{},{}],"next_page_token":null}}"#,
        item("p-b", 5, "2026-12-06T12:00:02Z", "main", "api"),
        item("p-a", 4, "2026-12-06T12:00:01Z", "main", "api"),
    );
    let (decided, _) = run(TargetKind::Circleci, v2(), &["p-b"], vec![(200, &two)]).await;
    let Reconciled::Found { result, why } = decided else {
        panic!("{decided:?}")
    };
    assert_eq!(result.id.as_deref(), Some("p-a"));
    assert!(why.contains("(besides the one another job recorded)"), "{why}");
    let (decided, _) = run(TargetKind::Circleci, v2(), &[], vec![(200, &two)]).await;
    assert_eq!(
        decided,
        Reconciled::Skipped("the token's user started 2 API pipelines on branch `main` since 2026-12-06T11:59:00.000Z: which one (if any) is this job's cannot be told".into())
    );
    let (decided, _) = run(TargetKind::Circleci, v2(), &["p-a", "p-b"], vec![(200, &two)]).await;
    assert_eq!(decided.outcome(), "not_found");
}

/// One candidate, but another job triggering on the same branch has its
/// outcome unknown: the pipeline may be that job's, so this one is sent
/// again rather than adopting it (a duplicate, never a lost trigger).
#[test]
fn a_candidate_another_unsettled_job_may_own_is_not_adopted() {
    let one = || Candidates {
        found: vec![TriggerResult {
            id: Some("p-1".into()),
            number: Some(1),
            ..TriggerResult::default()
        }],
        place: "branch `main`".into(),
        since: "2026-12-06T11:59:00.000Z".into(),
    };
    assert_eq!(one().decide(&[], 0).outcome(), "found");
    assert_eq!(
        one().decide(&[], 1),
        Reconciled::Skipped("one API pipeline on branch `main` since 2026-12-06T11:59:00.000Z, but 1 other job on branch `main` may have started it and not recorded it yet".into())
    );
    assert_eq!(one().decide(&["p-1".into()], 3).outcome(), "not_found");
    let mut other_branch = v2();
    if let TriggerRequest::Circleci(circleci::Request::Pipeline(r)) = &mut other_branch {
        r.branch = Some("dev".into());
    }
    assert!(same_place(&v2(), &v2()));
    assert!(!same_place(&v2(), &other_branch));
    assert!(!same_place(&gl(), &gl()), "GitLab's marker needs no neighbours");
}

#[tokio::test]
async fn circleci_pages_until_the_window_ends() {
    let first = format!(
        r#"{{"items":[{}],"next_page_token":"t/2"}}"#,
        item("p-x", 3, "2026-12-06T12:00:05Z", "dev", "api")
    );
    let second = format!(
        r#"{{"items":[{}],"next_page_token":"t/3"}}"#,
        item("p-y", 2, "2026-12-06T12:00:04Z", "main", "api")
    );
    let third = format!(
        r#"{{"items":[{}],"next_page_token":"t/4"}}"#,
        item("p-z", 1, "2026-12-06T11:00:00Z", "main", "api")
    );
    let (decided, calls) = run(
        TargetKind::Circleci,
        v2(),
        &[],
        vec![(200, &first), (200, &second), (200, &third)],
    )
    .await;
    assert_eq!(
        calls,
        [
            "GET https://ci.example/api/v2/project/gh/acme/app/pipeline/mine",
            "GET https://ci.example/api/v2/project/gh/acme/app/pipeline/mine?page-token=t%2F2",
            "GET https://ci.example/api/v2/project/gh/acme/app/pipeline/mine?page-token=t%2F3",
        ]
    );
    assert_eq!(decided.outcome(), "found");
}

#[test]
fn targets_that_cannot_reconcile_say_why() {
    assert_eq!(unable(&target(TargetKind::Gitlab), None), None);
    assert_eq!(unable(&target(TargetKind::Circleci), Some(&v2())), None);
    assert_eq!(
        unable(&target(TargetKind::Buildkite), None).as_deref(),
        Some("hookbridge cannot look up a buildkite run it may have started")
    );
    let mut job = v2();
    if let TriggerRequest::Circleci(r) = &mut job {
        *r = crate::target::circleci::Request::Job(crate::target::circleci::JobRequest {
            project: "gh/acme/app".into(),
            branch: "main".into(),
            job: "build".into(),
            revision: None,
            parallel: None,
            build_parameters: serde_json::Map::new(),
        });
    }
    assert_eq!(
        unable(&target(TargetKind::Circleci), Some(&job)).as_deref(),
        Some("API v1.1 jobs cannot be told apart")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever the CI answers to its reads, reconcile decides without a
    /// panic, and a decision it cannot back with an answer is never "found".
    #[test]
    fn any_answer_is_decided_without_panicking(
        statuses in proptest::collection::vec(prop_oneof![Just(200u16), Just(404), Just(500), Just(401), 100u16..600], 1..6),
        bodies in proptest::collection::vec(prop_oneof![
            Just("[]".to_owned()),
            Just(r#"[{"id":1}]"#.to_owned()),
            Just(format!(r#"[{{"key":"HOOKBRIDGE_JOB","value":"{JOB}"}}]"#)),
            Just(r#"{"items":[{"id":"x","created_at":"9999-01-01T00:00:00Z","trigger":{"type":"api"},"vcs":{"branch":"main"}}]}"#.to_owned()),
            Just(r#"{"items":[{"id":"x","created_at":"not a date"}],"next_page_token":"a"}"#.to_owned()),
            ".{0,64}",
        ], 1..6),
        gitlab in any::<bool>(),
    ) {
        let answers: Vec<(u16, &str)> = statuses.iter().copied().zip(bodies.iter().map(String::as_str)).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (kind, request) = if gitlab { (TargetKind::Gitlab, gl()) } else { (TargetKind::Circleci, v2()) };
        let (decided, calls) = runtime.block_on(run(kind, request, &[], answers.clone()));
        prop_assert!(calls.len() <= answers.len() + 1);
        if let Reconciled::Found { result, .. } = &decided {
            prop_assert!(result.id.is_some());
        }
    }
}

#[tokio::test]
async fn gitlab_skips_the_pipeline_of_the_round_before_a_replay() {
    let list = r#"[{"id":21,"iid":5,"web_url":"https://gl/p/21","status":"success"}]"#;
    let script = Script::new(vec![(200, list)]);
    let job = Subject {
        id: JOB,
        request: &gl(),
        previous: Some("21"),
    };
    let (looked, _) = look(
        &script,
        &target(TargetKind::Gitlab),
        job,
        since(),
        (Duration::from_secs(5), since()),
    )
    .await;
    let Looked::Decided(decided) = looked else {
        panic!("{looked:?}")
    };
    assert_eq!(decided.outcome(), "not_found", "{decided:?}");
    assert_eq!(script.calls().len(), 1, "its variables are not even read");
}

#[tokio::test]
async fn gitlab_answers_that_cannot_be_read_are_not_a_no() {
    let list = r#"[{"id":12}]"#;
    let (decided, _) = run(TargetKind::Gitlab, gl(), &[], vec![(200, list), (200, "<html>")]).await;
    assert_eq!(decided.outcome(), "failed", "{decided:?}");
    // Two full pages without the job's marker: more may be beyond them.
    let page: Vec<String> = (0..100).map(|i| format!(r#"{{"id":{}}}"#, 1000 - i)).collect();
    let page = format!("[{}]", page.join(","));
    let page2: Vec<String> = (0..100).map(|i| format!(r#"{{"id":{}}}"#, 900 - i)).collect();
    let page2 = format!("[{}]", page2.join(","));
    let mut answers = vec![(200, page.as_str())];
    answers.extend(std::iter::repeat_n((200, "[]"), 100));
    answers.push((200, page2.as_str()));
    answers.extend(std::iter::repeat_n((200, "[]"), 100));
    let (decided, calls) = run(TargetKind::Gitlab, gl(), &[], answers).await;
    assert_eq!(calls.len(), 202);
    assert_eq!(
        decided,
        Reconciled::Skipped(format!(
            "more than 200 trigger pipelines on `main` since 2026-12-06T11:59:00.000Z: the 200 newest do not carry HOOKBRIDGE_JOB={JOB}"
        ))
    );
}

#[tokio::test]
async fn circleci_without_a_branch_is_not_guessed() {
    let mut request = v2();
    if let TriggerRequest::Circleci(circleci::Request::Pipeline(r)) = &mut request {
        r.branch = None;
    }
    let (decided, calls) = run(TargetKind::Circleci, request, &[], vec![]).await;
    assert_eq!(decided.outcome(), "skipped");
    assert!(calls.is_empty());
}

#[test]
fn a_trigger_refused_for_its_marker_is_sent_without_it() {
    let t = target(TargetKind::Gitlab);
    let mut request = t.request(&gl()).unwrap();
    t.mark(&mut request, JOB);
    assert_eq!(request.body["variables"][MARKER], JOB);
    let refused = crate::target::Outcome::Permanent(
        "HTTP 400: Insufficient permissions to set pipeline variables (the project restricts pipeline variables: ...)".into(),
    );
    let plain = refused_marker(&request, &refused).unwrap();
    assert!(plain.body.get("variables").is_none(), "{}", plain.body);
    assert_eq!(plain.body["ref"], "main");
    // Any other answer, or a request without the marker, is left alone.
    let other = crate::target::Outcome::Permanent("HTTP 400: Reference not found".into());
    assert!(refused_marker(&request, &other).is_none());
    assert!(refused_marker(&plain, &refused).is_none());
    // The rule's own variables stay.
    let mut with_vars = gl();
    if let TriggerRequest::Gitlab(r) = &mut with_vars {
        r.variables.insert("DEPLOY".into(), "1".into());
    }
    let mut request = t.request(&with_vars).unwrap();
    t.mark(&mut request, JOB);
    let plain = refused_marker(&request, &refused).unwrap();
    assert_eq!(plain.body["variables"], serde_json::json!({"DEPLOY": "1"}));
}
