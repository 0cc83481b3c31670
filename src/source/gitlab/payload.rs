//! GitLab payloads (project, group and system hooks) described as an [`Event`].
//!
//! Project hooks name their event in the body's `object_kind`. System hooks
//! (`X-Gitlab-Event: System Hook`) and the group-only hooks (`Subgroup Hook`,
//! `Member Hook`) name it in `event_name` and usually have no `object_kind`;
//! newer GitLab versions send both in pushes. The body's word (`object_kind`,
//! else `event_name`) decides the shape, so a system-hook push is described
//! exactly like a project push, and it is `event.kind` for the events that are
//! not normalized: the header is `System Hook` for two dozen different events.

use serde::Deserialize;

use crate::event::{Event, Provider, RefChange, is_null_sha, kind, union_paths};
use crate::source::commit::Commit;
use crate::source::{DescribeError, parse};

#[derive(Deserialize)]
struct Head {
    object_kind: Option<String>,
    event_name: Option<String>,
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: Option<String>,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    before: Option<String>,
    after: Option<String>,
    checkout_sha: Option<String>,
    user_username: Option<String>,
    project: Option<Project>,
    #[serde(default)]
    commits: Vec<Commit>,
    total_commits_count: Option<usize>,
}

/// A system hook's `repository_update`: one entry per ref of a `git push`.
#[derive(Deserialize)]
struct RepositoryUpdate {
    #[serde(default)]
    changes: Vec<RefUpdate>,
    user_username: Option<String>,
    project: Option<Project>,
}

#[derive(Deserialize)]
struct RefUpdate {
    #[serde(rename = "ref")]
    git_ref: String,
    before: Option<String>,
    after: Option<String>,
}

#[derive(Deserialize)]
struct MergeRequest {
    user: Option<UserRef>,
    project: Option<Project>,
    object_attributes: MrAttributes,
}

#[derive(Deserialize)]
struct UserRef {
    username: Option<String>,
}

#[derive(Deserialize)]
struct MrAttributes {
    iid: Option<u64>,
    source_branch: Option<String>,
    target_branch: Option<String>,
    action: Option<String>,
    oldrev: Option<String>,
    last_commit: Option<LastCommit>,
}

#[derive(Deserialize)]
struct LastCommit {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Release {
    action: Option<String>,
    tag: Option<String>,
    project: Option<Project>,
    commit: Option<LastCommit>,
}

/// Every other event: issues, notes, wiki pages, jobs, and the
/// system hooks' project, group, user and key events.
#[derive(Deserialize)]
struct Other {
    project: Option<Project>,
    /// System hooks' `project_*` events carry the path at the top level.
    path_with_namespace: Option<String>,
    /// The acting user. Membership events' top-level `user_username` is the
    /// member, not who acted, so it is not the sender.
    user: Option<UserRef>,
    object_attributes: Option<Attributes>,
}

#[derive(Deserialize)]
struct Attributes {
    action: Option<String>,
}

/// GitLab's present-tense verbs, in the past tense the other providers (and
/// the pull request table in docs/events.md) use. Other words pass through.
fn past_tense(word: &str) -> &str {
    match word {
        "open" => "opened",
        "close" => "closed",
        "reopen" => "reopened",
        "merge" => "merged",
        "update" => "updated",
        "create" => "created",
        "delete" => "deleted",
        other => other,
    }
}

pub(super) fn describe(
    source: &str,
    name: &str,
    delivery: String,
    payload: &[u8],
) -> Result<Event, DescribeError> {
    let head: Head = parse(payload)?;
    let word = head.object_kind.or(head.event_name).ok_or_else(|| {
        DescribeError::Unreadable(
            "GitLab payload has neither `object_kind` nor `event_name`, so the event cannot be told; \
             is a custom webhook template reshaping the body?"
                .into(),
        )
    })?;
    let normalized = match word.as_str() {
        "push" | "tag_push" | "repository_update" => kind::PUSH,
        "merge_request" => kind::PULL_REQUEST,
        "release" => kind::RELEASE,
        "pipeline" => kind::PIPELINE,
        other => other,
    };
    let mut event = Event::new(source, Provider::Gitlab, name, normalized, delivery);
    match (normalized, word.as_str()) {
        (kind::PUSH, "repository_update") => repository_update(&mut event, parse(payload)?),
        (kind::PUSH, _) => push(&mut event, parse(payload)?),
        (kind::PULL_REQUEST, _) => merge_request(&mut event, parse(payload)?),
        (kind::RELEASE, _) => release(&mut event, parse(payload)?),
        (kind::PIPELINE, _) => super::pipeline::describe(&mut event, parse(payload)?),
        _ => other(&mut event, parse(payload)?),
    }
    Ok(event)
}

fn push(event: &mut Event, p: Push) {
    let after = p.after.as_deref().or(p.checkout_sha.as_deref());
    let mut change = RefChange::new(&p.git_ref, p.before.as_deref(), after);
    // An annotated tag's `after` is the tag object; `checkout_sha` is the
    // commit it points to (for a branch the two are the same).
    if let Some(commit) = p.checkout_sha.filter(|s| !is_null_sha(s))
        && !change.deleted
    {
        change.sha = Some(commit);
    }
    event.set_push(change);
    event.repository = p.project.and_then(|p| p.path_with_namespace);
    event.sender = p.user_username;
    let total = p.total_commits_count.unwrap_or(p.commits.len());
    if total > p.commits.len() {
        event.paths_unknown = Some(format!(
            "the payload lists {} of the push's {total} commits (GitLab sends at most 20); changed files are incomplete",
            p.commits.len()
        ));
    } else if !p.commits.iter().all(Commit::lists_files) {
        event.paths_unknown = Some("the payload's commits do not list changed files".into());
    } else {
        event.paths = Some(union_paths(p.commits.iter().flat_map(Commit::files)));
    }
}

fn repository_update(event: &mut Event, p: RepositoryUpdate) {
    for u in p.changes {
        let change = RefChange::new(&u.git_ref, u.before.as_deref(), u.after.as_deref());
        // Like Bitbucket: the first ref is the event's own, all are in `changes`.
        if event.changes.is_empty() {
            event.set_push(change);
        } else {
            event.changes.push(change);
        }
    }
    event.repository = p.project.and_then(|p| p.path_with_namespace);
    event.sender = p.user_username;
    event.paths_unknown = Some("repository_update payloads list no commits or changed files".into());
}

fn merge_request(event: &mut Event, p: MergeRequest) {
    let a = p.object_attributes;
    // System hooks' merge requests carry no action: it stays null, not "".
    if let Some(word) = a.action {
        let action = match word.as_str() {
            "update" if a.oldrev.is_some() => "synchronize",
            other => past_tense(other),
        };
        event.set_action(&word, action);
    }
    if let Some(b) = a.source_branch {
        event.set_ref(&format!("refs/heads/{b}"));
    }
    event.base_branch = a.target_branch;
    event.sha = a.last_commit.and_then(|c| c.id);
    event.number = a.iid;
    event.repository = p.project.and_then(|p| p.path_with_namespace);
    event.sender = p.user.and_then(|u| u.username);
    event.paths_unknown = Some("merge request payloads do not list changed files".into());
}

fn release(event: &mut Event, p: Release) {
    if let Some(word) = p.action {
        let action = match word.as_str() {
            "create" => "published",
            other => past_tense(other),
        };
        event.set_action(&word, action);
    }
    if let Some(tag) = p.tag {
        event.set_ref(&format!("refs/tags/{tag}"));
    }
    event.sha = p.commit.and_then(|c| c.id);
    event.repository = p.project.and_then(|p| p.path_with_namespace);
}

fn other(event: &mut Event, p: Other) {
    if let Some(word) = p.object_attributes.and_then(|a| a.action) {
        event.set_action(&word, past_tense(&word));
    }
    event.repository = p
        .project
        .and_then(|p| p.path_with_namespace)
        .or(p.path_with_namespace);
    event.sender = p.user.and_then(|u| u.username);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn word_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            "[a-z_/ ]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let keys = prop_oneof![
                Just("object_kind".to_owned()),
                Just("event_name".to_owned()),
                Just("ref".to_owned()),
                Just("before".to_owned()),
                Just("after".to_owned()),
                Just("changes".to_owned()),
                Just("commits".to_owned()),
                Just("project".to_owned()),
                Just("object_attributes".to_owned()),
                Just("action".to_owned()),
                Just("status".to_owned()),
                Just("tag".to_owned()),
                Just("iid".to_owned()),
                Just("total_commits_count".to_owned()),
                "[a-z_]{1,8}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn kinds() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "push",
            "tag_push",
            "repository_update",
            "merge_request",
            "release",
            "pipeline",
            "issue",
            "wiki_page",
            "project_create",
        ])
    }

    /// Real GitLab bodies, with the hook header each arrives with.
    const REAL: [(&str, &str); 6] = [
        ("gitlab-system/push.json", "System Hook"),
        ("gitlab-system/repository_update.json", "System Hook"),
        ("gitlab-system/merge_request.json", "System Hook"),
        ("gitlab-system/project_rename.json", "System Hook"),
        ("gitlab/issue-hook.json", "Issue Hook"),
        ("gitlab/pipeline-hook.json", "Pipeline Hook"),
    ];

    fn real(i: usize) -> (serde_json::Map<String, serde_json::Value>, &'static str) {
        let (file, header) = REAL[i % REAL.len()];
        let path = format!("{}/tests/fixtures/payloads/{file}", env!("CARGO_MANIFEST_DIR"));
        let body = std::fs::read(path).unwrap();
        (serde_json::from_slice(&body).unwrap(), header)
    }

    #[test]
    fn every_real_body_is_described() {
        for i in 0..REAL.len() {
            let (body, header) = real(i);
            let bytes = serde_json::to_vec(&body).unwrap();
            describe("s", header, "d".into(), &bytes).unwrap();
        }
    }

    proptest! {
        /// A real body with one top-level field replaced by any JSON value:
        /// an event or a typed error, never a panic.
        #[test]
        fn a_real_body_with_one_field_replaced_never_panics(
            which in any::<usize>(),
            field in any::<usize>(),
            value in word_json(),
        ) {
            let (mut body, header) = real(which);
            let keys: Vec<String> = body.keys().cloned().collect();
            body.insert(keys[field % keys.len()].clone(), value);
            let bytes = serde_json::to_vec(&body).unwrap();
            let _ = describe("s", header, "d".into(), &bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = describe("s", "System Hook", "d".into(), &bytes);
        }

        /// JSON shaped like GitLab's, with the fields in the wrong types or missing:
        /// an event or a typed error, never a panic; a described event has the kind its body names.
        #[test]
        fn gitlab_shaped_json_never_panics(
            kind in kinds(),
            by_event_name in any::<bool>(),
            rest in word_json(),
        ) {
            let mut body = match rest {
                serde_json::Value::Object(m) => m,
                other => [("extra".to_owned(), other)].into_iter().collect(),
            };
            let key = if by_event_name { "event_name" } else { "object_kind" };
            body.insert(key.into(), kind.into());
            body.remove(if by_event_name { "object_kind" } else { "event_name" });
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            if let Ok(e) = describe("s", "System Hook", "d".into(), &bytes) {
                let want = match kind {
                    "push" | "tag_push" | "repository_update" => "push",
                    "merge_request" => "pull_request",
                    other => other,
                };
                prop_assert_eq!(e.kind, want);
                prop_assert_eq!(e.name, "System Hook");
                prop_assert_eq!(e.provider, Provider::Gitlab);
            }
        }
    }

    #[test]
    fn verbs_become_past_tense_and_unknown_words_pass() {
        assert_eq!(past_tense("open"), "opened");
        assert_eq!(past_tense("create"), "created");
        assert_eq!(past_tense("approved"), "approved");
    }

    #[test]
    fn a_body_without_either_name_blames_a_template() {
        let err = describe("s", "Push Hook", "d".into(), br#"{"ref":"refs/heads/x"}"#).unwrap_err();
        assert!(
            err.to_string().contains("neither `object_kind` nor `event_name`"),
            "{err}"
        );
    }
}
