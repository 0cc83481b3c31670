//! What a payload would do, without sending anything: the headers its
//! sender would send, every rule's verdict, and the exact requests of the
//! matches with secrets as `***`. Shared by `hookbridge explain`, the
//! config's test cases, and the dashboard's explain form.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;
use crate::event::Event;
use crate::intake::Trust;
use crate::rules::{Deferred, Errored, Evaluation, Files, Skipped};
use crate::source::Source;
use crate::target::OutboundRequest;

/// Every rule's verdict on one payload.
#[derive(Debug, serde::Serialize)]
pub struct Explanation {
    pub event: Event,
    pub matched: Vec<Rendered>,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<Errored>,
    /// Rules that wait for the changed files (`paths_unknown = "fetch"`):
    /// the daemon reads them from the VCS; `explain --fetch` does too.
    pub deferred: Vec<Deferred>,
    /// With `--fetch`: where the files were read, or why they could not be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<String>,
}

/// Explain `body` as `source` would receive it for `event`, with `extra`
/// headers. `Trust::AssumeAuthentic` skips the signature (a pasted payload
/// has none); the error is the sender's answer, with its status.
pub fn explain(
    config: &Config,
    source: &Source,
    event: Option<&str>,
    extra: &[(String, String)],
    body: &[u8],
    trust: Trust,
) -> Result<Explanation, String> {
    let headers = request_headers(source, body, event, extra)?;
    let intake = crate::intake::process(
        config,
        source,
        &headers,
        body,
        std::time::SystemTime::now(),
        trust,
    )
    .map_err(|e| format!("{} ({})", e, e.status()))?;
    Ok(Explanation {
        matched: render(config, &intake.evaluation),
        skipped: intake.evaluation.skipped,
        errors: intake.evaluation.errors,
        deferred: intake.evaluation.deferred,
        fetched: None,
        event: intake.event,
    })
}

/// `explain --fetch`: read the changed files of `x`'s deferred rules from
/// the source's VCS, as the daemon would, and decide those rules with them.
pub async fn fetch(config: &Config, source: &Source, x: &mut Explanation, body: &[u8], headers: &HeaderMap) {
    if x.deferred.is_empty() {
        return;
    }
    let name = &x.event.source;
    let read = match (
        config.source_api(name),
        crate::rules::status::vcs_of(&x.event),
        crate::vcs::files::FilesQuery::of(&x.event),
    ) {
        // `explain` loads the config without the daemon's environment
        // checks: an unset variable leaves the token empty.
        (Some(api), Some(_), Ok(_)) if api.token.expose().is_empty() => {
            crate::vcs::files::FilesRead::Failed(format!(
                "the token of [sources.{name}.api] is empty: set it (its variable or file) as for the daemon"
            ))
        }
        (Some(api), Some(vcs), Ok(query)) => {
            let transport = crate::target::client::Http::new();
            let timeout = config.retry.request_timeout;
            crate::vcs::files::read(
                &transport,
                vcs,
                api,
                &query,
                timeout,
                std::time::SystemTime::now(),
            )
            .await
        }
        (_, _, Err(why)) => crate::vcs::files::FilesRead::Failed(why),
        _ => crate::vcs::files::FilesRead::Failed(format!("source `{name}` has no api to read them with")),
    };
    let mut event = x.event.clone();
    let files = match read {
        crate::vcs::files::FilesRead::Read(read) => {
            x.fetched = Some(format!(
                "{} changed files read from {} ({} request{})",
                read.paths.len(),
                read.from,
                read.requests,
                if read.requests == 1 { "" } else { "s" }
            ));
            event = event.with_paths(read.paths);
            Files::Read
        }
        crate::vcs::files::FilesRead::Retry { reason, .. } | crate::vcs::files::FilesRead::Failed(reason) => {
            x.fetched = Some(format!("the changed files could not be read: {reason}"));
            Files::Unreadable(reason)
        }
    };
    let visible = source.visible_headers(headers);
    for d in std::mem::take(&mut x.deferred) {
        match crate::intake::evaluate_deferred(config, &event, &visible, body, &d.rule, files.clone()) {
            Ok(e) => {
                x.matched.extend(render(config, &e));
                x.skipped.extend(e.skipped);
                x.errors.extend(e.errors);
            }
            Err(e) => x.errors.push(Errored {
                rule: d.rule,
                error: e.to_string(),
            }),
        }
    }
}

/// Request headers as the source's sender would send them for `event`, plus `extra`
/// (`K:V` pairs; later ones replace earlier ones of the same name).
pub fn request_headers(
    source: &Source,
    payload: &[u8],
    event: Option<&str>,
    extra: &[(String, String)],
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    // A pasted payload may start with a blank line.
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    let json = first.is_some_and(|b| *b == b'{' || *b == b'[');
    let mut pairs = vec![(
        "Content-Type".to_owned(),
        if json {
            "application/json"
        } else {
            "application/x-www-form-urlencoded"
        }
        .to_owned(),
    )];
    if let Some(event) = event {
        pairs.extend(source.scheme.event_headers(event));
    }
    pairs.extend(extra.iter().cloned());
    for (k, v) in pairs {
        let name =
            HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| format!("invalid header name `{k}`"))?;
        let value = HeaderValue::from_str(v.trim()).map_err(|_| format!("invalid value for header `{k}`"))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// Parse one header, `Name: value` (`--header`, a line of the dashboard's explain form).
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not a header; write `Name: value`"))?;
    if k.trim().is_empty() {
        return Err(format!("`{s}` has an empty header name"));
    }
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// A matched rule with the request it would send (secrets as `***`).
#[derive(Debug, serde::Serialize)]
pub struct Rendered {
    pub rule: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<OutboundRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The concurrency group the job would join (`[rules.concurrency]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How long it would wait before its first attempt (`debounce`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debounce: Option<String>,
    /// What the job would report on its commit (`[rules.status]`):
    /// `<context> on <repository>@<short sha>`, or `not reported: <why>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The exact requests of every matched rule, with secrets redacted.
pub fn render(config: &Config, evaluation: &Evaluation) -> Vec<Rendered> {
    evaluation
        .matched
        .iter()
        .map(|m| {
            let request = config
                .targets
                .get(&m.target)
                .ok_or_else(|| format!("unknown target `{}`", m.target))
                .and_then(|t| {
                    let mut request = t.request(&m.request).map_err(|e| e.to_string())?;
                    t.mark(&mut request, "<job id>");
                    Ok(request)
                });
            let (request, error) = match request {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(e)),
            };
            Rendered {
                rule: m.rule.clone(),
                target: m.target.clone(),
                request,
                error,
                group: m.group.clone(),
                debounce: (!m.debounce.is_zero()).then(|| humantime::format_duration(m.debounce).to_string()),
                status: status_line(m),
            }
        })
        .collect()
}

/// The status a match would report, in one line (`explain`).
fn status_line(m: &crate::rules::Matched) -> Option<String> {
    match (&m.status, &m.status_unreported) {
        (Some(s), _) => {
            let short: String = s.sha.chars().take(7).collect();
            Some(format!("{} on {}@{short}", s.context, s.repository))
        }
        (None, Some(why)) => Some(format!("not reported: {why}")),
        (None, None) => None,
    }
}

/// Print a request as an HTTP message: request line, headers, pretty JSON body.
pub fn format_request(r: &OutboundRequest, indent: &str) -> String {
    let mut out = format!("{indent}{} {}\n", r.method, r.url);
    for h in &r.headers {
        out.push_str(&format!("{indent}{}: {}\n", h.name, h.value));
    }
    // JSON pretty-printed; a form or a text body as it goes on the wire.
    let body = match r.encoding {
        crate::target::Encoding::Json => serde_json::to_string_pretty(&r.body).unwrap_or_default(),
        _ => r
            .body_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
    };
    if r.body.is_null() {
        return out;
    }
    out.push_str(indent);
    out.push('\n');
    for line in body.lines() {
        out.push_str(&format!("{indent}{line}\n"));
    }
    out
}
