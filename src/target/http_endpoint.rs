//! Any HTTP endpoint: a templated method, path, headers and body, sent to
//! the target's `url`.
//!
//! A `body` table goes out as JSON (`application/json`); a `body` string as
//! its text (`text/plain` unless a `Content-Type` header says otherwise).
//! The target's optional `token` travels as `Authorization: Bearer`; with
//! `signing = "standard"` each request also carries Standard Webhooks
//! headers (<https://www.standardwebhooks.com>): `webhook-id` (the job's id,
//! the same on every retry, so the receiver can deduplicate),
//! `webhook-timestamp` (when the attempt is sent) and `webhook-signature`
//! (`v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the
//! secret). Those are computed per attempt ([`sign`]); the printable request
//! shows where they go.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    AUTHORIZATION, Credential, Encoding, Header, OutboundRequest, Outcome, REDACTED, RequestError,
    TriggerCompiler, TriggerResult, USER_AGENT, json_type, render_string, render_table,
};
use crate::config::raw::RawTrigger;
use crate::config::secret::HmacKey;
use crate::template::{TemplateValue, Templates};

/// Methods a trigger may use.
const METHODS: [&str; 5] = ["POST", "PUT", "PATCH", "DELETE", "GET"];
/// Headers a rule may not set: hookbridge writes them (framing, the
/// credential, signatures: every `webhook-*`), or they would carry a secret
/// into the store.
const RESERVED: [&str; 6] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "proxy-authorization",
];
/// Words in a header name that say it carries a credential.
const CREDENTIAL_WORDS: [&str; 7] = [
    "key",
    "token",
    "secret",
    "auth",
    "password",
    "signature",
    "cookie",
];
/// Headers per request: a bound on a typo'd config.
const MAX_HEADERS: usize = 50;
/// What the printable request shows where the attempt's values go.
const AT_SEND: &str = "(set when sent)";

#[derive(Debug)]
pub struct Trigger {
    method: &'static str,
    path: TemplateValue,
    headers: BTreeMap<String, TemplateValue>,
    body: Option<Body>,
}

#[derive(Debug)]
enum Body {
    Text(TemplateValue),
    Json(TemplateValue),
}

/// A rendered request (`"api": "http_request"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    /// Appended to the target's `url`; starts with `/`.
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON value, or the text of a string body (`text`).
    #[serde(default)]
    pub body: serde_json::Value,
    /// `body` is a string to send as is, not JSON.
    #[serde(default)]
    pub text: bool,
}

fn check_header(name: &str) -> Result<(), String> {
    if owned_by_hookbridge(name)? {
        return Err(format!(
            "hookbridge sets `{name}` itself; put a credential in the target's `token` (sent as `Authorization: Bearer`, or in the header `token_header` names)"
        ));
    }
    Ok(())
}

/// The header an `http` target's token goes in (`token_header`): any but
/// those that frame the request or carry its signature.
pub(super) fn check_token_header(name: &str) -> Result<(), String> {
    if owned_by_hookbridge(name)? && !name.eq_ignore_ascii_case("authorization") {
        return Err(format!("`{name}` cannot carry the token"));
    }
    Ok(())
}

/// Whether hookbridge writes header `name` ([`RESERVED`], every
/// `webhook-*`); an error when it is no header name.
fn owned_by_hookbridge(name: &str) -> Result<bool, String> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("`{name}` is not a valid header name"));
    }
    let lower = name.to_ascii_lowercase();
    Ok(RESERVED.contains(&lower.as_str()) || lower.starts_with("webhook-"))
}

impl Trigger {
    pub fn compile(raw: &Spanned<RawTrigger>, f: &mut TriggerCompiler<'_>) -> Option<Trigger> {
        let r = raw.get_ref();
        f.allow(
            r,
            "an http request",
            &["method", "path", "headers", "body"],
            |key| match key {
                "parameters" | "variables" | "inputs" => {
                    Some("put values in `body` (a table is sent as JSON)".into())
                }
                _ => None,
            },
        );
        let method = match &r.method {
            None => "POST",
            Some(m) => match METHODS.iter().find(|x| x.eq_ignore_ascii_case(m.get_ref())) {
                Some(x) => x,
                None => {
                    f.error(
                        format!("trigger.method `{}`: one of {}", m.get_ref(), METHODS.join(", ")),
                        m.span(),
                    );
                    "POST"
                }
            },
        };
        let path = match &r.path {
            Some(p) => {
                if !p.get_ref().starts_with('/') {
                    f.error(
                        "trigger.path starts with `/` (it is appended to the target's url)",
                        p.span(),
                    );
                }
                f.text("path", p)?
            }
            None => TemplateValue::Literal("/".into()),
        };
        let headers = f.text_table("headers", &r.headers, MAX_HEADERS, false, check_header);
        warn_of_credentials(r, f);
        let body = match &r.body {
            None => None,
            Some(b) => match b.get_ref() {
                toml::Value::String(_) => Some(Body::Text(f.value("body", b)?)),
                toml::Value::Table(_) => Some(Body::Json(f.value("body", b)?)),
                _ => {
                    f.error(
                        "trigger.body is a string (sent as text) or a table (sent as JSON)",
                        b.span(),
                    );
                    return None;
                }
            },
        };
        if method == "GET"
            && let Some(b) = &r.body
        {
            f.error("a GET request has no body", b.span());
        }
        Some(Trigger {
            method,
            path,
            headers,
            body,
        })
    }

    pub fn render(&self, t: &Templates, scope: &minijinja::Value) -> Result<Request, String> {
        let path = render_string(t, &self.path, scope, "path")?;
        if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ' || c == '\\') {
            return Err(format!(
                "trigger.path rendered `{}`: a path starts with `/` and has no spaces, `\\` or control characters",
                path.escape_debug()
            ));
        }
        let mut headers = BTreeMap::new();
        for (k, v) in render_table(t, &self.headers, scope)? {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => return Err(format!("header `{k}` must be text, got {}", json_type(&other))),
            };
            if http::HeaderValue::from_str(&text).is_err() {
                return Err(format!(
                    "header `{k}` rendered a value that cannot be sent in a header"
                ));
            }
            headers.insert(k, text);
        }
        let (body, text) = match &self.body {
            None => (serde_json::Value::Null, false),
            Some(Body::Json(v)) => (t.render(v, scope)?, false),
            Some(Body::Text(v)) => match t.render(v, scope)? {
                serde_json::Value::String(s) => (serde_json::Value::String(s), true),
                // One `{{ expr }}` keeps its type: a table or list goes out as JSON.
                other => (other, false),
            },
        };
        Ok(Request {
            method: self.method.to_owned(),
            path,
            headers,
            body,
            text,
        })
    }
}

/// A rule header that looks like a credential, with a value written in the
/// config: it is stored with every job and printed by `explain`.
fn warn_of_credentials(r: &RawTrigger, f: &mut TriggerCompiler<'_>) {
    let Some(headers) = &r.headers else { return };
    for (k, v) in headers.get_ref() {
        let lower = k.get_ref().to_ascii_lowercase();
        let literal = matches!(v.get_ref(), toml::Value::String(s) if !s.contains("{{"));
        if literal && CREDENTIAL_WORDS.iter().any(|w| lower.contains(w)) {
            f.loader.push(
                crate::config::diagnostic::Diagnostic::warning(
                    format!(
                        "rule `{}`: header `{}` looks like a credential; rule headers are stored with every job and shown by `explain`",
                        f.rule,
                        k.get_ref()
                    ),
                    Some(v.span()),
                )
                .with_help(format!(
                    "put it in the target's `token` and set `token_header = \"{}\"`",
                    k.get_ref()
                )),
            );
        }
    }
}

/// Where an `http` target's token goes: nowhere without one; in the header
/// `token_header` names, as it is; else `Authorization: Bearer`.
pub(super) fn credential(token: bool, token_header: Option<&str>) -> Credential {
    match (token, token_header) {
        (false, _) => Credential::None,
        (true, Some(name)) => Credential::Header(name.to_owned().into()),
        (true, None) => Credential::Authorization("Bearer"),
    }
}

/// The request, with the token's header as `credential` says; with
/// `signs`, the Standard Webhooks headers as placeholders for [`sign`].
pub(super) fn request(
    base: &str,
    r: &Request,
    credential: Credential,
    signs: bool,
) -> Result<OutboundRequest, RequestError> {
    if r.path.contains('\\') || !r.path.starts_with('/') {
        return Err(RequestError::Invalid(format!(
            "the path `{}` is not `/...` without `\\`",
            r.path.escape_debug()
        )));
    }
    let method = METHODS
        .into_iter()
        .find(|m| *m == r.method)
        .ok_or_else(|| RequestError::Invalid(format!("`{}` is not a method hookbridge sends", r.method)))?;
    let mut headers: Vec<Header> = Vec::new();
    let has = |name: &str| r.headers.keys().any(|k| k.eq_ignore_ascii_case(name));
    if !r.body.is_null() && !has("content-type") {
        headers.push(Header {
            name: "Content-Type".into(),
            value: if r.text {
                "text/plain; charset=utf-8"
            } else {
                "application/json"
            }
            .into(),
        });
    }
    if !has("user-agent") {
        headers.push(Header {
            name: "User-Agent".into(),
            value: USER_AGENT.into(),
        });
    }
    for (k, v) in &r.headers {
        if let Err(e) = check_header(k) {
            return Err(RequestError::Invalid(e));
        }
        headers.push(Header {
            name: k.clone().into(),
            value: v.clone(),
        });
    }
    if signs {
        for name in ["webhook-id", "webhook-timestamp"] {
            headers.push(Header {
                name: name.into(),
                value: AT_SEND.into(),
            });
        }
        headers.push(Header {
            name: "webhook-signature".into(),
            value: format!("v1,{REDACTED}"),
        });
    }
    match &credential {
        Credential::Header(name) => headers.push(Header {
            name: name.clone(),
            value: REDACTED.into(),
        }),
        Credential::Authorization(scheme) => headers.push(Header {
            name: AUTHORIZATION.into(),
            value: format!("{scheme} {REDACTED}"),
        }),
        _ => {}
    }
    Ok(OutboundRequest {
        method,
        url: format!("{base}{}", r.path),
        headers,
        body: r.body.clone(),
        encoding: if r.text { Encoding::Text } else { Encoding::Json },
        credential,
    })
}

/// Fill in the Standard Webhooks headers of `request` for one attempt of
/// job `id` at `now`.
pub fn sign(request: &mut OutboundRequest, id: &str, key: &HmacKey, now: SystemTime) -> Result<(), String> {
    let timestamp = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let body = request.body_bytes()?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose()).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let signature = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    for h in &mut request.headers {
        match h.name.as_ref() {
            "webhook-id" => h.value = id.to_owned(),
            "webhook-timestamp" => h.value.clone_from(&timestamp),
            "webhook-signature" => h.value.clone_from(&signature),
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn created() -> Outcome {
    Outcome::Created(TriggerResult {
        state: Some("delivered".into()),
        ..TriggerResult::default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(body: serde_json::Value, text: bool) -> Request {
        Request {
            method: "POST".into(),
            path: "/deploy".into(),
            headers: BTreeMap::from([("X-Env".into(), "prod".into())]),
            body,
            text,
        }
    }

    #[test]
    fn a_table_body_is_json_and_a_string_body_is_text() {
        let json = request(
            "https://d.example",
            &req(serde_json::json!({"a": 1}), false),
            credential(true, None),
            false,
        )
        .unwrap();
        assert_eq!(json.url, "https://d.example/deploy");
        assert_eq!(json.body_bytes().unwrap(), br#"{"a":1}"#);
        assert!(
            json.headers
                .iter()
                .any(|h| h.name == "Content-Type" && h.value == "application/json")
        );
        assert!(
            json.headers
                .iter()
                .any(|h| h.name == AUTHORIZATION && h.value == "Bearer ***")
        );
        let text = request(
            "https://d.example",
            &req("deploy main".into(), true),
            credential(false, None),
            false,
        )
        .unwrap();
        assert_eq!(text.body_bytes().unwrap(), b"deploy main");
        assert_eq!(text.credential, Credential::None);
    }

    /// The example of the Standard Webhooks specification's reference
    /// libraries: this secret, id, timestamp and body sign to this value.
    #[test]
    fn signing_matches_the_specifications_example() {
        let mut r = request(
            "https://d.example",
            &req(r#"{"test": 2432232314}"#.into(), true),
            credential(false, None),
            true,
        )
        .unwrap();
        let secret = HmacKey::from_whsec(&crate::config::Secret::new(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ))
        .unwrap();
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_614_265_330);
        sign(&mut r, "msg_p5jXN8AQM9LWM0D4loKWxJek", &secret, at).unwrap();
        let get = |n: &str| r.headers.iter().find(|h| h.name == n).unwrap().value.clone();
        assert_eq!(get("webhook-id"), "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(get("webhook-timestamp"), "1614265330");
        assert_eq!(
            get("webhook-signature"),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_token_goes_in_its_own_header_when_named_and_a_backslash_path_is_refused() {
        let r = request(
            "https://d.example",
            &req(serde_json::Value::Null, false),
            credential(true, Some("X-Api-Key")),
            false,
        )
        .unwrap();
        assert!(
            r.headers
                .iter()
                .any(|h| h.name == "X-Api-Key" && h.value == REDACTED)
        );
        assert!(r.headers.iter().all(|h| h.name != AUTHORIZATION));
        let mut sneaky = req(serde_json::Value::Null, false);
        sneaky.path = "/x\\..\\..\\admin".into();
        assert!(request("https://d.example/a/b", &sneaky, credential(false, None), false).is_err());
        assert!(check_token_header("X-Api-Key").is_ok() && check_token_header("Authorization").is_ok());
        assert!(check_token_header("webhook-id").is_err() && check_token_header("Host").is_err());
    }

    #[test]
    fn reserved_headers_are_refused() {
        for name in [
            "Authorization",
            "webhook-signature",
            "Webhook-Foo",
            "Host",
            "bad header",
        ] {
            assert!(check_header(name).is_err(), "{name}");
        }
        assert!(check_header("X-Deploy").is_ok());
    }
}
