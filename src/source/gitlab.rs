//! GitLab: the `X-Gitlab-Token` secret compared in constant time, and GitLab
//! signing tokens (Standard Webhooks `webhook-signature`, `whsec_` keys) when
//! `signing_secrets` is set. Every configured mechanism must pass.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::signature::{self, standard};
use super::{DescribeError, Inbound, Scheme, Verified, VerifyError, delivery_id, parse, whsec_keys};
use crate::config::raw::RawSource;
use crate::config::{Diagnostic, HmacKey, Loader, Secret};
use crate::event::{Event, Provider, RefChange, kind, union_paths};

/// Default allowed clock skew for signed deliveries.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct GitLab {
    /// `X-Gitlab-Token` values, compared in constant time.
    tokens: Vec<Secret>,
    /// Decoded `whsec_` signing-token keys.
    signing_keys: Vec<HmacKey>,
    /// Whether `signing_secrets` was configured (even if unresolved in `check`).
    signing_required: bool,
    tolerance: Duration,
}

impl GitLab {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let tokens = raw
            .secrets
            .as_ref()
            .map(|l| loader.secrets(l))
            .unwrap_or_default();
        let signing = raw
            .signing_secrets
            .as_ref()
            .map(|l| loader.secrets_with_spans(l))
            .unwrap_or_default();
        let has_tokens = raw.secrets.as_ref().is_some_and(|l| !l.get_ref().is_empty());
        let signing_required = raw
            .signing_secrets
            .as_ref()
            .is_some_and(|l| !l.get_ref().is_empty());
        if !has_tokens && !signing_required {
            loader.push(
                Diagnostic::error(
                    format!("source `{name}`: set `secrets` (X-Gitlab-Token) or `signing_secrets` (signing tokens); hookbridge does not accept unauthenticated webhooks"),
                    Some(raw.kind.span()),
                ),
            );
        }
        let signing_keys = whsec_keys(name, &signing, loader);
        GitLab {
            tokens,
            signing_keys,
            signing_required,
            tolerance: raw
                .tolerance
                .as_ref()
                .map_or(DEFAULT_TOLERANCE, |t| t.get_ref().0),
        }
    }
}

impl Scheme for GitLab {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        vec![("X-Gitlab-Event".into(), event.into())]
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        if self.signing_required {
            // When signing is configured the signature is required; never fall back to the token.
            let sig = inbound
                .header("webhook-signature")
                .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
            let id = inbound
                .header("webhook-id")
                .ok_or(VerifyError::MissingHeader("webhook-id"))?;
            let ts = inbound
                .header("webhook-timestamp")
                .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
            if self.signing_keys.is_empty() {
                return Err(VerifyError::NoSecret);
            }
            standard::verify(
                &self.signing_keys,
                id,
                ts,
                sig,
                inbound.body,
                inbound.now,
                self.tolerance,
            )?;
        }
        if !self.tokens.is_empty() || !self.signing_required {
            let token = inbound
                .header("x-gitlab-token")
                .ok_or(VerifyError::MissingHeader("X-Gitlab-Token"))?;
            if self.tokens.is_empty() {
                return Err(VerifyError::NoSecret);
            }
            if !signature::token_matches(token.as_bytes(), &self.tokens) {
                return Err(VerifyError::TokenMismatch("X-Gitlab-Token"));
            }
        }
        Ok(Verified::new(Cow::Borrowed(inbound.body)))
    }

    fn describe(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError> {
        let name = inbound
            .header("x-gitlab-event")
            .ok_or(DescribeError::MissingEventHeader("X-Gitlab-Event"))?;
        let delivery = delivery_id(inbound, &["idempotency-key", "webhook-id", "x-gitlab-event-uuid"]);
        describe(source, name, delivery, verified.payload())
    }

    fn sign(&self, body: &[u8], now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let mut headers = Vec::new();
        let id = format!("msg_{}", ulid::Ulid::generate());
        if let Some(key) = self.signing_keys.first() {
            let ts = standard::unix_seconds(now).to_string();
            headers.push(("webhook-id".into(), id.clone()));
            headers.push(("webhook-timestamp".into(), ts.clone()));
            headers.push(("webhook-signature".into(), standard::sign(key, &id, &ts, body)));
        }
        if let Some(token) = self.tokens.first() {
            headers.push(("X-Gitlab-Token".into(), token.expose().to_owned()));
        }
        if headers.is_empty() {
            return Err("the source has no secret to sign with".into());
        }
        headers.push(("Idempotency-Key".into(), id));
        Ok(headers)
    }
}

#[derive(Deserialize)]
struct Kind {
    object_kind: Option<String>,
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: Option<String>,
}

#[derive(Deserialize)]
struct Commit {
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    before: Option<String>,
    after: Option<String>,
    checkout_sha: Option<String>,
    user_username: Option<String>,
    project: Option<Project>,
    #[serde(default)]
    commits: Vec<Commit>,
    total_commits_count: Option<usize>,
}

#[derive(Deserialize)]
struct MergeRequest {
    user: Option<UserRef>,
    project: Option<Project>,
    object_attributes: MrAttributes,
}

#[derive(Deserialize)]
struct UserRef {
    username: Option<String>,
}

#[derive(Deserialize)]
struct MrAttributes {
    iid: Option<u64>,
    source_branch: Option<String>,
    target_branch: Option<String>,
    action: Option<String>,
    oldrev: Option<String>,
    last_commit: Option<LastCommit>,
}

#[derive(Deserialize)]
struct LastCommit {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Release {
    action: Option<String>,
    tag: Option<String>,
    project: Option<Project>,
    commit: Option<LastCommit>,
}

#[derive(Deserialize)]
struct Other {
    project: Option<Project>,
    user_username: Option<String>,
    user: Option<UserRef>,
}

fn describe(source: &str, name: &str, delivery: String, payload: &[u8]) -> Result<Event, DescribeError> {
    let object_kind = parse::<Kind>(payload)?.object_kind.ok_or_else(|| {
        DescribeError::Unreadable(
            "GitLab payload has no `object_kind`; is a custom webhook template reshaping the body?".into(),
        )
    })?;
    let normalized = match object_kind.as_str() {
        "push" | "tag_push" => kind::PUSH,
        "merge_request" => kind::PULL_REQUEST,
        "release" => kind::RELEASE,
        other => other,
    };
    let mut event = Event::new(source, Provider::Gitlab, name, normalized, delivery);
    match normalized {
        kind::PUSH => {
            let p: Push = parse(payload)?;
            let after = p.after.as_deref().or(p.checkout_sha.as_deref());
            event.set_push(RefChange::new(&p.git_ref, p.before.as_deref(), after));
            event.repository = p.project.and_then(|p| p.path_with_namespace);
            event.sender = p.user_username;
            let total = p.total_commits_count.unwrap_or(p.commits.len());
            if total > p.commits.len() {
                event.paths_unknown = Some(format!(
                    "the payload lists {} of the push's {total} commits (GitLab sends at most 20); changed files are incomplete",
                    p.commits.len()
                ));
            } else {
                event.paths = Some(union_paths(p.commits.iter().flat_map(|c| {
                    c.added
                        .iter()
                        .chain(&c.modified)
                        .chain(&c.removed)
                        .map(String::as_str)
                })));
            }
        }
        kind::PULL_REQUEST => {
            let p: MergeRequest = parse(payload)?;
            let a = p.object_attributes;
            let word = a.action.unwrap_or_default();
            let action = match word.as_str() {
                "open" => "opened",
                "close" => "closed",
                "reopen" => "reopened",
                "merge" => "merged",
                "update" if a.oldrev.is_some() => "synchronize",
                "update" => "updated",
                other => other,
            };
            event.set_action(&word, action);
            if let Some(b) = a.source_branch {
                event.set_ref(&format!("refs/heads/{b}"));
            }
            event.base_branch = a.target_branch;
            event.sha = a.last_commit.and_then(|c| c.id);
            event.number = a.iid;
            event.repository = p.project.and_then(|p| p.path_with_namespace);
            event.sender = p.user.and_then(|u| u.username);
            event.paths_unknown = Some("merge request payloads do not list changed files".into());
        }
        kind::RELEASE => {
            let p: Release = parse(payload)?;
            let word = p.action.unwrap_or_default();
            let action = match word.as_str() {
                "create" => "published",
                "update" => "updated",
                "delete" => "deleted",
                other => other,
            };
            event.set_action(&word, action);
            if let Some(tag) = p.tag {
                event.set_ref(&format!("refs/tags/{tag}"));
            }
            event.sha = p.commit.and_then(|c| c.id);
            event.repository = p.project.and_then(|p| p.path_with_namespace);
        }
        _ => {
            let p: Other = parse(payload)?;
            event.repository = p.project.and_then(|p| p.path_with_namespace);
            event.sender = p.user_username.or_else(|| p.user.and_then(|u| u.username));
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn gitlab(tokens: &[&str], signing: &[&str]) -> GitLab {
        GitLab {
            tokens: tokens.iter().map(|t| Secret::new(*t)).collect(),
            signing_keys: signing
                .iter()
                .map(|s| HmacKey::from_whsec(&Secret::new(*s)).unwrap())
                .collect(),
            signing_required: !signing.is_empty(),
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    #[test]
    fn token_must_match_one_secret() {
        let gl = gitlab(&["old", "new"], &[]);
        let mut h = HeaderMap::new();
        h.insert("x-gitlab-token", "new".parse().unwrap());
        assert!(gl.verify(&Inbound::new(&h, b"{}")).is_ok());
        h.insert("x-gitlab-token", "ne".parse().unwrap());
        assert_eq!(
            gl.verify(&Inbound::new(&h, b"{}")).err(),
            Some(VerifyError::TokenMismatch("X-Gitlab-Token"))
        );
    }

    #[test]
    fn signing_token_is_required_once_configured() {
        let gl = gitlab(&[], &["whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdHRlc3Q="]);
        let mut h = HeaderMap::new();
        h.insert("x-gitlab-token", "anything".parse().unwrap());
        assert_eq!(
            gl.verify(&Inbound::new(&h, b"{}")).err(),
            Some(VerifyError::MissingHeader("webhook-signature"))
        );
        let now = SystemTime::now();
        let signed = gl.sign(b"{}", now).unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in signed {
            h.insert(http::HeaderName::try_from(k).unwrap(), v.parse().unwrap());
        }
        assert!(gl.verify(&Inbound::new(&h, b"{}")).is_ok());
        assert_eq!(
            gl.verify(&Inbound::new(&h, b"{ }")).err(),
            Some(VerifyError::Mismatch)
        );
    }
}
