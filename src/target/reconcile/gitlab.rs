//! GitLab: find the pipeline whose `HOOKBRIDGE_JOB` variable is the job's.
//!
//! `GET /api/v4/projects/:id/pipelines?source=trigger&ref=…&created_after=…
//! &order_by=id&sort=desc` lists the candidates, newest first; then
//! `GET /api/v4/projects/:id/pipelines/:pipeline_id/variables` reads each
//! one's variables (docs.gitlab.com/api/pipelines, "Get variables of a
//! pipeline"), until one carries the job's id.

use std::time::SystemTime;

use serde::Deserialize;

use super::{MARKER, Reconciled, rfc3339, stopped};
use crate::target::TriggerResult;
use crate::target::caller::{Caller, Step};
use crate::target::encode::path_segment;
use crate::target::gitlab::{Request, api_root};

/// Pipelines listed per page (GitLab's most).
const PER_PAGE: usize = 100;
/// Pages listed per reconcile.
const PAGES: usize = 2;

#[derive(Deserialize)]
struct Pipeline {
    id: i64,
    iid: Option<i64>,
    web_url: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize)]
struct Variable {
    key: String,
    value: Option<String>,
}

pub(super) async fn find(
    caller: &mut Caller<'_>,
    base: &str,
    r: &Request,
    (job, previous): (&str, Option<&str>),
    after: SystemTime,
) -> Reconciled {
    let project = format!("{}/projects/{}", api_root(base), path_segment(&r.project));
    let since = rfc3339(after);
    let query = |page: usize| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("source", "trigger")
            .append_pair("ref", &r.git_ref)
            .append_pair("created_after", &since)
            .append_pair("order_by", "id")
            .append_pair("sort", "desc")
            .append_pair("per_page", &PER_PAGE.to_string())
            .append_pair("page", &page.to_string());
        q.finish()
    };
    let mut read = 0;
    let mut listed = 0;
    for page in 1..=PAGES {
        let pipelines: Vec<Pipeline> = match caller
            .call("GET", format!("{project}/pipelines?{}", query(page)))
            .await
        {
            Step::Ok(response) => match serde_json::from_slice(&response.body) {
                Ok(p) => p,
                Err(e) => {
                    return Reconciled::Failed {
                        reason: format!("GitLab's pipeline list is not its JSON: {e}"),
                        after: None,
                    };
                }
            },
            Step::NotFound => {
                return Reconciled::Skipped(format!(
                    "GitLab does not show project `{}` to the `api_token`",
                    r.project
                ));
            }
            Step::Stop(stop) => return stopped(stop),
        };
        let last_page = pipelines.len() < PER_PAGE;
        listed += pipelines.len();
        for p in pipelines {
            // The pipeline of the job's round before a replay carries its id
            // too; this round's is another.
            if previous == Some(p.id.to_string().as_str()) {
                continue;
            }
            read += 1;
            let answer = caller
                .call("GET", format!("{project}/pipelines/{}/variables", p.id))
                .await;
            // Another pipeline's variables (someone's secrets, maybe) are
            // never kept for the attempt's record.
            caller.last.response = None;
            let variables: Vec<Variable> = match answer {
                Step::Ok(response) => match serde_json::from_slice(&response.body) {
                    Ok(v) => v,
                    Err(e) => {
                        return Reconciled::Failed {
                            reason: format!("GitLab's pipeline variables are not its JSON: {e}"),
                            after: None,
                        };
                    }
                },
                // Deleted since it was listed: not this job's to find.
                Step::NotFound => continue,
                Step::Stop(stop) => return stopped(stop),
            };
            let ours = variables
                .iter()
                .any(|v| v.key == MARKER && v.value.as_deref() == Some(job));
            if ours {
                return Reconciled::Found {
                    why: format!(
                        "GitLab pipeline {} carries {MARKER}={job} (the {} trigger pipeline on `{}` since {since})",
                        p.id,
                        ordinal(read),
                        r.git_ref
                    ),
                    result: TriggerResult {
                        id: Some(p.id.to_string()),
                        number: p.iid,
                        url: p.web_url,
                        state: p.status,
                        follow: None,
                    },
                };
            }
        }
        if last_page {
            break;
        }
        if page == PAGES {
            return Reconciled::Skipped(format!(
                "more than {listed} trigger pipelines on `{}` since {since}: the {listed} newest do not carry {MARKER}={job}",
                r.git_ref
            ));
        }
    }
    Reconciled::NotFound(format!(
        "none of the {listed} trigger pipelines on `{}` since {since} carries {MARKER}={job}",
        r.git_ref
    ))
}

/// `1st`, `2nd`, `3rd`, `4th`, ... (newest first).
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix} newest")
}
