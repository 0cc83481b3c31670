//! The daemon: webhook listener, admin listener, dispatcher and housekeeping.
//!
//! [`run`] takes already-bound listeners so tests (and socket activation) can
//! pick the ports. Shutdown is ordered: both listeners stop accepting and
//! finish in-flight requests, then the dispatcher lets running attempts finish
//! within `[server] shutdown_grace` and gives back what it still holds.
//!
//! Config reloads (SIGHUP, file changes) run one at a time on a blocking
//! thread of their own, so a reload that fails in any way, even by panicking,
//! leaves the running config, signal handling and later reloads untouched.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::dispatch::{self, Dispatcher};
use crate::store::Store;
use body::BodyMemory;
use listener::{Connections, Timeouts};

pub mod admin;
pub mod body;
pub mod hooks;
pub mod listener;
pub mod systemd;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    /// The live config; replaced atomically on reload.
    pub config: Arc<ArcSwap<Config>>,
    pub store: Arc<dyn Store>,
    /// Wakes the dispatcher when new jobs are stored.
    pub wake: Arc<Notify>,
    /// `[server] body_memory` as sized at start: a request holds its body's
    /// share from before reading it until its answer.
    pub body_memory: BodyMemory,
}

impl App {
    pub fn new(config: Config, store: Arc<dyn Store>) -> App {
        App {
            body_memory: BodyMemory::new(config.server.body_memory),
            config: Arc::new(ArcSwap::from_pointee(config)),
            store,
            wake: Arc::new(Notify::new()),
        }
    }
}

/// Serve until `shutdown` is cancelled, then stop in order.
pub async fn run(
    app: App,
    hooks_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::telemetry::metrics();
    let grace = app.config.load().server.shutdown_grace;
    info!(
        hooks = %hooks_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        "listening"
    );
    systemd::ready(&shutdown);

    let dispatcher_stop = CancellationToken::new();
    let dispatcher = Dispatcher::new(app.store.clone(), app.config.clone(), app.wake.clone());
    let dispatcher = tokio::spawn(dispatcher.run(dispatcher_stop.clone(), grace));
    // Jobs queued by other replicas wake this dispatcher too.
    app.store.watch(app.wake.clone(), dispatcher_stop.clone());
    let purge = tokio::spawn(dispatch::purge_loop(
        app.store.clone(),
        app.config.clone(),
        dispatcher_stop.clone(),
    ));

    let (connections, timeouts) = {
        let config = app.config.load();
        let outbound = u64::try_from(config.dispatch.concurrency).unwrap_or(u64::MAX);
        (
            Connections::for_this_process(outbound.saturating_mul(2)),
            Timeouts {
                idle: config.server.idle_timeout,
            },
        )
    };
    let hooks = listener::serve(
        hooks_listener,
        hooks::router(app.clone()),
        connections.clone(),
        timeouts,
        shutdown.clone(),
    );
    let admin = listener::serve(
        admin_listener,
        admin::router(app.clone()),
        connections,
        timeouts,
        shutdown.clone(),
    );
    let servers = async {
        let (h, a) = tokio::join!(hooks, admin);
        h.and(a)
    };
    tokio::pin!(servers);
    let served = tokio::select! {
        r = &mut servers => r,
        () = shutdown.cancelled() => {
            info!("shutting down: no new webhooks accepted");
            // In-flight requests get the grace period to finish storing.
            match tokio::time::timeout(grace, &mut servers).await {
                Ok(r) => r,
                Err(_) => {
                    warn!("requests still in flight after the grace period were abandoned");
                    Ok(())
                }
            }
        }
    };
    dispatcher_stop.cancel();
    let _ = tokio::time::timeout(grace + Duration::from_secs(5), dispatcher).await;
    let _ = purge.await;
    info!("stopped");
    served.map_err(Into::into)
}

/// Run reloads one at a time as `requests` asks for them, until `shutdown`.
/// SIGHUP and the file watcher only ask; neither ever runs a reload itself.
pub async fn reloader(app: App, requests: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = requests.notified() => {}
            () = shutdown.cancelled() => return,
        }
        reload_isolated(&app).await;
    }
}

/// [`reload`] on a blocking thread: file reads and compiling every template
/// stay off the runtime, and a panic is logged and counted, not spread.
pub async fn reload_isolated(app: &App) -> bool {
    let worker = app.clone();
    match tokio::task::spawn_blocking(move || reload(&worker)).await {
        Ok(applied) => applied,
        Err(e) => {
            metrics::counter!("hookbridge_config_reloads_total", "result" => "error").increment(1);
            let cause = e
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                })
                .unwrap_or_else(|| "cancelled".to_owned());
            warn!(error = %cause, "config reload failed unexpectedly; the running config stays");
            false
        }
    }
}

/// Load the config file again; a valid one replaces the live config atomically,
/// an invalid one is logged and the old one stays. Returns whether it was applied.
pub fn reload(app: &App) -> bool {
    let _reloading = systemd::Reloading::start();
    let current = app.config.load_full();
    match crate::config::load(&current.path, crate::config::LoadMode::Serve) {
        Ok(loaded) => {
            let next = loaded.config;
            for (setting, changed) in [
                ("[server] listen", next.server.listen != current.server.listen),
                ("[admin] listen", next.admin.listen != current.admin.listen),
                ("[store] url", next.store.url != current.store.url),
                (
                    "[server] body_memory",
                    next.server.body_memory != current.server.body_memory,
                ),
                (
                    "[dispatch] concurrency",
                    next.dispatch.concurrency != current.dispatch.concurrency,
                ),
            ] {
                if changed {
                    warn!(
                        setting,
                        "changed in the config file; takes effect at the next restart"
                    );
                }
            }
            info!(summary = %next.summary(), "config reloaded");
            metrics::counter!("hookbridge_config_reloads_total", "result" => "ok").increment(1);
            app.config.store(Arc::new(next));
            true
        }
        Err(report) => {
            metrics::counter!("hookbridge_config_reloads_total", "result" => "error").increment(1);
            for d in report.errors() {
                warn!(error = %report.render(d), "config reload refused; the running config stays");
            }
            false
        }
    }
}

/// Ask for a reload when the config file's content changes: polled every
/// `interval`, and asked once two reads agree (debounce; editors and Kubernetes
/// ConfigMap updates write in steps). Reading the path each time follows
/// symlink swaps, which inotify on the old inode would miss.
pub async fn watch_config(app: App, reloads: Arc<Notify>, interval: Duration, shutdown: CancellationToken) {
    let path = app.config.load().path.clone();
    let digest = |bytes: &[u8]| -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).into()
    };
    let read = async || tokio::fs::read(&path).await.ok().map(|b| digest(&b));
    let mut applied = read().await;
    let mut candidate = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = read().await;
        if now.is_none() || now == applied {
            candidate = None;
            continue;
        }
        if candidate == now {
            info!(path = %path.display(), "config file changed");
            reloads.notify_one();
            applied = now;
            candidate = None;
        } else {
            candidate = now;
        }
    }
}
