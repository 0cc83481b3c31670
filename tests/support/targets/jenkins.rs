//! Jenkins: `POST {prefix}/job/<a>/job/<b>/buildWithParameters` (queues a
//! build, answers with the queue item) and `GET {prefix}/queue/item/{n}/api/json`
//! (polled until the item has left the queue), checked against the remote
//! access API's documented shape.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::checks::{check_auth, header};
use super::{JENKINS_TOKEN, JENKINS_USER, Settings, Shared};

/// What a Jenkins queue item becomes after its waiting polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum QueueOutcome {
    /// A `LeftItem` whose `executable` is the build.
    #[default]
    Build,
    /// A `LeftItem` with `cancelled: true`, `executable: null`.
    Cancelled,
    /// Every poll answers 404 (the item is gone).
    NotFound,
}

#[derive(Debug, Clone)]
struct QueueItem {
    job: Vec<String>,
    polls: u32,
    build: Option<u64>,
}

/// The queue and build numbers of the Jenkins stand-in.
#[derive(Default)]
pub(super) struct Jenkins {
    next_item: u64,
    items: HashMap<u64, QueueItem>,
    /// The last build number of each job path (`a/b`).
    builds: HashMap<String, u64>,
}

fn basic(user: &str, token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
    )
}

/// Jenkins' remote access API, <https://www.jenkins.io/doc/book/using/remote-access-api/>:
/// `POST …/job/<a>/job/<b>/buildWithParameters` with the parameters
/// form-encoded, authenticated with the user's API token over HTTP Basic
/// (which also exempts the call from CSRF crumbs).
pub(super) fn check(
    uri: &Uri,
    headers: &HeaderMap,
    raw: &[u8],
    (job, parameters): (&[String], bool),
    problems: &mut Vec<String>,
) -> (bool, Vec<(String, String)>) {
    // Jobs named `plain*` take no parameters; every other job does.
    // Jenkins answers `build` on a parameterized job with an error page,
    // and `buildWithParameters` on a plain one with a 500.
    match (parameterized(job), parameters) {
        (true, false) => problems.push(format!("`build` on the parameterized job {job:?}")),
        (false, true) if raw.is_empty() => problems.push(format!(
            "`buildWithParameters` without parameters on the plain job {job:?}"
        )),
        (false, false) if !raw.is_empty() => problems.push("`build` with a body".into()),
        _ => {}
    }
    let auth = check_auth(headers, &basic(JENKINS_USER, JENKINS_TOKEN), problems);
    if job.iter().any(String::is_empty) {
        problems.push(format!("empty job segment in {job:?}"));
    }
    if let Some(q) = uri.query()
        && (q.to_ascii_lowercase().contains("token") || q.contains(JENKINS_TOKEN))
    {
        problems.push("a token in the query string".into());
    }
    let mut form = Vec::new();
    if !raw.is_empty() {
        let ct = header(headers, "content-type");
        if ct.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
            problems.push(format!(
                "Content-Type is `{ct}`, not application/x-www-form-urlencoded"
            ));
        }
        match std::str::from_utf8(raw) {
            Ok(_) => {
                form = form_urlencoded::parse(raw)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
            }
            Err(e) => problems.push(format!("form body is not UTF-8: {e}")),
        }
    }
    (auth, form)
}

/// Whether the stand-in's job `job` takes parameters (not `plain*`).
fn parameterized(job: &[String]) -> bool {
    job.last().is_none_or(|name| !name.starts_with("plain"))
}

/// The normal answer to a valid build call: 201, `Location` the new queue
/// item; Jenkins' 500 page for parameters given to a plain job.
pub(super) fn build(shared: &Shared, settings: &Settings, job: &[String], parameters: bool) -> Response {
    if parameters && !parameterized(job) {
        let page = "<html><head><title>Jenkins</title></head><body><h2>Oops!</h2><pre>java.lang.IllegalStateException: This build is not parameterized!</pre></body></html>";
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/html")],
            page,
        )
            .into_response();
    }
    let base = shared.url.get().unwrap();
    let n = {
        let mut jenkins = shared.jenkins.lock().unwrap();
        jenkins.next_item += 1;
        let n = 100 + jenkins.next_item;
        jenkins.items.insert(
            n,
            QueueItem {
                job: job.to_vec(),
                polls: 0,
                build: None,
            },
        );
        n
    };
    let location = format!("{base}{}/queue/item/{n}/", settings.jenkins_prefix);
    (StatusCode::CREATED, [("location", location)]).into_response()
}

/// `GET {prefix}/queue/item/{n}/api/json`.
pub(super) fn queue(
    shared: &Shared,
    settings: &Settings,
    method: &Method,
    headers: &HeaderMap,
    item: &str,
    problems: &mut Vec<String>,
) -> Response {
    if method != Method::GET {
        problems.push(format!("{method} instead of GET"));
    }
    if !check_auth(headers, &basic(JENKINS_USER, JENKINS_TOKEN), problems) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            "<html><body><h2>HTTP ERROR 404 Not Found</h2></body></html>",
        )
    };
    let Ok(n) = item.parse::<u64>() else {
        problems.push(format!("queue item `{item}` is not a number"));
        return not_found().into_response();
    };
    if settings.queue_outcome == QueueOutcome::NotFound {
        return not_found().into_response();
    }
    let base = shared.url.get().unwrap();
    let prefix = &settings.jenkins_prefix;
    let mut jenkins = shared.jenkins.lock().unwrap();
    let Some(mut entry) = jenkins.items.get(&n).cloned() else {
        problems.push(format!("queue item {n} was never created"));
        return not_found().into_response();
    };
    entry.polls += 1;
    let job_path: String = entry.job.iter().map(|s| format!("/job/{s}")).collect();
    let name = entry.job.last().cloned().unwrap_or_default();
    let mut answer = json!({
        "actions": [{"_class": "hudson.model.ParametersAction"}],
        "blocked": false,
        "buildable": false,
        "id": n,
        "inQueueSince": 1_795_000_000_000u64,
        "params": "",
        "stuck": false,
        "task": {
            "_class": "hudson.model.FreeStyleProject",
            "name": name,
            "url": format!("{base}{prefix}{job_path}/"),
            "color": "blue",
        },
        "url": format!("queue/item/{n}/"),
    });
    if entry.polls <= settings.waiting_polls {
        answer["_class"] = "hudson.model.Queue$WaitingItem".into();
        answer["why"] = "Waiting for next available executor".into();
        answer["timestamp"] = 1_795_000_005_000u64.into();
        answer["executable"] = Value::Null;
    } else {
        answer["_class"] = "hudson.model.Queue$LeftItem".into();
        answer["why"] = Value::Null;
        match settings.queue_outcome {
            QueueOutcome::Cancelled => {
                answer["cancelled"] = true.into();
                answer["executable"] = Value::Null;
            }
            _ => {
                let number = match entry.build {
                    Some(b) => b,
                    None => {
                        let counter = jenkins.builds.entry(entry.job.join("/")).or_default();
                        *counter += 1;
                        entry.build = Some(*counter);
                        *counter
                    }
                };
                answer["cancelled"] = false.into();
                answer["executable"] = json!({
                    "_class": "hudson.model.FreeStyleBuild",
                    "number": number,
                    "url": format!("{base}{prefix}{job_path}/{number}/"),
                });
            }
        }
    }
    jenkins.items.insert(n, entry);
    axum::Json(answer).into_response()
}
