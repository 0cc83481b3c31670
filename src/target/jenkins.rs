//! Jenkins: `buildWithParameters`, then the queue until the build starts.
//!
//! `POST {url}/job/team/job/app/buildWithParameters` with the parameters
//! form-encoded and `Authorization: Basic` (`user` and an API token: Jenkins
//! needs no CSRF crumb for API-token requests). Jenkins answers `201
//! Created` with `Location: {url}/queue/item/{n}/`: the build does not exist
//! yet, only a queue item. The job records the item (state `queued`) with a
//! follow-up ([`crate::store::follow`]): the dispatcher reads
//! `{url}/queue/item/{n}/api/json` until its `executable` names the build
//! (number and URL, state `running`), the item is cancelled, or Jenkins has
//! forgotten it (it keeps left items about five minutes), within
//! [`FOLLOW_FOR`].
//!
//! The queue item's address is built from the configured `url` and the
//! item's number, never taken from `Location` as sent: a Jenkins whose root
//! URL is misconfigured (or an attacker in its place) would otherwise get
//! the credentials sent to another host.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::encode::path_segment;
use super::{
    AUTHORIZATION, Credential, Encoding, Header, OutboundRequest, Outcome, REDACTED, RequestError, Response,
    TriggerCompiler, TriggerResult, USER_AGENT, render_string, render_text_table,
};
use crate::config::raw::RawTrigger;
use crate::template::{TemplateValue, Templates};

/// Parameters per build: a bound on a typo'd config.
const MAX_PARAMETERS: usize = 200;
/// How long a queued build is followed before the job says "unknown".
pub const FOLLOW_FOR: Duration = Duration::from_secs(60 * 60);
/// The first read of the queue item, and the longest wait between reads.
const FIRST_READ: Duration = Duration::from_secs(2);
const LONGEST_READ: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Trigger {
    job: TemplateValue,
    parameters: BTreeMap<String, TemplateValue>,
}

/// A rendered Jenkins build (`"api": "jenkins_build"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The job's full name: folders and job, `/`-separated (`team/app`).
    pub job: String,
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

impl Trigger {
    pub fn compile(raw: &Spanned<RawTrigger>, f: &mut TriggerCompiler<'_>) -> Option<Trigger> {
        let r = raw.get_ref();
        f.allow(r, "a Jenkins build", &["job", "parameters"], |key| match key {
            "project" | "pipeline" => {
                Some("Jenkins names the job by its full name: `job = \"team/app\"`".into())
            }
            "variables" | "env" | "inputs" => Some("Jenkins build parameters are `parameters`".into()),
            _ => None,
        });
        let job = f.required(
            raw,
            "job",
            &r.job,
            "the job's full name (`team/app` for a job in a folder)",
        )?;
        if let (Some(raw_job), Some(literal)) = (&r.job, job.as_literal_str())
            && let Err(e) = job_path(literal)
        {
            f.error(format!("trigger.job: {e}"), raw_job.span());
        }
        Some(Trigger {
            job,
            parameters: f.text_table("parameters", &r.parameters, MAX_PARAMETERS, false, |k| {
                if k.is_empty() {
                    Err("parameter names cannot be empty".into())
                } else {
                    Ok(())
                }
            }),
        })
    }

    pub fn render(&self, t: &Templates, scope: &minijinja::Value) -> Result<Request, String> {
        let job = render_string(t, &self.job, scope, "job")?;
        job_path(&job)?;
        Ok(Request {
            job,
            parameters: render_text_table(t, &self.parameters, scope, "parameters", false)?,
        })
    }
}

/// `team/app` as Jenkins addresses it: `/job/team/job/app`.
fn job_path(job: &str) -> Result<String, String> {
    let parts: Vec<&str> = job.trim_matches('/').split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(format!(
            "job `{job}` has an empty, `.` or `..` folder name; write the full name as `folder/job`"
        ));
    }
    Ok(parts
        .iter()
        .map(|p| format!("/job/{}", path_segment(p)))
        .collect())
}

fn headers(accept: &str) -> Vec<Header> {
    vec![
        Header {
            name: "Accept".into(),
            value: accept.into(),
        },
        Header {
            name: "User-Agent".into(),
            value: USER_AGENT.into(),
        },
        Header {
            name: AUTHORIZATION.into(),
            value: format!("Basic {REDACTED}"),
        },
    ]
}

pub(super) fn request(base: &str, user: &str, r: &Request) -> Result<OutboundRequest, RequestError> {
    let path = job_path(&r.job).map_err(RequestError::Invalid)?;
    let mut headers = headers("application/json");
    headers.insert(
        0,
        Header {
            name: "Content-Type".into(),
            value: "application/x-www-form-urlencoded".into(),
        },
    );
    // A job without parameters is built by `/build`: Jenkins answers
    // `buildWithParameters` on it with a 500 ("not parameterized").
    let endpoint = if r.parameters.is_empty() {
        "build"
    } else {
        "buildWithParameters"
    };
    Ok(OutboundRequest {
        method: "POST",
        url: format!("{base}{path}/{endpoint}"),
        headers,
        body: serde_json::Value::Object(r.parameters.clone()),
        encoding: Encoding::Form,
        credential: Credential::Basic(user.to_owned()),
    })
}

/// The queue item a `201` names in its `Location`.
fn queue_item(location: &str) -> Option<u64> {
    let (_, rest) = location.rsplit_once("/queue/item/")?;
    rest.trim_end_matches('/').parse().ok()
}

/// A 2xx: the queued item, to follow until the build starts.
pub(super) fn created(response: &Response) -> Outcome {
    let item = response
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .and_then(queue_item);
    Outcome::Created(match item {
        Some(n) => TriggerResult {
            id: Some(n.to_string()),
            state: Some("queued".into()),
            follow: Some(n.to_string()),
            ..TriggerResult::default()
        },
        // A Jenkins (or a proxy) that names no queue item: accepted, not followed.
        None => TriggerResult {
            state: Some("queued".into()),
            ..TriggerResult::default()
        },
    })
}

/// Jenkins' answer to `buildWithParameters` on a job without parameters.
const NOT_PARAMETERIZED: &str = "is not parameterized";

/// A 500 whose page says the job takes no parameters will not succeed as is.
pub(super) fn server_error(status: u16, body: &[u8]) -> Option<Outcome> {
    let needle = NOT_PARAMETERIZED.as_bytes();
    body.windows(needle.len()).any(|w| w == needle).then(|| {
        Outcome::Permanent(format!(
            "HTTP {status}: the job takes no parameters; leave `parameters` out to build it with /build"
        ))
    })
}

pub(super) fn failed(status: u16, message: &str) -> Outcome {
    let hint = match status {
        400 => " (the job takes no such parameters, or is not parameterized)",
        401 => " (the user or API token is wrong)",
        403 => " (the user lacks the Job/Build permission)",
        404 => " (no such job: the name is the full path, `folder/job`)",
        _ => "",
    };
    Outcome::Permanent(format!("HTTP {status}: {message}{hint}"))
}

/// The read of queue item `item`.
pub fn queue_request(base: &str, user: &str, item: &str) -> Result<OutboundRequest, RequestError> {
    let n: u64 = item
        .parse()
        .map_err(|_| RequestError::Invalid(format!("`{item}` is not a Jenkins queue item number")))?;
    Ok(OutboundRequest {
        method: "GET",
        url: format!("{base}/queue/item/{n}/api/json"),
        headers: headers("application/json"),
        body: serde_json::Value::Null,
        encoding: Encoding::Json,
        credential: Credential::Basic(user.to_owned()),
    })
}

/// What one read of a queue item says.
#[derive(Debug, Clone, PartialEq)]
pub enum Queue {
    /// The build started: its number and URL.
    Started { number: i64, url: Option<String> },
    /// Cancelled before it started.
    Cancelled,
    /// Still waiting (and why, in Jenkins' words).
    Waiting(Option<String>),
    /// Jenkins no longer knows the item (or never did).
    Forgotten,
    /// No answer worth reading now; read again later.
    Unreadable(String),
}

/// Read a queue item's answer.
pub fn read_queue(status: u16, body: &[u8]) -> Queue {
    #[derive(Deserialize)]
    struct Item {
        cancelled: Option<bool>,
        why: Option<String>,
        executable: Option<Executable>,
    }
    #[derive(Deserialize)]
    struct Executable {
        number: Option<i64>,
        url: Option<String>,
    }
    match status {
        200..=299 => match serde_json::from_slice::<Item>(body) {
            Ok(Item {
                executable:
                    Some(Executable {
                        number: Some(number),
                        url,
                    }),
                ..
            }) => Queue::Started { number, url },
            Ok(Item {
                cancelled: Some(true),
                ..
            }) => Queue::Cancelled,
            Ok(item) => Queue::Waiting(item.why.map(|w| super::truncate_body(w.as_bytes(), 200))),
            Err(_) => Queue::Unreadable(format!("HTTP {status}: the answer is not a queue item")),
        },
        404 | 410 => Queue::Forgotten,
        _ => Queue::Unreadable(format!("HTTP {status}: {}", super::error_message(body))),
    }
}

/// When to read a queue item again after read number `poll`, or `None`
/// once it has been followed for [`FOLLOW_FOR`].
pub fn next_read(poll: u32, since: SystemTime, now: SystemTime) -> Option<SystemTime> {
    if now.duration_since(since).unwrap_or_default() >= FOLLOW_FOR {
        return None;
    }
    let wait = FIRST_READ
        .checked_mul(2u32.saturating_pow(poll.saturating_sub(1).min(16)))
        .unwrap_or(LONGEST_READ)
        .min(LONGEST_READ);
    Some(now + wait)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_path_becomes_job_segments() {
        assert_eq!(job_path("team/app").unwrap(), "/job/team/job/app");
        assert_eq!(job_path("a b/c%d").unwrap(), "/job/a%20b/job/c%25d");
        assert!(job_path("team//app").is_err());
        let r = Request {
            job: "team/app".into(),
            parameters: serde_json::from_str(r#"{"SHA":"abc","N":"1 2&3"}"#).unwrap(),
        };
        let out = request("https://ci.example.com/jenkins", "bot", &r).unwrap();
        assert_eq!(
            out.url,
            "https://ci.example.com/jenkins/job/team/job/app/buildWithParameters"
        );
        assert_eq!(out.body_bytes().unwrap(), b"N=1+2%263&SHA=abc");
        let plain = request(
            "https://j.example",
            "bot",
            &Request {
                job: "app".into(),
                parameters: serde_json::Map::new(),
            },
        )
        .unwrap();
        assert_eq!(plain.url, "https://j.example/job/app/build");
        assert!(job_path("team/../app").is_err() && job_path("./app").is_err());
        assert!(matches!(
            server_error(
                500,
                b"<h2>java.lang.IllegalStateException: This build is not parameterized!</h2>"
            ),
            Some(Outcome::Permanent(_))
        ));
        assert_eq!(server_error(500, b"NullPointerException"), None);
    }

    #[test]
    fn the_queue_item_is_read_from_location_and_addressed_under_the_configured_url() {
        assert_eq!(queue_item("https://jenkins.example/queue/item/123/"), Some(123));
        assert_eq!(queue_item("http://evil.example/x/queue/item/7"), Some(7));
        assert_eq!(queue_item("https://jenkins.example/queue/item/abc/"), None);
        assert_eq!(queue_item("/job/x/"), None);
        let q = queue_request("https://ci.example.com/jenkins", "bot", "123").unwrap();
        assert_eq!(q.url, "https://ci.example.com/jenkins/queue/item/123/api/json");
        assert!(queue_request("https://ci.example.com", "bot", "../x").is_err());
    }

    #[test]
    fn queue_answers() {
        assert_eq!(
            read_queue(
                200,
                br#"{"_class":"hudson.model.Queue$LeftItem","cancelled":false,"executable":{"number":42,"url":"https://j/job/app/42/"}}"#
            ),
            Queue::Started {
                number: 42,
                url: Some("https://j/job/app/42/".into())
            }
        );
        assert_eq!(
            read_queue(200, br#"{"cancelled":true,"executable":null}"#),
            Queue::Cancelled
        );
        assert_eq!(
            read_queue(
                200,
                br#"{"why":"Waiting for next available executor","executable":null}"#
            ),
            Queue::Waiting(Some("Waiting for next available executor".into()))
        );
        assert_eq!(read_queue(404, b""), Queue::Forgotten);
        assert!(matches!(read_queue(503, b""), Queue::Unreadable(_)));
        assert!(matches!(read_queue(200, b"<html>"), Queue::Unreadable(_)));
    }

    #[test]
    fn reads_back_off_and_end() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(next_read(1, t0, t0), Some(t0 + FIRST_READ));
        assert_eq!(next_read(2, t0, t0), Some(t0 + FIRST_READ * 2));
        assert_eq!(next_read(40, t0, t0), Some(t0 + LONGEST_READ));
        assert_eq!(next_read(u32::MAX, t0, t0), Some(t0 + LONGEST_READ));
        assert_eq!(next_read(3, t0, t0 + FOLLOW_FOR), None);
    }

    proptest::proptest! {
        #[test]
        fn any_queue_answer_reads_without_panic(status in 0u16..1000, body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = read_queue(status, &body);
        }

        #[test]
        fn any_location_reads_without_panic(location in "\\PC{0,80}") {
            let _ = queue_item(&location);
        }
    }
}
