//! The readiness answer both backends share: a probe that proves a durable
//! commit, run at most once per [`TTL`] whatever the number of callers.
//!
//! `/readyz` is reachable by anything that can reach the admin listener; a
//! real commit per request would let it hammer the disk (one fsync each).
//! Callers within [`TTL`] of the last probe get its answer; callers arriving
//! while a probe runs wait for that one. Changes of the answer are logged
//! (with the reason, which `/readyz` itself never shows).

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::StoreError;

/// How long a probe's answer stands.
pub const TTL: Duration = Duration::from_secs(1);

/// The last probe's answer, and when it was given.
#[derive(Debug, Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Result<(), StoreError>)>>,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// The cached answer, or a fresh one from `probe`.
    pub async fn check<F, Fut>(&self, probe: F) -> Result<(), StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < TTL
        {
            return answer.clone();
        }
        let answer = probe().await;
        let was_ready = last.as_ref().map(|(_, a)| a.is_ok());
        match (&answer, was_ready) {
            (Err(e), None | Some(true)) => {
                tracing::warn!(error = %e, "the store cannot take deliveries: not ready");
            }
            (Ok(()), Some(false)) => tracing::info!("the store takes deliveries again: ready"),
            _ => {}
        }
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn probe(runs: &AtomicUsize, ok: bool) -> Result<(), StoreError> {
        runs.fetch_add(1, Ordering::SeqCst);
        if ok {
            Ok(())
        } else {
            Err(StoreError::unavailable("disk full"))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_per_ttl_and_its_answer_in_between() {
        let ready = Readiness::new();
        let runs = AtomicUsize::new(0);
        for _ in 0..100 {
            ready.check(|| probe(&runs, true)).await.unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A failure within the TTL is not seen yet; after it, it is, and it is cached too.
        tokio::time::advance(TTL / 2).await;
        ready.check(|| probe(&runs, false)).await.unwrap();
        tokio::time::advance(TTL).await;
        let e = ready.check(|| probe(&runs, false)).await.unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert!(ready.check(|| probe(&runs, true)).await.is_err());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        tokio::time::advance(TTL).await;
        ready.check(|| probe(&runs, true)).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_probe() {
        let ready = Arc::new(Readiness::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (ready, runs) = (ready.clone(), runs.clone());
                tokio::spawn(async move {
                    ready
                        .check(|| async {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            probe(&runs, true).await
                        })
                        .await
                })
            })
            .collect();
        for c in callers {
            c.await.unwrap().unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
