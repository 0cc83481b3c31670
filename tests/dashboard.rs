//! The delivery dashboard in a real browser: headless Chromium, driven over
//! WebDriver, against the real daemon with a signed GitHub push and the
//! stand-in GitLab API (which checks every trigger against GitLab's schema).
//! The screenshots in `docs/` are taken by this test.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use support::browser::{self, Driver};
use support::ci::{GITLAB_TRIGGER_TOKEN, Reply, StandIn};
use support::daemon::{Daemon, Workspace};
use support::{github_signature, payload, wait_for};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const ADMIN_TOKEN: &str = "dashboard-admin-token-5f2c9e";
const GUID: &str = "f4a1c2d0-5b7e-11f0-8c1a-3a5e2d9b7c41";

const ENV: &[(&str, &str)] = &[
    ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
    ("GITLAB_TRIGGER_TOKEN", GITLAB_TRIGGER_TOKEN),
    ("ADMIN_TOKEN", ADMIN_TOKEN),
];

/// Every secret the daemon holds: none may appear in a page, a cookie or a log line.
const SECRETS: &[&str] = &[GITHUB_SECRET, GITLAB_TRIGGER_TOKEN, ADMIN_TOKEN];

fn config(ci: &str, admin_token: bool) -> String {
    let token = if admin_token {
        "token = \"env:ADMIN_TOKEN\""
    } else {
        ""
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[admin]
listen = "127.0.0.1:0"
{token}

[retry]
max_attempts = 3
initial_backoff = "100ms"
max_backoff = "200ms"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.gitlab]
type = "gitlab"
url = "{ci}"
token = "env:GITLAB_TRIGGER_TOKEN"

[[rules]]
name = "build-master"
source = "github"
events = ["push"]
branches = ["master"]
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "{{{{ event.branch }}}}"
variables = {{ SHA = "{{{{ event.sha }}}}" }}

[[rules]]
name = "pr-pipeline"
source = "github"
events = ["pull_request"]
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "{{{{ event.branch }}}}"
"#
    )
}

async fn push(daemon: &Daemon, guid: &str) -> Value {
    let body = payload("github/push.json");
    let r = reqwest::Client::new()
        .post(daemon.hook_url("github"))
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", guid)
        .header("X-Hub-Signature-256", github_signature(GITHUB_SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

/// The delivery as the admin API shows it.
async fn api_delivery(daemon: &Daemon, id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/deliveries/{id}", daemon.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Wait for the browser to arrive at `path` (a click starts a navigation;
/// it may not have ended when the click returns).
async fn arrive(c: &Client, path: &str) {
    arrive_where(c, &format!("the browser at {path}"), |p, _| p == path).await;
}

/// Wait for the browser to arrive at a URL whose query holds `needle`.
async fn arrive_query(c: &Client, needle: &str) {
    arrive_where(c, needle, |_, q| q.is_some_and(|q| q.contains(needle))).await;
}

/// Wait for a loaded page whose URL's path and query pass `at`.
async fn arrive_where(c: &Client, what: &str, at: impl Fn(&str, Option<&str>) -> bool) {
    wait_for(Duration::from_secs(20), what, async || {
        let url = c.current_url().await.unwrap();
        let ready = c.execute("return document.readyState", vec![]).await.unwrap();
        if at(url.path(), url.query()) && ready == json!("complete") {
            Ok(())
        } else {
            Err(format!("{url} ({ready})"))
        }
    })
    .await;
}

/// Wait for an element to be on the page.
async fn shown(c: &Client, css: &str) -> String {
    wait_for(Duration::from_secs(20), css, async || {
        match c.find(Locator::Css(css)).await {
            Ok(e) => Ok(e.text().await.unwrap()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// The daemon (admin token set) after one push whose job the stand-in
/// refused: dead-lettered at once. Later triggers are accepted.
async fn dead_lettered() -> (StandIn, Workspace, Daemon) {
    let ci = StandIn::start().await;
    ci.script([Reply::Status(400)]);
    let ws = Workspace::new(&config(&ci.url, true));
    let daemon = ws.start(ENV);
    let summary = push(&daemon, GUID).await;
    assert_eq!(summary["matched"][0]["rule"], "build-master", "{summary}");
    wait_for(
        Duration::from_secs(20),
        "the job to be dead-lettered",
        async || {
            let d = api_delivery(&daemon, GUID).await;
            match d["jobs"][0]["state"].as_str() {
                Some("dead") => Ok(()),
                _ => Err(d["jobs"][0]["state"].to_string()),
            }
        },
    )
    .await;
    (ci, ws, daemon)
}

async fn css_count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.unwrap().len()
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

/// The page's HTML holds no secret.
async fn no_secret_in(c: &Client, page: &str) {
    let html = c.source().await.unwrap();
    for s in SECRETS {
        assert!(!html.contains(s), "{page} shows a secret");
    }
}

/// Every resource the page loaded came from the dashboard's own origin.
async fn same_origin_only(c: &Client, origin: &str) {
    let names = c
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    for name in names.as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(name.starts_with(origin), "a request to another origin: {name}");
    }
}

async fn log_in(c: &Client, admin: &str, token: &str) {
    c.goto(&format!("{admin}/ui/")).await.unwrap();
    arrive(c, "/ui/login").await;
    type_into(c, "token", token).await;
    press(c, Locator::Css("form.login button")).await;
}

/// A page of another site (`localhost`, where the dashboard is at
/// `127.0.0.1`) with one link, `#go`, to `to`.
async fn link_page(to: &str) -> String {
    let html =
        format!(r#"<!doctype html><title>chat</title><a id="go" href="{to}">the failing delivery</a>"#);
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(html) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://localhost:{port}/")
}

fn save_screenshot(png: &[u8], name: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(path, png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_delivery_reads_why_and_replays_it_in_the_browser() {
    if !browser::available() {
        return;
    }
    let (ci, _ws, daemon) = dead_lettered().await;

    let driver = Driver::start().await;
    let c = driver.session(true).await;
    let admin = daemon.admin.clone();

    // A wrong token gets the login page again, with the reason.
    log_in(&c, &admin, "not-the-token").await;
    arrive(&c, "/ui/login").await;
    assert!(shown(&c, "p.error").await.contains("not the admin token"));
    no_secret_in(&c, "the login page").await;

    // The right one: the deliveries list.
    type_into(&c, "token", ADMIN_TOKEN).await;
    press(&c, Locator::Css("form.login button")).await;
    arrive(&c, "/ui/deliveries").await;
    for cookie in c.get_all_cookies().await.unwrap() {
        for s in SECRETS {
            assert!(!cookie.value().contains(s), "a cookie holds a secret");
        }
    }

    // Live updates: a second push appears without reloading the page.
    assert_eq!(css_count(&c, "html[data-script=on]").await, 1, "the script runs");
    c.execute("window.hookbridgeMarker = 42", vec![]).await.unwrap();
    assert_eq!(css_count(&c, "#rows tr").await, 1);
    push(&daemon, "f4a1c2d0-5b7e-11f0-8c1a-000000000002").await;
    wait_for(
        Duration::from_secs(20),
        "the new delivery's row",
        async || match css_count(&c, "#rows tr").await {
            2 => Ok(()),
            n => Err(format!("{n} rows")),
        },
    )
    .await;
    let marker = c.execute("return window.hookbridgeMarker", vec![]).await.unwrap();
    assert_eq!(marker, json!(42), "the page was not reloaded");
    save_screenshot(&c.screenshot().await.unwrap(), "ui-deliveries.png");
    same_origin_only(&c, &admin).await;
    no_secret_in(&c, "the deliveries list").await;

    // Find the delivery by the GUID GitHub shows, and open it.
    type_into(&c, "q", GUID).await;
    press(&c, Locator::Css("form.filters button[type=submit]")).await;
    arrive_query(&c, "q=f4a1c2d0").await;
    assert_eq!(css_count(&c, "#rows tr").await, 1);
    press(&c, Locator::LinkText(GUID)).await;
    shown(&c, "tr.v-skipped").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .starts_with("/ui/deliveries/")
    );

    // The skipped rule and its reason.
    let skipped = text_of(&c, "tr.v-skipped").await;
    assert!(skipped.contains("pr-pipeline"), "{skipped}");
    assert!(
        skipped.contains("event 'push' not in events [pull_request]"),
        "{skipped}"
    );
    // The dead job: one attempt, HTTP 400, and the exact request with the token hidden.
    assert_eq!(css_count(&c, "tr.attempt").await, 1);
    assert!(text_of(&c, ".job .status").await.contains("dead"));
    let request = c
        .find(Locator::Css(".job details pre"))
        .await
        .unwrap()
        .html(true)
        .await
        .unwrap();
    assert!(request.contains("***"), "{request}");

    // Replay the dead job: the new attempt appears without reloading, and
    // the section the user opened stays open.
    let job = api_delivery(&daemon, GUID).await["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let opened = format!("return document.getElementById('request-{job}').open");
    press(&c, Locator::Css(&format!("#request-{job} summary"))).await;
    assert_eq!(c.execute(&opened, vec![]).await.unwrap(), json!(true));
    c.execute("window.hookbridgeMarker = 43", vec![]).await.unwrap();
    press(&c, Locator::Css("form.replay button")).await;
    wait_for(
        Duration::from_secs(20),
        "the replayed attempt on the page",
        async || match css_count(&c, "tr.attempt").await {
            2 => Ok(()),
            n => Err(format!("{n} attempts shown")),
        },
    )
    .await;
    let marker = c.execute("return window.hookbridgeMarker", vec![]).await.unwrap();
    assert_eq!(marker, json!(43), "the page was not reloaded");
    assert_eq!(
        c.execute(&opened, vec![]).await.unwrap(),
        json!(true),
        "still open"
    );
    wait_for(Duration::from_secs(20), "the job to be done", async || {
        let state = text_of(&c, ".job .status").await;
        if state.contains("done") {
            Ok(())
        } else {
            Err(state)
        }
    })
    .await;
    assert_eq!(ci.requests().len(), 3, "the two pushes and the replay");
    // The whole page, from the top, for the docs.
    c.set_window_size(1280, 2200).await.unwrap();
    c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    save_screenshot(&c.screenshot().await.unwrap(), "ui-delivery.png");
    c.set_window_size(1280, 1000).await.unwrap();
    same_origin_only(&c, &admin).await;
    no_secret_in(&c, "the delivery page").await;

    // A link to a delivery followed from another site (a chat, a pull
    // request) opens it: the session cookie is `SameSite=Strict`, and the
    // dashboard opens the address again from its own site.
    let delivery_url = c.current_url().await.unwrap().to_string();
    let elsewhere = link_page(&delivery_url).await;
    c.goto(&elsewhere).await.unwrap();
    press(&c, Locator::Id("go")).await;
    assert!(shown(&c, "tr.v-skipped").await.contains("pr-pipeline"));
    assert_eq!(c.current_url().await.unwrap().as_str(), delivery_url);

    // The rules page: counts, and the explain form sends nothing.
    c.goto(&format!("{admin}/ui/rules")).await.unwrap();
    let rules = text_of(&c, "table.rules").await;
    assert!(rules.contains("build-master"), "{rules}");
    let sent = ci.requests().len();
    type_into(&c, "x-event", "push").await;
    let body = String::from_utf8(payload("github/push.json")).unwrap();
    c.execute(
        "document.getElementById('x-payload').value = arguments[0]",
        vec![json!(body)],
    )
    .await
    .unwrap();
    press(&c, Locator::Css("form.explain button")).await;
    let explained = shown(&c, "#explanation").await;
    assert!(explained.contains("matched build-master"), "{explained}");
    assert!(explained.contains("***"), "{explained}");
    assert!(explained.contains("pr-pipeline"), "{explained}");
    no_secret_in(&c, "the rules page").await;
    assert_eq!(ci.requests().len(), sent, "explain sent nothing");

    // On a phone: no page is wider than the screen.
    c.set_window_size(390, 844).await.unwrap();
    for path in ["/ui/deliveries", "/ui/rules"] {
        c.goto(&format!("{admin}{path}")).await.unwrap();
        let fits = c
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(fits, json!(true), "{path} is wider than a phone's screen");
    }

    // Log out: the dashboard asks for the token again.
    c.set_window_size(1280, 1000).await.unwrap();
    press(&c, Locator::Css("form.logout button")).await;
    arrive(&c, "/ui/login").await;
    c.goto(&format!("{admin}/ui/deliveries")).await.unwrap();
    arrive(&c, "/ui/login").await;
    c.close().await.unwrap();

    let logs = daemon.logs();
    for s in SECRETS {
        assert!(!logs.contains(s), "a log line holds a secret");
    }
}

/// Pressing a button or a link (the navigation it starts may not have
/// ended when this returns).
async fn press(c: &Client, at: Locator<'_>) {
    c.find(at).await.unwrap().click().await.unwrap();
}

/// Typing into the field with this id.
async fn type_into(c: &Client, id: &str, text: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_works_with_javascript_off() {
    if !browser::available() {
        return;
    }
    let (_ci, _ws, daemon) = dead_lettered().await;
    let driver = Driver::start().await;
    let c = driver.session(false).await;
    let admin = daemon.admin.clone();

    log_in(&c, &admin, ADMIN_TOKEN).await;
    arrive(&c, "/ui/deliveries").await;
    assert_eq!(css_count(&c, "html[data-script=on]").await, 0, "scripts are off");
    assert_eq!(css_count(&c, "#rows tr").await, 1);
    // Filters are a plain GET form.
    type_into(&c, "q", "6113728").await;
    press(&c, Locator::Css("form.filters button[type=submit]")).await;
    arrive_query(&c, "q=6113728&status=&source=").await;
    assert_eq!(css_count(&c, "#rows tr").await, 1);
    press(&c, Locator::LinkText(GUID)).await;
    assert!(
        shown(&c, "tr.v-skipped")
            .await
            .contains("not in events [pull_request]")
    );

    // Replay without the script: the form posts, the page comes back with a notice.
    press(&c, Locator::Css("form.replay button")).await;
    assert!(shown(&c, "p.notice").await.contains("1 job queued"));
    wait_for(
        Duration::from_secs(20),
        "the replayed attempt after a reload",
        async || {
            c.refresh().await.unwrap();
            match css_count(&c, "tr.attempt").await {
                2 => Ok(()),
                n => Err(format!("{n} attempts shown")),
            }
        },
    )
    .await;

    // Explain, as a form post.
    c.goto(&format!("{admin}/ui/rules")).await.unwrap();
    type_into(&c, "x-event", "ping").await;
    type_into(&c, "x-payload", r#"{"zen":"Design for failure.","hook_id":1}"#).await;
    press(&c, Locator::Css("form.explain button")).await;
    assert!(shown(&c, "#explanation").await.contains("ping"));
    no_secret_in(&c, "the rules page").await;

    press(&c, Locator::Css("form.logout button")).await;
    arrive(&c, "/ui/login").await;
    c.close().await.unwrap();
}

/// A form body, as a browser posts it.
trait Urlencoded {
    fn urlencoded(self, pairs: &[(&str, &str)]) -> Self;
}

impl Urlencoded for reqwest::RequestBuilder {
    fn urlencoded(self, pairs: &[(&str, &str)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
    }
}

/// A client that keeps no cookies and follows no redirects: each request
/// says exactly what it carries.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Log in over HTTP: the session cookie (`name=value`).
async fn session_cookie(admin: &str) -> String {
    let r = http()
        .post(format!("{admin}/ui/login"))
        .urlencoded(&[("token", ADMIN_TOKEN), ("next", "/ui/deliveries")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains(ADMIN_TOKEN));
    set.split(';').next().unwrap().to_owned()
}

/// The anti-CSRF token a page's forms carry.
fn csrf_of(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a csrf field")
        + 19;
    html[at..at + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_cross_site_posts_are_refused_and_the_token_stays_secret() {
    let (ci, _ws, daemon) = dead_lettered().await;
    let admin = daemon.admin.clone();
    let id = api_delivery(&daemon, GUID).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // `/` leads to the dashboard; without a session, to the login page.
    let r = http().get(format!("{admin}/")).send().await.unwrap();
    assert_eq!(r.headers()["location"], "/ui/");
    let r = http()
        .get(format!("{admin}/ui/deliveries/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap();
    assert!(to.starts_with("/ui/login?next=%2Fui%2Fdeliveries%2F"), "{to}");
    // A wrong token, or a forged cookie, gets the login page.
    let r = http()
        .post(format!("{admin}/ui/login"))
        .urlencoded(&[("token", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains(r#"id="token""#));
    let forged = "hookbridge_session=9999999999.00000000000000000000000000000000.00";
    let r = http()
        .get(format!("{admin}/ui/deliveries"))
        .header("Cookie", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // After logging in, the login page does not take the user elsewhere.
    let r = http()
        .post(format!("{admin}/ui/login"))
        .urlencoded(&[("token", ADMIN_TOKEN), ("next", "//evil.example/x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/ui/deliveries");
    // Nor to a `next` that is not printable ASCII (it goes back in a header).
    let r = http()
        .post(format!("{admin}/ui/login"))
        .urlencoded(&[("token", ADMIN_TOKEN), ("next", "/ui/\u{7f}x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/ui/deliveries");

    let cookie = session_cookie(&admin).await;
    // A control character in a filter is the caller's mistake.
    let r = http()
        .get(format!("{admin}/ui/deliveries?q=%00"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let page = http()
        .get(format!("{admin}/ui/deliveries/{id}"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    let csrf = csrf_of(&html);
    for s in SECRETS {
        assert!(!html.contains(s));
    }
    let replay = format!("{admin}/ui/deliveries/{id}/replay");
    let form = [("csrf", csrf.as_str())];
    let refused = [
        // Another site's form, with the user's cookie and even the right token.
        http()
            .post(&replay)
            .header("Cookie", &cookie)
            .header("Origin", "http://evil.example")
            .urlencoded(&form),
        http()
            .post(&replay)
            .header("Cookie", &cookie)
            .header("Sec-Fetch-Site", "cross-site")
            .urlencoded(&form),
        // No token, or another session's.
        http()
            .post(&replay)
            .header("Cookie", &cookie)
            .urlencoded(&[("csrf", "")]),
        http()
            .post(&replay)
            .header("Cookie", &cookie)
            .urlencoded(&[("csrf", "0".repeat(64).as_str())]),
    ];
    for request in refused {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    }
    let r = http().post(&replay).urlencoded(&form).send().await.unwrap();
    assert_eq!(r.status(), 401, "no session");
    // A job and a re-evaluation at once: refused, as the API refuses it.
    let r = http()
        .post(&replay)
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .urlencoded(&[("csrf", csrf.as_str()), ("job", "x"), ("reevaluate", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("exclude each other"));
    assert_eq!(ci.requests().len(), 1, "nothing was replayed");
    let state = api_delivery(&daemon, GUID).await["jobs"][0]["state"].clone();
    assert_eq!(state, "dead");

    // The dashboard's own form post, from its own origin: queued.
    let r = http()
        .post(&replay)
        .header("Cookie", &cookie)
        .header("Origin", &admin)
        .header("Sec-Fetch-Site", "same-origin")
        .urlencoded(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        format!("/ui/deliveries/{id}?queued=1").as_str()
    );
    wait_for(Duration::from_secs(20), "the replay", async || {
        match ci.requests().len() {
            2 => Ok(()),
            n => Err(format!("{n} requests")),
        }
    })
    .await;

    // Logging out ends the cookie in the browser.
    let logout = http()
        .post(format!("{admin}/ui/logout"))
        .header("Cookie", &cookie)
        .urlencoded(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 303);
    assert!(
        logout.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    let logs = daemon.logs();
    for s in SECRETS {
        assert!(!logs.contains(s), "a log line holds a secret");
    }
    assert!(logs.contains("dashboard login refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_dashboard_answers_only_loopback_names() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url, false));
    let daemon = ws.start(ENV);
    let admin = daemon.admin.clone();
    let port = admin.rsplit(':').next().unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let r = http()
            .get(format!("{admin}/ui/deliveries"))
            .header("Host", format!("{host}:{port}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    // A page of another site that resolves its name to 127.0.0.1 (DNS rebinding).
    let r = http()
        .get(format!("{admin}/ui/deliveries"))
        .header("Host", format!("evil.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // No login page, and still no cross-site posts.
    let r = http().get(format!("{admin}/ui/login")).send().await.unwrap();
    assert_eq!(r.headers()["location"], "/ui/deliveries");
    let html = http()
        .get(format!("{admin}/ui/rules"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&html);
    let r = http()
        .post(format!("{admin}/ui/rules/explain"))
        .header("Origin", "http://evil.example")
        .urlencoded(&[("csrf", csrf.as_str()), ("source", "github"), ("payload", "{}")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http()
        .post(format!("{admin}/ui/rules/explain"))
        .urlencoded(&[
            ("csrf", csrf.as_str()),
            ("source", "github"),
            ("event", "push"),
            ("payload", "{}"),
        ])
        .send()
        .await
        .unwrap();
    // A push without a ref does not describe: the reason, on the page.
    assert_eq!(r.status(), 400);
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"class="error""#), "{html}");
    // Pasted with a blank line first, as copied from a terminal.
    let ping = "\n  {\"zen\":\"Keep it logically awesome.\",\"hook_id\":1}";
    let r = http()
        .post(format!("{admin}/ui/rules/explain"))
        .urlencoded(&[
            ("csrf", csrf.as_str()),
            ("source", "github"),
            ("event", "ping"),
            ("payload", ping),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(r#"id="explanation""#));
}
