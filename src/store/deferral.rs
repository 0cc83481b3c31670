//! Deferred rule evaluations, shared by both backends: a rule whose path
//! filters the payload cannot decide (its changed files are not all
//! listed) and whose source has an `[sources.NAME.api]` is answered
//! `deferred` and evaluated again once the files are read from the VCS.
//!
//! A deferral is stored with its delivery, in the ingest's transaction (one
//! row per entry of the summary's `deferred`), so a crash loses neither. It
//! is leased like a job (one replica reads it at a time; another takes it
//! over when the lease runs out), retried with the rule's backoff, and
//! settled in one transaction that queues the job (with its group, its
//! statuses) when the rule matched, moves the rule's entry of the stored
//! summary from `deferred` to `matched`, `skipped` or `errors`, and ends
//! the deferral with what was read and where.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{MatchedJob, NewJob, StoreError, Summary};
pub use crate::rules::Deferred;
use crate::rules::{Errored, Skipped};

/// A deferral handed to a worker ([`DeferralQueue::lease_deferrals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedDeferral {
    /// The deferral's id in the store.
    pub id: String,
    /// The delivery's id in the store (not the sender's id).
    pub delivery_id: String,
    pub source: String,
    pub rule: String,
    /// This lease's number (1 for the first), counting every lease.
    pub attempt: u32,
    /// When the delivery was stored.
    pub created_at: SystemTime,
}

/// Where the files a settled deferral was decided on came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesNote {
    /// `GitHub compare 1a2b3c4...5d6e7f8, then the files of 12 commits`.
    pub from: String,
    /// How many paths were read.
    pub count: u64,
}

/// The rule's verdict once settled.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// It matched: queue `job` (the summary's entry is built from it).
    Matched(Box<NewJob>),
    Skipped(String),
    Errored(String),
}

/// How a deferral ends.
#[derive(Debug, Clone)]
pub struct Settled {
    pub verdict: Verdict,
    /// The files read, when they were.
    pub files: Option<FilesNote>,
    /// Why the files could not be read, when they could not (the verdict
    /// then follows `paths_unknown_on_error`).
    pub error: Option<String>,
}

impl Settled {
    /// `matched`, `skipped` or `error`: the deferral's `outcome` column.
    pub fn outcome(&self) -> &'static str {
        match self.verdict {
            Verdict::Matched(_) => "matched",
            Verdict::Skipped(_) => "skipped",
            Verdict::Errored(_) => "error",
        }
    }
}

/// A deferral as `deliveries show` and the admin API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeferralRow {
    pub rule: String,
    /// Why it was deferred.
    pub reason: String,
    /// `pending`, `running` (leased) or `done`.
    pub state: String,
    /// Leases so far.
    pub attempts: u32,
    /// When the next read is due (pending only), in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<i64>,
    /// `matched`, `skipped` or `error` once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesNote>,
    /// The last failed read's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The queue of deferred evaluations.
#[async_trait::async_trait]
pub trait DeferralQueue: Send + Sync {
    /// Lease up to `limit` deferrals that are due, or whose lease ran out.
    async fn lease_deferrals(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedDeferral>, StoreError>;

    /// Settle a deferral, if `owner` still holds this lease of it: queue
    /// its job when it matched, move its rule in the stored summary, end it.
    /// `false` when the lease was lost (nothing written).
    async fn settle_deferral(
        &self,
        deferral: &LeasedDeferral,
        owner: &str,
        settled: Settled,
        now: SystemTime,
    ) -> Result<bool, StoreError>;

    /// Read it again at `at`, recording why this read failed, if `owner`
    /// still holds this lease. `false` when the lease was lost.
    async fn retry_deferral(
        &self,
        deferral: &LeasedDeferral,
        owner: &str,
        at: SystemTime,
        error: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError>;
}

impl Summary {
    /// The summary once `rule`'s deferral settled as `settled`: its entry
    /// leaves `deferred` for `matched`, `skipped` or `errors`. A rule not
    /// (or no longer) deferred is left as it is.
    pub fn settle(&mut self, rule: &str, settled: &Settled) {
        let Some(at) = self.deferred.iter().position(|d| d.rule == rule) else {
            return;
        };
        self.deferred.remove(at);
        match &settled.verdict {
            Verdict::Matched(job) => self.matched.push(MatchedJob {
                rule: job.rule.clone(),
                job: job.id.clone(),
                target: job.target.clone(),
                group: job.group.clone(),
                superseded: Vec::new(),
            }),
            Verdict::Skipped(reason) => self.skipped.push(Skipped {
                rule: rule.to_owned(),
                reason: reason.clone(),
            }),
            Verdict::Errored(error) => self.errors.push(Errored {
                rule: rule.to_owned(),
                error: error.clone(),
            }),
        }
    }
}

/// The stored summary `stored` (JSON) once `rule`'s deferral settled as
/// `settled`, naming the jobs its matched job superseded: what both stores
/// write back, under the delivery's lock, in the settle's transaction.
pub fn settle_summary(
    stored: &str,
    rule: &str,
    settled: &Settled,
    superseded: &[super::Superseded],
) -> Result<String, StoreError> {
    let mut summary: Summary = super::model::from_json(stored)?;
    summary.settle(rule, settled);
    super::concurrency::note_superseded(&mut summary, superseded);
    super::model::to_json(&summary)
}

/// The deferral's state words, as stored.
pub mod state {
    pub const PENDING: &str = "pending";
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
}

/// A stored `files` note (JSON) read back.
pub fn files_note(json: Option<&str>) -> Result<Option<FilesNote>, StoreError> {
    json.map(super::model::from_json).transpose()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::target::TriggerRequest;

    fn summary() -> Summary {
        Summary {
            delivery: "d1".into(),
            source: "github".into(),
            event: "push".into(),
            duplicate: false,
            matched: Vec::new(),
            skipped: Vec::new(),
            errors: Vec::new(),
            deferred: vec![
                Deferred {
                    rule: "billing".into(),
                    reason: "r".into(),
                },
                Deferred {
                    rule: "web".into(),
                    reason: "r".into(),
                },
            ],
        }
    }

    #[test]
    fn settling_moves_the_rule_out_of_deferred() {
        let mut s = summary();
        let request: TriggerRequest = serde_json::from_value(
            serde_json::json!({"api": "gitlab_pipeline", "project": "acme/app", "ref": "main"}),
        )
        .unwrap();
        let job = NewJob::new("j1".into(), "billing".into(), "ci".into(), request);
        s.settle(
            "billing",
            &Settled {
                verdict: Verdict::Matched(Box::new(job)),
                files: None,
                error: None,
            },
        );
        s.settle(
            "web",
            &Settled {
                verdict: Verdict::Skipped("paths: none".into()),
                files: None,
                error: None,
            },
        );
        assert!(s.deferred.is_empty());
        assert_eq!(s.matched[0].job, "j1");
        assert_eq!(s.skipped[0].rule, "web");
        // Settling again changes nothing.
        let before = s.clone();
        s.settle(
            "web",
            &Settled {
                verdict: Verdict::Errored("x".into()),
                files: None,
                error: None,
            },
        );
        assert_eq!(s, before);
    }
}
