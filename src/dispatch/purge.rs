//! The retention purge: finished deliveries past `[store] retention` are
//! deleted in small batches, hourly.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::store::Store;

/// Delete finished deliveries past retention, in small batches, hourly.
pub async fn purge_loop(store: Arc<dyn Store>, config: Arc<ArcSwap<Config>>, shutdown: CancellationToken) {
    loop {
        let retention = config.load().store.retention;
        // Saturating: a retention longer than the clock's past purges nothing.
        let cutoff = SystemTime::now().checked_sub(retention).unwrap_or(UNIX_EPOCH);
        loop {
            match store.purge(cutoff, 500).await {
                Ok(0) => break,
                Ok(n) => debug!(deleted = n, "purged old deliveries"),
                Err(e) => {
                    warn!(error = %e, "retention purge failed");
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::task::yield_now().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
