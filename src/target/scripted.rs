//! A scripted CI for unit tests of the calls besides triggers (cancels,
//! reconcile reads): each call gets the next scripted answer.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::client::{SendError, Transport};
use super::{OutboundRequest, Response, Target, TargetKind, TriggerRequest, circleci, gitlab};
use crate::config::retry::RetryPolicy;
use crate::config::secret::Secret;

pub(crate) const TOKEN: &str = "tok-3f9a";

/// Answers each call with the next scripted (status, body), and keeps
/// the calls (method and URL).
pub(crate) struct Script {
    pub answers: Mutex<Vec<(u16, Vec<u8>)>>,
    pub calls: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Transport for Script {
    async fn send(
        &self,
        r: &OutboundRequest,
        _: Option<&Secret>,
        _: Duration,
    ) -> Result<Response, SendError> {
        self.calls.lock().unwrap().push(format!("{} {}", r.method, r.url));
        let mut answers = self.answers.lock().unwrap();
        if answers.is_empty() {
            return Err(SendError::Connect("no more answers".into()));
        }
        let (status, body) = answers.remove(0);
        Ok(Response {
            status,
            headers: http::HeaderMap::new(),
            body: body.into(),
        })
    }
}

pub(crate) fn target(kind: TargetKind) -> Target {
    Target {
        name: "ci".into(),
        kind,
        base_url: "https://ci.example".into(),
        token: Some(Secret::new(TOKEN)),
        has_token: true,
        api_token: Some(Secret::new(TOKEN)),
        has_api_token: true,
        user: None,
        token_header: None,
        signing: None,
        signs: false,
        reconcile: true,
        retry: RetryPolicy::default(),
    }
}

pub(crate) fn v2() -> TriggerRequest {
    TriggerRequest::Circleci(circleci::Request::Pipeline(circleci::PipelineRequest {
        project: "gh/acme/app".into(),
        branch: Some("main".into()),
        tag: None,
        parameters: serde_json::Map::new(),
    }))
}

pub(crate) fn gl() -> TriggerRequest {
    TriggerRequest::Gitlab(gitlab::Request {
        project: "acme/app".into(),
        git_ref: "main".into(),
        variables: BTreeMap::new(),
        inputs: serde_json::Map::new(),
        rule_token: false,
    })
}

impl Script {
    pub(crate) fn new(answers: Vec<(u16, &str)>) -> Script {
        Script {
            answers: Mutex::new(
                answers
                    .into_iter()
                    .map(|(s, b)| (s, b.as_bytes().to_vec()))
                    .collect(),
            ),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// The calls made, as `METHOD url`.
    pub(crate) fn calls(self) -> Vec<String> {
        self.calls.into_inner().unwrap()
    }
}
