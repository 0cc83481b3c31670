//! A store that is down: every call fails the way a broken disk does.

use std::time::{Duration, SystemTime};

use hookbridge::store::*;

/// A store whose every call fails as unavailable, with `detail` as the
/// driver's message (which must never reach an HTTP answer).
pub(crate) struct DownStore {
    pub detail: &'static str,
}

impl DownStore {
    fn down<T>(&self) -> Result<T, StoreError> {
        Err(StoreError::unavailable(self.detail))
    }
}

#[async_trait::async_trait]
impl Store for DownStore {
    async fn ingest(&self, _: NewDelivery) -> Result<Ingested, StoreError> {
        self.down()
    }
    async fn lease_due(
        &self,
        _: &str,
        _: usize,
        _: Duration,
        _: SystemTime,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        self.down()
    }
    async fn record_attempt(
        &self,
        _: &LeasedJob,
        _: &str,
        _: Attempt,
        _: Transition,
        _: SystemTime,
    ) -> Result<(), StoreError> {
        self.down()
    }
    async fn start_attempt(&self, _: &LeasedJob, _: &str, _: SystemTime) -> Result<Start, StoreError> {
        self.down()
    }
    async fn lease_follow_ups(
        &self,
        _: &str,
        _: usize,
        _: Duration,
        _: SystemTime,
    ) -> Result<Vec<hookbridge::store::follow::LeasedFollowUp>, StoreError> {
        self.down()
    }
    async fn record_follow_up(
        &self,
        _: &hookbridge::store::follow::LeasedFollowUp,
        _: &str,
        _: hookbridge::store::follow::FollowOutcome,
        _: SystemTime,
    ) -> Result<(), StoreError> {
        self.down()
    }
    async fn lease_cancels(
        &self,
        _: &str,
        _: usize,
        _: Duration,
        _: SystemTime,
    ) -> Result<Vec<concurrency::LeasedCancel>, StoreError> {
        self.down()
    }
    async fn record_cancel(
        &self,
        _: &concurrency::LeasedCancel,
        _: &str,
        _: Attempt,
        _: concurrency::CancelOutcome,
        _: SystemTime,
    ) -> Result<(), StoreError> {
        self.down()
    }
    async fn release(&self, _: &str, _: SystemTime) -> Result<(), StoreError> {
        self.down()
    }
    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        self.down()
    }
    async fn list(&self, _: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        self.down()
    }
    async fn get(&self, _: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
        self.down()
    }
    async fn verdicts(&self, _: SystemTime, _: usize) -> Result<RecentVerdicts, StoreError> {
        self.down()
    }
    async fn payload(&self, _: &DeliveryKey) -> Result<StoredPayload, StoreError> {
        self.down()
    }
    async fn replay(
        &self,
        _: &DeliveryKey,
        _: Option<&str>,
        _: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        self.down()
    }
    async fn add_jobs(
        &self,
        _: &DeliveryKey,
        _: Vec<NewJob>,
        _: Summary,
        _: SystemTime,
    ) -> Result<(), StoreError> {
        self.down()
    }
    async fn purge(&self, _: SystemTime, _: usize) -> Result<u64, StoreError> {
        self.down()
    }
    async fn stats(&self) -> Result<QueueStats, StoreError> {
        self.down()
    }
    async fn neighbours(&self, _: &str, _: &str, _: SystemTime) -> Result<Neighbours, StoreError> {
        self.down()
    }
    async fn ready(&self) -> Result<(), StoreError> {
        self.down()
    }
}

#[async_trait::async_trait]
impl status::StatusQueue for DownStore {
    async fn lease_statuses(
        &self,
        _: &str,
        _: usize,
        _: Duration,
        _: SystemTime,
    ) -> Result<Vec<status::LeasedStatus>, StoreError> {
        self.down()
    }
    async fn record_status(
        &self,
        _: &status::LeasedStatus,
        _: &str,
        _: status::PostOutcome,
        _: SystemTime,
    ) -> Result<(), StoreError> {
        self.down()
    }
    async fn lease_watches(
        &self,
        _: &str,
        _: usize,
        _: Duration,
        _: SystemTime,
    ) -> Result<Vec<status::LeasedWatch>, StoreError> {
        self.down()
    }
    async fn record_watch(
        &self,
        _: &status::LeasedWatch,
        _: &str,
        _: status::WatchRecord,
        _: SystemTime,
    ) -> Result<(), StoreError> {
        self.down()
    }
}

#[async_trait::async_trait]
impl deferral::DeferralQueue for DownStore {
    async fn lease_deferrals(
        &self,
        _: &str,
        _: usize,
        _: Duration,
        _: SystemTime,
    ) -> Result<Vec<deferral::LeasedDeferral>, StoreError> {
        self.down()
    }
    async fn settle_deferral(
        &self,
        _: &deferral::LeasedDeferral,
        _: &str,
        _: deferral::Settled,
        _: SystemTime,
    ) -> Result<bool, StoreError> {
        self.down()
    }
    async fn retry_deferral(
        &self,
        _: &deferral::LeasedDeferral,
        _: &str,
        _: SystemTime,
        _: &str,
        _: SystemTime,
    ) -> Result<bool, StoreError> {
        self.down()
    }
}
