//! The job model both backends share: the states a job moves through, what
//! an attempt's [`Transition`] writes into the job ([`JobUpdate`]), the texts
//! of interrupted attempts, and the messages and checks both stores give.
//! SQL stays per backend, but for the one portable query both run
//! ([`QUEUE_STATS`]); the vocabulary and the mapping are written once, here.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{
    Attempt, DeliveryKey, NewDelivery, QueueStats, StoreError, Summary, Transition, from_millis, millis,
};

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

/// The older jobs of its group one new job ended, in the ingest that
/// stored it (`[rules.concurrency]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    /// The new job.
    pub by: String,
    /// The jobs it ended, oldest first.
    pub jobs: Vec<String>,
}

/// Whether an attempt of a grouped job may go to the CI ([`Store::start_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Still the job's latest word: send it. A newer job of its group no
    /// longer ends it; only this attempt's outcome does.
    Go,
    /// A newer job of its group arrived while it was leased: now ended as
    /// superseded, and not to be sent.
    Superseded,
    /// No longer this worker's: superseded at ingest, or its lease was
    /// taken over or given back. Not to be sent; nothing to record.
    Gone,
}

/// The newer job of its group that superseded a job, and its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupersededBy {
    pub job: String,
    /// The delivery's internal id.
    pub delivery_id: String,
    /// The provider's delivery id.
    pub delivery: String,
    pub rule: String,
}

/// A live job of a concurrency group, as an ingest finds it under the
/// group's lock: pending, or leased (`started` once its attempt went out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveJob {
    pub id: String,
    pub delivery_id: String,
    pub group: String,
    pub started: bool,
}

/// A new job of an ingest with a group, in the order deliveries are stored.
#[derive(Debug, Clone, Copy)]
pub struct GroupedJob<'a> {
    pub id: &'a str,
    pub delivery_id: &'a str,
    pub group: &'a str,
}

/// What an ingest writes for its concurrency groups ([`supersede`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Supersede {
    /// Jobs ended as superseded at once: (job, the new job that ended it).
    pub ended: Vec<(String, String)>,
    /// Jobs whose attempt is out: (job, the new job). Each ends superseded
    /// when its attempt creates no pipeline, or is done when it does.
    pub marked: Vec<(String, String)>,
    /// The deliveries of the ended jobs, sorted: their status changes.
    pub deliveries: Vec<String>,
    /// Per new job, the jobs it ended.
    pub superseded: Vec<Superseded>,
}

/// Newest wins: each new job, in order, supersedes every job of its group
/// alive before it (`live`, found by the store, then the ingest's own
/// earlier ones); a job whose attempt already went out is only marked.
pub fn supersede(mut live: Vec<LiveJob>, new: &[GroupedJob<'_>]) -> Supersede {
    use std::collections::HashMap;
    live.sort_by(|a, b| a.id.cmp(&b.id));
    let mut alive: HashMap<&str, Vec<LiveJob>> = HashMap::new();
    for job in live {
        let group = new.iter().find(|n| n.group == job.group).map(|n| n.group);
        if let Some(group) = group {
            alive.entry(group).or_default().push(job);
        }
    }
    let mut out = Supersede::default();
    for job in new {
        let before = alive.insert(
            job.group,
            vec![LiveJob {
                id: job.id.to_owned(),
                delivery_id: job.delivery_id.to_owned(),
                group: job.group.to_owned(),
                started: false,
            }],
        );
        let mut ended = Vec::new();
        for old in before.into_iter().flatten() {
            if old.started {
                out.marked.push((old.id, job.id.to_owned()));
            } else {
                out.deliveries.push(old.delivery_id);
                ended.push(old.id.clone());
                out.ended.push((old.id, job.id.to_owned()));
            }
        }
        if !ended.is_empty() {
            out.superseded.push(Superseded {
                by: job.id.to_owned(),
                jobs: ended,
            });
        }
    }
    out.deliveries.sort();
    out.deliveries.dedup();
    out
}

/// Name in `summary` the jobs each of its new jobs superseded.
pub fn note_superseded(summary: &mut Summary, superseded: &[Superseded]) {
    for s in superseded {
        if let Some(m) = summary.matched.iter_mut().find(|m| m.job == s.by) {
            m.superseded.clone_from(&s.jobs);
        }
    }
}

/// The new jobs of `delivery` that have a group, in order.
pub fn grouped_jobs(delivery: &NewDelivery) -> impl Iterator<Item = GroupedJob<'_>> {
    delivery.jobs.iter().filter_map(|j| {
        j.group.as_deref().map(|group| GroupedJob {
            id: &j.id,
            delivery_id: &delivery.id,
            group,
        })
    })
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

    fn live(id: &str, group: &str, started: bool) -> LiveJob {
        LiveJob {
            id: id.into(),
            delivery_id: format!("d-{id}"),
            group: group.into(),
            started,
        }
    }

    /// Each new job ends what was alive in its group before it, the
    /// ingest's own earlier jobs included; a job whose attempt is out is
    /// only marked; other groups are left alone.
    #[test]
    fn the_newest_job_of_a_group_supersedes_the_rest() {
        let found = vec![
            live("b", "main", false),
            live("a", "main", true),
            live("c", "dev", false),
        ];
        let new = [
            GroupedJob {
                id: "n1",
                delivery_id: "d-n",
                group: "main",
            },
            GroupedJob {
                id: "n2",
                delivery_id: "d-n",
                group: "main",
            },
            GroupedJob {
                id: "n3",
                delivery_id: "d-m",
                group: "other",
            },
        ];
        let plan = supersede(found, &new);
        assert_eq!(
            plan.ended,
            vec![("b".into(), "n1".into()), ("n1".into(), "n2".into())]
        );
        assert_eq!(plan.marked, vec![("a".into(), "n1".into())]);
        assert_eq!(plan.deliveries, vec!["d-b".to_owned(), "d-n".to_owned()]);
        assert_eq!(
            plan.superseded,
            vec![
                Superseded {
                    by: "n1".into(),
                    jobs: vec!["b".into()]
                },
                Superseded {
                    by: "n2".into(),
                    jobs: vec!["n1".into()]
                },
            ]
        );
        assert_eq!(
            supersede(vec![live("c", "dev", false)], &new[2..]),
            Supersede::default()
        );
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
