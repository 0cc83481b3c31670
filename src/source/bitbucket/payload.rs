//! Bitbucket Cloud and Data Center payloads described as an [`Event`].

use serde::Deserialize;

use crate::event::{Event, Provider, RefChange, kind};
use crate::source::{DescribeError, parse};

// --- Bitbucket Cloud payloads ---

#[derive(Deserialize)]
struct CloudPush {
    push: CloudChanges,
    repository: Option<CloudRepo>,
    actor: Option<CloudActor>,
}

#[derive(Deserialize)]
struct CloudChanges {
    #[serde(default)]
    changes: Vec<CloudChange>,
}

#[derive(Deserialize)]
struct CloudChange {
    new: Option<CloudRef>,
    old: Option<CloudRef>,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    closed: bool,
    #[serde(default)]
    forced: bool,
}

#[derive(Deserialize)]
struct CloudRef {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    target: Option<CloudTarget>,
}

#[derive(Deserialize)]
struct CloudTarget {
    hash: Option<String>,
}

#[derive(Deserialize)]
struct CloudRepo {
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct CloudActor {
    nickname: Option<String>,
    username: Option<String>,
    display_name: Option<String>,
}

impl CloudActor {
    fn name(self) -> Option<String> {
        self.username.or(self.nickname).or(self.display_name)
    }
}

#[derive(Deserialize)]
struct CloudPullRequest {
    pullrequest: CloudPr,
    repository: Option<CloudRepo>,
    actor: Option<CloudActor>,
}

#[derive(Deserialize)]
struct CloudPr {
    id: Option<u64>,
    source: CloudPrSide,
    destination: CloudPrSide,
}

#[derive(Deserialize)]
struct CloudPrSide {
    branch: CloudBranch,
    commit: Option<CloudTarget>,
}

#[derive(Deserialize)]
struct CloudBranch {
    name: String,
}

// --- Bitbucket Data Center payloads ---

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcRefsChanged {
    #[serde(default)]
    changes: Vec<DcChange>,
    repository: Option<DcRepo>,
    actor: Option<DcActor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcChange {
    ref_id: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<DcRef>,
    from_hash: Option<String>,
    to_hash: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct DcRef {
    id: String,
}

#[derive(Deserialize)]
struct DcRepo {
    slug: Option<String>,
    project: Option<DcProject>,
}

impl DcRepo {
    fn full_name(self) -> Option<String> {
        match (self.project.and_then(|p| p.key), self.slug) {
            (Some(key), Some(slug)) => Some(format!("{key}/{slug}")),
            (None, slug) => slug,
            (Some(_), None) => None,
        }
    }
}

#[derive(Deserialize)]
struct DcProject {
    key: Option<String>,
}

#[derive(Deserialize)]
struct DcActor {
    slug: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcPullRequestEvent {
    pull_request: DcPr,
    actor: Option<DcActor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcPr {
    id: Option<u64>,
    from_ref: DcPrRef,
    to_ref: DcPrRef,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcPrRef {
    id: String,
    latest_commit: Option<String>,
    repository: Option<DcRepo>,
}

pub(super) fn describe(
    source: &str,
    name: &str,
    delivery: String,
    payload: &[u8],
) -> Result<Event, DescribeError> {
    let (normalized, action) = match name {
        "repo:push" | "repo:refs_changed" => (kind::PUSH, None),
        "diagnostics:ping" => (kind::PING, None),
        "pullrequest:created" | "pr:opened" => (kind::PULL_REQUEST, Some("opened")),
        "pullrequest:updated" | "pr:from_ref_updated" => (kind::PULL_REQUEST, Some("synchronize")),
        "pullrequest:fulfilled" | "pr:merged" => (kind::PULL_REQUEST, Some("merged")),
        "pullrequest:rejected" | "pr:declined" | "pr:deleted" => (kind::PULL_REQUEST, Some("closed")),
        "pr:reopened" => (kind::PULL_REQUEST, Some("reopened")),
        other => (other, None),
    };
    let mut event = Event::new(source, Provider::Bitbucket, name, normalized, delivery);
    let cloud = name.starts_with("repo:push") || name.starts_with("pullrequest:");
    match (normalized, cloud) {
        (kind::PUSH, true) => {
            let p: CloudPush = parse(payload)?;
            for c in p.push.changes {
                event_push(&mut event, cloud_change(c));
            }
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.actor.and_then(CloudActor::name);
            event.paths_unknown = Some("Bitbucket push payloads do not list changed files".into());
        }
        (kind::PUSH, false) => {
            let p: DcRefsChanged = parse(payload)?;
            for c in p.changes {
                let Some(git_ref) = c.ref_id.or(c.git_ref.map(|r| r.id)) else {
                    continue;
                };
                let mut change = RefChange::new(&git_ref, c.from_hash.as_deref(), c.to_hash.as_deref());
                change.created |= c.kind.as_deref() == Some("ADD");
                change.deleted |= c.kind.as_deref() == Some("DELETE");
                event_push(&mut event, change);
            }
            event.repository = p.repository.and_then(DcRepo::full_name);
            event.sender = p.actor.and_then(|a| a.slug.or(a.name));
            event.paths_unknown = Some("Bitbucket push payloads do not list changed files".into());
        }
        (kind::PULL_REQUEST, true) => {
            let p: CloudPullRequest = parse(payload)?;
            let word = name.trim_start_matches("pullrequest:");
            event.set_action(word, action.unwrap_or(word));
            cloud_pull_request(&mut event, p);
        }
        (kind::PULL_REQUEST, false) => {
            let p: DcPullRequestEvent = parse(payload)?;
            let word = name.trim_start_matches("pr:");
            event.set_action(word, action.unwrap_or(word));
            dc_pull_request(&mut event, p);
        }
        _ => {
            // Other events: any JSON is accepted. An event about a pull
            // request (approvals, comments, reviewers) states it as a pull
            // request event does, so `branches` filters and templates work
            // on it; any other names its repository and actor when it can.
            parse::<serde::de::IgnoredAny>(payload)?;
            if let Ok(p) = parse::<CloudPullRequest>(payload) {
                cloud_pull_request(&mut event, p);
            } else if let Ok(p) = parse::<DcPullRequestEvent>(payload) {
                dc_pull_request(&mut event, p);
            } else if let Ok(p) = parse::<AnyEvent>(payload) {
                event.repository = p.repository.and_then(AnyRepo::full_name);
                event.sender = p.actor.and_then(AnyActor::name);
            }
        }
    }
    Ok(event)
}

fn cloud_pull_request(event: &mut Event, p: CloudPullRequest) {
    event.number = p.pullrequest.id;
    event.set_ref(&format!("refs/heads/{}", p.pullrequest.source.branch.name));
    // Bitbucket Cloud sends an abbreviated (12-character) hash here.
    event.sha = p.pullrequest.source.commit.and_then(|c| c.hash);
    event.base_branch = Some(p.pullrequest.destination.branch.name);
    event.repository = p.repository.and_then(|r| r.full_name);
    event.sender = p.actor.and_then(CloudActor::name);
    event.paths_unknown = Some("pull request payloads do not list changed files".into());
}

fn dc_pull_request(event: &mut Event, p: DcPullRequestEvent) {
    event.number = p.pull_request.id;
    event.set_ref(&p.pull_request.from_ref.id);
    event.sha = p.pull_request.from_ref.latest_commit;
    event.base_branch = crate::event::split_ref(&p.pull_request.to_ref.id).0;
    event.repository = p.pull_request.to_ref.repository.and_then(DcRepo::full_name);
    event.sender = p.actor.and_then(|a| a.slug.or(a.name));
    event.paths_unknown = Some("pull request payloads do not list changed files".into());
}

/// Any other event of either product: its repository and actor, when named
/// the way Bitbucket Cloud (`full_name`, `username`) or Data Center
/// (`project.key`/`slug`, actor `slug`) names them.
#[derive(Deserialize)]
struct AnyEvent {
    repository: Option<AnyRepo>,
    actor: Option<AnyActor>,
}

#[derive(Deserialize)]
struct AnyRepo {
    full_name: Option<String>,
    slug: Option<String>,
    project: Option<DcProject>,
}

impl AnyRepo {
    fn full_name(self) -> Option<String> {
        self.full_name.or_else(|| {
            DcRepo {
                slug: self.slug,
                project: self.project,
            }
            .full_name()
        })
    }
}

#[derive(Deserialize)]
struct AnyActor {
    username: Option<String>,
    nickname: Option<String>,
    slug: Option<String>,
    name: Option<String>,
    display_name: Option<String>,
}

impl AnyActor {
    fn name(self) -> Option<String> {
        self.username
            .or(self.slug)
            .or(self.nickname)
            .or(self.name)
            .or(self.display_name)
    }
}

/// Record a ref change; the first one also becomes the event's own ref.
fn event_push(event: &mut Event, change: RefChange) {
    if event.changes.is_empty() {
        event.set_push(change);
    } else {
        event.changes.push(change);
    }
}

fn cloud_change(c: CloudChange) -> RefChange {
    let side = c.new.as_ref().or(c.old.as_ref());
    let (name, ref_kind) = side.map_or(("", "branch"), |r| (r.name.as_str(), r.kind.as_str()));
    let git_ref = match ref_kind {
        "tag" | "annotated_tag" => format!("refs/tags/{name}"),
        _ => format!("refs/heads/{name}"),
    };
    let hash = |r: &Option<CloudRef>| {
        r.as_ref()
            .and_then(|r| r.target.as_ref())
            .and_then(|t| t.hash.clone())
    };
    let mut change = RefChange::new(&git_ref, None, None);
    change.sha = hash(&c.new);
    change.before = hash(&c.old);
    change.created = c.created || c.old.is_none();
    change.deleted = c.closed || c.new.is_none();
    change.forced = c.forced;
    change
}
