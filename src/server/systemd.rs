//! systemd service notifications (`Type=notify`), through `$NOTIFY_SOCKET`.
//!
//! - `READY=1` once both listeners are bound and the store is open;
//! - `WATCHDOG=1` every half of `$WATCHDOG_USEC` while the runtime is alive
//!   (`WatchdogSec=` in the unit), so a wedged daemon is restarted;
//! - `RELOADING=1` … `READY=1` around a `SIGHUP` reload;
//! - `STOPPING=1` as soon as shutdown begins.
//!
//! Without `$NOTIFY_SOCKET` (not run by systemd) every call does nothing.
//! A failed notification is logged and otherwise ignored: systemd's own
//! timeouts are the judge of a daemon that cannot reach it.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Report readiness now; keep the watchdog fed and report `STOPPING=1`
/// when `shutdown` is cancelled.
pub fn ready(shutdown: &CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
    let watchdog = sd_notify::watchdog_enabled().map(|every| every / 2);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        match watchdog {
            Some(period) => feed_watchdog(period, &shutdown).await,
            None => shutdown.cancelled().await,
        }
        send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    });
}

/// Ping `WATCHDOG=1` every `period` until `shutdown` is cancelled.
async fn feed_watchdog(period: Duration, shutdown: &CancellationToken) {
    let period = period.max(Duration::from_millis(10));
    debug!(?period, "systemd watchdog enabled");
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => send(&[NotifyState::Watchdog]),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Held while a config reload runs: `RELOADING=1` on creation, `READY=1` when dropped.
#[must_use = "the reload ends (READY=1) when this guard is dropped"]
pub struct Reloading(());

impl Reloading {
    pub fn start() -> Reloading {
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            match NotifyState::monotonic_usec_now() {
                // systemd's `Type=notify-reload` wants the timestamp with RELOADING=1.
                Ok(now) => send(&[NotifyState::Reloading, now]),
                Err(_) => send(&[NotifyState::Reloading]),
            }
        }
        Reloading(())
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            send(&[NotifyState::Ready, NotifyState::Status("serving")]);
        }
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
}
