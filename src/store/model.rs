//! The job model both backends share (concurrency groups' is in
//! [`super::concurrency`]): the states a job moves through, what
//! an attempt's [`Transition`] writes into the job ([`JobUpdate`]), the texts
//! of interrupted attempts, and the messages and checks both stores give.
//! SQL stays per backend, but for the one portable query both run
//! ([`QUEUE_STATS`]); the vocabulary and the mapping are written once, here.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Attempt, DeliveryKey, QueueStats, StoreError, Transition, from_millis, millis};

/// The queue's figures for metrics, on either store: jobs pending, running
/// and dead, and when the oldest unfinished one was created. A term per
/// state, so each is found in the partial index that holds it (`jobs_due`:
/// pending and dead; `jobs_lease`: running) without reading finished jobs.
pub const QUEUE_STATS: &str = "SELECT
    (SELECT COUNT(*) FROM jobs WHERE state = 'pending'),
    (SELECT COUNT(*) FROM jobs WHERE state = 'running'),
    (SELECT COUNT(*) FROM jobs WHERE state = 'dead'),
    (SELECT MIN(t) FROM (SELECT MIN(created_at) AS t FROM jobs WHERE state = 'pending'
                         UNION ALL SELECT MIN(created_at) FROM jobs WHERE state = 'running') AS u)";

/// The figures from [`QUEUE_STATS`]'s one row: pending, running and dead
/// counts, and the oldest unfinished job's creation (milliseconds).
pub fn queue_stats((pending, running, dead, oldest): (i64, i64, i64, Option<i64>)) -> QueueStats {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    QueueStats {
        pending: count(pending),
        running: count(running),
        dead: count(dead),
        oldest_pending: oldest.map(from_millis),
    }
}

/// [`super::Store::neighbours`]: the target's other jobs that recorded a
/// pipeline since a time, or whose attempt is out, or that had an
/// ambiguous attempt still pending or since that time, whatever became of
/// them (done, dead, superseded: a pipeline that attempt created may be
/// recorded by nobody). The same text on both stores. A scan of the
/// target's jobs: reconciles only.
pub const NEIGHBOURS: &str = "SELECT result, request,
        state = 'running' OR (ambiguous_since IS NOT NULL AND (state = 'pending' OR updated_at >= $3))
     FROM jobs WHERE target = $1 AND id <> $2
     AND ((result IS NOT NULL AND updated_at >= $3) OR state = 'running'
          OR (ambiguous_since IS NOT NULL AND (state = 'pending' OR updated_at >= $3)))";

/// [`NEIGHBOURS`]' rows, read.
pub fn neighbours(rows: Vec<(Option<String>, String, bool)>) -> Result<super::Neighbours, StoreError> {
    let mut n = super::Neighbours::default();
    for (result, request, unsettled) in rows {
        let result = result
            .map(|r| from_json::<crate::target::TriggerResult>(&r))
            .transpose()?;
        // A pipeline recorded without its id cannot be left out by id: its
        // job counts as one that may own a candidate.
        let unsettled = unsettled || result.as_ref().is_some_and(|r| r.id.is_none());
        if let Some(id) = result.and_then(|r| r.id) {
            n.recorded.push(id);
        }
        if unsettled {
            n.unsettled.push(from_json(&request)?);
        }
    }
    Ok(n)
}

/// The pipeline id in a stored result (JSON of a `TriggerResult`).
pub fn pipeline_id(result: Option<&str>) -> Result<Option<String>, StoreError> {
    Ok(result
        .map(from_json::<crate::target::TriggerResult>)
        .transpose()?
        .and_then(|r| r.id))
}

/// The outcome recorded for an attempt that was cut short.
pub const INTERRUPTED: &str = "interrupted";

/// Why an attempt was cut short: its worker's lease ran out.
pub const LEASE_EXPIRED: &str = "its lease expired: the process holding it stopped or stalled while the job was leased (it may not have been sent)";

/// Why an attempt was cut short: the daemon stopped (its leases are given back).
pub const STOPPED: &str = "hookbridge stopped while the job was leased (it may not have been sent)";

/// What recording an attempt writes into its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUpdate {
    pub state: JobState,
    /// Milliseconds: when a pending job falls due (for a finished job, `now`).
    pub next_attempt_at: i64,
    /// The attempt's error text, which is also the job's `last_error`.
    pub error: Option<String>,
    /// The CI's answer (JSON of a `TriggerResult`), when the trigger was accepted.
    pub result: Option<String>,
}

impl JobUpdate {
    /// The job after `attempt`, which ended in `next`, recorded at `now`.
    pub fn after(next: &Transition, attempt: &Attempt, now: SystemTime) -> Result<JobUpdate, StoreError> {
        let now = millis(now);
        let (state, next_attempt_at, error, result) = match next {
            Transition::Done(r) => (JobState::Done, now, attempt.error.clone(), Some(to_json(r)?)),
            Transition::Skipped(m) => (JobState::Skipped, now, Some(m.clone()), None),
            Transition::Retry { at, reason } => (JobState::Pending, millis(*at), Some(reason.clone()), None),
            Transition::Dead(reason) => (JobState::Dead, now, Some(reason.clone()), None),
        };
        Ok(JobUpdate {
            state,
            next_attempt_at,
            error,
            result,
        })
    }
}

/// The key names deliveries of several sources: say which, sorted by name.
pub fn ambiguous(key: &str, mut sources: Vec<String>) -> StoreError {
    sources.sort();
    StoreError::ambiguous(format!(
        "delivery `{key}` exists for several sources ({}); name one with --source",
        sources.join(", ")
    ))
}

/// No job `job` in the delivery `key` names.
pub fn job_not_found(job: &str, key: &DeliveryKey) -> StoreError {
    StoreError::not_found(format!("{job} (job of delivery {})", key.id))
}

/// Refuse a database whose schema version `found` is beyond the `known` one.
pub fn check_schema(found: usize, known: usize) -> Result<(), StoreError> {
    if found > known {
        return Err(StoreError::invalid(format!(
            "the database schema (version {found}) is newer than this hookbridge understands ({known}); upgrade hookbridge"
        )));
    }
    Ok(())
}

/// A stored JSON column.
pub fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::corrupt(&e).with_source(e))
}

/// A stored JSON column read back.
pub fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::corrupt(&e).with_source(e))
}

/// A delivery's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Some job still waits for (another) attempt.
    Pending,
    /// Every job finished.
    Done,
    /// Some job was dead-lettered.
    Dead,
    /// Every job that did not finish otherwise was superseded by a newer
    /// job of its concurrency group.
    Superseded,
    /// No rule matched (or the CI skipped every job).
    Skipped,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Done => "done",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Superseded => "superseded",
            DeliveryStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "done" => Some(DeliveryStatus::Done),
            "dead" => Some(DeliveryStatus::Dead),
            "superseded" => Some(DeliveryStatus::Superseded),
            "skipped" => Some(DeliveryStatus::Skipped),
            _ => None,
        }
    }
}

/// A status name that is none of [`DeliveryStatus`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a status; use pending, done, dead, superseded or skipped")]
pub struct UnknownStatus(pub String);

/// `--status` and `?status=`: admin callers' text.
impl std::str::FromStr for DeliveryStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryStatus::parse(s).ok_or_else(|| UnknownStatus(crate::config::units::shown(s)))
    }
}

/// Where a job is. Stored and shown as the lowercase name (`"pending"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waits for its next attempt (`next_attempt_at`).
    Pending,
    /// Leased to a worker until its lease expires.
    Running,
    /// The CI accepted the trigger.
    Done,
    /// Dead-lettered: out of attempts, or a failure no retry fixes.
    Dead,
    /// The CI chose not to run it.
    Skipped,
    /// A newer job of its concurrency group ended it before it created a
    /// pipeline.
    Superseded,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Pending,
        JobState::Running,
        JobState::Done,
        JobState::Dead,
        JobState::Skipped,
        JobState::Superseded,
    ];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
            JobState::Skipped => "skipped",
            JobState::Superseded => "superseded",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored state name this build does not know: the row is unreadable.
impl FromStr for JobState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| StoreError::corrupt(format!("unknown job state `{s}`")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::StoreErrorKind;
    use crate::target::TriggerResult;

    #[test]
    fn states_read_and_write_their_stored_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{state}\""));
        }
        let e = "waiting".parse::<JobState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "stored data is unreadable: unknown job state `waiting`"
        );
    }
    fn attempt(error: Option<&str>) -> Attempt {
        Attempt {
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(5),
            status: Some(201),
            error: error.map(str::to_owned),
            response: None,
            ambiguous: false,
            reconcile: None,
        }
    }

    #[test]
    fn each_transition_moves_the_job() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let at = now + Duration::from_secs(30);
        let done = TriggerResult {
            id: Some("42".into()),
            number: None,
            url: None,
            state: None,
            follow: None,
        };
        let cases = [
            (Transition::Done(done.clone()), JobState::Done, 10_000, None),
            (
                Transition::Skipped("ci skip".into()),
                JobState::Skipped,
                10_000,
                Some("ci skip"),
            ),
            (
                Transition::Retry {
                    at,
                    reason: "HTTP 503".into(),
                },
                JobState::Pending,
                40_000,
                Some("HTTP 503"),
            ),
            (
                Transition::Dead("HTTP 404".into()),
                JobState::Dead,
                10_000,
                Some("HTTP 404"),
            ),
        ];
        for (next, state, next_at, error) in cases {
            let u = JobUpdate::after(&next, &attempt(None), now).unwrap();
            assert_eq!(
                (u.state, u.next_attempt_at, u.error.as_deref()),
                (state, next_at, error)
            );
            assert_eq!(u.result.is_some(), state == JobState::Done);
        }
        // A done attempt keeps the attempt's own error text.
        let u = JobUpdate::after(&Transition::Done(done), &attempt(Some("slow")), now).unwrap();
        assert_eq!(u.error.as_deref(), Some("slow"));
        assert_eq!(u.result.as_deref(), Some(r#"{"id":"42"}"#));
    }

    #[test]
    fn messages_are_the_same_on_every_backend() {
        let e = ambiguous("guid-1", vec!["gitea".into(), "github".into(), "forgejo".into()]);
        assert_eq!(e.kind(), StoreErrorKind::Ambiguous);
        assert_eq!(
            e.to_string(),
            "delivery `guid-1` exists for several sources (forgejo, gitea, github); name one with --source"
        );
        let key = DeliveryKey {
            id: "guid-1".into(),
            source: None,
        };
        assert_eq!(
            job_not_found("01J", &key).to_string(),
            "no delivery `01J (job of delivery guid-1)`"
        );
        check_schema(3, 3).unwrap();
        let e = check_schema(4, 3).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Invalid);
        assert_eq!(
            e.to_string(),
            "the database schema (version 4) is newer than this hookbridge understands (3); upgrade hookbridge"
        );
    }
}
