//! CircleCI's published payloads described field by field, and any payload,
//! however shaped, described or refused without a panic.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn fixture(file: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/payloads/circleci/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(path).unwrap()
}

const FIXTURES: [&str; 4] = [
    "workflow-completed-github-oauth.json",
    "workflow-completed-gitlab.json",
    "job-completed-github-oauth.json",
    "job-completed-gitlab.json",
];

fn described(file: &str) -> Event {
    describe("ci", None, &fixture(file)).unwrap()
}

#[test]
fn a_workflow_completion_is_a_pipeline_event_with_its_result() {
    let e = described("workflow-completed-github-oauth.json");
    assert_eq!(
        (e.name.as_str(), e.kind.as_str(), e.action.as_deref()),
        ("workflow-completed", "pipeline", Some("success"))
    );
    assert_eq!(e.provider, Provider::Circleci);
    assert_eq!(e.delivery, "3888f21b-eaa7-38e3-8f3d-75a63bba8895");
    assert_eq!(e.sha.as_deref(), Some("1dc6aa69429bff4806ad6afe58d3d8f57e25973e"));
    assert_eq!(e.git_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(e.branch.as_deref(), Some("main"));
    assert_eq!(e.tag, None);
    assert_eq!(e.repository.as_deref(), Some("circleci/webhook-service"));
    assert_eq!(
        serde_json::to_value(e.pipeline).unwrap(),
        json!({
            "ci": "circleci",
            "id": "1285fe1d-d3a6-44fc-8886-8979558254c4",
            "number": 130,
            "status": "success",
            "workflow": "build-test-deploy",
            "workflow_id": "fda08377-fe7e-46b1-8992-3a7aaecac9c3",
            "url": "https://app.circleci.com/pipelines/github/circleci/webhook-service/130/workflows/fda08377-fe7e-46b1-8992-3a7aaecac9c3",
        })
    );
}

#[test]
fn a_gitlab_project_states_its_commit_in_the_trigger_parameters() {
    let e = described("workflow-completed-gitlab.json");
    assert_eq!(e.action.as_deref(), Some("failed"));
    assert_eq!(e.sha.as_deref(), Some("850a1519f25d14e968649cc420d1bd381715c05c"));
    assert_eq!(e.branch.as_deref(), Some("main"));
    // `"tag": ""` is no tag.
    assert_eq!(e.tag, None);
    assert_eq!(e.repository.as_deref(), Some("circleci/hello-world"));
    let p = e.pipeline.unwrap();
    assert_eq!(
        (p.id.as_str(), p.number, p.workflow.as_deref()),
        ("37c74cb7-d64d-4032-8731-1cb95bfef921", Some(1), Some("build"))
    );
}

#[test]
fn a_job_completion_is_a_job_event_with_the_jobs_status() {
    let e = described("job-completed-github-oauth.json");
    assert_eq!(
        (e.kind.as_str(), e.action.as_deref()),
        ("job", e.pipeline.as_ref().map(|p| p.status.as_str()))
    );
    // GitLab's sample has no `workflow`: the run still names its pipeline.
    let e = described("job-completed-gitlab.json");
    assert_eq!((e.kind.as_str(), e.action.as_deref()), ("job", Some("success")));
    let p = e.pipeline.unwrap();
    assert_eq!(p.status, "success");
    assert_eq!((p.workflow, p.workflow_id, p.url), (None, None, None));
}

#[test]
fn missing_fields_leave_the_event_fields_null() {
    let e = describe("ci", None, br#"{"type":"workflow-completed","id":"e-1"}"#).unwrap();
    assert_eq!((e.kind.as_str(), e.delivery.as_str()), ("pipeline", "e-1"));
    assert_eq!(
        (e.action, e.sha, e.repository, e.pipeline),
        (None, None, None, None)
    );
    // No `id`: the body's digest, so a redelivery still deduplicates.
    let e = describe("ci", None, br#"{"type":"job-completed"}"#).unwrap();
    assert!(e.delivery.starts_with("sha256:"), "{}", e.delivery);
    // No `type`: the header names it; neither is a 400.
    let e = describe("ci", Some("workflow-completed"), b"{}").unwrap();
    assert_eq!(e.kind, "pipeline");
    let err = describe("ci", None, b"{}").unwrap_err();
    assert!(err.to_string().contains("no `type`"), "{err}");
    // Not JSON.
    let err = describe("ci", None, b"{\"type\":").unwrap_err();
    assert!(matches!(err, DescribeError::InvalidJson(_)), "{err}");
    // A status and no pipeline id: an action, no run.
    let e = describe(
        "ci",
        None,
        br#"{"type":"workflow-completed","workflow":{"status":"error"},"pipeline":{"number":3}}"#,
    )
    .unwrap();
    assert_eq!((e.action.as_deref(), e.pipeline), (Some("error"), None));
}

#[test]
fn a_tag_build_sets_the_tag() {
    let mut body: Value = serde_json::from_slice(&fixture(FIXTURES[0])).unwrap();
    body["pipeline"]["vcs"].as_object_mut().unwrap().remove("branch");
    body["pipeline"]["vcs"]["tag"] = json!("v1.2.0");
    let e = describe("ci", None, &serde_json::to_vec(&body).unwrap()).unwrap();
    assert_eq!(
        (e.git_ref.as_deref(), e.tag.as_deref(), e.branch.as_deref()),
        (Some("refs/tags/v1.2.0"), Some("v1.2.0"), None)
    );
}

#[test]
fn repositories_come_from_urls_and_vcs_slugs() {
    for (url, want) in [
        ("https://github.com/acme/app", Some("acme/app")),
        ("https://github.com/acme/app.git/", Some("acme/app")),
        ("https://gitlab.com/group/sub/app", Some("group/sub/app")),
        (
            "git@gitlab.com:circleci/hello-world.git",
            Some("circleci/hello-world"),
        ),
        (
            "ssh://git@bb.example.com:7999/scm/PROJ/repo.git",
            Some("PROJ/repo"),
        ),
        ("https://bitbucket.org/acme/app?x=1", Some("acme/app")),
        ("https://github.com/acme", None),
        ("https://github.com", None),
        ("", None),
        ("not a url", None),
    ] {
        assert_eq!(repository_from_url(url).as_deref(), want, "{url}");
    }
    for (slug, want) in [
        ("gh/acme/app", Some("acme/app")),
        ("github/acme/app", Some("acme/app")),
        ("bb/acme/app", Some("acme/app")),
        ("circleci/DdaVtNusHqi24D4YT3X4eu/6EkDPZoN4ZdMKKZtBkRodt", None),
        ("gh/acme", None),
        ("gh/acme/app/more", None),
    ] {
        assert_eq!(repository_from_slug(slug).as_deref(), want, "{slug}");
    }
}

/// JSON of any shape, with CircleCI's keys likely.
fn circleci_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "[a-z:/@._ -]{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("type".to_owned()),
            Just("id".to_owned()),
            Just("workflow".to_owned()),
            Just("job".to_owned()),
            Just("pipeline".to_owned()),
            Just("vcs".to_owned()),
            Just("trigger_parameters".to_owned()),
            Just("git".to_owned()),
            Just("status".to_owned()),
            Just("number".to_owned()),
            Just("branch".to_owned()),
            Just("tag".to_owned()),
            Just("target_repository_url".to_owned()),
            Just("slug".to_owned()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value at `path` inside `body`, replacing what was there (creating objects on the way).
fn set_at(body: &mut Value, path: &[String], value: Value) {
    match path.split_first() {
        None => *body = value,
        Some((key, rest)) => {
            if !body.is_object() {
                *body = json!({});
            }
            if let Some(obj) = body.as_object_mut() {
                set_at(obj.entry(key.clone()).or_insert(Value::Null), rest, value);
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = describe("ci", None, &bytes);
        let _ = describe("ci", Some("workflow-completed"), &bytes);
    }

    /// A real payload with a field at any depth replaced by any JSON value:
    /// an event or a typed error, never a panic; an event keeps its name's kind.
    #[test]
    fn a_real_payload_with_a_field_replaced_never_panics(
        which in 0..FIXTURES.len(),
        path in prop::sample::select(vec![
            vec!["type"], vec!["id"], vec!["workflow"], vec!["workflow", "status"],
            vec!["job", "status"], vec!["pipeline"], vec!["pipeline", "id"],
            vec!["pipeline", "number"], vec!["pipeline", "vcs"], vec!["pipeline", "vcs", "branch"],
            vec!["pipeline", "vcs", "tag"], vec!["pipeline", "vcs", "target_repository_url"],
            vec!["pipeline", "trigger_parameters", "git"], vec!["project", "slug"],
        ]),
        value in circleci_json(),
    ) {
        let mut body: Value = serde_json::from_slice(&fixture(FIXTURES[which])).unwrap();
        let path: Vec<String> = path.into_iter().map(str::to_owned).collect();
        set_at(&mut body, &path, value);
        let bytes = serde_json::to_vec(&body).unwrap();
        if let Ok(e) = describe("ci", None, &bytes) {
            let want = match e.name.as_str() {
                WORKFLOW_COMPLETED => "pipeline",
                JOB_COMPLETED => "job",
                other => other,
            };
            prop_assert_eq!(e.kind.as_str(), want);
            if let Some(p) = e.pipeline {
                prop_assert_eq!(e.action, Some(p.status));
            }
        }
    }

    #[test]
    fn circleci_shaped_json_never_panics(body in circleci_json(), header in proptest::option::of("[a-z-]{0,20}")) {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let _ = describe("ci", header.as_deref(), &bytes);
    }
}
