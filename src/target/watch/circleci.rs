//! CircleCI v2: a pipeline's state is its workflows'.
//!
//! `GET /api/v2/pipeline/{id}/workflow` lists them, paged by
//! `next_page_token`. Their statuses are the `status` enum of the Workflow
//! schema in CircleCI's API v2 document: `running`, `on_hold` and `failing`
//! still run; `success`, `failed`, `error`, `canceled`, `unauthorized` and
//! `not_run` are final. The pipeline ([`state_of`]):
//! - lists no workflow: still being set up ([`Created`](PipelineState::Created)),
//!   unless `GET /api/v2/pipeline/{id}` says it `errored` (its config could
//!   not be read or compiled: no workflow will run), which is
//!   [`Failed`](PipelineState::Failed);
//! - has a workflow that still runs (or whose status this version does not
//!   know): [`Running`](PipelineState::Running);
//! - else it has finished: [`Failed`](PipelineState::Failed) if any workflow
//!   failed, errored or was unauthorized, else
//!   [`Canceled`](PipelineState::Canceled) if any was canceled, else
//!   [`Success`](PipelineState::Success) (`not_run`, a workflow whose filters
//!   left it out, counts as neither).
//!
//! A workflow rerun ("Rerun workflow from failed") is listed beside the run
//! it reran, under the same name: the newest run of each name counts.

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::{PAGES, PipelineRead, PipelineState, WorkflowRun};
use crate::target::caller::{Caller, Step};
use crate::target::circleci::pipeline_result;
use crate::target::encode::path_segment;

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    items: Vec<Workflow>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct Workflow {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    pipeline_number: Option<i64>,
    created_at: Option<String>,
}

/// The state of a pipeline whose workflows have these statuses (see the
/// module's doc); no workflow is [`PipelineState::Created`].
pub fn state_of<'a>(statuses: impl IntoIterator<Item = &'a str>) -> PipelineState {
    let (mut any, mut failed, mut canceled) = (false, false, false);
    for status in statuses {
        any = true;
        match status {
            "failed" | "error" | "unauthorized" => failed = true,
            "canceled" => canceled = true,
            "success" | "not_run" => {}
            // `running`, `on_hold`, `failing`, and any status not known here.
            _ => return PipelineState::Running,
        }
    }
    match (any, failed, canceled) {
        (false, _, _) => PipelineState::Created,
        (_, true, _) => PipelineState::Failed,
        (_, _, true) => PipelineState::Canceled,
        _ => PipelineState::Success,
    }
}

/// Whether `id` is a UUID (`5034460f-c7c4-4c43-9457-de07e2029e7b`), as
/// CircleCI's pipeline ids are.
pub fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An id as a message shows it: in full when short, cut when not.
pub(super) fn shown(id: &str) -> String {
    let cut: String = id.chars().take(64).collect();
    if cut.len() < id.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Read pipeline `id` of `project` (its slug, for the pipeline's URL).
pub(super) async fn read(caller: &mut Caller<'_>, base: &str, project: &str, id: &str) -> PipelineRead {
    if !is_uuid(id) {
        return PipelineRead::Refused(format!("`{}` is not a CircleCI pipeline id (a UUID)", shown(id)));
    }
    let what = format!("CircleCI pipeline {id}");
    let mut listed: Vec<Workflow> = Vec::new();
    let mut page_token: Option<String> = None;
    // Whether pages were left unread.
    let mut more = false;
    for page_number in 0..PAGES {
        let mut url = format!("{base}/api/v2/pipeline/{id}/workflow");
        if let Some(t) = &page_token {
            url.push_str("?page-token=");
            url.push_str(&utf8_percent_encode(t, NON_ALPHANUMERIC).to_string());
        }
        let page: Page = match caller.call("GET", url).await {
            Step::Ok(r) => match serde_json::from_slice(&r.body) {
                Ok(p) => p,
                Err(e) => return PipelineRead::unreadable(&what, &e),
            },
            Step::NotFound => return not_found(id),
            Step::Stop(stop) => return PipelineRead::stopped(stop, &what),
        };
        for w in page.items {
            // Pages can overlap while workflows are being added.
            if !listed.iter().any(|seen| seen.id == w.id) {
                listed.push(w);
            }
        }
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(_) if page_number + 1 == PAGES => more = true,
            Some(t) => page_token = Some(t),
            None => break,
        }
    }
    if listed.is_empty() {
        return not_started(caller, base, project, id, &what).await;
    }
    let number = listed.iter().find_map(|w| w.pipeline_number);
    let url = pipeline_url(project, number);
    let workflows: Vec<WorkflowRun> = newest_of_each_name(listed)
        .into_iter()
        .map(|w| WorkflowRun {
            url: url
                .as_ref()
                .map(|u| format!("{u}/workflows/{}", path_segment(&w.id))),
            id: w.id,
            name: w.name,
            status: w.status,
        })
        .collect();
    let state = state_of(workflows.iter().map(|w| w.status.as_str()));
    if more && state.is_final() {
        return PipelineRead::Retry {
            reason: format!(
                "{what} lists more than {PAGES} pages of workflows: whether all have finished is not known from the first {}",
                workflows.len()
            ),
            after: None,
        };
    }
    PipelineRead::State {
        state,
        workflows,
        url,
    }
}

/// Each name's newest run (by `created_at`; the one listed first when the
/// times cannot tell), in the order the names were first listed.
fn newest_of_each_name(listed: Vec<Workflow>) -> Vec<Workflow> {
    let created = |w: &Workflow| {
        w.created_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    };
    let mut kept: Vec<Workflow> = Vec::new();
    for w in listed {
        match kept.iter_mut().find(|k| k.name == w.name) {
            Some(k) => {
                let newer = matches!((created(&w), created(k)), (Some(a), Some(b)) if a > b);
                if newer {
                    *k = w;
                }
            }
            None => kept.push(w),
        }
    }
    kept
}

/// The pipeline's page on app.circleci.com, when its number is known.
fn pipeline_url(project: &str, number: Option<i64>) -> Option<String> {
    number.and_then(|n| pipeline_result(Some((None, Some(n), None)), project).url)
}

fn not_found(id: &str) -> PipelineRead {
    PipelineRead::Refused(format!(
        "CircleCI does not know pipeline {id} (HTTP 404), or does not show it to the token"
    ))
}

/// A pipeline that lists no workflow: still being set up, or errored
/// (nothing will run): `GET /api/v2/pipeline/{id}` tells.
async fn not_started(
    caller: &mut Caller<'_>,
    base: &str,
    project: &str,
    id: &str,
    what: &str,
) -> PipelineRead {
    #[derive(Deserialize)]
    struct Pipeline {
        state: Option<String>,
        number: Option<i64>,
    }
    let pipeline: Pipeline = match caller.call("GET", format!("{base}/api/v2/pipeline/{id}")).await {
        Step::Ok(r) => match serde_json::from_slice(&r.body) {
            Ok(p) => p,
            Err(e) => return PipelineRead::unreadable(what, &e),
        },
        Step::NotFound => return not_found(id),
        Step::Stop(stop) => return PipelineRead::stopped(stop, what),
    };
    let state = match pipeline.state.as_deref() {
        Some("errored") => PipelineState::Failed,
        _ => PipelineState::Created,
    };
    PipelineRead::State {
        state,
        workflows: Vec::new(),
        url: pipeline_url(project, pipeline.number),
    }
}
