//! The delivery dashboard, `/ui` on the admin listener: every delivery,
//! every rule's verdict, every attempt, and replay, in the browser.
//!
//! Pages are rendered on the server from templates in the binary and read
//! without JavaScript; a small script adds live updates. Who may see them
//! is [`session`]'s business; what each page shows is in [`deliveries`] and
//! [`rules`].

mod deliveries;
mod render;
mod rules;
mod session;

use std::time::SystemTime;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::App;
use super::origin::{addressed_to, all_loopback, cross_site};
use render::{page, with_headers};
use session::Keys;

/// The largest form the dashboard reads: the explain form's pasted payload.
const MAX_FORM: usize = 2 * 1024 * 1024;

pub(crate) fn router(app: App) -> Router {
    let gated = Router::new()
        .route("/ui/deliveries", get(deliveries::list))
        .route("/ui/deliveries/rows", get(deliveries::rows))
        .route("/ui/deliveries/{id}", get(deliveries::show))
        .route("/ui/deliveries/{id}/jobs", get(deliveries::jobs))
        .route("/ui/deliveries/{id}/replay", post(deliveries::replay))
        .route("/ui/rules", get(rules::show))
        .route("/ui/rules/explain", post(rules::explain))
        .route("/ui/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(app.clone(), gate));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/deliveries") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/deliveries") }))
        .route("/ui/login", get(login_page).post(login))
        .route(
            "/ui/assets/ui.css",
            get(|| async { asset("text/css", include_str!("assets/ui.css")) }),
        )
        .route(
            "/ui/assets/ui.js",
            get(|| async { asset("text/javascript", include_str!("assets/ui.js")) }),
        )
        .merge(gated)
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .with_state(app)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    with_headers(
        (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "private, max-age=300"),
            ],
            body,
        )
            .into_response(),
    )
}

/// The session a gated request runs in: its anti-CSRF token, and whether
/// there is a login to end.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) nonce: String,
    pub(super) csrf: String,
    pub(super) login: bool,
}

impl Session {
    /// Whether a form's `csrf` field is this session's.
    fn allows(&self, keys: &Keys, given: &str) -> bool {
        keys.csrf_ok(&self.nonce, given)
    }
}

/// An answer of the dashboard that is not a page of its own: a short
/// message with its status, as a page (or JSON for the script's requests).
pub(super) fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(
        status,
        "message.html",
        json!({ "title": title, "message": text, "back": "/ui/deliveries" }),
    )
}

/// Who may see the pages: with `[admin] token`, a session from the login
/// page; without, requests addressed to a loopback name only. A POST must
/// also come from this site (its form's `csrf` field is checked by the
/// handler, which reads the form).
async fn gate(State(app): State<App>, headers: HeaderMap, mut request: Request, next: Next) -> Response {
    let config = app.config.load();
    let keys = Keys::of(&config);
    let hosts = addressed_to(request.uri(), &headers);
    if !keys.login && !all_loopback(hosts.as_deref()) {
        return message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Without [admin] token the dashboard is served only to requests addressed to a loopback host (localhost, 127.0.0.1, [::1]).",
        );
    }
    if request.method() == Method::POST && cross_site(&headers, hosts.as_deref()) {
        return message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Cross-site requests are refused.",
        );
    }
    let Some(nonce) = keys.session(&headers, SystemTime::now()) else {
        if let Some(path) = followed_from_elsewhere(&request, &headers) {
            return page(StatusCode::OK, "again.html", json!({ "path": path }));
        }
        if request.method() == Method::GET
            && !request.uri().path().ends_with("/rows")
            && !request.uri().path().ends_with("/jobs")
        {
            let next = request
                .uri()
                .path_and_query()
                .map_or("/ui/deliveries", |p| p.as_str());
            let to = format!(
                "/ui/login?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", next)
                    .finish()
            );
            return with_headers(Redirect::to(&to).into_response());
        }
        return message(
            StatusCode::UNAUTHORIZED,
            "Log in",
            "Your session has ended; log in again.",
        );
    };
    let csrf = keys.csrf(&nonce);
    request.extensions_mut().insert(Session {
        nonce,
        csrf,
        login: keys.login,
    });
    with_headers(next.run(request).await)
}

/// A link followed from another site (a chat message, a pull request)
/// arrives without the `SameSite=Strict` session cookie. Such a navigation
/// is answered with a page that opens the same address again, from this
/// site, so that the browser sends the cookie and a logged-in user lands
/// where the link points (a user without a session then gets the login
/// page). Only a top-level `GET` the browser marks as cross-site qualifies.
fn followed_from_elsewhere(request: &Request, headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let elsewhere = matches!(header("sec-fetch-site"), Some("cross-site" | "same-site"));
    let navigation = header("sec-fetch-mode") == Some("navigate");
    let path = request.uri().path_and_query()?.as_str();
    (request.method() == Method::GET && elsewhere && navigation && path.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| path.to_owned())
}

/// Where to go after logging in: a dashboard path, never another site.
fn next_page(next: Option<&str>) -> String {
    // Printable ASCII only: it goes back in a `Location` header.
    next.filter(|n| n.starts_with("/ui/") && !n.contains('\\') && n.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("/ui/deliveries")
        .to_owned()
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let keys = Keys::of(&app.config.load());
    let next = next_page(query.as_ref().ok().and_then(|q| q.next.as_deref()));
    if !keys.login || keys.session(&headers, SystemTime::now()).is_some() {
        return with_headers(Redirect::to(&next).into_response());
    }
    login_form(StatusCode::OK, &next, None)
}

fn login_form(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    page(
        status,
        "login.html",
        json!({
            "title": "Log in",
            "next": next,
            "error": error,
            "hours": session::LIFETIME.as_secs() / 3600,
        }),
    )
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(app): State<App>,
    uri: Uri,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if cross_site(&headers, addressed_to(&uri, &headers).as_deref()) {
        return message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Cross-site requests are refused.",
        );
    }
    let Ok(Form(form)) = form else {
        return login_form(
            StatusCode::BAD_REQUEST,
            "/ui/deliveries",
            Some("The form was not readable."),
        );
    };
    let config = app.config.load();
    let next = next_page(form.next.as_deref());
    if !config.admin.accepts(&form.token) {
        tracing::warn!("dashboard login refused: wrong or missing admin token");
        return login_form(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That is not the admin token."),
        );
    }
    let keys = Keys::of(&config);
    let cookie = session::set_cookie(Some(keys.issue(SystemTime::now())), &headers);
    tracing::info!("dashboard login");
    let mut r = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    with_headers(r)
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(app): State<App>,
    axum::Extension(s): axum::Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let keys = Keys::of(&app.config.load());
    if !s.allows(&keys, &form.csrf) {
        return message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The form's anti-CSRF token is missing or wrong.",
        );
    }
    let mut r = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(None, &headers)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
