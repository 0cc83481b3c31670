//! The exact outbound request of representative rules: method, URL, headers
//! (secrets redacted) and body, rendered from real payloads.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::SystemTime;

use hookbridge::config::LoadMode;
use http::{HeaderMap, HeaderValue};
use support::{github_signature, payload};

const CONFIG: &str = r#"
[sources.github]
type = "github"
secrets = ["s3cret"]

[targets.circleci]
type = "circleci"
token = "circle-token-value"

[targets.circleci-server]
type = "circleci"
url = "https://circleci.internal.example:8443/"
token = "circle-server-token"

[targets.gitlab]
type = "gitlab"
url = "https://gitlab.example.com"
token = "glptt-default-token"

[[rules]]
name = "v2-pipeline-on-pr"
events = ["pull_request"]
actions = ["opened", "synchronize"]
[rules.trigger]
target = "circleci"
project = "gh/Codertocat/Hello-World"
branch = "{{ body.pull_request.head.ref }}"
parameters = { pr_number = "{{ body.pull_request.number }}", run_e2e = true, title = "PR #{{ event.number }}: {{ body.pull_request.title }}" }

[[rules]]
name = "v1-job-on-pr"
events = ["pull_request"]
[rules.trigger]
target = "circleci-server"
project = "bb/acme team/app"
job = "build and test"
branch = "{{ event.branch }}/x"
revision = "{{ event.sha }}"
build_parameters = { DEPLOY_ENV = "prod", PR = "{{ event.number }}" }

[[rules]]
name = "pipeline-run"
events = ["pull_request"]
[rules.trigger]
target = "circleci"
project = "circleci/9d3c0b1e-0000-4000-8000-000000000001/7a1f0c2d-0000-4000-8000-000000000002"
definition_id = "0f4c7e2a-0000-4000-8000-000000000003"
branch = "{{ event.branch }}"
parameters = { deploy = false }

[[rules]]
name = "gitlab-pipeline"
events = ["pull_request"]
[rules.trigger]
target = "gitlab"
project = "acme/sub group/app"
ref = "{{ event.base_branch }}"
variables = { UPSTREAM_SHA = "{{ event.sha }}", PR = "{{ event.number }}", DRY = false }
inputs = { environment = "staging", scan_security = false, level = 3, labels = "{{ body.pull_request.labels | map(attribute='name') | list }}" }

[[rules]]
name = "gitlab-rule-token"
events = ["pull_request"]
[rules.trigger]
target = "gitlab"
project = "42"
ref = "main"
token = "glptt-rule-token"
"#;

fn config(toml: &str) -> hookbridge::config::Config {
    hookbridge::config::parse(std::path::Path::new("r.toml"), toml, LoadMode::Check)
        .unwrap()
        .config
}

/// `body` as GitHub sends it for `event`, signed with the config's secret,
/// verified, described and evaluated.
fn signed_github(
    config: &hookbridge::config::Config,
    event: &'static str,
    body: &[u8],
) -> hookbridge::intake::Intake {
    let mut headers = HeaderMap::new();
    headers.insert("x-github-event", HeaderValue::from_static(event));
    headers.insert("x-github-delivery", HeaderValue::from_static("d-1"));
    headers.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(&github_signature("s3cret", body)).unwrap(),
    );
    hookbridge::intake::process(
        config,
        &config.sources["github"],
        &headers,
        body,
        SystemTime::now(),
        hookbridge::intake::Trust::Verify,
    )
    .unwrap()
}

#[test]
fn rendered_requests() {
    let config = config(CONFIG);
    let intake = signed_github(
        &config,
        "pull_request",
        &payload("github/pull_request-opened.json"),
    );
    assert!(
        intake.evaluation.errors.is_empty(),
        "{:?}",
        intake.evaluation.errors
    );
    let mut requests = serde_json::Map::new();
    for m in &intake.evaluation.matched {
        let request = config.targets[&m.target].request(&m.request).unwrap();
        let text = serde_json::to_string(&request).unwrap();
        for secret in [
            "circle-token-value",
            "circle-server-token",
            "glptt-default-token",
            "glptt-rule-token",
        ] {
            assert!(!text.contains(secret), "{} leaks a secret", m.rule);
        }
        requests.insert(m.rule.clone(), serde_json::to_value(&request).unwrap());
    }
    assert_eq!(requests.len(), 5);
    insta::assert_json_snapshot!(requests);
}

#[test]
fn verdicts_quote_a_huge_payload_value_only_in_part() {
    // A signed payload may carry a repository name as long as its body; every
    // rule's verdict quotes it, and verdicts are answered, stored and logged.
    let toml = format!(
        "{CONFIG}\n[[rules]]\nname = \"only-other\"\nrepositories = [\"other/*\"]\n\
         [rules.trigger]\ntarget = \"circleci\"\nproject = \"gh/o/o\"\nbranch = \"main\"\n"
    );
    let config = config(&toml);
    let mut push: serde_json::Value = serde_json::from_slice(&payload("github/push.json")).unwrap();
    let huge = format!("acme/{}", "r".repeat(2 << 20));
    push["repository"]["full_name"] = serde_json::Value::String(huge);
    let intake = signed_github(&config, "push", &serde_json::to_vec(&push).unwrap());
    assert!(!intake.evaluation.skipped.is_empty());
    for s in &intake.evaluation.skipped {
        assert!(s.reason.len() < 1100, "{}: {} bytes", s.rule, s.reason.len());
    }
    let quoted = intake
        .evaluation
        .skipped
        .iter()
        .find(|s| s.reason.starts_with("repositories: \"acme/rrr"))
        .expect("a rule filters repositories");
    assert!(quoted.reason.ends_with("bytes)"), "{}", quoted.reason);
}
