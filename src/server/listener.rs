//! The accept loop both listeners share.
//!
//! Connections are cheap to open and cost the daemon a file descriptor each,
//! so none may sit on one for free:
//!
//! - hyper runs with a timer: a connection must send a complete request head
//!   within `[server] idle_timeout` of opening or of its previous answer (slow
//!   headers and idle keep-alive connections alike), or it is closed.
//! - Open connections are capped by the process's file-descriptor limit, which
//!   is raised to its hard limit at start. At the cap, connections with no
//!   request in progress are closed to make way, so idle sockets can never
//!   keep a sender with a delivery out.
//! - Shutdown stops accepting, lets requests in progress finish and closes
//!   kept-alive connections.

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::body::ConnectionId;

/// File descriptors kept back from connections: the store's files, the
/// dispatcher's connections to CI APIs, the config file, logs.
const FD_RESERVE: u64 = 128;
/// Never raise the soft limit beyond this, even when the hard one is unlimited.
const FD_CEILING: u64 = 1 << 20;
/// HTTP/2 flow-control windows, per connection and per stream: the
/// protocol's initial value.
const H2_WINDOW: u32 = 65_535;
/// The largest HTTP/2 header list (hyper's default, pinned here).
const H2_HEADER_LIST: u32 = 16 * 1024;
/// HTTP/2 requests in progress on one connection. Each holds its header
/// list (at most [`H2_HEADER_LIST`]) before any signature is checked;
/// hyper's default of 200 let one connection hold 3 MiB of them. Senders
/// and proxies open another connection when they need more.
const H2_STREAMS: u32 = 32;
/// HTTP/1 read buffer per connection, and so the largest request head.
/// hyper's default (~400 KiB) stays allocated on an idle keep-alive
/// connection once a large body has gone through it: 200 such connections
/// held ~76 MB; with 64 KiB, ~27 MB (tests/daemon_edges.rs). Bodies are read
/// in chunks of at most this size, so throughput does not change.
const H1_BUFFER: usize = 64 * 1024;

/// The connections both listeners may hold open, together.
pub struct Connections {
    open: Arc<Semaphore>,
    capacity: usize,
    /// Tells connections with no request in progress to close at once.
    shed: Notify,
    next_id: AtomicU64,
}

impl Connections {
    /// Room for `capacity` connections at once.
    pub fn with_capacity(capacity: usize) -> Arc<Connections> {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Connections {
            open: Arc::new(Semaphore::new(capacity)),
            capacity,
            shed: Notify::new(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Raise the soft file-descriptor limit to the hard one, and allow as many
    /// connections as it leaves room for (less `reserve` for everything else).
    pub fn for_this_process(reserve: u64) -> Arc<Connections> {
        let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        let limit = match rlimit::increase_nofile_limit(FD_CEILING) {
            Ok(limit) => limit,
            Err(e) => {
                warn!(error = %e, "cannot raise the open-file limit");
                before
            }
        };
        let reserve = FD_RESERVE.saturating_add(reserve);
        let capacity = limit.saturating_sub(reserve).max(16);
        info!(
            fd_limit = limit,
            fd_limit_at_start = before,
            connections = capacity,
            "open-file limit allows {capacity} connections at once; idle ones are closed to make room beyond that"
        );
        Connections::with_capacity(usize::try_from(capacity).unwrap_or(usize::MAX))
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.capacity.saturating_sub(self.open.available_permits())
    }
}

/// How long connections may stay without a request.
#[derive(Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
}

/// Accept connections on `listener` and serve `router` on each, until
/// `shutdown`; then wait for the connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    connections: Arc<Connections>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        let permit = match Arc::clone(&connections.open).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // At the cap: idle connections make way for the one waiting.
                connections.shed.notify_waiters();
                tokio::select! {
                    p = Arc::clone(&connections.open).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if out_of_descriptors(&e) => {
                warn!(error = %e, "out of file descriptors; closing idle connections");
                connections.shed.notify_waiters();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            // The peer went away before it was accepted, and the like.
            Err(e) => {
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = ConnectionId(connections.next_id.fetch_add(1, Ordering::Relaxed));
        tracker.spawn(connection(
            stream,
            router.clone(),
            id,
            permit,
            Arc::clone(&connections),
            timeouts,
            shutdown.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (per process) and ENFILE (system-wide).
    matches!(e.raw_os_error(), Some(24 | 23))
}

/// Whether a connection has a request in progress, and since when it has not.
struct Activity {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

struct InProgress(Arc<Activity>);

impl Activity {
    fn start(self: &Arc<Self>) -> InProgress {
        self.active.fetch_add(1, Ordering::AcqRel);
        InProgress(Arc::clone(self))
    }

    fn idle_since(&self) -> Option<Instant> {
        (self.active.load(Ordering::Acquire) == 0)
            .then(|| *self.idle_since.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    id: ConnectionId,
    _permit: OwnedSemaphorePermit,
    connections: Arc<Connections>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity {
        active: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
    });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_progress = activity.start();
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(id);
            let answer = router.clone().oneshot(request);
            async move {
                let response = answer.await;
                drop(in_progress);
                response.map_err(|never: Infallible| match never {})
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.idle)
        .max_buf_size(H1_BUFFER);
    // HTTP/2 reads DATA frames ahead of the handler up to its flow-control
    // windows, outside `[server] body_memory`: keep them at the protocol's
    // default (64 KiB a connection) instead of hyper's 1 MiB, so an
    // unauthenticated connection buffers no more than a socket does.
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_connection_window_size(H2_WINDOW)
        .initial_stream_window_size(H2_WINDOW)
        .max_concurrent_streams(H2_STREAMS)
        .max_header_list_size(H2_HEADER_LIST);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        // HTTP/1 connections are closed by hyper's header timer; this one also
        // covers HTTP/2, which has no such timer.
        let idle_deadline = super::later(activity.idle_since().unwrap_or_else(Instant::now), timeouts.idle);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = connections.shed.notified(), if !closing => {
                if activity.idle_since().is_some() {
                    // Dropping the connection closes it: nothing is in progress.
                    return;
                }
            }
            () = tokio::time::sleep_until(idle_deadline), if !closing => {
                if activity.idle_since().is_some_and(|since| since.elapsed() >= timeouts.idle) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
