//! Concurrency groups' model, shared by both backends: what an ingest
//! supersedes ([`supersede`]), what an attempt of a grouped job may do
//! ([`Start`]), and the cancels of older pipelines (`cancel_in_progress`).
//! SQL stays per backend (`sqlite::groups`, `postgres::groups`).

use std::collections::HashMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{NewDelivery, Summary};
use crate::target::{TriggerRequest, TriggerResult};

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
    /// Done, with a pipeline that may still run (`pipeline_open`): not
    /// superseded, only handed to the newest job to cancel.
    pub open: bool,
}

/// A new job of an ingest with a group, in the order deliveries are stored.
#[derive(Debug, Clone, Copy)]
pub struct GroupedJob<'a> {
    pub id: &'a str,
    pub delivery_id: &'a str,
    pub group: &'a str,
    /// Its rule cancels older pipelines (`cancel_in_progress`).
    pub cancel: bool,
}

/// A job of a group queued again (replay, re-evaluation, a redelivery's
/// dead jobs), as read back from the store: its group's newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeued {
    pub id: String,
    pub delivery_id: String,
    pub group: String,
    pub cancel: bool,
}

impl Requeued {
    /// From a job's row: none when it is in no group.
    pub fn from_row(id: String, delivery_id: &str, group: Option<String>, cancel: bool) -> Option<Requeued> {
        group.map(|group| Requeued {
            id,
            delivery_id: delivery_id.to_owned(),
            group,
            cancel,
        })
    }

    pub fn grouped(&self) -> GroupedJob<'_> {
        GroupedJob {
            id: &self.id,
            delivery_id: &self.delivery_id,
            group: &self.group,
            cancel: self.cancel,
        }
    }
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
    /// Jobs that have (or may yet create) a pipeline: the newest job that
    /// is to cancel it once its own pipeline exists, or none when the
    /// newest job's rule does not cancel (its pipeline is then no longer
    /// held open for a later job to cancel: a group holds only the
    /// pipelines created since its newest job arrived).
    pub cancel_by: Vec<(String, Option<String>)>,
}

/// Newest wins: each new job, in order, supersedes every job of its group
/// alive before it (`live`, found by the store, then the ingest's own
/// earlier ones); a job whose attempt already went out is only marked.
pub fn supersede(mut live: Vec<LiveJob>, new: &[GroupedJob<'_>]) -> Supersede {
    // A job queued again (replay, re-evaluation, redelivery) is found live
    // itself: it is the new one, not an old one.
    live.retain(|l| !new.iter().any(|n| n.id == l.id));
    live.sort_by(|a, b| a.id.cmp(&b.id));
    let mut alive: HashMap<&str, Vec<LiveJob>> = HashMap::new();
    for job in live {
        let group = new.iter().find(|n| n.group == job.group).map(|n| n.group);
        if let Some(group) = group {
            alive.entry(group).or_default().push(job);
        }
    }
    let mut out = Supersede::default();
    // Per group: the jobs whose pipeline the newest job may cancel.
    let mut pipelines: HashMap<&str, Vec<String>> = HashMap::new();
    for job in new {
        let before = alive.insert(
            job.group,
            vec![LiveJob {
                id: job.id.to_owned(),
                delivery_id: job.delivery_id.to_owned(),
                group: job.group.to_owned(),
                started: false,
                open: false,
            }],
        );
        let mut ended = Vec::new();
        let held = pipelines.entry(job.group).or_default();
        for old in before.into_iter().flatten() {
            if old.open {
                held.push(old.id);
            } else if old.started {
                held.push(old.id.clone());
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
        let by = job.cancel.then(|| job.id.to_owned());
        out.cancel_by.extend(held.iter().map(|h| (h.clone(), by.clone())));
    }
    // The newest assignment of each job stands.
    let mut last: HashMap<String, Option<String>> = HashMap::new();
    for (id, by) in std::mem::take(&mut out.cancel_by) {
        last.insert(id, by);
    }
    out.cancel_by = last.into_iter().collect();
    out.cancel_by.sort();
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
            cancel: j.cancel,
        })
    })
}

/// Where a cancel is. Stored as the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelState {
    /// Waits for its (next) attempt.
    Pending,
    /// Leased to a worker.
    Running,
    /// The CI cancelled what was still running.
    Cancelled,
    /// Nothing was left to cancel: the pipeline had finished.
    Finished,
    /// Given up: out of attempts, or refused for good.
    Failed,
}

impl CancelState {
    pub const ALL: [CancelState; 5] = [
        CancelState::Pending,
        CancelState::Running,
        CancelState::Cancelled,
        CancelState::Finished,
        CancelState::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            CancelState::Pending => "pending",
            CancelState::Running => "running",
            CancelState::Cancelled => "cancelled",
            CancelState::Finished => "finished",
            CancelState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<CancelState> {
        CancelState::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A job's pipeline that a newer job of its group cancels, leased to a worker.
#[derive(Debug, Clone)]
pub struct LeasedCancel {
    /// The job whose pipeline is cancelled.
    pub job: String,
    pub delivery_id: String,
    /// The newer job whose pipeline exists.
    pub by_job: String,
    pub rule: String,
    pub target: String,
    /// The cancelled job's request: which API created the pipeline.
    pub request: TriggerRequest,
    /// The pipeline the job created (hookbridge cancels nothing else).
    pub pipeline: TriggerResult,
    /// Attempt number of this cancel (1 for the first try).
    pub attempt: u32,
}

/// How a cancel attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// What the CI cancelled.
    Cancelled(String),
    /// Nothing to cancel: the pipeline had finished (its state).
    Finished(String),
    Retry {
        at: SystemTime,
        reason: String,
    },
    Failed(String),
}

impl CancelOutcome {
    /// The attempt row's `outcome` (attempts of cancels are recorded on
    /// the cancelled job, next to its trigger's).
    pub fn outcome(&self) -> &'static str {
        match self {
            CancelOutcome::Cancelled(_) => "cancelled",
            CancelOutcome::Finished(_) => "cancel_not_needed",
            CancelOutcome::Retry { .. } => "cancel_retry",
            CancelOutcome::Failed(_) => "cancel_failed",
        }
    }

    /// The cancel's state after it, when it is due again (ms), and its text.
    pub fn state(&self, now: i64) -> (CancelState, i64, &str) {
        match self {
            CancelOutcome::Cancelled(t) => (CancelState::Cancelled, now, t),
            CancelOutcome::Finished(t) => (CancelState::Finished, now, t),
            CancelOutcome::Retry { at, reason } => (CancelState::Pending, super::millis(*at), reason),
            CancelOutcome::Failed(t) => (CancelState::Failed, now, t),
        }
    }
}

/// A job's cancel, as `deliveries show` and the admin API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelDetail {
    /// The newer job whose pipeline made this one's cancelled.
    pub by_job: String,
    pub state: CancelState,
    pub attempts: u32,
    /// The last attempt's outcome, in words.
    pub outcome: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(id: &str, group: &str, started: bool) -> LiveJob {
        LiveJob {
            id: id.into(),
            delivery_id: format!("d-{id}"),
            group: group.into(),
            started,
            open: false,
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
                cancel: false,
            },
            GroupedJob {
                id: "n2",
                delivery_id: "d-n",
                group: "main",
                cancel: false,
            },
            GroupedJob {
                id: "n3",
                delivery_id: "d-m",
                group: "other",
                cancel: false,
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
}
