//! Commit statuses (`[rules.status]`), the model both backends share: what
//! a job reports on its commit, the states a pipeline moves through as
//! hookbridge learns them, and which status each step of a job queues.
//!
//! A status is a durable job of its own (table `statuses`): stored in the
//! transaction that causes it (the delivery's ingest for "queued", the
//! attempt's record for "pipeline created" and "dead", the completion
//! event's ingest or the watch's read for the result), posted in order per
//! (source, repository, commit, context), retried with backoff. A status
//! equal to the latest one queued for its commit and context (same state,
//! same description) is not queued again, so redelivered completion events
//! post nothing twice.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::target::TriggerRequest;

pub mod desired;
pub mod state;
pub mod sync;

pub use desired::{WatchFacts, Workflow};
pub use state::PipelineState;

/// The VCS a status goes to, as its API speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vcs {
    Github,
    Gitlab,
    BitbucketCloud,
    BitbucketDatacenter,
    Gitea,
    Forgejo,
}

impl Vcs {
    pub fn as_str(self) -> &'static str {
        match self {
            Vcs::Github => "github",
            Vcs::Gitlab => "gitlab",
            Vcs::BitbucketCloud => "bitbucket-cloud",
            Vcs::BitbucketDatacenter => "bitbucket-datacenter",
            Vcs::Gitea => "gitea",
            Vcs::Forgejo => "forgejo",
        }
    }

    pub fn parse(s: &str) -> Option<Vcs> {
        [
            Vcs::Github,
            Vcs::Gitlab,
            Vcs::BitbucketCloud,
            Vcs::BitbucketDatacenter,
            Vcs::Gitea,
            Vcs::Forgejo,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// A status's state, before it is mapped to a VCS's vocabulary
/// (`crate::vcs`): GitHub has no `running` (it is `pending`), GitLab no
/// `error` (it is `failed`), Bitbucket says `INPROGRESS`, `STOPPED`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    /// Queued, not sent to the CI yet.
    Pending,
    /// The pipeline exists and has not finished.
    Running,
    Success,
    Failure,
    /// hookbridge could not get a result: dead-lettered, superseded, no
    /// result in time.
    Error,
    /// The pipeline was cancelled.
    Canceled,
}

impl StatusState {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Running => "running",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
            StatusState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<StatusState> {
        [
            StatusState::Pending,
            StatusState::Running,
            StatusState::Success,
            StatusState::Failure,
            StatusState::Error,
            StatusState::Canceled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// What a job reports, rendered when its rule matched (`[rules.status]`)
/// and stored with the job (`jobs.status`, JSON). No token: the source's
/// `[sources.NAME.api]` is read from the config when a status is posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSpec {
    /// The source whose `api` posts the statuses (the delivery's).
    pub source: String,
    pub vcs: Vcs,
    pub repository: String,
    /// The commit.
    pub sha: String,
    /// The full ref (`refs/heads/main`), for the VCSs that take one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The rendered context (`hookbridge/deploy`).
    pub context: String,
    /// Report the pipeline's final result, not only its creation.
    pub follow: bool,
    /// Ask the CI after this long without a completion event.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    pub poll: Option<Duration>,
    /// Stop asking after this long, and say so on the commit.
    #[serde(with = "millis")]
    pub poll_timeout: Duration,
}

/// A status to queue: for `spec`'s commit and context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStatus {
    pub state: StatusState,
    pub description: String,
    pub target_url: Option<String>,
    /// Appended to the spec's context (CircleCI workflows reported one by
    /// one: `<context>/<workflow>`).
    pub context_suffix: Option<String>,
}

/// A status handed to a worker to post ([`StatusQueue::lease_statuses`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedStatus {
    /// Its place in the queue: statuses of one subject are posted in this order.
    pub seq: i64,
    pub job: String,
    pub delivery_id: String,
    pub spec: StatusSpec,
    /// The full context (the spec's, or `<context>/<workflow>`).
    pub context: String,
    pub state: StatusState,
    pub description: String,
    pub target_url: Option<String>,
    /// This post's number (1 for the first), counting every lease.
    pub attempt: u32,
}

/// What posting a status came to.
#[derive(Debug, Clone, PartialEq)]
pub enum PostOutcome {
    Posted {
        status: u16,
    },
    Retry {
        at: SystemTime,
        reason: String,
        status: Option<u16>,
    },
    Dead {
        reason: String,
        status: Option<u16>,
    },
}

/// A watch handed to a worker: read the pipeline's state from the CI.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedWatch {
    pub job: String,
    pub delivery_id: String,
    pub target: String,
    pub request: TriggerRequest,
    /// The pipeline's id, as the trigger recorded it.
    pub pipeline: String,
    pub spec: StatusSpec,
    /// This read's number (1 for the first), counting every lease.
    pub check: u32,
    /// After this, watching gives up and says so on the commit.
    pub deadline: SystemTime,
}

/// What a watch's read learned, and when to read again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WatchRecord {
    /// The pipeline's state now, if the read told it.
    pub pipeline: Option<PipelineState>,
    /// CircleCI's workflows, by name, as read.
    pub workflows: Vec<(String, Workflow)>,
    /// The CI refused the read: report each workflow under its own context.
    pub per_workflow: bool,
    /// Watching ends without a final state, for this reason.
    pub gave_up: Option<String>,
    /// When to read again; `None` ends the watch.
    pub next: Option<SystemTime>,
}

/// The queues of statuses to post and pipelines to watch.
#[async_trait::async_trait]
pub trait StatusQueue: Send + Sync {
    /// Lease up to `limit` statuses due to be posted, each the oldest
    /// unposted one of its subject.
    async fn lease_statuses(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedStatus>, StoreError>;

    /// Record a post, if `owner` still holds this lease of the status.
    async fn record_status(
        &self,
        status: &LeasedStatus,
        owner: &str,
        outcome: PostOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError>;

    /// Lease up to `limit` due watches (a poll is due, a completion event
    /// woke it, or its deadline came).
    async fn lease_watches(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedWatch>, StoreError>;

    /// Record a watch's read and queue the statuses it causes, if `owner`
    /// still holds this lease of the watch.
    async fn record_watch(
        &self,
        watch: &LeasedWatch,
        owner: &str,
        record: WatchRecord,
        now: SystemTime,
    ) -> Result<(), StoreError>;
}

/// The most characters of a description: GitHub refuses longer ones.
pub const DESCRIPTION_MAX: usize = 140;

/// `text` cut to [`DESCRIPTION_MAX`] characters, with an ellipsis when cut.
pub fn description(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= DESCRIPTION_MAX {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(DESCRIPTION_MAX - 1).collect();
    out.push('…');
    out
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}
