//! What a CI's answer means for the job: one [`classify`] from status, body
//! and headers to an [`Outcome`], following the error policy in the module
//! doc of `target`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{
    TriggerRequest, buildkite, circleci, gitea_actions, github_actions, gitlab, http_endpoint, jenkins,
};

/// The response of a trigger call, as the dispatcher saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// What was created on the CI side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// What to read to learn the run, while the CI has only queued it (a
    /// Jenkins queue item's number): the store keeps a follow-up
    /// ([`crate::store::follow`]) until the run is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<String>,
}

/// What a response means for the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The pipeline or job was created.
    Created(TriggerResult),
    /// The CI accepted the call but chose not to run (CircleCI `200 {message}`).
    Skipped(String),
    /// Not processed; try again (after `after` when the server said so).
    Retry { reason: String, after: Option<Duration> },
    /// Will not succeed as is; dead-letter with this reason.
    Permanent(String),
}

/// Truncate a response body for records and messages.
pub fn truncate_body(body: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], body.len())
}

/// The error message of a CI error body (`{"message": ...}` or `{"error": ...}`), else the text.
pub fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        message: Option<serde_json::Value>,
        error: Option<serde_json::Value>,
    }
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    match serde_json::from_slice::<E>(body) {
        Ok(E { message: Some(m), .. }) => truncate_body(text(m).as_bytes(), 500),
        Ok(E { error: Some(e), .. }) => truncate_body(text(e).as_bytes(), 500),
        _ => truncate_body(body, 500),
    }
}

/// `RateLimit-Reset` values above this are Unix times (GitLab); smaller ones are
/// seconds from now (CircleCI).
const UNIX_TIME_THRESHOLD: u64 = 1_000_000_000;

/// Delay requested by `Retry-After` (seconds or HTTP date) or `RateLimit-Reset`
/// (seconds, or a Unix time as GitLab sends it).
///
/// These are numbers from outside, so every value is read without panicking:
/// a time at or behind `now` asks for no delay, one too far ahead to represent
/// asks for [`Duration::MAX`]. What is honoured is the dispatcher's decision
/// (never less than its backoff, never more than `max_backoff`); this only reads.
pub fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = get("retry-after") {
        if let Some(secs) = seconds(v) {
            return Some(secs);
        }
        if let Ok(date) = httpdate::parse_http_date(v) {
            return Some(until(date, now));
        }
    }
    // Past u64 reads as u64::MAX: a reset too far off to count, the longest wait.
    if let Some(v) = get("ratelimit-reset").and_then(seconds).map(|d| d.as_secs()) {
        if v > UNIX_TIME_THRESHOLD {
            let reset = UNIX_EPOCH.checked_add(Duration::from_secs(v));
            return Some(reset.map_or(Duration::MAX, |reset| until(reset, now)));
        }
        return Some(Duration::from_secs(v));
    }
    None
}

/// A delay in whole seconds (`Retry-After: 120`); a number too large for a
/// `u64` is the longest delay ([`Duration::MAX`]), which the dispatcher caps
/// at `max_backoff`, not no delay at all.
fn seconds(v: &str) -> Option<Duration> {
    match v.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Some(Duration::MAX),
        Err(_) => None,
    }
}

/// How long from `now` until `t`; zero when `t` has passed.
fn until(t: SystemTime, now: SystemTime) -> Duration {
    t.duration_since(now).unwrap_or_default()
}

/// Classify a response for `req`.
pub fn classify(req: &TriggerRequest, response: &Response, now: SystemTime) -> Outcome {
    let status = response.status;
    if (200..300).contains(&status) {
        return match req {
            TriggerRequest::Circleci(r) => circleci::created(r, status, &response.body),
            TriggerRequest::Gitlab(_) => gitlab::created(&response.body),
            TriggerRequest::GithubActions(_) => github_actions::created(&response.body),
            TriggerRequest::GiteaActions(_) => gitea_actions::created(&response.body),
            TriggerRequest::Buildkite(_) => buildkite::created(&response.body),
            TriggerRequest::Jenkins(_) => jenkins::created(response),
            TriggerRequest::Http(_) => http_endpoint::created(),
        };
    }
    let message = error_message(&response.body);
    if let (TriggerRequest::Jenkins(_), 500) = (req, status)
        && let Some(outcome) = jenkins::server_error(status, &response.body)
    {
        return outcome;
    }
    if matches!(status, 408 | 425 | 429) || status >= 500 {
        let after = match req {
            TriggerRequest::GithubActions(_) => github_actions::retry_wait(response, &message, now),
            _ => retry_after(&response.headers, now),
        };
        return Outcome::Retry {
            reason: format!("HTTP {status}: {message}"),
            after,
        };
    }
    if (300..400).contains(&status) {
        let location = response
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map_or_else(
                || "(no Location)".to_owned(),
                |l| truncate_body(l.as_bytes(), 300),
            );
        return Outcome::Permanent(format!(
            "HTTP {status} redirect to {location} was not followed: the project may have moved; update the trigger"
        ));
    }
    match req {
        TriggerRequest::Circleci(_) => circleci::failed(status, &message),
        TriggerRequest::Gitlab(_) => gitlab::failed(status, &message, response, now),
        TriggerRequest::GithubActions(_) => github_actions::failed(status, &message, response, now),
        TriggerRequest::GiteaActions(_) => gitea_actions::failed(status, &message),
        TriggerRequest::Buildkite(_) => buildkite::failed(status, &message, &response.body),
        TriggerRequest::Jenkins(_) => jenkins::failed(status, &message),
        TriggerRequest::Http(_) => Outcome::Permanent(format!("HTTP {status}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Response {
            status,
            headers: h,
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn a_redirects_location_is_cut_short_in_the_reason() {
        // The reason is stored and logged; the CI's headers are not ours to store whole.
        let location = format!("https://ci.example/{}", "x".repeat(10_000));
        let outcome = classify(
            &gitlab_req(),
            &response(301, &[("location", &location)], ""),
            SystemTime::now(),
        );
        let Outcome::Permanent(reason) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(reason.contains("redirect to https://ci.example/xxx"), "{reason}");
        assert!(reason.len() < 500, "{} bytes", reason.len());
    }

    fn gitlab_req() -> TriggerRequest {
        TriggerRequest::Gitlab(gitlab::Request {
            project: "a/b".into(),
            git_ref: "main".into(),
            variables: BTreeMap::new(),
            inputs: serde_json::Map::new(),
            rule_token: false,
        })
    }

    fn circle_req() -> TriggerRequest {
        TriggerRequest::Circleci(circleci::Request::Pipeline(circleci::PipelineRequest {
            project: "gh/a/b".into(),
            branch: Some("main".into()),
            tag: None,
            parameters: serde_json::Map::new(),
        }))
    }

    #[test]
    fn status_table() {
        let now = SystemTime::now();
        let cases: &[(u16, &str, &str)] = &[
            (
                201,
                r#"{"id":"5034460f-c7c4-4c43-9457-de07e2029e7b","state":"created","number":25,"created_at":"2024-01-01T00:00:00Z"}"#,
                "created",
            ),
            (
                400,
                r#"{"message":"Unexpected request body provided."}"#,
                "permanent",
            ),
            (401, r#"{"message":"Invalid token provided."}"#, "permanent"),
            (404, r#"{"message":"Project not found"}"#, "permanent"),
            (408, "", "retry"),
            (425, "", "retry"),
            (429, "Retry later", "retry"),
            (500, "oops", "retry"),
            (502, "", "retry"),
            (503, "", "retry"),
            (301, "", "permanent"),
        ];
        for (status, body, want) in cases {
            let got = classify(&circle_req(), &response(*status, &[], body), now);
            let kind = match got {
                Outcome::Created(_) => "created",
                Outcome::Skipped(_) => "skipped",
                Outcome::Retry { .. } => "retry",
                Outcome::Permanent(_) => "permanent",
            };
            assert_eq!(kind, *want, "status {status}");
        }
    }

    #[test]
    fn gitlab_too_many_pipelines_is_retried() {
        let body =
            r#"{"message":{"base":["Too many pipelines created in the last minute. Try again later."]}}"#;
        let got = classify(&gitlab_req(), &response(400, &[], body), SystemTime::now());
        assert!(
            matches!(got, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(60)),
            "{got:?}"
        );
        let other = classify(
            &gitlab_req(),
            &response(400, &[], r#"{"message":{"base":["Reference not found"]}}"#),
            SystemTime::now(),
        );
        assert!(matches!(other, Outcome::Permanent(_)));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let h = response(429, &[("retry-after", "7")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let h = response(429, &[("retry-after", &date)], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let h = response(429, &[("ratelimit-reset", "2000000045")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(45)));
        let h = response(429, &[("ratelimit-reset", "12")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(12)));
    }

    #[test]
    fn retry_after_out_of_range_and_past_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let h = response(429, &[("ratelimit-reset", "18446744073709551615")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::MAX));
        let h = response(429, &[("ratelimit-reset", "9999999999999999999")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::MAX));
        let h = response(429, &[("ratelimit-reset", "1999999999")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        let h = response(429, &[("retry-after", "0")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        let h = response(429, &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        let h = response(429, &[("retry-after", "18446744073709551616")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::MAX));
        let h = response(429, &[("retry-after", "99999999999999999999999")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::MAX));
        let h = response(429, &[("ratelimit-reset", "99999999999999999999999")], "").headers;
        assert_eq!(retry_after(&h, now), Some(Duration::MAX));
        let h = response(429, &[("retry-after", "-5")], "").headers;
        assert_eq!(retry_after(&h, now), None);
    }

    /// One stored request of every target kind.
    fn every_kind() -> Vec<TriggerRequest> {
        [
            r#"{"api":"circleci_pipeline","project":"gh/a/b","branch":"main"}"#,
            r#"{"api":"gitlab_pipeline","project":"a/b","ref":"main"}"#,
            r#"{"api":"github_workflow_dispatch","repository":"a/b","workflow":"w.yml","ref":"main"}"#,
            r#"{"api":"github_repository_dispatch","repository":"a/b","event_type":"e"}"#,
            r#"{"api":"gitea_workflow_dispatch","repository":"a/b","workflow":"w.yml","ref":"main"}"#,
            r#"{"api":"buildkite_build","organization":"a","pipeline":"b","commit":"HEAD","branch":"main"}"#,
            r#"{"api":"jenkins_build","job":"a/b"}"#,
            r#"{"api":"http_request","method":"POST","path":"/"}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect()
    }

    proptest! {
        /// Any answer from any CI, to any kind of trigger: no panic; a 2xx
        /// is a created run, a 408/425/429/5xx a retry.
        #[test]
        fn any_answer_to_any_target_is_classified(
            status in 100u16..600,
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                "\\PC{0,100}".prop_map(String::into_bytes),
                Just(br#"{"message":"m","errors":[1,"x",{"a":null}],"workflow_run_id":-1,"id":9e99,"number":"7"}"#.to_vec()),
            ],
            headers in proptest::collection::vec(
                (
                    prop_oneof![Just("retry-after"), Just("location"), Just("x-ratelimit-remaining"), Just("x-ratelimit-reset"), Just("ratelimit-reset")],
                    "\\PC{0,30}",
                ),
                0..4,
            ),
            now in 0u64..=400_000_000_000,
        ) {
            let mut h = http::HeaderMap::new();
            for (k, v) in headers {
                if let Ok(v) = http::HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            }
            let response = Response { status, headers: h, body: bytes::Bytes::from(body) };
            for req in every_kind() {
                let outcome = classify(&req, &response, UNIX_EPOCH + Duration::from_secs(now));
                if (200..300).contains(&status) {
                    let created = matches!(outcome, Outcome::Created(_) | Outcome::Skipped(_));
                    prop_assert!(created, "{outcome:?}");
                }
                if matches!(status, 408 | 425 | 429) || status >= 500 {
                    let retry = matches!(outcome, Outcome::Retry { .. });
                    prop_assert!(retry, "{outcome:?}");
                }
            }
        }

        /// Any header text and any clock: no panic, and what a value asks
        /// for never depends on anything but the text and `now`.
        #[test]
        fn retry_after_reads_any_header(
            name in prop_oneof![Just("retry-after"), Just("ratelimit-reset")],
            value in prop_oneof![
                "\\PC{0,40}",
                "[0-9]{1,25}",
                any::<u64>().prop_map(|n| n.to_string()),
                any::<u32>().prop_map(|n| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(n.into()))),
            ],
            now_secs in 0u64..=400_000_000_000,
        ) {
            let Ok(v) = http::HeaderValue::from_str(&value) else { return Ok(()) };
            let mut h = http::HeaderMap::new();
            h.insert(name, v);
            let now = UNIX_EPOCH + Duration::from_secs(now_secs);
            let got = retry_after(&h, now);
            prop_assert_eq!(got, retry_after(&h, now));
            let retry = classify(&circle_req(), &Response { status: 429, headers: h, body: bytes::Bytes::new() }, now);
            let is_retry = matches!(retry, Outcome::Retry { .. });
            prop_assert!(is_retry);
        }
    }
}
