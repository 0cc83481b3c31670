//! [`StatusQueue`] on SQLite: each call one write of the writer
//! ([`super::statuses`] holds the SQL).

use std::time::{Duration, SystemTime};

use super::writer::How;
use super::{SqliteStore, statuses};
use crate::store::StoreError;
use crate::store::status::{LeasedStatus, LeasedWatch, PostOutcome, StatusQueue, WatchRecord};

#[async_trait::async_trait]
impl StatusQueue for SqliteStore {
    async fn lease_statuses(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedStatus>, StoreError> {
        let owner = owner.to_owned();
        self.write(How::BOOKKEEPING, move |tx| {
            statuses::lease_statuses(tx, &owner, limit, lease, now)
        })
        .await
    }

    async fn record_status(
        &self,
        status: &LeasedStatus,
        owner: &str,
        outcome: PostOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (status, owner) = (status.clone(), owner.to_owned());
        self.write(How::BOOKKEEPING, move |tx| {
            statuses::record_status(tx, &status, &owner, &outcome, now)
        })
        .await
    }

    async fn lease_watches(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedWatch>, StoreError> {
        let owner = owner.to_owned();
        self.write(How::BOOKKEEPING, move |tx| {
            statuses::lease_watches(tx, &owner, limit, lease, now)
        })
        .await
    }

    async fn record_watch(
        &self,
        watch: &LeasedWatch,
        owner: &str,
        record: WatchRecord,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (watch, owner) = (watch.clone(), owner.to_owned());
        self.write(How::BOOKKEEPING, move |tx| {
            statuses::record_watch(tx, &watch, &owner, &record, now)
        })
        .await
    }
}
