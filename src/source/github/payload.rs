//! GitHub-shaped payloads described as an [`Event`]. Gitea, Forgejo and Gogs
//! send the same shapes, so their sources describe through here too.

use serde::Deserialize;

use crate::event::{Event, Provider, RefChange, kind, union_paths};
use crate::source::commit::Commit;
use crate::source::{DescribeError, parse};

/// GitHub lists at most this many commits in a push payload.
const MAX_PUSH_COMMITS: usize = 2048;

#[derive(Deserialize)]
struct Repo {
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct User {
    login: Option<String>,
    username: Option<String>,
}

impl User {
    fn name(self) -> Option<String> {
        self.login.or(self.username)
    }
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    before: Option<String>,
    after: Option<String>,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    commits: Option<Vec<Commit>>,
    /// Gitea: the real number of commits when `commits` was capped.
    total_commits: Option<usize>,
    repository: Option<Repo>,
    sender: Option<User>,
    pusher: Option<User>,
    head_commit: Option<HeadCommit>,
}

/// The commit a push leaves its ref at: for an annotated tag, the commit
/// the tag points to (`after` is then the tag object).
#[derive(Deserialize)]
struct HeadCommit {
    id: Option<String>,
}

#[derive(Deserialize)]
struct PullRequest {
    action: Option<String>,
    number: Option<u64>,
    pull_request: Pr,
    repository: Option<Repo>,
    sender: Option<User>,
}

#[derive(Deserialize)]
struct Pr {
    number: Option<u64>,
    head: PrRef,
    base: PrRef,
    #[serde(default)]
    merged: Option<bool>,
}

#[derive(Deserialize)]
struct PrRef {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: Option<String>,
}

#[derive(Deserialize)]
struct Release {
    action: Option<String>,
    release: ReleaseInfo,
    repository: Option<Repo>,
    sender: Option<User>,
}

#[derive(Deserialize)]
struct ReleaseInfo {
    tag_name: String,
}

#[derive(Deserialize)]
struct CreateDelete {
    #[serde(rename = "ref")]
    git_ref: String,
    ref_type: String,
    sha: Option<String>,
    repository: Option<Repo>,
    sender: Option<User>,
}

#[derive(Deserialize)]
struct Other {
    action: Option<String>,
    repository: Option<Repo>,
    sender: Option<User>,
    /// Set on events about a pull request that are not `pull_request` events.
    pull_request: Option<PrContext>,
    number: Option<u64>,
}

/// The pull request a review, review comment or review thread belongs to:
/// the object `pull_request` events carry, read leniently.
#[derive(Deserialize)]
struct PrContext {
    number: Option<u64>,
    head: Option<PrSide>,
    base: Option<PrSide>,
}

#[derive(Deserialize)]
struct PrSide {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    sha: Option<String>,
}

/// Describe a GitHub-shaped payload. Gitea, Forgejo and Gogs share this shape,
/// with their own provider tag and a few different words. `name` is the event
/// name users see; `coarse` the GitHub-compatible one that decides the shape.
pub(in crate::source) fn describe(
    source: &str,
    provider: Provider,
    name: &str,
    coarse: &str,
    delivery: String,
    payload: &[u8],
) -> Result<Event, DescribeError> {
    let normalized = match coarse {
        "push" => kind::PUSH,
        "pull_request" | "pull_request_target" => kind::PULL_REQUEST,
        "release" => kind::RELEASE,
        "ping" => kind::PING,
        other => other,
    };
    let mut event = Event::new(source, provider, name, normalized, delivery);
    match normalized {
        kind::PUSH => {
            let p: Push = parse(payload)?;
            let mut change = RefChange::new(&p.git_ref, p.before.as_deref(), p.after.as_deref());
            change.created |= p.created;
            change.deleted |= p.deleted;
            change.forced = p.forced;
            if change.tag.is_some()
                && !change.deleted
                && let Some(commit) = p.head_commit.and_then(|c| c.id)
            {
                change.sha = Some(commit);
            }
            event.set_push(change);
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p
                .sender
                .and_then(User::name)
                .or_else(|| p.pusher.and_then(User::name));
            match p.commits {
                Some(commits) if commits.len() >= MAX_PUSH_COMMITS => {
                    event.paths_unknown = Some(format!(
                        "the payload lists only the first {MAX_PUSH_COMMITS} commits of this push"
                    ));
                }
                Some(commits) if p.total_commits.is_some_and(|t| t > commits.len()) => {
                    event.paths_unknown = Some(format!(
                        "the payload lists {} of {} commits; changed files are incomplete",
                        commits.len(),
                        p.total_commits.unwrap_or_default()
                    ));
                }
                Some(commits) if !commits.iter().all(Commit::lists_files) => {
                    event.paths_unknown = Some("the payload's commits do not list changed files".into());
                }
                Some(commits) => event.paths = Some(union_paths(commits.iter().flat_map(Commit::files))),
                None => event.paths_unknown = Some("the payload lists no commits".into()),
            }
        }
        kind::PULL_REQUEST => {
            let p: PullRequest = parse(payload)?;
            if let Some(word) = p.action {
                event.set_action(&word, pr_action(&word, p.pull_request.merged.unwrap_or(false)));
            }
            event.number = p.number.or(p.pull_request.number);
            event.set_ref(&format!("refs/heads/{}", p.pull_request.head.git_ref));
            event.sha = p.pull_request.head.sha;
            event.base_branch = Some(p.pull_request.base.git_ref);
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.sender.and_then(User::name);
            event.paths_unknown = Some("pull request payloads do not list changed files".into());
        }
        kind::RELEASE => {
            let p: Release = parse(payload)?;
            if let Some(a) = p.action {
                event.set_action(&a, &a);
            }
            event.set_ref(&format!("refs/tags/{}", p.release.tag_name));
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.sender.and_then(User::name);
        }
        "create" | "delete" => {
            let p: CreateDelete = parse(payload)?;
            // These events carry the short name; rebuild the full ref.
            let full = match p.ref_type.as_str() {
                "tag" => format!("refs/tags/{}", p.git_ref),
                _ => format!("refs/heads/{}", p.git_ref),
            };
            event.set_ref(&full);
            event.sha = p.sha;
            event.created = coarse == "create";
            event.deleted = coarse == "delete";
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.sender.and_then(User::name);
        }
        _ => {
            let p: Other = parse(payload)?;
            if let Some(a) = p.action {
                event.set_action(&a, &a);
            }
            if let Some(pr) = p.pull_request {
                pull_request_context(&mut event, p.number, pr);
            }
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.sender.and_then(User::name);
        }
    }
    Ok(event)
}

/// Events about a pull request (`pull_request_review`,
/// `pull_request_review_comment`, `pull_request_review_thread`, and Gitea's
/// review events) keep their own kind but state the pull request's branches,
/// head commit and number as a `pull_request` event does, so rules can filter
/// them on `branches` and templates can build the same CI request.
fn pull_request_context(event: &mut Event, number: Option<u64>, pr: PrContext) {
    event.number = number.or(pr.number);
    if let Some(head) = pr.head {
        if let Some(branch) = head.git_ref {
            event.set_ref(&format!("refs/heads/{branch}"));
        }
        event.sha = head.sha;
    }
    event.base_branch = pr.base.and_then(|b| b.git_ref);
    event.paths_unknown = Some("pull request payloads do not list changed files".into());
}

/// Map a pull request action word onto the common vocabulary.
fn pr_action(word: &str, merged: bool) -> &str {
    match word {
        "closed" if merged => "merged",
        "synchronized" => "synchronize",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// JSON values built from the keys GitHub-shaped payloads use, so the typed
    /// views meet real field names holding the wrong types.
    fn github_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            "[a-z_/ ]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let keys = prop::sample::select(
                "ref before after created deleted forced commits added modified removed total_commits \
                 repository full_name sender login pusher action number pull_request head base sha \
                 merged release tag_name ref_type other"
                    .split_whitespace()
                    .collect::<Vec<_>>(),
            );
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(keys, inner, 0..6).prop_map(|m| {
                    serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    fn events() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "push",
            "pull_request",
            "pull_request_review",
            "release",
            "create",
            "delete",
            "ping",
            "issues",
        ])
    }

    /// Real GitHub bodies, with the event each arrives as.
    const REAL: [(&str, &str); 5] = [
        ("github/push.json", "push"),
        ("github/pull_request-opened.json", "pull_request"),
        ("github/pull_request_review-submitted.json", "pull_request_review"),
        ("github/release-published.json", "release"),
        ("github/create-tag.json", "create"),
    ];

    fn real(i: usize) -> (serde_json::Map<String, serde_json::Value>, &'static str) {
        let (file, event) = REAL[i % REAL.len()];
        let path = format!("{}/tests/fixtures/payloads/{file}", env!("CARGO_MANIFEST_DIR"));
        let body = std::fs::read(path).unwrap();
        (serde_json::from_slice(&body).unwrap(), event)
    }

    #[test]
    fn every_real_body_is_described() {
        for i in 0..REAL.len() {
            let (body, event) = real(i);
            let bytes = serde_json::to_vec(&body).unwrap();
            describe("s", Provider::Github, event, event, "d".into(), &bytes).unwrap();
        }
    }

    proptest! {
        /// A real body with one top-level field replaced by any JSON value:
        /// an event or a typed error, never a panic.
        #[test]
        fn a_real_body_with_one_field_replaced_never_panics(
            which in any::<usize>(),
            field in any::<usize>(),
            value in github_json(),
        ) {
            let (mut body, event) = real(which);
            let keys: Vec<String> = body.keys().cloned().collect();
            body.insert(keys[field % keys.len()].clone(), value);
            let bytes = serde_json::to_vec(&body).unwrap();
            let _ = describe("s", Provider::Github, event, event, "d".into(), &bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            event in events(),
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = describe("s", Provider::Github, event, event, "d".into(), &bytes);
        }

        /// Any JSON: an event or a typed error, never a panic; a described
        /// event keeps the name it was given.
        #[test]
        fn github_shaped_json_never_panics(event in events(), body in github_json()) {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            if let Ok(e) = describe("s", Provider::Github, event, event, "d".into(), &bytes) {
                prop_assert_eq!(e.name, event);
                prop_assert!(e.changes.len() <= 1);
            }
        }
    }

    #[test]
    fn closed_and_merged_becomes_merged() {
        assert_eq!(pr_action("closed", true), "merged");
        assert_eq!(pr_action("closed", false), "closed");
        assert_eq!(pr_action("synchronized", false), "synchronize");
    }
}
