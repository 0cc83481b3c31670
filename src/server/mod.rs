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
mod listing;
mod origin;
mod restart;
pub mod systemd;
mod ui;

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
    /// The config this process started with: the settings read once at
    /// start keep its values until a restart (`restart`).
    pub started: Arc<Config>,
}

impl App {
    pub fn new(config: Config, store: Arc<dyn Store>) -> App {
        let config = Arc::new(config);
        App {
            body_memory: BodyMemory::new(config.server.body_memory),
            started: config.clone(),
            config: Arc::new(ArcSwap::new(config)),
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

    let hooks = listener::serve(
        hooks_listener,
        hooks::router(app.clone()),
        connections.clone(),
        timeouts,
        shutdown.clone(),
    );
    let admin = listener::serve(
        admin_listener,
        admin::router(app.clone()).merge(ui::router(app.clone())),
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
    let _ = tokio::time::timeout(grace.saturating_add(Duration::from_secs(5)), dispatcher).await;
    let _ = purge.await;
    info!("stopped");
    served.map_err(Into::into)
}

/// `start + wait`, or a day on from `start` when the sum is out of range.
pub(crate) fn later(start: tokio::time::Instant, wait: std::time::Duration) -> tokio::time::Instant {
    start
        .checked_add(wait)
        .or_else(|| start.checked_add(std::time::Duration::from_secs(86_400)))
        .unwrap_or(start)
}

/// Run reloads one at a time as `requests` asks for them, until `shutdown`.
/// SIGHUP and the file watcher only ask; neither ever runs a reload itself.
pub async fn reloader(app: App, requests: Arc<Notify>, shutdown: CancellationToken, load: LoadConfig) {
    loop {
        tokio::select! {
            () = requests.notified() => {}
            () = shutdown.cancelled() => return,
        }
        reload_isolated(&app, load).await;
    }
}

/// How a reload reads the config: [`load_for_serve`] in the daemon.
pub type LoadConfig = fn(&std::path::Path) -> Result<crate::config::Loaded, crate::config::Report>;

/// The config as `serve` loads it.
pub fn load_for_serve(path: &std::path::Path) -> Result<crate::config::Loaded, crate::config::Report> {
    crate::config::load(path, crate::config::LoadMode::Serve)
}

/// [`reload`] on a blocking thread: file reads and compiling every template
/// stay off the runtime, and a panic is logged and counted, not spread.
pub async fn reload_isolated(app: &App, load: LoadConfig) -> bool {
    let worker = app.clone();
    match tokio::task::spawn_blocking(move || reload(&worker, load)).await {
        Ok(applied) => applied,
        Err(e) => {
            metrics::counter!("hookbridge_config_reloads_total", "result" => "error").increment(1);
            // JoinError shows the panic message, as the dispatcher logs its tasks.
            warn!(error = %e, "config reload failed unexpectedly; the running config stays");
            false
        }
    }
}

/// Load the config file again; a valid one replaces the live config atomically,
/// an invalid one is logged and the old one stays. Returns whether it was applied.
pub fn reload(app: &App, load: LoadConfig) -> bool {
    let _reloading = systemd::Reloading::start();
    let current = app.config.load_full();
    match load(&current.path) {
        Ok(loaded) => {
            let next = loaded.config;
            for setting in restart::pending(&app.started, &next) {
                warn!(
                    setting,
                    "differs from the value this process runs on; takes effect at the next restart"
                );
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::config::{LoadMode, Loaded, Report};

    const CONFIG: &str = r#"
[sources.github]
type = "github"
secrets = ["s"]
"#;

    static PANIC_NEXT: AtomicBool = AtomicBool::new(true);

    /// Panics on its first call, then loads for real.
    fn flaky_load(path: &Path) -> Result<Loaded, Report> {
        if PANIC_NEXT.swap(false, Ordering::SeqCst) {
            panic!("a bug in config loading");
        }
        load_for_serve(path)
    }

    #[tokio::test]
    async fn a_reload_that_panics_leaves_the_reloader_and_the_running_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hb.toml");
        let text = format!(
            "[store]\nurl = \"sqlite://{}\"\n{CONFIG}",
            dir.path().join("hb.db").display()
        );
        std::fs::write(&path, &text).expect("config written");
        let config = crate::config::parse(&path, &text, LoadMode::Serve)
            .expect("valid config")
            .config;
        let store = crate::store::open(&config.store, crate::store::OpenMode::Client)
            .await
            .expect("store");
        let app = App::new(config, store);
        let requests = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let reloader = tokio::spawn(reloader(
            app.clone(),
            requests.clone(),
            shutdown.clone(),
            flaky_load,
        ));

        // The edit adds a source; the first reload panics and changes nothing.
        std::fs::write(
            &path,
            format!("{text}\n[sources.gitea]\ntype = \"gitea\"\nsecrets = [\"g\"]\n"),
        )
        .expect("config edited");
        requests.notify_one();
        tokio::time::timeout(Duration::from_secs(10), async {
            while PANIC_NEXT.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first reload ran");
        assert!(!app.config.load().sources.contains_key("gitea"));
        assert!(!reloader.is_finished(), "the reloader outlived the panic");

        // The next request is served, and applies the edit.
        requests.notify_one();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !app.config.load().sources.contains_key("gitea") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the second reload applied the edit");
        shutdown.cancel();
        reloader.await.expect("the reloader stops on shutdown");
    }
}
