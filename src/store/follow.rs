//! Follow-ups of created runs, shared by both backends: a CI that answers a
//! trigger with a queue entry rather than a run (Jenkins: `201` and a queue
//! item) is read again until the run exists. The follow-up is durable: it
//! is stored in the transaction that records the attempt which queued the
//! run, leased like a job (so one replica reads it at a time, and another
//! takes it over when its worker dies), and bounded by the dispatcher,
//! which gives up after a while and says so on the job.

use std::time::SystemTime;

use crate::target::{TriggerRequest, TriggerResult};

/// A follow-up handed to a worker ([`Store::lease_follow_ups`](super::Store::lease_follow_ups)).
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedFollowUp {
    /// The job whose run is followed.
    pub job: String,
    pub delivery_id: String,
    pub rule: String,
    pub target: String,
    pub request: TriggerRequest,
    /// The job's result as last recorded: `follow` names what to read.
    pub result: TriggerResult,
    /// This read's number (1 for the first), counting every lease.
    pub poll: u32,
    /// When the follow-up was stored (the attempt that queued the run).
    pub created_at: SystemTime,
}

/// What a read of a follow-up came to.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowOutcome {
    /// The run is known (or will never be): the job's result becomes this
    /// one, and the follow-up ends.
    Done(TriggerResult),
    /// Not yet: read again at `at`; the job's result becomes `result` (its
    /// state may have moved on, "queued" to "blocked", say).
    Again { at: SystemTime, result: TriggerResult },
}

impl FollowOutcome {
    /// The job's result after this read.
    pub fn result(&self) -> &TriggerResult {
        match self {
            FollowOutcome::Done(r) | FollowOutcome::Again { result: r, .. } => r,
        }
    }

    /// The follow-up after this read, recorded at `now` (milliseconds):
    /// its state (`follow_ups.state`: `pending`, `running` while leased,
    /// `done`) and when it falls due (for an ended one, `now`).
    pub(crate) fn next(&self, now: i64) -> (&'static str, i64) {
        match self {
            FollowOutcome::Done(_) => ("done", now),
            FollowOutcome::Again { at, .. } => ("pending", super::millis(*at)),
        }
    }
}

/// Whether an attempt that ended in `next` leaves its job a follow-up: a
/// run the CI created only as a queue entry.
pub(crate) fn follows(next: &super::Transition) -> bool {
    matches!(next, super::Transition::Done(r) if r.follow.is_some())
}
