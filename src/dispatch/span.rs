//! The span an attempt runs in: with traces on, the consumer span of its
//! delivery's trace ([`crate::telemetry::trace::attempt_span`]), its CI
//! calls' client spans inside; otherwise the plain `attempt` span.

use std::time::SystemTime;

use futures_util::future::Either;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, info_span};

use super::Dispatcher;
use crate::store::LeasedJob;
use crate::telemetry::trace;

/// One attempt of `job` in its slot, in its span: the task to spawn.
pub(super) fn attempt(
    worker: Dispatcher,
    job: LeasedJob,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = Option<SystemTime>> + Send + 'static {
    if trace::enabled() {
        let (span, traced) = trace::attempt_span(&trace::Job {
            id: &job.id,
            delivery_id: &job.delivery_id,
            delivery: &job.delivery,
            source: &job.source,
            rule: &job.rule,
            target: &job.target,
            attempt: job.attempt,
            trace: job.trace.as_deref(),
        });
        let work = async move { worker.attempt(job, permit).await };
        return Either::Left(traced.run(work).instrument(span));
    }
    let span = info_span!(
        "attempt",
        delivery = %job.delivery,
        source = %job.source,
        rule = %job.rule,
        target = %job.target,
        job = %job.id,
        attempt = job.attempt,
    );
    Either::Right(async move { worker.attempt(job, permit).await }.instrument(span))
}
