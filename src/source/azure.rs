//! Azure DevOps service hooks ("Web Hooks"): no signature scheme exists, so the
//! subscription's HTTP basic auth is the credential (compared in constant time).
//! The event type lives only in the body (`eventType`), the event id in `id`.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::Deserialize;

use super::bitbucket::check_basic_credentials;
use super::bitbucket::verify_basic;
use super::{DescribeError, Inbound, Scheme, Verified, VerifyError, parse, required_secrets};
use crate::config::loader::Loader;
use crate::config::raw::RawSource;
use crate::config::secret::Secret;
use crate::event::{Event, Provider, RefChange, kind, split_ref};

#[derive(Debug)]
pub struct AzureDevops {
    credentials: Vec<Secret>,
}

impl AzureDevops {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let credentials = required_secrets(name, "secrets", raw.secrets.as_ref(), raw.kind.span(), loader);
        check_basic_credentials(name, "secrets", &credentials, loader);
        AzureDevops {
            credentials: credentials.into_iter().map(|(s, _)| s).collect(),
        }
    }
}

impl Scheme for AzureDevops {
    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        verify_basic(inbound, &self.credentials)?;
        Ok(Verified::new(Cow::Borrowed(inbound.body)))
    }

    fn describe(
        &self,
        source: &str,
        _inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError> {
        describe(source, verified.payload())
    }

    fn sign(&self, _body: &[u8], _now: SystemTime) -> Result<Vec<(String, String)>, String> {
        use base64::Engine as _;
        let creds = self.credentials.first().ok_or("the source has no credentials")?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(creds.expose());
        Ok(vec![("Authorization".into(), format!("Basic {encoded}"))])
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    id: Option<String>,
    event_type: Option<String>,
}

#[derive(Deserialize)]
struct WithResource<T> {
    resource: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushResource {
    #[serde(default)]
    ref_updates: Vec<RefUpdate>,
    repository: Option<Repo>,
    pushed_by: Option<Identity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefUpdate {
    name: String,
    old_object_id: Option<String>,
    new_object_id: Option<String>,
}

#[derive(Deserialize)]
struct Repo {
    name: Option<String>,
    project: Option<Project>,
}

impl Repo {
    /// `project/repository`, the path users see in Azure DevOps URLs.
    fn full_name(self) -> Option<String> {
        match (self.project.and_then(|p| p.name), self.name) {
            (Some(p), Some(r)) => Some(format!("{p}/{r}")),
            (_, r) => r,
        }
    }
}

#[derive(Deserialize)]
struct Project {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    unique_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PrResource {
    pull_request_id: Option<u64>,
    status: Option<String>,
    source_ref_name: Option<String>,
    target_ref_name: Option<String>,
    last_merge_source_commit: Option<CommitRef>,
    repository: Option<Repo>,
    created_by: Option<Identity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommitRef {
    commit_id: Option<String>,
}

/// The action of a `git.pullrequest.merged` event for a pull request that is
/// still open.
const MERGE_ATTEMPTED: &str = "merge_attempted";

fn describe(source: &str, payload: &[u8]) -> Result<Event, DescribeError> {
    let envelope: Envelope = parse(payload)?;
    let name = envelope
        .event_type
        .ok_or_else(|| DescribeError::Unreadable("Azure DevOps payload has no `eventType`".into()))?;
    let delivery = envelope
        .id
        .unwrap_or_else(|| super::signature::body_digest(payload));
    let normalized = match name.as_str() {
        "git.push" => kind::PUSH,
        n if n.starts_with("git.pullrequest.") => kind::PULL_REQUEST,
        other => other,
    };
    let mut event = Event::new(source, Provider::AzureDevops, &name, normalized, delivery);
    match normalized {
        kind::PUSH => {
            let p: WithResource<PushResource> = parse(payload)?;
            for u in p.resource.ref_updates {
                let change = RefChange::new(&u.name, u.old_object_id.as_deref(), u.new_object_id.as_deref());
                if event.changes.is_empty() {
                    event.set_push(change);
                } else {
                    event.changes.push(change);
                }
            }
            event.repository = p.resource.repository.and_then(Repo::full_name);
            event.sender = p.resource.pushed_by.and_then(|i| i.unique_name);
            event.paths_unknown = Some("Azure DevOps push payloads do not list changed files".into());
        }
        kind::PULL_REQUEST => {
            let p: WithResource<PrResource> = parse(payload)?;
            let r = p.resource;
            let word = name.trim_start_matches("git.pullrequest.");
            let action = match (word, r.status.as_deref()) {
                ("created", _) => "opened",
                ("merged" | "updated", Some("completed")) => "merged",
                // "Pull request merge attempted": Azure DevOps builds a merge
                // commit for an open pull request (on creation, on each push);
                // nothing reached the target branch, so not `merged`, and
                // not the provider's word either, which `actions` would match.
                ("merged", _) => MERGE_ATTEMPTED,
                ("updated", Some("abandoned")) => "closed",
                ("updated", _) => "synchronize",
                (other, _) => other,
            };
            event.set_action(if action == MERGE_ATTEMPTED { action } else { word }, action);
            event.number = r.pull_request_id;
            if let Some(src) = r.source_ref_name {
                event.set_ref(&src);
            }
            event.base_branch = r.target_ref_name.as_deref().and_then(|t| split_ref(t).0);
            event.sha = r.last_merge_source_commit.and_then(|c| c.commit_id);
            event.repository = r.repository.and_then(Repo::full_name);
            event.sender = r.created_by.and_then(|i| i.unique_name);
            event.paths_unknown = Some("pull request payloads do not list changed files".into());
        }
        _ => {}
    }
    Ok(event)
}
