//! What the store reads back for people: the filters of a delivery list,
//! its rows, and a delivery with its jobs and their attempts, and its
//! deferred rules.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::deferral::DeferralRow;
use super::{DeliveryStatus, JobState, Summary, SupersededBy, concurrency};
use crate::event::Event;
use crate::target::{TriggerRequest, TriggerResult};

/// Filters for listing deliveries, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub source: Option<String>,
    pub rule: Option<String>,
    pub repository: Option<String>,
    pub since: Option<SystemTime>,
    /// Received before this time.
    pub until: Option<SystemTime>,
    /// The search box: a hookbridge id, a provider delivery id, or a commit
    /// sha or its prefix ([`query::Search`]).
    pub search: Option<String>,
    /// Return deliveries older than this internal id (pagination cursor).
    pub before: Option<String>,
    pub limit: usize,
}

/// One line of `deliveries list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRow {
    pub id: String,
    pub source: String,
    pub delivery: String,
    pub received_at: i64,
    pub event: String,
    pub kind: String,
    pub repository: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The event's commit.
    #[serde(default)]
    pub sha: Option<String>,
    pub status: DeliveryStatus,
    pub jobs: u32,
}

/// A recorded attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRow {
    pub n: u32,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status: Option<u16>,
    pub outcome: String,
    pub error: Option<String>,
    pub response: Option<String>,
    /// What reconciling with the CI decided before this attempt sent, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<String>,
}

/// A job with its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    pub id: String,
    pub rule: String,
    pub target: String,
    pub state: JobState,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub result: Option<TriggerResult>,
    pub request: TriggerRequest,
    /// Its concurrency group (`[rules.concurrency]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// For a superseded job: the newer job, and its delivery, that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<SupersededBy>,
    /// The cancel of its pipeline by a newer job of its group, if any
    /// (`cancel_in_progress`; its attempts are in `history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<concurrency::CancelDetail>,
    /// Its pipeline's state as last learned (`created`, `running`,
    /// `success`, `failed`, `canceled`), for a job reporting statuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_state: Option<String>,
    /// The statuses it queued on its commit, oldest first (`[rules.status]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<StatusRow>,
    pub history: Vec<AttemptRow>,
}

/// A commit status a job queued, and how posting it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRow {
    pub context: String,
    /// `pending`, `running`, `success`, `failure`, `error`, `canceled`.
    pub state: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// `pending`, `running` (being posted), `done` (posted), `dead` (given up).
    pub post: String,
    pub attempts: u32,
    /// The VCS's last answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was queued and last changed (milliseconds since the epoch).
    pub created_at: i64,
    pub updated_at: i64,
}

/// Everything known about one delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub row: DeliveryRow,
    pub summary: Summary,
    pub normalized: Event,
    pub jobs: Vec<JobDetail>,
    /// Its rules whose verdict waited (or waits) for the changed files read
    /// from the VCS, in rule order ([`super::deferral`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferrals: Vec<DeferralRow>,
}

/// The stored inputs of a delivery, for re-evaluating rules.
#[derive(Debug, Clone)]
pub struct StoredPayload {
    pub event: Event,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}
