//! GitLab: `GET /api/v4/projects/:id/pipelines/:pipeline_id`
//! (docs.gitlab.com/api/pipelines, "Get a single pipeline"); its `status`
//! is the pipeline's state ([`state_of`]) and its `web_url` the pipeline's page.

use serde::Deserialize;

use super::circleci::shown;
use super::{PipelineRead, PipelineState};
use crate::target::caller::{Caller, Step};
use crate::target::encode::path_segment;
use crate::target::gitlab::api_root;

#[derive(Deserialize)]
struct Pipeline {
    status: Option<String>,
    web_url: Option<String>,
}

/// The state of a GitLab pipeline with `status` (the values of the
/// `status` parameter in GitLab's OpenAPI document):
/// - `created`, `waiting_for_resource`, `preparing`, `pending`, `scheduled`:
///   [`Created`](PipelineState::Created), not started;
/// - `running`, `manual` (waiting for someone to start a manual job),
///   `waiting_for_callback` (a job waits for an outside service), and any
///   status this version does not know: [`Running`](PipelineState::Running);
/// - `success`, and `skipped` (nothing to run, nothing failed):
///   [`Success`](PipelineState::Success);
/// - `failed`: [`Failed`](PipelineState::Failed);
/// - `canceled`, `canceling`: [`Canceled`](PipelineState::Canceled).
pub fn state_of(status: &str) -> PipelineState {
    PipelineState::from_gitlab(status).unwrap_or(PipelineState::Running)
}

/// Whether `id` can be a GitLab pipeline id: digits only.
pub fn is_pipeline_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 19 && id.bytes().all(|b| b.is_ascii_digit())
}

/// Read pipeline `id` of `project` (a path or a numeric id).
pub(super) async fn read(caller: &mut Caller<'_>, base: &str, project: &str, id: &str) -> PipelineRead {
    if !is_pipeline_id(id) {
        return PipelineRead::Refused(format!("`{}` is not a GitLab pipeline id (digits)", shown(id)));
    }
    let what = format!("GitLab pipeline {id}");
    let url = format!(
        "{}/projects/{}/pipelines/{id}",
        api_root(base),
        path_segment(project)
    );
    let pipeline: Pipeline = match caller.call("GET", url).await {
        Step::Ok(r) => match serde_json::from_slice(&r.body) {
            Ok(p) => p,
            Err(e) => return PipelineRead::unreadable(&what, &e),
        },
        Step::NotFound => {
            return PipelineRead::Refused(format!(
                "GitLab does not know pipeline {id} of project `{project}` (HTTP 404), or does not show it to the `api_token`"
            ));
        }
        Step::Stop(stop) => return PipelineRead::stopped(stop, &what),
    };
    let Some(status) = pipeline.status else {
        return PipelineRead::Retry {
            reason: format!("GitLab's answer for {what} names no status"),
            after: None,
        };
    };
    PipelineRead::State {
        state: state_of(&status),
        workflows: Vec::new(),
        url: pipeline.web_url,
    }
}
