//! Self-test of the stand-in targets (`tests/support/targets/`): every route
//! accepts a valid request and answers as its API does, invalid requests are
//! reported as violations, and the Standard Webhooks verifier (the reference
//! library) accepts a correctly signed request and rejects a tampered one.
#![allow(clippy::unwrap_used)]

mod support;

use axum::http::HeaderMap;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, USER_AGENT};
use serde_json::{Value, json};
use support::targets::{
    BUILDKITE_TOKEN, DEPLOY_WHSEC, GITEA_TOKEN, GITHUB_TOKEN, GiteaMode, JENKINS_TOKEN, JENKINS_USER,
    QueueOutcome, Reply, TargetStandIn, verify_standard_webhook,
};

fn basic() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{JENKINS_USER}:{JENKINS_TOKEN}"))
    )
}

fn github(client: &reqwest::Client, url: String) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header(AUTHORIZATION, format!("Bearer {GITHUB_TOKEN}"))
        .header(ACCEPT, "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .header(USER_AGENT, "hookbridge-test")
}

fn gitea(client: &reqwest::Client, url: String) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header(AUTHORIZATION, format!("token {GITEA_TOKEN}"))
        .header(ACCEPT, "application/json")
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_targets_accept_valid_and_report_invalid_requests() {
    let s = TargetStandIn::start().await;
    let c = reqwest::Client::new();

    // GitHub: workflow dispatch with run details, then repository dispatch.
    let wf = format!(
        "{}/repos/acme/app/actions/workflows/deploy.yml/dispatches",
        s.github_url()
    );
    let body =
        json!({"ref": "main", "inputs": {"sha": "abc", "n": 3, "dry": true}, "return_run_details": true});
    let (status, answer) = json_of(github(&c, wf.clone()).json(&body).send().await.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["workflow_run_id"].as_u64().unwrap() > 0);
    assert!(
        answer["html_url"]
            .as_str()
            .unwrap()
            .starts_with("https://github.com/acme/app/actions/runs/")
    );
    let rd = format!("{}/repos/acme/app/dispatches", s.github_url());
    let resp = github(&c, rd)
        .json(&json!({"event_type": "deploy", "client_payload": {"sha": "abc"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // Scripted answers: a secondary rate limit, a primary one, then normal again.
    s.script([
        Reply::github_secondary_rate_limit(Some(1)),
        Reply::github_rate_limit(1),
    ]);
    let resp = github(&c, wf.clone()).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(resp.text().await.unwrap().contains("secondary rate limit"));
    let resp = github(&c, wf.clone()).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    let reset: u64 = resp.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset >= support::unix_now());
    s.script([Reply::retry_after(429, 1), Reply::Status(502)]);
    assert_eq!(
        github(&c, wf.clone()).json(&body).send().await.unwrap().status(),
        429
    );
    assert_eq!(
        github(&c, wf.clone()).json(&body).send().await.unwrap().status(),
        502
    );
    assert_eq!(
        github(&c, wf.clone()).json(&body).send().await.unwrap().status(),
        200
    );

    // Gitea answers 200 RunDetails; Forgejo 201 DispatchWorkflowRun.
    let gt = format!(
        "{}/api/v1/repos/acme/app/actions/workflows/ci.yml/dispatches?return_run_details=true",
        s.gitea_url()
    );
    let gbody = json!({"ref": "main", "inputs": {"sha": "abc"}, "return_run_info": true});
    let (status, answer) = json_of(gitea(&c, gt.clone()).json(&gbody).send().await.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["run_url"].is_string() && answer["workflow_run_id"].is_u64());
    s.set_gitea_mode(GiteaMode::Forgejo);
    let (status, answer) = json_of(gitea(&c, gt.clone()).json(&gbody).send().await.unwrap()).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["jobs"], json!(["build"]));

    // Buildkite: numbers count up per pipeline.
    let bk = format!("{}/v2/organizations/acme/pipelines/app/builds", s.buildkite_url());
    for n in 1..=2 {
        let (status, answer) = json_of(
            c.post(&bk)
                .bearer_auth(BUILDKITE_TOKEN)
                .json(
                    &json!({"commit": "HEAD", "branch": "main", "env": {"A": "1"}, "meta_data": {"m": "x"}}),
                )
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["number"], n);
        assert_eq!(answer["state"], "scheduled");
        assert_eq!(
            answer["web_url"],
            format!("https://buildkite.com/acme/app/builds/{n}")
        );
    }

    // Jenkins under a context path: queued, waiting twice, then the build.
    s.set_jenkins_prefix("/jenkins");
    let jb = format!("{}/job/team/job/app/buildWithParameters", s.jenkins_url());
    let resp = c
        .post(&jb)
        .header(AUTHORIZATION, basic())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("SHA=abc&BRANCH=main+x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{}/jenkins/queue/item/", s.url)),
        "{location}"
    );
    assert!(resp.bytes().await.unwrap().is_empty());
    let poll = format!("{location}api/json");
    let mut classes = Vec::new();
    for _ in 0..3 {
        let (status, item) = json_of(c.get(&poll).header(AUTHORIZATION, basic()).send().await.unwrap()).await;
        assert_eq!(status, 200);
        classes.push(item["_class"].as_str().unwrap().to_owned());
        if item["_class"] == "hudson.model.Queue$LeftItem" {
            assert_eq!(item["cancelled"], false);
            assert_eq!(item["executable"]["number"], 1);
            assert_eq!(
                item["executable"]["url"],
                format!("{}/jenkins/job/team/job/app/1/", s.url)
            );
        } else {
            assert_eq!(item["why"], "Waiting for next available executor");
            assert!(item["executable"].is_null());
        }
    }
    assert_eq!(
        classes,
        [
            "hudson.model.Queue$WaitingItem",
            "hudson.model.Queue$WaitingItem",
            "hudson.model.Queue$LeftItem"
        ]
    );
    let jenkins = s.requests_to("jenkins-build");
    assert_eq!(
        jenkins[0].form,
        [
            ("SHA".to_owned(), "abc".to_owned()),
            ("BRANCH".to_owned(), "main x".to_owned())
        ]
    );
    s.set_queue_outcome(QueueOutcome::Cancelled);
    s.set_waiting_polls(0);
    let resp = c.post(&jb).header(AUTHORIZATION, basic()).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let poll = format!("{}api/json", resp.headers()[LOCATION].to_str().unwrap());
    let (_, item) = json_of(c.get(&poll).header(AUTHORIZATION, basic()).send().await.unwrap()).await;
    assert_eq!(
        (item["cancelled"].clone(), item["executable"].clone()),
        (json!(true), Value::Null)
    );
    s.set_queue_outcome(QueueOutcome::NotFound);
    assert_eq!(
        c.get(&poll)
            .header(AUTHORIZATION, basic())
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // The HTTP receiver, with a Standard Webhooks signature made here.
    let payload = br#"{"event":"push","ref":"main"}"#.to_vec();
    let ts = support::unix_now();
    let signature = support::standard_signature(DEPLOY_WHSEC, "msg_01JOB", ts, &payload);
    let resp = c
        .put(format!("{}/deploy/app", s.hook_url()))
        .header("webhook-id", "msg_01JOB")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", &signature)
        .header(CONTENT_TYPE, "application/json")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let hook = s.requests_to("http").pop().unwrap();
    assert_eq!(
        (hook.method.as_str(), hook.path.as_str()),
        ("PUT", "/hook/deploy/app")
    );
    assert_eq!(&hook.raw[..], &payload[..]);
    verify_standard_webhook(DEPLOY_WHSEC, &hook.headers, &hook.raw).unwrap();
    let mut tampered = payload.clone();
    tampered[2] = b'E';
    let err = verify_standard_webhook(DEPLOY_WHSEC, &hook.headers, &tampered).unwrap_err();
    assert!(err.contains("No matching signature"), "{err}");
    let other = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB";
    assert!(verify_standard_webhook(other, &hook.headers, &hook.raw).is_err());
    let mut stale = HeaderMap::new();
    stale.insert("webhook-id", "msg_01JOB".parse().unwrap());
    stale.insert("webhook-timestamp", (ts - 3600).to_string().parse().unwrap());
    let old = support::standard_signature(DEPLOY_WHSEC, "msg_01JOB", ts - 3600, &payload);
    stale.insert("webhook-signature", old.parse().unwrap());
    let err = verify_standard_webhook(DEPLOY_WHSEC, &stale, &payload).unwrap_err();
    assert!(err.contains("too old"), "{err}");

    s.assert_clean();
    assert!(s.requests().iter().all(|r| r.status != 0));

    // Invalid requests, on a second stand-in (GHES prefix): each is a violation.
    let bad = TargetStandIn::start().await;
    bad.set_github_prefix("/api/v3/");
    let wf = format!(
        "{}/repos/acme/app/actions/workflows/42/dispatches",
        bad.github_url()
    );
    assert!(wf.contains("/api/v3/repos/"));
    let ok = github(&c, wf.clone())
        .json(&json!({"ref": "v1.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    bad.assert_clean();
    let inputs: serde_json::Map<String, Value> = (0..26).map(|i| (format!("k{i}"), json!("v"))).collect();
    let resp = github(&c, wf.clone())
        .json(&json!({"ref": "main", "inputs": inputs}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let v = bad.violations();
    assert!(
        v.iter()
            .any(|v| v.contains("github-workflow-dispatch") && v.contains("/inputs")),
        "{v:#?}"
    );

    let before = bad.violations().len();
    let resp = gitea(
        &c,
        format!(
            "{}/api/v1/repos/acme/app/actions/workflows/ci.yml/dispatches?return_run_details=yes",
            bad.gitea_url()
        ),
    )
    .json(&json!({"ref": "main", "inputs": {"n": 3}}))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 422);
    let v = bad.violations()[before..].to_vec();
    assert!(v.iter().any(|v| v.contains("Gitea schema")), "{v:#?}");
    assert!(v.iter().any(|v| v.contains("Forgejo schema")), "{v:#?}");
    assert!(v.iter().any(|v| v.contains("query return_run_details")), "{v:#?}");

    let before = bad.violations().len();
    let resp = c
        .post(format!("{}/v2/organizations/acme/pipelines/app/builds", bad.url))
        .header(AUTHORIZATION, "Bearer wrong")
        .header("x-github-event", "push")
        .json(&json!({"commit": "HEAD", "env": {"A": 1}, "extra": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v = bad.violations()[before..].to_vec();
    for expected in ["Authorization", "x-github-event", "branch", "/env/A", "extra"] {
        assert!(
            v.iter().any(|v| v.contains(expected)),
            "no `{expected}` in {v:#?}"
        );
    }

    let before = bad.violations().len();
    let resp = c
        .post(format!(
            "{}/job/app/buildWithParameters?token={JENKINS_TOKEN}",
            bad.url
        ))
        .header(CONTENT_TYPE, "text/plain")
        .body("A=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .get(format!("{}/queue/item/1/api/json", bad.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c.post(format!("{}/nowhere", bad.url)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let v = bad.violations()[before..].to_vec();
    for expected in [
        "a token in the URL",
        "query string",
        "x-www-form-urlencoded",
        "jenkins-queue",
        "no such endpoint",
    ] {
        assert!(
            v.iter().any(|v| v.contains(expected)),
            "no `{expected}` in {v:#?}"
        );
    }
    assert!(bad.violations().iter().all(|v| !v.contains(JENKINS_TOKEN)));
}

/// Under `/api/v3` the stand-in is GitHub Enterprise Server 3.19: dispatches
/// are checked against its own description (`ghes-3.19.json`), a workflow
/// dispatch answers 204 only, and `return_run_details` (api.github.com's,
/// not GHES's) gets the 422 GHES really answers, and a violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghes_stand_in_takes_no_return_run_details() {
    let s = TargetStandIn::start().await;
    s.set_github_prefix("/api/v3");
    let c = reqwest::Client::new();
    let wf = format!(
        "{}/repos/acme/app/actions/workflows/deploy.yml/dispatches",
        s.github_url()
    );
    assert!(wf.starts_with(&format!("{}/api/v3/repos/", s.url)), "{wf}");

    // Without the field: 204, no body, no violation.
    let resp = github(&c, wf.clone())
        .json(&json!({"ref": "main", "inputs": {"sha": "abc", "n": 3, "dry": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = github(&c, format!("{}/repos/acme/app/dispatches", s.github_url()))
        .json(&json!({"event_type": "deploy", "client_payload": {"sha": "abc"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    s.assert_clean();

    // With it (true or false): GHES 3.19's 422, and a violation.
    for value in [true, false] {
        let before = s.violations().len();
        let (status, answer) = json_of(
            github(&c, wf.clone())
                .json(&json!({"ref": "main", "return_run_details": value}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(
            answer["message"],
            "\"return_run_details\" is not a permitted key."
        );
        assert!(
            answer["documentation_url"]
                .as_str()
                .unwrap()
                .starts_with("https://docs.github.com/enterprise-server@3.19/"),
            "{answer}"
        );
        let v = s.violations()[before..].to_vec();
        assert!(
            v.len() == 1
                && v[0].contains("github-workflow-dispatch")
                && v[0].contains("return_run_details")
                && v[0].contains("GHES 3.19"),
            "{v:#?}"
        );
    }
    assert_eq!(
        s.requests_to("github-workflow-dispatch")
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [204, 422, 422]
    );

    // GHES 3.19's own limits: at most 10 inputs (api.github.com takes 25).
    let inputs: serde_json::Map<String, Value> = (0..11).map(|i| (format!("k{i}"), json!("v"))).collect();
    let body = json!({"ref": "main", "inputs": inputs});
    let before = s.violations().len();
    let resp = github(&c, wf.clone()).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let v = s.violations()[before..].to_vec();
    assert!(
        v.iter()
            .any(|v| v.contains("GHES 3.19 schema") && v.contains("/inputs")),
        "{v:#?}"
    );
    let dotcom = TargetStandIn::start().await;
    let resp = github(
        &c,
        format!(
            "{}/repos/acme/app/actions/workflows/deploy.yml/dispatches",
            dotcom.github_url()
        ),
    )
    .json(&body)
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 204);
    dotcom.assert_clean();
}
