//! What time it is, for the dispatcher: the `now` it hands the store (leases,
//! due times, attempt records) and reads CI rate-limit dates against, and the
//! jitter its backoff draws.
//!
//! The daemon reads the system clock and a random jitter. Tests run the
//! dispatcher under tokio's paused clock with a [`TokioClock`], so the time
//! the store sees moves exactly when tokio's timers do, and with a fixed
//! [`Jitter`], so every retry time is known in advance.

use std::sync::Arc;
use std::time::SystemTime;

/// The dispatcher's wall clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall time that moves with tokio's clock: `wall` when it was made, plus how
/// far tokio's [`Instant`](tokio::time::Instant) has moved since. Under a
/// paused runtime it moves only when tokio advances time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `wall` now.
    pub fn starting_at(wall: SystemTime) -> TokioClock {
        TokioClock {
            wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        // `wall` is a chosen time and tokio's clock moves by timers the
        // dispatcher bounds (`LONGEST_WAIT`), so this cannot overflow in
        // practice; if it did, time would stand still rather than panic.
        self.wall.checked_add(self.start.elapsed()).unwrap_or(self.wall)
    }
}

/// Where a retry falls within its backoff window: a fraction in `[0, 1]`
/// ("equal jitter": the delay is half the base plus this much of the other
/// half). Values outside are clamped.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// A random jitter, for the daemon.
pub fn random_jitter() -> Jitter {
    Arc::new(rand::random::<f64>)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_with_paused_time() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = TokioClock::starting_at(wall);
        assert_eq!(clock.now(), wall);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), wall + Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(clock.now(), wall + Duration::from_millis(61_500));
    }
}
