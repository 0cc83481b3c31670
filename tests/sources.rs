//! Every fixture payload, signed the way its sender signs, is verified and
//! described into the expected normalized event; every signature vector verifies.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::SystemTime;

use base64::Engine;
use hookbridge::config::{Config, LoadMode};
use hookbridge::event::Event;
use hookbridge::intake::{Rejection, Trust};
use hookbridge::source::VerifyError;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use support::{github_signature, hmac_sha256_hex, payload, standard_signature};

const SECRET: &str = "It's a Secret to Everybody";
const WHSEC: &str = "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdHRlc3Q=";

fn config() -> Config {
    hookbridge::config::parse(
        std::path::Path::new("sources.toml"),
        &sources_toml(),
        LoadMode::Check,
    )
    .unwrap()
    .config
}

fn sources_toml() -> String {
    format!(
        r#"
[sources.github]
type = "github"
secrets = ["old-secret", "{SECRET}"]

[sources.gitlab]
type = "gitlab"
secrets = ["{SECRET}"]

[sources.gitlab-signed]
type = "gitlab"
secrets = ["{SECRET}"]
signing_secrets = ["{WHSEC}"]

[sources.bitbucket]
type = "bitbucket"
secrets = ["{SECRET}"]

[sources.gitea]
type = "gitea"
secrets = ["{SECRET}"]

[sources.forgejo]
type = "forgejo"
secrets = ["{SECRET}"]

[sources.gogs]
type = "gogs"
secrets = ["{SECRET}"]

[sources.azure]
type = "azure-devops"
secrets = ["hooks:{SECRET}"]

[sources.standard]
type = "standard"
secrets = ["{WHSEC}"]

[sources.circleci]
type = "circleci"
secrets = ["old-secret", "{SECRET}"]

[sources.custom]
type = "hmac"
secrets = ["{SECRET}"]
header = "X-Signature"
algorithm = "sha512"
encoding = "base64"
prefix = "sha512="
event_header = "X-Event"
"#
    )
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// Sign `body` the way `provider`'s sender does, with `event` as its event header.
fn signed(source: &str, event: &str, body: &[u8]) -> HeaderMap {
    let hex = hmac_sha256_hex(SECRET.as_bytes(), body);
    let json = ("Content-Type", "application/json".to_owned());
    match source {
        "github" => headers(&[
            json,
            ("X-GitHub-Event", event.into()),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
            ("X-Hub-Signature-256", github_signature(SECRET, body)),
        ]),
        "gitlab" => headers(&[
            json,
            ("X-Gitlab-Event", event.into()),
            ("X-Gitlab-Token", SECRET.into()),
            (
                "X-Gitlab-Event-UUID",
                "13792a34-cac6-4fda-95a8-c58e00a3954e".into(),
            ),
            ("Idempotency-Key", "f5e5f430-f57b-4e6e-9fac-d9128cd7232f".into()),
        ]),
        "bitbucket-cloud" => headers(&[
            json,
            ("X-Event-Key", event.into()),
            ("X-Request-UUID", "9f6b2b5e-0000-4000-8000-00000000b17b".into()),
            ("X-Hub-Signature", format!("sha256={hex}")),
        ]),
        "bitbucket-dc" => headers(&[
            json,
            ("X-Event-Key", event.into()),
            ("X-Request-Id", "b1d0c0de-0000-4000-8000-000000000dc0".into()),
            ("X-Hub-Signature", format!("sha256={hex}")),
        ]),
        "gitea" | "forgejo" => {
            let p = if source == "gitea" { "Gitea" } else { "Forgejo" };
            headers(&[
                json,
                (&format!("X-{p}-Event"), event.into()),
                (&format!("X-{p}-Event-Type"), event.into()),
                (
                    &format!("X-{p}-Delivery"),
                    "6a5f6c7e-0000-4000-8000-0000000017ea".into(),
                ),
                (&format!("X-{p}-Signature"), hex.clone()),
                ("X-GitHub-Event", event.into()),
                ("X-Hub-Signature-256", format!("sha256={hex}")),
            ])
        }
        "circleci" => headers(&[
            json,
            ("User-Agent", "CircleCI-Webhook/1.0".into()),
            ("circleci-event-type", event.into()),
            ("circleci-signature", format!("v1={hex}")),
        ]),
        "gogs" => headers(&[
            json,
            ("X-Gogs-Event", event.into()),
            ("X-Gogs-Delivery", "0c0a0b0d-0000-4000-8000-00000000060e".into()),
            ("X-Gogs-Signature", hex),
        ]),
        "azure" => headers(&[
            json,
            (
                "Authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("hooks:{SECRET}"))
                ),
            ),
        ]),
        other => panic!("no signer for {other}"),
    }
}

fn describe(config: &Config, source: &str, headers: &HeaderMap, body: &[u8]) -> Event {
    let src = config.sources.get(source).unwrap();
    hookbridge::intake::process(config, src, headers, body, SystemTime::now(), Trust::Verify)
        .unwrap_or_else(|e| panic!("{source}: {e}"))
        .event
}

/// (source, signer, event header, fixture, expected normalized fields)
fn cases() -> Vec<(&'static str, &'static str, &'static str, &'static str, Value)> {
    vec![
        (
            "github",
            "github",
            "push",
            "github/push.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": "master", "created": true, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "push", "name": "push", "number": null, "paths": ["README.md"], "paths_unknown": false, "provider": "github", "provider_action": null, "ref": "refs/heads/master", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "source": "github", "tag": null}),
        ),
        (
            "github",
            "github",
            "push",
            "github/push-tag-deleted.json",
            json!({"action": null, "base_branch": null, "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "branch": null, "created": false, "deleted": true, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "push", "name": "push", "number": null, "paths": [], "paths_unknown": false, "provider": "github", "provider_action": null, "ref": "refs/tags/simple-tag", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": null, "source": "github", "tag": "simple-tag"}),
        ),
        (
            "github",
            "github",
            "ping",
            "github/ping.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "ping", "name": "ping", "number": null, "paths": null, "paths_unknown": false, "provider": "github", "provider_action": null, "ref": null, "repository": "Octocoders/Hello-World", "sender": "Codertocat", "sha": null, "source": "github", "tag": null}),
        ),
        (
            "github",
            "github",
            "pull_request",
            "github/pull_request-opened.json",
            json!({"action": "opened", "base_branch": "master", "before": null, "branch": "changes", "created": false, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "pull_request", "name": "pull_request", "number": 2, "paths": null, "paths_unknown": true, "provider": "github", "provider_action": null, "ref": "refs/heads/changes", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "source": "github", "tag": null}),
        ),
        (
            "github",
            "github",
            "release",
            "github/release-published.json",
            json!({"action": "published", "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "release", "name": "release", "number": null, "paths": null, "paths_unknown": false, "provider": "github", "provider_action": null, "ref": "refs/tags/0.0.1", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": null, "source": "github", "tag": "0.0.1"}),
        ),
        (
            "github",
            "github",
            "create",
            "github/create-tag.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": true, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "create", "name": "create", "number": null, "paths": null, "paths_unknown": false, "provider": "github", "provider_action": null, "ref": "refs/tags/simple-tag", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": null, "source": "github", "tag": "simple-tag"}),
        ),
        (
            "github",
            "github",
            "push",
            "github/ghes-3.5/push-tag-created.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": true, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "push", "name": "push", "number": null, "paths": [], "paths_unknown": false, "provider": "github", "provider_action": null, "ref": "refs/tags/simple-tag", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "source": "github", "tag": "simple-tag"}),
        ),
        (
            "github",
            "github",
            "push",
            "github/push-annotated-tag.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": true, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "push", "name": "push", "number": null, "paths": [], "paths_unknown": false, "provider": "github", "provider_action": null, "ref": "refs/tags/v1.2.0", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "source": "github", "tag": "v1.2.0"}),
        ),
        (
            "github",
            "github",
            "ping",
            "github/ghes-3.5/ping.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "ping", "name": "ping", "number": null, "paths": null, "paths_unknown": false, "provider": "github", "provider_action": null, "ref": null, "repository": "Octocoders/Hello-World", "sender": "Codertocat", "sha": null, "source": "github", "tag": null}),
        ),
        (
            "gitlab",
            "gitlab",
            "Push Hook",
            "gitlab/push-hook.json",
            json!({"action": null, "base_branch": null, "before": "95790bf891e76fee5e1747ab589903a6a1f80f22", "branch": "master", "created": false, "deleted": false, "delivery": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "forced": false, "kind": "push", "name": "Push Hook", "number": null, "paths": null, "paths_unknown": true, "provider": "gitlab", "provider_action": null, "ref": "refs/heads/master", "repository": "mike/diaspora", "sender": "jsmith", "sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "source": "gitlab", "tag": null}),
        ),
        (
            "gitlab",
            "gitlab",
            "Tag Push Hook",
            "gitlab/tag-push-hook.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": true, "deleted": false, "delivery": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "forced": false, "kind": "push", "name": "Tag Push Hook", "number": null, "paths": [], "paths_unknown": false, "provider": "gitlab", "provider_action": null, "ref": "refs/tags/v1.0.0", "repository": "jsmith/example", "sender": null, "sha": "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7", "source": "gitlab", "tag": "v1.0.0"}),
        ),
        (
            "gitlab",
            "gitlab",
            "Merge Request Hook",
            "gitlab/merge-request-hook.json",
            json!({"action": "opened", "base_branch": "master", "before": null, "branch": "ms-viewport", "created": false, "deleted": false, "delivery": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "forced": false, "kind": "pull_request", "name": "Merge Request Hook", "number": 1, "paths": null, "paths_unknown": true, "provider": "gitlab", "provider_action": "open", "ref": "refs/heads/ms-viewport", "repository": "gitlabhq/gitlab-test", "sender": "root", "sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "source": "gitlab", "tag": null}),
        ),
        (
            "github",
            "github",
            "pull_request_review",
            "github/pull_request_review-submitted.json",
            json!({"action": "submitted", "base_branch": "master", "before": null, "branch": "changes", "created": false, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "pull_request_review", "name": "pull_request_review", "number": 2, "paths": null, "paths_unknown": true, "provider": "github", "provider_action": null, "ref": "refs/heads/changes", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "source": "github", "tag": null}),
        ),
        (
            "github",
            "github",
            "pull_request_review_comment",
            "github/pull_request_review_comment-created.json",
            json!({"action": "created", "base_branch": "master", "before": null, "branch": "changes", "created": false, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "pull_request_review_comment", "name": "pull_request_review_comment", "number": 2, "paths": null, "paths_unknown": true, "provider": "github", "provider_action": null, "ref": "refs/heads/changes", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "source": "github", "tag": null}),
        ),
        (
            "github",
            "github",
            "pull_request_review_thread",
            "github/pull_request_review_thread-resolved.json",
            json!({"action": "resolved", "base_branch": "master", "before": null, "branch": "changes", "created": false, "deleted": false, "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "forced": false, "kind": "pull_request_review_thread", "name": "pull_request_review_thread", "number": 2, "paths": null, "paths_unknown": true, "provider": "github", "provider_action": null, "ref": "refs/heads/changes", "repository": "Codertocat/Hello-World", "sender": "Codertocat", "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "source": "github", "tag": null}),
        ),
        (
            "gitlab",
            "gitlab",
            "Issue Hook",
            "gitlab/issue-hook.json",
            json!({"action": "opened", "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "forced": false, "kind": "issue", "name": "Issue Hook", "number": null, "paths": null, "paths_unknown": false, "provider": "gitlab", "provider_action": "open", "ref": null, "repository": "gitlabhq/gitlab-test", "sender": "root", "sha": null, "source": "gitlab", "tag": null}),
        ),
        (
            "gitlab",
            "gitlab",
            "Wiki Page Hook",
            "gitlab/wiki-page-hook.json",
            json!({"action": "created", "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "forced": false, "kind": "wiki_page", "name": "Wiki Page Hook", "number": null, "paths": null, "paths_unknown": false, "provider": "gitlab", "provider_action": "create", "ref": null, "repository": "root/awesome-project", "sender": "user1", "sha": null, "source": "gitlab", "tag": null}),
        ),
        (
            "gitlab",
            "gitlab",
            "Member Hook",
            "gitlab/member-hook.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "forced": false, "kind": "user_add_to_group", "name": "Member Hook", "number": null, "paths": null, "paths_unknown": false, "provider": "gitlab", "provider_action": null, "ref": null, "repository": null, "sender": null, "sha": null, "source": "gitlab", "tag": null}),
        ),
        (
            "gitlab",
            "gitlab",
            "Subgroup Hook",
            "gitlab/subgroup-hook.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "forced": false, "kind": "subgroup_create", "name": "Subgroup Hook", "number": null, "paths": null, "paths_unknown": false, "provider": "gitlab", "provider_action": null, "ref": null, "repository": null, "sender": null, "sha": null, "source": "gitlab", "tag": null}),
        ),
        (
            "bitbucket",
            "bitbucket-cloud",
            "repo:push",
            "bitbucket-cloud/repo-push.json",
            json!({"action": null, "base_branch": null, "before": "a10199272451f4c7c5edced2d40b5d6f2f6f5fa3", "branch": "feature/issue-819", "created": false, "deleted": false, "delivery": "9f6b2b5e-0000-4000-8000-00000000b17b", "forced": true, "kind": "push", "name": "repo:push", "number": null, "paths": null, "paths_unknown": true, "provider": "bitbucket", "provider_action": null, "ref": "refs/heads/feature/issue-819", "repository": "amuniz/test-repos", "sender": "Nikolas Falco", "sha": "5ecffa3874e96920f24a2b3c0d0038e47d5cd1a4", "source": "bitbucket", "tag": null}),
        ),
        (
            "bitbucket",
            "bitbucket-cloud",
            "repo:push",
            "bitbucket-cloud/repo-push-tag-created.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": true, "deleted": false, "delivery": "9f6b2b5e-0000-4000-8000-00000000b17b", "forced": false, "kind": "push", "name": "repo:push", "number": null, "paths": null, "paths_unknown": true, "provider": "bitbucket", "provider_action": null, "ref": "refs/tags/simple-tag", "repository": "amuniz/test-repos", "sender": "Nikolas Falco", "sha": "7ef5981d59145c3ed300b1ab77b93907d33abe59", "source": "bitbucket", "tag": "simple-tag"}),
        ),
        (
            "bitbucket",
            "bitbucket-cloud",
            "repo:push",
            "bitbucket-cloud/repo-push-signed.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": "feature/webhook", "created": true, "deleted": false, "delivery": "9f6b2b5e-0000-4000-8000-00000000b17b", "forced": false, "kind": "push", "name": "repo:push", "number": null, "paths": null, "paths_unknown": true, "provider": "bitbucket", "provider_action": null, "ref": "refs/heads/feature/webhook", "repository": "nfalco79/test-repos", "sender": "Nikolas Falco", "sha": "d7f300a32270053bdfd97a6d64113f58202c33e7", "source": "bitbucket", "tag": null}),
        ),
        (
            "bitbucket",
            "bitbucket-cloud",
            "pullrequest:created",
            "bitbucket-cloud/pullrequest-created.json",
            json!({"action": "opened", "base_branch": "master", "before": null, "branch": "feature/test", "created": false, "deleted": false, "delivery": "9f6b2b5e-0000-4000-8000-00000000b17b", "forced": false, "kind": "pull_request", "name": "pullrequest:created", "number": 735, "paths": null, "paths_unknown": true, "provider": "bitbucket", "provider_action": "created", "ref": "refs/heads/feature/test", "repository": "amuniz/test-repos", "sender": "Nikolas Falco", "sha": "d31df3425c5b", "source": "bitbucket", "tag": null}),
        ),
        (
            "bitbucket",
            "bitbucket-dc",
            "repo:refs_changed",
            "bitbucket-datacenter/repo-refs_changed.json",
            json!({"action": null, "base_branch": null, "before": "a8c13e8850dc60300be720019d1ffc1aa2fded87", "branch": "main", "created": false, "deleted": false, "delivery": "b1d0c0de-0000-4000-8000-000000000dc0", "forced": false, "kind": "push", "name": "repo:refs_changed", "number": null, "paths": null, "paths_unknown": true, "provider": "bitbucket", "provider_action": null, "ref": "refs/heads/main", "repository": "AMUNIZ/test-repos", "sender": "amuniz", "sha": "9fdd7b96d3f5c276d0b9e0bf38c879eb112d889a", "source": "bitbucket", "tag": null}),
        ),
        (
            "bitbucket",
            "bitbucket-dc",
            "repo:refs_changed",
            "bitbucket-datacenter/repo-refs_changed-tag-created.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": true, "deleted": false, "delivery": "b1d0c0de-0000-4000-8000-000000000dc0", "forced": false, "kind": "push", "name": "repo:refs_changed", "number": null, "paths": null, "paths_unknown": true, "provider": "bitbucket", "provider_action": null, "ref": "refs/tags/simple-tag", "repository": "AMUNIZ/test-repos", "sender": "admin", "sha": "fb522a6f08c7c7df337312e4e65ec1b57710672e", "source": "bitbucket", "tag": "simple-tag"}),
        ),
        (
            "bitbucket",
            "bitbucket-dc",
            "diagnostics:ping",
            "bitbucket-datacenter/diagnostics-ping.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "b1d0c0de-0000-4000-8000-000000000dc0", "forced": false, "kind": "ping", "name": "diagnostics:ping", "number": null, "paths": null, "paths_unknown": false, "provider": "bitbucket", "provider_action": null, "ref": null, "repository": null, "sender": null, "sha": null, "source": "bitbucket", "tag": null}),
        ),
        (
            "bitbucket",
            "bitbucket-dc",
            "pr:reviewer:approved",
            "bitbucket-datacenter/pr-reviewer-approved.json",
            json!({"action": null, "base_branch": "master", "before": null, "branch": "feature/wip", "created": false, "deleted": false, "delivery": "b1d0c0de-0000-4000-8000-000000000dc0", "forced": false, "kind": "pr:reviewer:approved", "name": "pr:reviewer:approved", "number": 5, "paths": null, "paths_unknown": true, "provider": "bitbucket", "provider_action": null, "ref": "refs/heads/feature/wip", "repository": "~gopher/webhook-test", "sender": "tux", "sha": "32a0b8a740c2963c6f56bd8baf3dc05683d299e0", "source": "bitbucket", "tag": null}),
        ),
        (
            "bitbucket",
            "bitbucket-dc",
            "repo:forked",
            "bitbucket-datacenter/repo-forked.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "b1d0c0de-0000-4000-8000-000000000dc0", "forced": false, "kind": "repo:forked", "name": "repo:forked", "number": null, "paths": null, "paths_unknown": false, "provider": "bitbucket", "provider_action": null, "ref": null, "repository": "~tux/webhook-test", "sender": "tux", "sha": null, "source": "bitbucket", "tag": null}),
        ),
        (
            "bitbucket",
            "bitbucket-cloud",
            "pullrequest:approved",
            "bitbucket-cloud/pullrequest-approved.json",
            json!({"action": null, "base_branch": "master", "before": null, "branch": "branch2", "created": false, "deleted": false, "delivery": "9f6b2b5e-0000-4000-8000-00000000b17b", "forced": false, "kind": "pullrequest:approved", "name": "pullrequest:approved", "number": 1, "paths": null, "paths_unknown": true, "provider": "bitbucket", "provider_action": null, "ref": "refs/heads/branch2", "repository": "team_name/repo_name", "sender": "emmap1", "sha": "d3022fc0ca3d", "source": "bitbucket", "tag": null}),
        ),
        (
            "bitbucket",
            "bitbucket-dc",
            "pr:opened",
            "bitbucket-datacenter/pr-opened.json",
            json!({"action": "opened", "base_branch": "master", "before": null, "branch": "feature/wip", "created": false, "deleted": false, "delivery": "b1d0c0de-0000-4000-8000-000000000dc0", "forced": false, "kind": "pull_request", "name": "pr:opened", "number": 5, "paths": null, "paths_unknown": true, "provider": "bitbucket", "provider_action": null, "ref": "refs/heads/feature/wip", "repository": "~gopher/webhook-test", "sender": "gopher", "sha": "32a0b8a740c2963c6f56bd8baf3dc05683d299e0", "source": "bitbucket", "tag": null}),
        ),
        (
            "gitea",
            "gitea",
            "push",
            "gitea/push.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": "master", "created": true, "deleted": false, "delivery": "6a5f6c7e-0000-4000-8000-0000000017ea", "forced": false, "kind": "push", "name": "push", "number": null, "paths": ["example"], "paths_unknown": false, "provider": "gitea", "provider_action": null, "ref": "refs/heads/master", "repository": "example/example", "sender": "example", "sha": "67b56589a45103f891bdee7c0546e5d40bc02001", "source": "gitea", "tag": null}),
        ),
        (
            "forgejo",
            "forgejo",
            "push",
            "gitea/push-docs-example.json",
            json!({"action": null, "base_branch": null, "before": "28e1879d029cb852e4844d9c718537df08844e03", "branch": "develop", "created": false, "deleted": false, "delivery": "6a5f6c7e-0000-4000-8000-0000000017ea", "forced": false, "kind": "push", "name": "push", "number": null, "paths": null, "paths_unknown": true, "provider": "forgejo", "provider_action": null, "ref": "refs/heads/develop", "repository": "gitea/webhooks", "sender": "gitea", "sha": "bffeb74224043ba2feb48d137756c8a9331c449a", "source": "forgejo", "tag": null}),
        ),
        (
            "gitea",
            "gitea",
            "pull_request",
            "gitea/pull_request-opened.json",
            json!({"action": "opened", "base_branch": "master", "before": null, "branch": "master", "created": false, "deleted": false, "delivery": "6a5f6c7e-0000-4000-8000-0000000017ea", "forced": false, "kind": "pull_request", "name": "pull_request", "number": 2, "paths": null, "paths_unknown": true, "provider": "gitea", "provider_action": null, "ref": "refs/heads/master", "repository": "example/example", "sender": "example2", "sha": "48e773f892a831faa47c0a160d1b7f0cd369ae2a", "source": "gitea", "tag": null}),
        ),
        (
            "gitea",
            "gitea",
            "create",
            "gitea/create.json",
            json!({"action": null, "base_branch": null, "before": null, "branch": "master", "created": true, "deleted": false, "delivery": "6a5f6c7e-0000-4000-8000-0000000017ea", "forced": false, "kind": "create", "name": "create", "number": null, "paths": null, "paths_unknown": false, "provider": "gitea", "provider_action": null, "ref": "refs/heads/master", "repository": "example/example", "sender": "example", "sha": "67b56589a45103f891bdee7c0546e5d40bc02001", "source": "gitea", "tag": null}),
        ),
        (
            "forgejo",
            "forgejo",
            "release",
            "gitea/release.json",
            json!({"action": "published", "base_branch": null, "before": null, "branch": null, "created": false, "deleted": false, "delivery": "6a5f6c7e-0000-4000-8000-0000000017ea", "forced": false, "kind": "release", "name": "release", "number": null, "paths": null, "paths_unknown": false, "provider": "forgejo", "provider_action": null, "ref": "refs/tags/example", "repository": "example/example", "sender": "example", "sha": null, "source": "forgejo", "tag": "example"}),
        ),
        (
            "gogs",
            "gogs",
            "push",
            "gogs/push.json",
            json!({"action": null, "base_branch": null, "before": "28e1879d029cb852e4844d9c718537df08844e03", "branch": "develop", "created": false, "deleted": false, "delivery": "0c0a0b0d-0000-4000-8000-00000000060e", "forced": false, "kind": "push", "name": "push", "number": null, "paths": null, "paths_unknown": true, "provider": "gogs", "provider_action": null, "ref": "refs/heads/develop", "repository": "unknwon/webhooks", "sender": "unknwon", "sha": "bffeb74224043ba2feb48d137756c8a9331c449a", "source": "gogs", "tag": null}),
        ),
        (
            "azure",
            "azure",
            "",
            "azure-devops/git.push.json",
            json!({"action": null, "base_branch": null, "before": "aad331d8d3b131fa9ae03cf5e53965b51942618a", "branch": "main", "created": false, "deleted": false, "delivery": "03c164c2-8912-4d5e-8009-3707d5f83734", "forced": false, "kind": "push", "name": "git.push", "number": null, "paths": null, "paths_unknown": true, "provider": "azure-devops", "provider_action": null, "ref": "refs/heads/main", "repository": "Fabrikam-Fiber-Git/Fabrikam-Fiber-Git", "sender": "Windows Live ID\\fabrikamfiber4@hotmail.com", "sha": "33b55f7cb7e7e245323987634f960cf4a6e6bc74", "source": "azure", "tag": null}),
        ),
        (
            "azure",
            "azure",
            "",
            "azure-devops/git.pullrequest.created.json",
            json!({"action": "opened", "base_branch": "master", "before": null, "branch": "mytopic", "created": false, "deleted": false, "delivery": "2ab4e3d3-b7a6-425e-92b1-5a9982c1269e", "forced": false, "kind": "pull_request", "name": "git.pullrequest.created", "number": 1, "paths": null, "paths_unknown": true, "provider": "azure-devops", "provider_action": "created", "ref": "refs/heads/mytopic", "repository": "Fabrikam/Fabrikam", "sender": "fabrikamfiber4@hotmail.com", "sha": "53d54ac915144006c2c9e90d2c7d3880920db49c", "source": "azure", "tag": null}),
        ),
        (
            "azure",
            "azure",
            "",
            "azure-devops/git.pullrequest.merged.json",
            json!({"action": "merged", "base_branch": "master", "before": null, "branch": "mytopic", "created": false, "deleted": false, "delivery": "6872ee8c-b333-4eff-bfb9-0d5274943566", "forced": false, "kind": "pull_request", "name": "git.pullrequest.merged", "number": 1, "paths": null, "paths_unknown": true, "provider": "azure-devops", "provider_action": null, "ref": "refs/heads/mytopic", "repository": "Fabrikam/Fabrikam", "sender": "fabrikamfiber4@hotmail.com", "sha": "53d54ac915144006c2c9e90d2c7d3880920db49c", "source": "azure", "tag": null}),
        ),
        (
            "azure",
            "azure",
            "",
            "azure-devops/git.pullrequest.merged-active.json",
            json!({"action": "merge_attempted", "base_branch": "master", "before": null, "branch": "mytopic", "created": false, "deleted": false, "delivery": "6872ee8c-b333-4eff-bfb9-0d5274943567", "forced": false, "kind": "pull_request", "name": "git.pullrequest.merged", "number": 1, "paths": null, "paths_unknown": true, "provider": "azure-devops", "provider_action": null, "ref": "refs/heads/mytopic", "repository": "Fabrikam/Fabrikam", "sender": "fabrikamfiber4@hotmail.com", "sha": "53d54ac915144006c2c9e90d2c7d3880920db49c", "source": "azure", "tag": null}),
        ),
        (
            "gitlab",
            "gitlab",
            "Pipeline Hook",
            "gitlab/pipeline-hook.json",
            json!({"action": "success", "base_branch": null, "before": null, "branch": "master", "created": false, "deleted": false, "delivery": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "forced": false, "kind": "pipeline", "name": "Pipeline Hook", "number": null, "paths": null, "paths_unknown": false, "pipeline": {"ci": "gitlab", "id": "31", "number": 123, "status": "success", "workflow": null, "workflow_id": null, "url": null}, "provider": "gitlab", "provider_action": null, "ref": "refs/heads/master", "repository": "gitlab-org/gitlab-test", "sender": "user1", "sha": "bcbb5ec396a2c0f828686f14fac9b80b780504f2", "source": "gitlab", "tag": null}),
        ),
        (
            "circleci",
            "circleci",
            "workflow-completed",
            "circleci/workflow-completed-github-oauth.json",
            json!({"action": "success", "base_branch": null, "before": null, "branch": "main", "created": false, "deleted": false, "delivery": "3888f21b-eaa7-38e3-8f3d-75a63bba8895", "forced": false, "kind": "pipeline", "name": "workflow-completed", "number": null, "paths": null, "paths_unknown": false, "pipeline": {"ci": "circleci", "id": "1285fe1d-d3a6-44fc-8886-8979558254c4", "number": 130, "status": "success", "workflow": "build-test-deploy", "workflow_id": "fda08377-fe7e-46b1-8992-3a7aaecac9c3", "url": "https://app.circleci.com/pipelines/github/circleci/webhook-service/130/workflows/fda08377-fe7e-46b1-8992-3a7aaecac9c3"}, "provider": "circleci", "provider_action": null, "ref": "refs/heads/main", "repository": "circleci/webhook-service", "sender": null, "sha": "1dc6aa69429bff4806ad6afe58d3d8f57e25973e", "source": "circleci", "tag": null}),
        ),
        (
            "circleci",
            "circleci",
            "workflow-completed",
            "circleci/workflow-completed-gitlab.json",
            json!({"action": "failed", "base_branch": null, "before": null, "branch": "main", "created": false, "deleted": false, "delivery": "cbabbb40-6084-4f91-8311-a326c0f4963a", "forced": false, "kind": "pipeline", "name": "workflow-completed", "number": null, "paths": null, "paths_unknown": false, "pipeline": {"ci": "circleci", "id": "37c74cb7-d64d-4032-8731-1cb95bfef921", "number": 1, "status": "failed", "workflow": "build", "workflow_id": "c2006ece-778d-49fc-9e6e-b9965f72bee9", "url": "https://app.circleci.com/pipelines/circleci/DdaVtNusHqi24D4YT3X4eu/6EkDPZoN4ZdMKKZtBkRodt/1/workflows/c2006ece-778d-49fc-9e6e-b9965f72bee9"}, "provider": "circleci", "provider_action": null, "ref": "refs/heads/main", "repository": "circleci/hello-world", "sender": null, "sha": "850a1519f25d14e968649cc420d1bd381715c05c", "source": "circleci", "tag": null}),
        ),
        (
            "circleci",
            "circleci",
            "job-completed",
            "circleci/job-completed-github-oauth.json",
            json!({"action": "success", "base_branch": null, "before": null, "branch": "main", "created": false, "deleted": false, "delivery": "8bd71c28-4969-3677-8940-3e3a61c46660", "forced": false, "kind": "job", "name": "job-completed", "number": null, "paths": null, "paths_unknown": false, "pipeline": {"ci": "circleci", "id": "1285fe1d-d3a6-44fc-8886-8979558254c4", "number": 130, "status": "success", "workflow": "welcome", "workflow_id": "fda08377-fe7e-46b1-8992-3a7aaecac9c3", "url": "https://app.circleci.com/pipelines/github/circleci/webhook-service/130/workflows/fda08377-fe7e-46b1-8992-3a7aaecac9c3"}, "provider": "circleci", "provider_action": null, "ref": "refs/heads/main", "repository": "circleci/webhook-service", "sender": null, "sha": "1dc6aa69429bff4806ad6afe58d3d8f57e25973e", "source": "circleci", "tag": null}),
        ),
        (
            "circleci",
            "circleci",
            "job-completed",
            "circleci/job-completed-gitlab.json",
            json!({"action": "success", "base_branch": null, "before": null, "branch": "main", "created": false, "deleted": false, "delivery": "47a497be-4498-4da0-a4e8-2dabd889af0f", "forced": false, "kind": "job", "name": "job-completed", "number": null, "paths": null, "paths_unknown": false, "pipeline": {"ci": "circleci", "id": "37c74cb7-d64d-4032-8731-1cb95bfef921", "number": 1, "status": "success", "workflow": null, "workflow_id": null, "url": null}, "provider": "circleci", "provider_action": null, "ref": "refs/heads/main", "repository": "circleci/hello-world", "sender": null, "sha": "850a1519f25d14e968649cc420d1bd381715c05c", "source": "circleci", "tag": null}),
        ),
    ]
}

#[test]
fn every_fixture_is_verified_and_described() {
    let config = config();
    let cases = cases();
    assert_eq!(cases.len(), 45);
    for (source, signer, event, file, mut want) in cases {
        let body = payload(file);
        let got = describe(&config, source, &signed(signer, event, &body), &body);
        let mut got = serde_json::to_value(&got).unwrap();
        let obj = got.as_object_mut().unwrap();
        obj.remove("changes");
        let unknown = obj["paths_unknown"].is_string();
        obj.insert("paths_unknown".into(), Value::Bool(unknown));
        // Every field of the normalized event is asserted; `pipeline` is
        // null where a case does not name it.
        let want_obj = want.as_object_mut().unwrap();
        assert_eq!(
            obj.remove("pipeline"),
            Some(want_obj.remove("pipeline").unwrap_or(Value::Null)),
            "{file}: pipeline"
        );
        assert_eq!(
            obj.keys().collect::<Vec<_>>(),
            want_obj.keys().collect::<Vec<_>>(),
            "{file}: field set"
        );
        assert_eq!(got, want, "{file}");
    }
}

#[test]
fn bitbucket_push_lists_every_change_and_reports_the_first() {
    let config = config();
    let body = payload("bitbucket-cloud/repo-push.json");
    let e = describe(
        &config,
        "bitbucket",
        &signed("bitbucket-cloud", "repo:push", &body),
        &body,
    );
    assert_eq!(e.changes.len(), 1);
    assert_eq!(e.changes[0].git_ref, e.git_ref.clone().unwrap());
    assert!(e.changes[0].forced);
}

#[test]
fn tampered_bodies_and_wrong_secrets_fail_for_every_sender() {
    let config = config();
    for (source, signer, event, file, _) in cases() {
        let body = payload(file);
        let headers = signed(signer, event, &body);
        let src = config.sources.get(source).unwrap();
        let mut tampered = body.clone();
        tampered.extend_from_slice(b"\n ");
        let outcome = hookbridge::intake::process(
            &config,
            src,
            &headers,
            &tampered,
            SystemTime::now(),
            Trust::Verify,
        );
        if source == "gitlab" || source == "azure" {
            // Token and basic-auth schemes do not sign the body.
            continue;
        }
        let err = outcome.expect_err(file);
        assert_eq!(err.status(), 401, "{file}: {err}");
    }
    // A wrong token or password fails for the token schemes.
    let body = payload("gitlab/push-hook.json");
    let mut headers = signed("gitlab", "Push Hook", &body);
    headers.insert("x-gitlab-token", HeaderValue::from_static("wrong"));
    let err = hookbridge::intake::process(
        &config,
        &config.sources["gitlab"],
        &headers,
        &body,
        SystemTime::now(),
        Trust::Verify,
    )
    .unwrap_err();
    assert_eq!(err.status(), 401);
    assert!(
        matches!(
            err,
            Rejection::Unauthorized(VerifyError::TokenMismatch(ref h)) if h == "X-Gitlab-Token"
        ),
        "{err}"
    );
    let body = payload("azure-devops/git.push.json");
    let mut headers = signed("azure", "", &body);
    headers.insert(
        "authorization",
        HeaderValue::from_static("Basic aG9va3M6d3Jvbmc="),
    );
    let err = hookbridge::intake::process(
        &config,
        &config.sources["azure"],
        &headers,
        &body,
        SystemTime::now(),
        Trust::Verify,
    )
    .unwrap_err();
    assert_eq!(err.status(), 401);
    assert!(
        matches!(
            err,
            Rejection::Unauthorized(VerifyError::TokenMismatch(ref h)) if h == "Authorization"
        ),
        "{err}"
    );
}

/// `body` with one more string field, in Latin-1 rather than UTF-8, where no
/// provider's typed view looks: only an encoding check can notice it.
fn with_latin1_field(body: &[u8]) -> Vec<u8> {
    let open = body.iter().position(|b| *b == b'{').unwrap();
    let mut out = body[..=open].to_vec();
    out.extend_from_slice(b"\"hookbridge_note\":\"caf\xe9\",");
    out.extend_from_slice(&body[open + 1..]);
    out
}

/// Process a signed delivery; `Ok(())` when accepted, else the status and message.
fn outcome(config: &Config, source: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), (u16, String)> {
    hookbridge::intake::process(
        config,
        &config.sources[source],
        headers,
        body,
        SystemTime::now(),
        Trust::Verify,
    )
    .map(drop)
    .map_err(|e| (e.status().as_u16(), e.to_string()))
}

fn assert_not_utf8(what: &str, got: Result<(), (u16, String)>) {
    let (status, message) = got
        .err()
        .unwrap_or_else(|| panic!("{what}: a non-UTF-8 payload was accepted"));
    assert_eq!(status, 400, "{what}: {message}");
    assert!(message.contains("not valid UTF-8"), "{what}: {message}");
}

#[test]
fn a_signed_payload_that_is_not_utf8_is_refused_by_every_source() {
    let config = config();
    // One fixture per signer, each accepted as it is (every_fixture_is_verified_and_described).
    let mut signers = std::collections::BTreeSet::new();
    for (source, signer, event, file, _) in cases() {
        if signers.insert(signer) {
            let body = with_latin1_field(&payload(file));
            assert_not_utf8(
                file,
                outcome(&config, source, &signed(signer, event, &body), &body),
            );
        }
    }
    assert_eq!(signers.len(), 9);

    // GitLab with a signing token.
    let body = with_latin1_field(&payload("gitlab/push-hook.json"));
    let h = gitlab_signed(&body, "msg_1", support::unix_now());
    assert_not_utf8("gitlab-signed", outcome(&config, "gitlab-signed", &h, &body));

    // GitHub's form content type: the decoded `payload` field is what must be UTF-8.
    let json = with_latin1_field(&payload("github/push.json"));
    let form = format!(
        "payload={}",
        form_urlencoded::byte_serialize(&json).collect::<String>()
    );
    let mut h = signed("github", "push", form.as_bytes());
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    assert_not_utf8("github form", outcome(&config, "github", &h, form.as_bytes()));

    // Standard Webhooks and generic HMAC read nothing but the JSON's validity.
    let good = "{\"type\":\"invoice.paid\",\"note\":\"caf\u{e9}\"}"
        .as_bytes()
        .to_vec();
    let bad = b"{\"type\":\"invoice.paid\",\"note\":\"caf\xe9\"}".to_vec();
    let standard = |body: &[u8]| {
        let ts = support::unix_now();
        headers(&[
            ("webhook-id", "msg_2".into()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", standard_signature(WHSEC, "msg_2", ts, body)),
        ])
    };
    let custom = |body: &[u8]| {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        headers(&[
            ("X-Signature", format!("sha512={sig}")),
            ("X-Event", "invoice.paid".into()),
        ])
    };
    assert_eq!(outcome(&config, "standard", &standard(&good), &good), Ok(()));
    assert_not_utf8("standard", outcome(&config, "standard", &standard(&bad), &bad));
    assert_eq!(outcome(&config, "custom", &custom(&good), &good), Ok(()));
    assert_not_utf8("hmac", outcome(&config, "custom", &custom(&bad), &bad));
    // An `hmac` source's errors name the headers it is configured with.
    let (status, message) =
        outcome(&config, "custom", &headers(&[("X-Event", "e".into())]), &good).unwrap_err();
    assert_eq!((status, message.as_str()), (401, "missing `x-signature` header"));
    let (_, message) = outcome(
        &config,
        "custom",
        &headers(&[("X-Signature", "md5=x".into())]),
        &good,
    )
    .unwrap_err();
    assert!(
        message.starts_with("`x-signature` header is malformed"),
        "{message}"
    );
    let mut unnamed = custom(&good);
    unnamed.remove("x-event");
    let (status, message) = outcome(&config, "custom", &unnamed, &good).unwrap_err();
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("missing `x-event` header"), "{message}");
    // Authentication still comes first: a wrong signature is 401, whatever the bytes.
    let mut forged = custom(&good);
    forged.insert("x-signature", HeaderValue::from_static("sha512=AAAA"));
    assert_eq!(
        outcome(&config, "custom", &forged, &bad),
        Err((401, "signature does not match".to_owned()))
    );
}

#[test]
fn standard_webhooks_of_any_json_shape_are_accepted() {
    // The spec's payloads are objects with a string `type`; a signed body
    // of another JSON shape is still a delivery, named `webhook`.
    let config = config();
    let now = support::unix_now();
    for (body, name) in [
        (r#"{"type":"invoice.paid","data":{}}"#, "invoice.paid"),
        (r#"{}"#, "webhook"),
        (r#"{"type":null}"#, "webhook"),
        (r#"{"type":5}"#, "webhook"),
        (r#"{"type":{"a":1}}"#, "webhook"),
        (r#"[1,2]"#, "webhook"),
        (r#"["invoice.paid"]"#, "webhook"),
        (r#""hello""#, "webhook"),
    ] {
        let h = headers(&[
            ("webhook-id", "msg_shape".into()),
            ("webhook-timestamp", now.to_string()),
            (
                "webhook-signature",
                standard_signature(WHSEC, "msg_shape", now, body.as_bytes()),
            ),
        ]);
        let intake = hookbridge::intake::process(
            &config,
            &config.sources["standard"],
            &h,
            body.as_bytes(),
            SystemTime::now(),
            Trust::Verify,
        )
        .unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(intake.event.name, name, "{body}");
    }
}

#[test]
fn any_configured_secret_verifies() {
    let config = config();
    let body = payload("github/push.json");
    // `github` lists "old-secret" first; the current secret (second) verifies too.
    let headers = signed("github", "push", &body);
    describe(&config, "github", &headers, &body);
    let old = headers_with(
        "X-Hub-Signature-256",
        &github_signature("old-secret", &body),
        &headers,
    );
    describe(&config, "github", &old, &body);
}

fn headers_with(name: &'static str, value: &str, base: &HeaderMap) -> HeaderMap {
    let mut h = base.clone();
    h.insert(name, HeaderValue::from_str(value).unwrap());
    h
}

/// A source of the vector's scheme holding the vector's secret.
fn vector_source(scheme: &str, secret: &str) -> Option<String> {
    let s = secret.replace('\\', "\\\\").replace('"', "\\\"");
    let table = if scheme.starts_with("github-x-hub-signature-256") {
        format!("type = \"github\"\nsecrets = [\"{s}\"]")
    } else if scheme.starts_with("github-x-hub-signature (sha1") {
        format!(
            "type = \"hmac\"\nsecrets = [\"{s}\"]\nheader = \"X-Hub-Signature\"\nalgorithm = \"sha1\"\nprefix = \"sha1=\"\nevent = \"push\""
        )
    } else if scheme.starts_with("standard-webhooks") {
        format!("type = \"standard\"\nsecrets = [\"{s}\"]")
    } else if scheme.starts_with("bitbucket") {
        format!("type = \"bitbucket\"\nsecrets = [\"{s}\"]")
    } else if scheme.starts_with("gitea") {
        format!("type = \"gitea\"\nsecrets = [\"{s}\"]")
    } else if scheme.starts_with("gitlab-signing-token") {
        format!("type = \"gitlab\"\nsigning_secrets = [\"{s}\"]")
    } else {
        return None;
    };
    Some(format!("[sources.v]\n{table}\n"))
}

#[test]
fn every_signature_vector_verifies() {
    let vectors: Value = serde_json::from_slice(&payload("signature-vectors.json")).unwrap();
    let vectors = vectors["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 10);
    for v in vectors {
        let scheme = v["scheme"].as_str().unwrap();
        let secret = v["secret"].as_str().unwrap();
        let body = match (v.get("body_utf8"), v.get("body_file")) {
            (Some(text), _) => text.as_str().unwrap().as_bytes().to_vec(),
            (None, Some(file)) => payload(file.as_str().unwrap()),
            _ => panic!("vector without a body: {v}"),
        };
        let toml = vector_source(scheme, secret).unwrap_or_else(|| panic!("unhandled scheme {scheme}"));
        let config = hookbridge::config::parse(std::path::Path::new("v.toml"), &toml, LoadMode::Check)
            .unwrap_or_else(|r| panic!("{scheme}: {r}"))
            .config;
        let mut pairs: Vec<(&str, String)> = v["expected_headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, val)| (k.as_str(), val.as_str().unwrap().to_owned()))
            .collect();
        if let Some(ct) = v.get("content_type") {
            pairs.push(("Content-Type", ct.as_str().unwrap().to_owned()));
        }
        let headers = headers(&pairs);
        // Signed deliveries are checked against their own timestamp.
        let now = v
            .get("webhook_timestamp")
            .map(|t| {
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.as_str().unwrap().parse().unwrap())
            })
            .unwrap_or_else(SystemTime::now);
        let source = &config.sources["v"];
        let inbound = hookbridge::source::Inbound {
            headers: &headers,
            body: &body,
            now,
        };
        source
            .scheme
            .verify(&inbound)
            .unwrap_or_else(|e| panic!("{scheme} ({}): {e}", v["source"]));
        let mut tampered = body.clone();
        tampered.push(b' ');
        let inbound = hookbridge::source::Inbound {
            headers: &headers,
            body: &tampered,
            now,
        };
        match source.scheme.verify(&inbound) {
            Err(VerifyError::Mismatch) => {}
            Err(other) => panic!("{scheme}: tampered body refused for another reason: {other}"),
            Ok(_) => panic!("{scheme}: tampered body verified"),
        }
        // The independent signers used by the other tests agree with the vectors.
        if let Some(sig) = v["expected_headers"].get("X-Hub-Signature-256") {
            assert_eq!(sig.as_str().unwrap(), github_signature(secret, &body));
        }
        if let Some(sig) = v["expected_headers"].get("webhook-signature") {
            let id = v["webhook_id"].as_str().unwrap();
            let ts: u64 = v["webhook_timestamp"].as_str().unwrap().parse().unwrap();
            assert_eq!(sig.as_str().unwrap(), standard_signature(secret, id, ts, &body));
        }
    }
}

/// A GitLab push with its token and a signature made at `ts` (GitLab 19's
/// signing token).
fn gitlab_signed(body: &[u8], id: &'static str, ts: u64) -> HeaderMap {
    let mut h = signed("gitlab", "Push Hook", body);
    h.insert("webhook-id", HeaderValue::from_static(id));
    h.insert(
        "webhook-timestamp",
        HeaderValue::from_str(&ts.to_string()).unwrap(),
    );
    h.insert(
        "webhook-signature",
        HeaderValue::from_str(&standard_signature(WHSEC, id, ts, body)).unwrap(),
    );
    h
}

#[test]
fn signed_deliveries_outside_the_tolerance_are_refused() {
    let config = config();
    let body = payload("gitlab/push-hook.json");
    let id = "f5e5f430-f57b-4e6e-9fac-d9128cd7232f";
    for (age, ok) in [(0u64, true), (200, true), (900, false)] {
        let h = gitlab_signed(&body, id, support::unix_now() - age);
        let r = hookbridge::intake::process(
            &config,
            &config.sources["gitlab-signed"],
            &h,
            &body,
            SystemTime::now(),
            Trust::Verify,
        );
        match r {
            Ok(_) => assert!(ok, "age {age}s: accepted"),
            // A second may pass between signing and checking.
            Err(Rejection::Unauthorized(VerifyError::Stale {
                skew_secs: 900..=901,
                tolerance_secs: 300,
            })) if !ok => {}
            Err(e) => panic!("age {age}s: {e}"),
        }
    }
    // With signing configured, the token alone is not enough.
    let h = signed("gitlab", "Push Hook", &body);
    let r = hookbridge::intake::process(
        &config,
        &config.sources["gitlab-signed"],
        &h,
        &body,
        SystemTime::now(),
        Trust::Verify,
    );
    let e = r.unwrap_err();
    assert_eq!(e.status(), 401);
    assert!(
        matches!(
            e,
            Rejection::Unauthorized(VerifyError::MissingHeader(ref h)) if h == "webhook-signature"
        ),
        "{e}"
    );
    // A signed delivery at a source with tokens only: the signature cannot
    // be checked, and the token does not stand in for it.
    let h = gitlab_signed(&body, id, support::unix_now());
    let e = hookbridge::intake::process(
        &config,
        &config.sources["gitlab"],
        &h,
        &body,
        SystemTime::now(),
        Trust::Verify,
    )
    .unwrap_err();
    assert_eq!(e.status(), 401);
    assert!(e.to_string().contains("no `signing_secrets`"), "{e}");
}

/// The same push, as each provider sends it: to `main` of `acme/app` at one sha.
fn same_push(provider: &str) -> (&'static str, &'static str, &'static str, Vec<u8>) {
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    let edit = |file: &str, f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_slice(&payload(file)).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    match provider {
        "github" => (
            "github",
            "github",
            "push",
            edit("github/push.json", &|v| {
                v["ref"] = json!("refs/heads/main");
                v["after"] = json!(SHA);
                v["repository"]["full_name"] = json!("acme/app");
            }),
        ),
        "gitlab" => (
            "gitlab",
            "gitlab",
            "Push Hook",
            edit("gitlab/push-hook.json", &|v| {
                v["ref"] = json!("refs/heads/main");
                v["after"] = json!(SHA);
                v["checkout_sha"] = json!(SHA);
                v["project"]["path_with_namespace"] = json!("acme/app");
            }),
        ),
        "bitbucket-cloud" => (
            "bitbucket",
            "bitbucket-cloud",
            "repo:push",
            edit("bitbucket-cloud/repo-push.json", &|v| {
                v["push"]["changes"][0]["new"]["name"] = json!("main");
                v["push"]["changes"][0]["new"]["target"]["hash"] = json!(SHA);
                v["repository"]["full_name"] = json!("acme/app");
            }),
        ),
        "bitbucket-dc" => (
            "bitbucket",
            "bitbucket-dc",
            "repo:refs_changed",
            edit("bitbucket-datacenter/repo-refs_changed.json", &|v| {
                v["changes"][0]["ref"]["id"] = json!("refs/heads/main");
                v["changes"][0]["ref"]["displayId"] = json!("main");
                v["changes"][0]["refId"] = json!("refs/heads/main");
                v["changes"][0]["toHash"] = json!(SHA);
                v["repository"]["project"]["key"] = json!("acme");
                v["repository"]["slug"] = json!("app");
            }),
        ),
        "gitea" | "forgejo" => {
            let body = edit("gitea/push.json", &|v| {
                v["ref"] = json!("refs/heads/main");
                v["after"] = json!(SHA);
                v["repository"]["full_name"] = json!("acme/app");
            });
            if provider == "gitea" {
                ("gitea", "gitea", "push", body)
            } else {
                ("forgejo", "forgejo", "push", body)
            }
        }
        other => panic!("{other}"),
    }
}

#[test]
fn one_rule_fires_identically_for_every_provider() {
    let config_text = format!(
        "{}\n{}",
        sources_toml(),
        r#"
[targets.circleci]
type = "circleci"
token = "circle-token"

[[rules]]
name = "main-to-circleci"
events = ["push"]
branches = ["main"]
repositories = ["acme/app"]
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "{{ event.branch }}"
parameters = { sha = "{{ event.sha }}", repository = "{{ event.repository }}", deploy = true }
"#
    );
    let config = hookbridge::config::parse(std::path::Path::new("same.toml"), &config_text, LoadMode::Check)
        .unwrap()
        .config;
    let mut rendered = Vec::new();
    for provider in [
        "github",
        "gitlab",
        "bitbucket-cloud",
        "bitbucket-dc",
        "gitea",
        "forgejo",
    ] {
        let (source, signer, event, body) = same_push(provider);
        let intake = hookbridge::intake::process(
            &config,
            &config.sources[source],
            &signed(signer, event, &body),
            &body,
            SystemTime::now(),
            Trust::Verify,
        )
        .unwrap_or_else(|e| panic!("{provider}: {e}"));
        assert_eq!(
            intake.evaluation.matched.len(),
            1,
            "{provider}: {:?}",
            intake.evaluation.skipped
        );
        let m = &intake.evaluation.matched[0];
        let request = config.targets[&m.target].request(&m.request).unwrap();
        rendered.push((provider, serde_json::to_value(&request).unwrap()));
    }
    let (_, first) = &rendered[0];
    assert_eq!(
        first["body"],
        json!({"branch": "main", "parameters": {"sha": "0123456789abcdef0123456789abcdef01234567", "repository": "acme/app", "deploy": true}})
    );
    for (provider, request) in &rendered {
        assert_eq!(request, first, "{provider} renders a different request");
    }
}

/// Bitbucket Cloud and Data Center sign with HMAC-SHA256 only: a valid
/// HMAC-SHA1 of the body under the right secret is still refused, by the real
/// daemon over HTTP, and the SHA-256 signature of the same body is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitbucket_refuses_sha1_signatures_through_the_daemon() {
    use hmac::{KeyInit, Mac};
    use support::ci::{CIRCLE_TOKEN, StandIn};
    let ci = StandIn::start().await;
    let ws = support::daemon::Workspace::new(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[store]
url = "@DB@"
[sources.bitbucket]
type = "bitbucket"
secrets = ["env:BITBUCKET_WEBHOOK_SECRET"]
[targets.circleci]
type = "circleci"
url = "{}"
token = "env:CIRCLECI_TOKEN"
[[rules]]
name = "push"
events = ["push"]
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "{{{{ event.branch }}}}"
"#,
        ci.url
    ));
    let daemon = ws.start(&[
        ("BITBUCKET_WEBHOOK_SECRET", SECRET),
        ("CIRCLECI_TOKEN", CIRCLE_TOKEN),
    ]);
    let body = payload("bitbucket-cloud/repo-push.json");
    let mut sha1 = hmac::Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    sha1.update(&body);
    let sha1 = format!("sha1={}", hex::encode(sha1.finalize().into_bytes()));
    let sha256 = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &body));
    let client = reqwest::Client::new();
    let send = |signature: String, delivery: &'static str| {
        client
            .post(daemon.hook_url("bitbucket"))
            .header("Content-Type", "application/json")
            .header("X-Event-Key", "repo:push")
            .header("X-Request-UUID", delivery)
            .header("X-Hub-Signature", signature)
            .body(body.clone())
            .send()
    };

    let refused = send(sha1, "0b1e5e6a-0000-4000-8000-00000000051a").await.unwrap();
    assert_eq!(refused.status(), 401);
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(
        answer["error"],
        "`X-Hub-Signature` header is malformed: expected `sha256=<hex>`: this sender signs with HMAC-SHA256"
    );

    let accepted = send(sha256, "0b1e5e6a-0000-4000-8000-0000000256aa")
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let summary: Value = accepted.json().await.unwrap();
    assert_eq!(summary["matched"][0]["rule"], "push", "{summary}");
    assert!(!daemon.logs().contains(SECRET));
}

/// A pull request and the events about one (a GitHub review, a Bitbucket
/// approval) are filtered on their base branch, as in GitHub Actions: one
/// rule picks the same pull requests whichever of them arrives; the head
/// branch is `event.branch`, for `if` and templates.
/// The test sources and a `circleci` target, with `rules` (more targets and
/// rules, TOML) after them.
fn config_with(rules: &str) -> Config {
    let text = format!(
        "{}\n[targets.circleci]\ntype = \"circleci\"\ntoken = \"circle-token\"\n{rules}",
        sources_toml()
    );
    hookbridge::config::parse(std::path::Path::new("rules.toml"), &text, LoadMode::Check)
        .unwrap()
        .config
}

/// One fixture, signed as `signer` signs it, through intake on `config`.
fn intake_of(
    config: &Config,
    source: &str,
    signer: &str,
    event: &str,
    file: &str,
) -> hookbridge::intake::Intake {
    let body = payload(file);
    hookbridge::intake::process(
        config,
        &config.sources[source],
        &signed(signer, event, &body),
        &body,
        SystemTime::now(),
        Trust::Verify,
    )
    .unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn pull_requests_and_events_about_them_are_filtered_on_the_base_branch() {
    let config = config_with(
        r#"
[[rules]]
name = "into-master"
branches = ["master"]
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "{{ event.branch }}"

[[rules]]
name = "head-branch-as-filter"
branches = ["changes", "branch2", "feature/**"]
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "{{ event.branch }}"
"#,
    );
    for (source, signer, event, file, head) in [
        (
            "github",
            "github",
            "pull_request",
            "github/pull_request-opened.json",
            "changes",
        ),
        (
            "github",
            "github",
            "pull_request_review",
            "github/pull_request_review-submitted.json",
            "changes",
        ),
        (
            "bitbucket",
            "bitbucket-dc",
            "pr:reviewer:approved",
            "bitbucket-datacenter/pr-reviewer-approved.json",
            "feature/wip",
        ),
        (
            "bitbucket",
            "bitbucket-cloud",
            "pullrequest:approved",
            "bitbucket-cloud/pullrequest-approved.json",
            "branch2",
        ),
    ] {
        let intake = intake_of(&config, source, signer, event, file);
        let matched: Vec<&str> = intake
            .evaluation
            .matched
            .iter()
            .map(|m| m.rule.as_str())
            .collect();
        assert_eq!(
            matched,
            ["into-master"],
            "{file}: {:?}",
            intake.evaluation.skipped
        );
        assert_eq!(intake.event.branch.as_deref(), Some(head), "{file}");
        let skipped = &intake.evaluation.skipped[0];
        assert_eq!(skipped.rule, "head-branch-as-filter");
        assert!(
            skipped.reason.contains("base branch \"master\""),
            "{file}: {}",
            skipped.reason
        );
    }
}

/// Gogs and older Gitea put the webhook secret into the payload in clear
/// text; after the signature is checked, the payload kept (stored, shown,
/// read by templates as `body.secret`) says `***` there instead.
#[test]
fn a_secret_written_into_a_gitea_payload_is_not_kept() {
    let config = config();
    let body = payload("gitea/push-docs-example.json");
    let secret = "3gEsCfjlV2ugRwgpU#w1*WaW*wa4NXgGmpCfkbG3";
    assert!(
        String::from_utf8_lossy(&body).contains(secret),
        "the fixture carries one"
    );
    let intake = hookbridge::intake::process(
        &config,
        &config.sources["gitea"],
        &signed("gitea", "push", &body),
        &body,
        SystemTime::now(),
        Trust::Verify,
    )
    .unwrap();
    let kept = String::from_utf8(intake.payload.to_vec()).unwrap();
    assert!(!kept.contains(secret), "{kept}");
    let value: Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(value["secret"], "***");
    assert_eq!(intake.event.branch.as_deref(), Some("develop"), "still described");
}

/// A branch that a pattern took and a later `!pattern` excluded is skipped
/// with that pattern named, not as "matches none".
#[test]
fn a_skip_by_a_negated_pattern_names_it() {
    let config = config_with(
        r#"
[[rules]]
name = "all-but-master"
branches = ["**", "!master"]
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "{{ event.branch }}"
"#,
    );
    let intake = intake_of(&config, "github", "github", "push", "github/push.json");
    assert_eq!(
        intake.evaluation.skipped[0].reason,
        "branches: \"master\" is excluded by \"!master\""
    );
}

/// GitLab inputs are strings, numbers, booleans or arrays: an object (from a
/// payload field) is the rule's error before anything is sent, as a null is.
#[test]
fn a_gitlab_input_that_renders_an_object_is_the_rules_error() {
    let config = config_with(
        r#"
[targets.gitlab]
type = "gitlab"
url = "https://gitlab.example.com"
token = "glptt-x"

[[rules]]
name = "typed"
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "main"
inputs = { repo = "{{ body.repository.owner }}", id = "{{ body.repository.id }}" }
"#,
    );
    let intake = intake_of(&config, "github", "github", "push", "github/push.json");
    assert!(intake.evaluation.matched.is_empty());
    let error = &intake.evaluation.errors[0].error;
    assert!(
        error.contains("input `repo` must be a string, number, boolean or array, got an object"),
        "{error}"
    );
}

/// A templated project that renders a `.` or `..` path segment fails its
/// rule in the webhook's own verdict (nothing is stored to be sent), instead
/// of being acknowledged and dead-lettered at its first attempt.
#[test]
fn a_request_its_target_cannot_build_is_the_rules_error() {
    let config = config_with(
        r#"
[[rules]]
name = "dotted"
[rules.trigger]
target = "circleci"
project = "gh/acme/{{ body.repository.name | replace('Hello-World', '..') }}"
branch = "main"
"#,
    );
    let intake = intake_of(&config, "github", "github", "push", "github/push.json");
    assert!(intake.evaluation.matched.is_empty());
    let error = &intake.evaluation.errors[0];
    assert_eq!(error.rule, "dotted");
    assert!(
        error.error.contains("`.` or `..` path segment"),
        "{}",
        error.error
    );
}
