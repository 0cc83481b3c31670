//! The loop the dispatcher's side queues share (cancels of older
//! pipelines, follow-ups of queued runs): lease a batch, handle it, and
//! when there was nothing, or the store could not say, wait before the
//! next lease.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::store::StoreError;

/// The longest wait after failed leases.
const LONGEST: Duration = Duration::from_secs(5);

/// Run `batch` until `shutdown`. Each call leases and handles one batch and
/// answers how many items it leased: none waits `idle` (how often an idle
/// loop looks for due work); a store error waits twice as long as the last
/// wait, up to [`LONGEST`].
pub(super) async fn run<F, Fut>(what: &str, idle: Duration, shutdown: CancellationToken, mut batch: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, StoreError>>,
{
    let mut backoff = idle;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let wait = match batch().await {
            Ok(0) => {
                backoff = idle;
                Some(idle)
            }
            Ok(_) => None,
            Err(e) => {
                debug!(error = %e, "cannot lease {what}; trying again");
                backoff = (backoff * 2).min(LONGEST);
                Some(backoff)
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
