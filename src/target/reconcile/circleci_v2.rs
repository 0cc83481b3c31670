//! CircleCI v2, a heuristic: CircleCI keeps no value a trigger passes that
//! could be read back (pipeline parameters are not returned), so the
//! pipeline an earlier attempt created is told by who, where and when:
//! `GET /api/v2/project/{slug}/pipeline/mine` lists the pipelines the
//! token's user started, newest first; the candidates were triggered through
//! the API, on the job's branch (or tag), at or after the earlier attempt's
//! start (less [`super::CLOCK_SKEW`]), and are not recorded by another job
//! of the target. Exactly one is adopted; several cannot be told apart and
//! the job is sent again.

use std::time::SystemTime;

use serde::Deserialize;

use super::{Candidates, Looked, Reconciled, rfc3339, stopped};
use crate::target::TriggerRequest;
use crate::target::caller::{Caller, Step};
use crate::target::circleci::{self, Api, parse_slug, pipeline_result};
use crate::target::encode::path_segment;

/// Pages read per reconcile (CircleCI pages 20 or so).
const PAGES: usize = 5;

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    items: Vec<Pipeline>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct Pipeline {
    id: String,
    number: Option<i64>,
    state: Option<String>,
    created_at: String,
    trigger: Option<Trigger>,
    vcs: Option<Vcs>,
}

#[derive(Deserialize)]
struct Trigger {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Vcs {
    branch: Option<String>,
    tag: Option<String>,
}

/// The place a CircleCI v2 trigger runs at: project, branch, tag.
pub(super) fn place(request: &TriggerRequest) -> Option<(&str, Option<&str>, Option<&str>)> {
    match request {
        TriggerRequest::Circleci(r) => place_of(r),
        _ => None,
    }
}

fn place_of(request: &circleci::Request) -> Option<(&str, Option<&str>, Option<&str>)> {
    match request {
        circleci::Request::Pipeline(r) => Some((&r.project, r.branch.as_deref(), r.tag.as_deref())),
        circleci::Request::PipelineRun(r) => Some((
            &r.project,
            r.checkout.branch.as_deref(),
            r.checkout.tag.as_deref(),
        )),
        circleci::Request::Job(_) => None,
    }
}

/// The API pipelines the token's user started at the job's place since
/// `after`: candidates for [`super::Candidates::decide`].
pub(super) async fn list(
    caller: &mut Caller<'_>,
    base: &str,
    request: &circleci::Request,
    after: SystemTime,
) -> Looked {
    let Some((project, branch, tag)) = place_of(request) else {
        return Looked::Decided(Reconciled::Skipped("API v1.1 jobs cannot be told apart".into()));
    };
    let slug = match parse_slug(project, Api::PipelineRun) {
        Ok(s) => format!(
            "{}/{}/{}",
            path_segment(s.provider),
            path_segment(s.org),
            path_segment(s.project)
        ),
        Err(e) => return Looked::Decided(Reconciled::Skipped(e.to_string())),
    };
    let place = match (branch, tag) {
        (_, Some(tag)) => format!("tag `{tag}`"),
        (Some(branch), None) => format!("branch `{branch}`"),
        // Its pipelines cannot be told from another branch's by name.
        (None, None) => {
            return Looked::Decided(Reconciled::Skipped(
                "the trigger names no branch or tag (the default branch's pipelines are not told apart by name)".into(),
            ));
        }
    };
    let since = rfc3339(after);
    let mut found = Vec::new();
    let mut page_token: Option<String> = None;
    'pages: for _ in 0..PAGES {
        let mut url = format!("{base}/api/v2/project/{slug}/pipeline/mine");
        if let Some(t) = &page_token {
            url.push_str("?page-token=");
            url.push_str(&form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>());
        }
        let page: Page = match caller.call("GET", url).await {
            Step::Ok(r) => match serde_json::from_slice(&r.body) {
                Ok(p) => p,
                Err(e) => {
                    return Looked::Decided(Reconciled::Failed {
                        reason: format!("CircleCI's pipeline list is not its JSON: {e}"),
                        after: None,
                    });
                }
            },
            Step::NotFound => {
                return Looked::Decided(Reconciled::Skipped(format!(
                    "CircleCI does not show project `{project}` to the token"
                )));
            }
            Step::Stop(stop) => return Looked::Decided(stopped(stop)),
        };
        for p in page.items {
            let Ok(created) = humantime::parse_rfc3339_weak(&p.created_at) else {
                continue;
            };
            if created < after {
                break 'pages;
            }
            let by_api = p.trigger.as_ref().and_then(|t| t.kind.as_deref()) == Some("api");
            let vcs = p.vcs.as_ref();
            let same_place = match tag {
                Some(tag) => vcs.and_then(|v| v.tag.as_deref()) == Some(tag),
                None => vcs.and_then(|v| v.branch.as_deref()) == branch,
            };
            // Pages can overlap while pipelines are being created.
            let seen = found
                .iter()
                .any(|r: &crate::target::TriggerResult| r.id.as_deref() == Some(p.id.as_str()));
            if by_api && same_place && !seen {
                found.push(pipeline_result(Some((Some(p.id), p.number, p.state)), project));
            }
        }
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) => page_token = Some(t),
            None => break,
        }
    }
    Looked::Candidates(Candidates { found, place, since })
}
