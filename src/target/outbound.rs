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
    pub name: &'static str,
    pub value: String,
}

/// Where the target's token travels on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// In this header (CircleCI `Circle-Token`); sent marked sensitive.
    Header(&'static str),
    /// In this top-level field of the JSON body (GitLab `token`).
    BodyField(&'static str),
}

/// The exact request a trigger sends, with [`REDACTED`] where the token goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<Header>,
    pub body: serde_json::Value,
    /// Where the token goes when the wire request is built.
    #[serde(skip)]
    pub credential: Credential,
}

pub(super) fn json_headers() -> Vec<Header> {
    vec![
        Header {
            name: "Content-Type",
            value: "application/json".into(),
        },
        Header {
            name: "Accept",
            value: "application/json".into(),
        },
        Header {
            name: "User-Agent",
            value: USER_AGENT.into(),
        },
    ]
}
