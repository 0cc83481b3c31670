//! `LISTEN hookbridge_jobs`: wake this replica's dispatcher when another
//! replica queues jobs, reconnecting with backoff while the server is away.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::CHANNEL;

/// Wake `wake` on every `NOTIFY hookbridge_jobs`, reconnecting until `shutdown`.
pub(super) async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            r = connected => match r {
                Ok(l) => l,
                Err(e) => {
                    debug!(error = %e, "cannot listen for new jobs; polling meanwhile");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        backoff = Duration::from_millis(200);
        debug!(channel = CHANNEL, "listening for new jobs");
        // Jobs announced while we were not listening.
        wake.notify_one();
        loop {
            tokio::select! {
                r = listener.try_recv() => match r {
                    Ok(Some(_)) => wake.notify_one(),
                    Ok(None) => {
                        warn!("lost the notification connection; reconnecting");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "notification connection failed; reconnecting");
                        break;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
