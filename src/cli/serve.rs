//! `hookbridge serve`: the daemon.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{ConfigArg, LogArgs};
use crate::config::LoadMode;
use crate::server::{self, App};
use crate::store::{self, OpenMode};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub log: LogArgs,
    /// Do not reload when the config file changes (SIGHUP still reloads)
    #[arg(long)]
    pub no_watch: bool,
}

pub(crate) fn run(args: ServeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            super::say(format_args!("error: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    // The config before the logs: its `[telemetry]` decides whether log
    // lines go through the traces' layer too. Its errors go to stderr as
    // they always did.
    let loaded = match args.config.load(LoadMode::Serve) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let traces = crate::telemetry::init(
        args.log.log_format,
        args.log.log_level.as_deref(),
        loaded.config.telemetry.as_ref(),
        runtime.handle(),
    );
    let code = runtime.block_on(serve(args, loaded.config));
    // The runtime still runs (its exports go out on it); the wait is bounded.
    if let Some(traces) = traces {
        traces.shutdown(crate::telemetry::FLUSH_WITHIN);
    }
    code
}

async fn serve(args: ServeArgs, config: crate::config::Config) -> ExitCode {
    info!(config = %config.path.display(), summary = %config.summary(), version = env!("CARGO_PKG_VERSION"), "starting");
    let store = match store::open(&config.store, OpenMode::Daemon).await {
        Ok(store) => store,
        Err(e) => {
            error!(error = %e, "cannot open the store");
            super::say(format_args!("error: cannot open the store: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let hooks = match TcpListener::bind(config.server.listen).await {
        Ok(l) => l,
        Err(e) => {
            super::say(format_args!(
                "error: cannot listen on {} ([server] listen): {e}",
                config.server.listen
            ));
            return ExitCode::FAILURE;
        }
    };
    let admin = match TcpListener::bind(config.admin.listen).await {
        Ok(l) => l,
        Err(e) => {
            super::say(format_args!(
                "error: cannot listen on {} ([admin] listen): {e}",
                config.admin.listen
            ));
            return ExitCode::FAILURE;
        }
    };
    let app = App::new(config, store);
    let shutdown = CancellationToken::new();
    let reloads = Arc::new(Notify::new());
    if let Err(e) = spawn_signal_handlers(reloads.clone(), shutdown.clone()) {
        super::say(format_args!("error: cannot install signal handlers: {e}"));
        return ExitCode::FAILURE;
    }
    tokio::spawn(server::reloader(
        app.clone(),
        reloads.clone(),
        shutdown.clone(),
        server::load_for_serve,
    ));
    if !args.no_watch {
        tokio::spawn(server::watch_config(
            app.clone(),
            reloads,
            Duration::from_secs(1),
            shutdown.clone(),
        ));
    }
    match server::run(app, hooks, admin, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT stop gracefully (a second one exits at once); SIGHUP asks
/// the reloader for a reload. This task does nothing else, so nothing a reload
/// does can stop it from hearing the next signal.
fn spawn_signal_handlers(reloads: Arc<Notify>, shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    reloads.notify_one();
                    continue;
                }
            }
            if shutdown.is_cancelled() {
                warn!("second stop signal: exiting now");
                std::process::exit(130);
            }
            info!("stop signal received");
            shutdown.cancel();
        }
    });
    Ok(())
}
