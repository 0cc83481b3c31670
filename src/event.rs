//! The normalized event: what every source turns its payload into, and what
//! rules and templates see as `event`.
//!
//! Field names are part of the contract (DESIGN.md, "Normalized event"); a
//! template compiled against a name not in [`Event::FIELDS`] is a config error.

use serde::{Deserialize, Serialize};

/// The sender family a source speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    Github,
    Gitlab,
    Bitbucket,
    Gitea,
    Forgejo,
    Gogs,
    AzureDevops,
    Standard,
    Hmac,
    Circleci,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Bitbucket => "bitbucket",
            Provider::Gitea => "gitea",
            Provider::Forgejo => "forgejo",
            Provider::Gogs => "gogs",
            Provider::AzureDevops => "azure-devops",
            Provider::Standard => "standard",
            Provider::Hmac => "hmac",
            Provider::Circleci => "circleci",
        }
    }
}

/// Normalized kinds; anything else keeps the provider's own name.
pub mod kind {
    pub const PUSH: &str = "push";
    pub const PULL_REQUEST: &str = "pull_request";
    pub const RELEASE: &str = "release";
    pub const PING: &str = "ping";
    /// A CI pipeline (or CircleCI workflow) that changed state: GitLab
    /// `Pipeline Hook`, CircleCI `workflow-completed`.
    pub const PIPELINE: &str = "pipeline";
}

/// One ref touched by a push. Bitbucket pushes may carry several; the first is
/// also the event's own `ref`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefChange {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub sha: Option<String>,
    pub before: Option<String>,
    pub created: bool,
    pub deleted: bool,
    pub forced: bool,
}

/// A CI pipeline run an event reports on (`event.pipeline`): a CircleCI
/// workflow or job completion, a GitLab `Pipeline Hook`. Rules match these
/// events like any other; the ids are what a job's recorded pipeline is
/// matched against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRun {
    /// The CI that ran it: `circleci` or `gitlab`.
    pub ci: String,
    /// The CI's pipeline id: CircleCI's pipeline UUID, GitLab's numeric
    /// pipeline id (as text, so both CIs fit one field).
    pub id: String,
    /// The pipeline's number in its project (CircleCI `number`, GitLab `iid`).
    pub number: Option<u64>,
    /// The CI's own word for the state: CircleCI's workflow (or job) status
    /// (`success`, `failed`, `error`, `canceled`, `unauthorized`), GitLab's
    /// pipeline status (`running`, `success`, `failed`, `canceled`, ...).
    pub status: String,
    /// CircleCI: the workflow's name. A CircleCI pipeline finishes when all
    /// of its workflows have, so one pipeline can report several times.
    pub workflow: Option<String>,
    pub workflow_id: Option<String>,
    /// Where people look at it: the CircleCI workflow's page, the GitLab
    /// pipeline's web URL when the payload carries one.
    pub url: Option<String>,
}

/// A webhook delivery, described the same way whatever sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The source's name in the config.
    pub source: String,
    pub provider: Provider,
    /// The provider's own event name (`push`, `Push Hook`, `repo:push`).
    pub name: String,
    /// `push`, `pull_request`, `release`, `ping`, else the provider's name.
    pub kind: String,
    /// Normalized action (`opened`, `synchronize`, `closed`, `merged`, `reopened`, ...).
    pub action: Option<String>,
    /// The provider's own action word, when it differs from `action`.
    pub provider_action: Option<String>,
    pub delivery: String,
    pub repository: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub sha: Option<String>,
    pub before: Option<String>,
    pub base_branch: Option<String>,
    /// Pull/merge request number.
    pub number: Option<u64>,
    /// Files added, modified or removed by a push; `None` when the payload does
    /// not list them completely (see `paths_unknown`).
    pub paths: Option<Vec<String>>,
    /// Why `paths` is `None`, in words, for skip reasons.
    pub paths_unknown: Option<String>,
    pub sender: Option<String>,
    pub created: bool,
    pub deleted: bool,
    pub forced: bool,
    /// Every ref a push touched (one entry for most providers).
    pub changes: Vec<RefChange>,
    /// The CI pipeline a completion event reports on; null for every other
    /// event. Events stored before the field existed read back as null.
    #[serde(default)]
    pub pipeline: Option<PipelineRun>,
}

/// All-zero SHAs mean "no commit" (a creation's `before`, a deletion's `after`).
pub fn is_null_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// Split a full ref into (branch, tag).
pub fn split_ref(git_ref: &str) -> (Option<String>, Option<String>) {
    if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        (Some(b.to_owned()), None)
    } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
        (None, Some(t.to_owned()))
    } else {
        (None, None)
    }
}

impl Event {
    /// The names valid after `event.` in templates.
    pub const FIELDS: &'static [&'static str] = &[
        "source",
        "provider",
        "name",
        "kind",
        "action",
        "provider_action",
        "delivery",
        "repository",
        "ref",
        "branch",
        "tag",
        "sha",
        "before",
        "base_branch",
        "number",
        "paths",
        "paths_unknown",
        "sender",
        "created",
        "deleted",
        "forced",
        "changes",
        "pipeline",
    ];

    /// This event with its changed files known (read from the VCS): what a
    /// deferred rule is decided on, and what its trigger sees.
    pub fn with_paths(&self, paths: Vec<String>) -> Event {
        Event {
            paths: Some(paths),
            paths_unknown: None,
            ..self.clone()
        }
    }

    /// An event with only the identifying fields set; providers fill in the rest.
    pub fn new(source: &str, provider: Provider, name: &str, kind: &str, delivery: String) -> Self {
        Event {
            source: source.to_owned(),
            provider,
            name: name.to_owned(),
            kind: kind.to_owned(),
            action: None,
            provider_action: None,
            delivery,
            repository: None,
            git_ref: None,
            branch: None,
            tag: None,
            sha: None,
            before: None,
            base_branch: None,
            number: None,
            paths: None,
            paths_unknown: None,
            sender: None,
            created: false,
            deleted: false,
            forced: false,
            changes: Vec::new(),
            pipeline: None,
        }
    }

    /// Set `ref`, `branch` and `tag` from a full ref (`refs/heads/main`).
    pub fn set_ref(&mut self, git_ref: &str) {
        let (branch, tag) = split_ref(git_ref);
        self.git_ref = Some(git_ref.to_owned());
        self.branch = branch;
        self.tag = tag;
    }

    /// Set the push fields from one ref change and record it in `changes`.
    pub fn set_push(&mut self, change: RefChange) {
        self.git_ref = Some(change.git_ref.clone());
        self.branch = change.branch.clone();
        self.tag = change.tag.clone();
        self.sha = change.sha.clone();
        self.before = change.before.clone();
        self.created = change.created;
        self.deleted = change.deleted;
        self.forced = change.forced;
        self.changes.push(change);
    }

    /// Set the normalized action, keeping the provider's word when it differs.
    pub fn set_action(&mut self, provider_word: &str, normalized: &str) {
        self.action = Some(normalized.to_owned());
        if provider_word != normalized {
            self.provider_action = Some(provider_word.to_owned());
        }
    }
}

impl RefChange {
    /// A change of a full ref from `before` to `after`; all-zero SHAs mark creation and deletion.
    pub fn new(git_ref: &str, before: Option<&str>, after: Option<&str>) -> Self {
        let (branch, tag) = split_ref(git_ref);
        let created = before.is_some_and(is_null_sha);
        let deleted = after.is_some_and(is_null_sha);
        RefChange {
            git_ref: git_ref.to_owned(),
            branch,
            tag,
            sha: after.filter(|s| !is_null_sha(s)).map(str::to_owned),
            before: before.filter(|s| !is_null_sha(s)).map(str::to_owned),
            created,
            deleted,
            forced: false,
        }
    }
}

/// Collect the union of changed paths over commit file lists, keeping first-seen order.
/// A push can list thousands of paths: they are hashed with foldhash (seeded
/// per process, several times cheaper than the default SipHash on short
/// strings); bodies reach here only after their signature was verified.
pub fn union_paths<'a>(lists: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = foldhash::HashSet::default();
    let mut out = Vec::new();
    for p in lists {
        if seen.insert(p) {
            out.push(p.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_changes_mark_creation_and_deletion() {
        let zero = "0000000000000000000000000000000000000000";
        let c = RefChange::new("refs/tags/v1", Some(zero), Some("abc"));
        assert!(c.created && !c.deleted);
        assert_eq!(c.tag.as_deref(), Some("v1"));
        assert_eq!(c.before, None);
        let d = RefChange::new("refs/heads/x", Some("abc"), Some(zero));
        assert!(d.deleted && d.sha.is_none());
    }

    #[test]
    fn every_serialized_field_is_listed() {
        let e = Event::new("s", Provider::Github, "push", "push", "d".into());
        let v = serde_json::to_value(&e).unwrap();
        for key in v.as_object().unwrap().keys() {
            assert!(Event::FIELDS.contains(&key.as_str()), "{key} missing from FIELDS");
        }
    }
}
