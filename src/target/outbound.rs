//! The exact request a trigger sends, as something that can be printed and
//! stored: `explain` shows it, `test` compares it, snapshots record it.
//!
//! It never holds a live token. Where the token goes (a header, a body field)
//! it holds [`REDACTED`], and [`Credential`] says which place that is; the
//! HTTP client puts the token there only while it builds the wire request
//! (`target::client`). So no `Debug`, `Serialize` or log line of an
//! [`OutboundRequest`] can leak a token, whoever prints it.

use serde::Serialize;

/// What a printable request holds where the token goes.
pub const REDACTED: &str = "***";

pub const USER_AGENT: &str = concat!("hookbridge/", env!("CARGO_PKG_VERSION"));

/// One HTTP header of an outbound request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    pub name: std::borrow::Cow<'static, str>,
    pub value: String,
}

/// Where the target's token travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// In this header, as it is (CircleCI `Circle-Token`, an `http`
    /// target's `token_header`); sent marked sensitive.
    Header(std::borrow::Cow<'static, str>),
    /// In `Authorization` after this scheme (`Bearer`, Gitea's `token`).
    Authorization(&'static str),
    /// In `Authorization: Basic`, as `user:token` (Jenkins).
    Basic(String),
    /// In this top-level field of the JSON body (GitLab `token`).
    BodyField(&'static str),
    /// Nowhere: the request carries no token (an `http` target without one).
    None,
}

impl Credential {
    /// The header the token goes in, if it goes in one.
    pub fn header(&self) -> Option<&str> {
        match self {
            Credential::Header(name) => Some(name),
            Credential::Authorization(_) | Credential::Basic(_) => Some(AUTHORIZATION),
            Credential::BodyField(_) | Credential::None => None,
        }
    }
}

/// The header of [`Credential::Authorization`] and [`Credential::Basic`].
pub const AUTHORIZATION: &str = "Authorization";

/// How the body of a request is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// The JSON value (`application/json`).
    #[default]
    Json,
    /// A JSON object of strings as `application/x-www-form-urlencoded`.
    Form,
    /// A JSON string, its text as is.
    Text,
}

impl Encoding {
    fn is_json(&self) -> bool {
        *self == Encoding::Json
    }
}

/// The exact request a trigger sends, with [`REDACTED`] where the token goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<Header>,
    pub body: serde_json::Value,
    /// How `body` is written: JSON unless said otherwise.
    #[serde(skip_serializing_if = "Encoding::is_json")]
    pub encoding: Encoding,
    /// Where the token goes when the wire request is built.
    #[serde(skip)]
    pub credential: Credential,
}

impl OutboundRequest {
    /// The body's bytes as they go on the wire (and as a signature covers
    /// them); empty for a request without a body.
    pub fn body_bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.body, self.encoding) {
            (serde_json::Value::Null, _) => Ok(Vec::new()),
            (body, Encoding::Json) => serde_json::to_vec(body).map_err(|e| e.to_string()),
            (serde_json::Value::String(text), Encoding::Text) => Ok(text.clone().into_bytes()),
            (serde_json::Value::Object(fields), Encoding::Form) => {
                let mut form = form_urlencoded::Serializer::new(String::new());
                for (k, v) in fields {
                    match v {
                        serde_json::Value::String(v) => form.append_pair(k, v),
                        other => form.append_pair(k, &other.to_string()),
                    };
                }
                Ok(form.finish().into_bytes())
            }
            (_, encoding) => Err(format!("a {encoding:?} body must be text or a table of strings")),
        }
    }
}

pub(super) fn json_headers() -> Vec<Header> {
    vec![
        Header {
            name: "Content-Type".into(),
            value: "application/json".into(),
        },
        Header {
            name: "Accept".into(),
            value: "application/json".into(),
        },
        Header {
            name: "User-Agent".into(),
            value: USER_AGENT.into(),
        },
    ]
}
