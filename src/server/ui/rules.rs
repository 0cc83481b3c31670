//! The rules page: each rule with its verdicts over the last 24 hours, and
//! an explain form that shows what a pasted payload would do, sending
//! nothing.

use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::render::page;
use super::session::Keys;
use super::{Session, message};
use crate::config::Config;
use crate::explain::{Explanation, format_request};
use crate::intake::Trust;
use crate::server::App;
use crate::store::{RecentVerdicts, RuleCounts};

/// The window of the counts.
const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The most summaries one page view reads for its counts.
const COUNTED: usize = 20_000;

#[derive(Debug, Serialize)]
struct RuleView<'a> {
    name: &'a str,
    sources: String,
    events: String,
    target: &'a str,
    counts: RuleCounts,
}

fn listed(v: &Option<Vec<String>>) -> String {
    v.as_ref().map_or_else(|| "any".to_owned(), |v| v.join(", "))
}

fn rule_views<'a>(config: &'a Config, verdicts: &RecentVerdicts) -> Vec<RuleView<'a>> {
    config
        .rules
        .rules()
        .iter()
        .map(|r| RuleView {
            name: &r.name,
            sources: listed(&r.sources),
            events: listed(&r.events),
            target: &r.target,
            counts: verdicts.rules.get(&r.name).cloned().unwrap_or_default(),
        })
        .collect()
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct ExplainForm {
    #[serde(default, skip_serializing)]
    csrf: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    headers: Option<String>,
    #[serde(default)]
    payload: String,
}

async fn render(
    app: &App,
    s: &Session,
    status: StatusCode,
    form: &ExplainForm,
    explanation: Option<serde_json::Value>,
    error: Option<String>,
) -> Response {
    let config = app.config.load();
    let since = SystemTime::now()
        .checked_sub(WINDOW)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let (verdicts, counts_error) = match app.store.verdicts(since, COUNTED).await {
        Ok(v) => (v, None),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: store error reading verdicts");
            (
                RecentVerdicts::default(),
                Some("The store cannot answer now: the counts are missing.".to_owned()),
            )
        }
    };
    page(
        status,
        "rules.html",
        json!({
            "title": "Rules",
            "nav": "rules",
            "logout": s.login,
            "csrf": s.csrf,
            "rules": rule_views(&config, &verdicts),
            "counted": verdicts.deliveries,
            "truncated_at": verdicts.truncated_at,
            "sources": config.sources.keys().collect::<Vec<_>>(),
            "form": form,
            "explanation": explanation,
            "error": error.or(counts_error),
        }),
    )
}

pub(super) async fn show(State(app): State<App>, Extension(s): Extension<Session>) -> Response {
    render(&app, &s, StatusCode::OK, &ExplainForm::default(), None, None).await
}

/// Extra headers from the form: one `Name: value` per line.
fn extra_headers(text: Option<&str>) -> Result<Vec<(String, String)>, String> {
    text.unwrap_or("")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| crate::explain::parse_header(l.trim()))
        .collect()
}

/// The explanation as the page shows it: each match's request as text.
fn view(x: &Explanation) -> serde_json::Value {
    let matched: Vec<_> = x
        .matched
        .iter()
        .map(|m| {
            json!({
                "rule": m.rule, "target": m.target, "group": m.group, "debounce": m.debounce,
                "error": m.error,
                "request_text": m.request.as_ref().map(|r| format_request(r, "")),
            })
        })
        .collect();
    json!({ "event": x.event, "matched": matched, "skipped": x.skipped, "errors": x.errors, "deferred": x.deferred })
}

pub(super) async fn explain(
    State(app): State<App>,
    Extension(s): Extension<Session>,
    form: Result<Form<ExplainForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return message(e.status(), "Bad form", &e.body_text()),
    };
    let config = app.config.load_full();
    if !s.allows(&Keys::of(&config), &form.csrf) {
        return message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The form's anti-CSRF token is missing or wrong.",
        );
    }
    let result = config
        .sources
        .get(&form.source)
        .ok_or_else(|| format!("unknown source `{}`", form.source))
        .and_then(|source| {
            let extra = extra_headers(form.headers.as_deref())?;
            let event = form.event.as_deref().map(str::trim).filter(|e| !e.is_empty());
            crate::explain::explain(
                &config,
                source,
                event,
                &extra,
                form.payload.as_bytes(),
                Trust::AssumeAuthentic,
            )
        });
    match result {
        Ok(x) => render(&app, &s, StatusCode::OK, &form, Some(view(&x)), None).await,
        Err(e) => render(&app, &s, StatusCode::BAD_REQUEST, &form, None, Some(e)).await,
    }
}
