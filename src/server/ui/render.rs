//! The dashboard's pages: templates compiled into the binary, escaped as
//! HTML, and the headers every answer carries (a strict CSP: nothing but
//! this origin, no inline script or style, no framing).

use std::sync::OnceLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;

/// The templates, by name. `.html` names are escaped as HTML.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("deliveries.html", include_str!("templates/deliveries.html")),
    ("rows.html", include_str!("templates/rows.html")),
    ("delivery.html", include_str!("templates/delivery.html")),
    ("jobs.html", include_str!("templates/jobs.html")),
    ("rules.html", include_str!("templates/rules.html")),
    ("message.html", include_str!("templates/message.html")),
    ("again.html", include_str!("templates/again.html")),
];

/// `Content-Security-Policy` of every answer.
pub(super) const CSP: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            // The templates are part of the binary; a test renders each one.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "dashboard template does not compile");
            }
        }
        env.add_filter("time", time);
        env.add_filter("link", link);
        env.add_filter("cut", cut);
        env
    })
}

/// A receipt time (ms since the epoch) as RFC 3339, to the second.
fn time(ms: i64) -> String {
    let t = crate::store::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// At most `n` characters of `text`, with `…` when cut: a row of a list
/// stays a row whatever a sender puts in a repository's name.
fn cut(text: String, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// A URL from outside (a CI's answer) fit for `href`: only `http` and
/// `https`; anything else (`javascript:`) is shown as text, not linked.
fn link(url: String) -> Option<String> {
    let lower = url.trim_start().to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")).then_some(url)
}

/// A page rendered from `name` with `ctx`, and status `status`.
pub(super) fn page(status: StatusCode, name: &str, ctx: impl Serialize) -> Response {
    let html = environment()
        .get_template(name)
        .and_then(|t| t.render(minijinja::Value::from(minijinja::value::Serde(&ctx))));
    match html {
        Ok(html) => {
            with_headers((status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
        }
        Err(e) => {
            tracing::error!(template = name, error = %e, "dashboard page failed to render");
            with_headers(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page could not be rendered; the log says why\n",
                )
                    .into_response(),
            )
        }
    }
}

/// The headers every dashboard answer carries.
pub(super) fn with_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: under it a browser sends `Origin: null` with its
    // own form posts, which the cross-site check must refuse.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        let env = environment();
        for (name, _) in TEMPLATES {
            assert!(env.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn long_text_is_cut_on_a_character() {
        assert_eq!(cut("abc".into(), 3), "abc");
        assert_eq!(cut("ééééé".into(), 2), "éé…");
    }

    #[test]
    fn only_web_links_are_linked() {
        assert_eq!(
            link("https://ci.example/p/1".into()).as_deref(),
            Some("https://ci.example/p/1")
        );
        assert_eq!(link("javascript:alert(1)".into()), None);
        assert_eq!(link(" JavaScript:alert(1)".into()), None);
        assert_eq!(link("data:text/html,x".into()), None);
    }

    #[test]
    fn text_is_escaped() {
        let r = environment()
            .get_template("message.html")
            .unwrap()
            .render(minijinja::Value::from(minijinja::value::Serde(
                serde_json::json!({ "title": "t", "message": "<script>x</script>" }),
            )))
            .unwrap();
        assert!(r.contains("&lt;script&gt;"), "{r}");
        assert!(!r.contains("<script>x"), "{r}");
    }
}
