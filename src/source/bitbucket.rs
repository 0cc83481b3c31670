//! Bitbucket Cloud and Data Center: `X-Hub-Signature: sha256=<hex>` (the prefix
//! names the hash; on GitHub the same header means SHA-1), `X-Event-Key`,
//! delivery id from `X-Request-UUID` (Cloud) or `X-Request-Id` (DC), and
//! optional HTTP basic auth on Data Center. Both sign with HMAC-SHA256 only,
//! so a `sha1=` signature is refused (401) rather than checked.
//!
//! A push may change several refs; the first becomes the event's own `ref` and
//! all of them are listed in `event.changes`. Bitbucket payloads never list
//! changed files, so `event.paths` is unknown.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::Deserialize;

use super::signature::{self, Algorithm};
use super::{DescribeError, Inbound, Scheme, Verified, VerifyError, delivery_id, hmac_keys, parse};
use crate::config::diagnostic::Diagnostic;
use crate::config::loader::Loader;
use crate::config::raw::RawSource;
use crate::config::secret::{HmacKey, Secret};
use crate::event::{Event, Provider, RefChange, kind};

#[derive(Debug)]
pub struct Bitbucket {
    /// Webhook secrets as HMAC keys; any one of them verifies (rotation).
    keys: Vec<HmacKey>,
    /// Data Center basic-auth credentials, `user:password`.
    basic_auth: Vec<Secret>,
    signature_required: bool,
    basic_required: bool,
}

impl Bitbucket {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let secrets = raw
            .secrets
            .as_ref()
            .map(|l| loader.secrets(l))
            .unwrap_or_default();
        let basic_auth = raw
            .basic_auth
            .as_ref()
            .map(|l| loader.secrets_with_spans(l))
            .unwrap_or_default();
        let signature_required = raw.secrets.as_ref().is_some_and(|l| !l.get_ref().is_empty());
        let basic_required = raw.basic_auth.as_ref().is_some_and(|l| !l.get_ref().is_empty());
        if !signature_required && !basic_required {
            loader.push(Diagnostic::error(
                format!("source `{name}`: set `secrets` (webhook secret) or `basic_auth` (\"user:password\"); hookbridge does not accept unauthenticated webhooks"),
                Some(raw.kind.span()),
            ));
        }
        for (secret, span) in &basic_auth {
            if !secret.expose().contains(':') {
                loader.push(Diagnostic::error(
                    format!("source `{name}`: basic_auth credentials must be \"user:password\""),
                    Some(span.clone()),
                ));
            }
        }
        Bitbucket {
            keys: hmac_keys(&secrets),
            basic_auth: basic_auth.into_iter().map(|(s, _)| s).collect(),
            signature_required,
            basic_required,
        }
    }

    pub fn with_secrets(secrets: &[Secret]) -> Self {
        Bitbucket {
            keys: hmac_keys(secrets),
            basic_auth: Vec::new(),
            signature_required: true,
            basic_required: false,
        }
    }
}

/// Check `Authorization: Basic` against "user:password" credentials in constant time.
pub(super) fn verify_basic(inbound: &Inbound<'_>, credentials: &[Secret]) -> Result<(), VerifyError> {
    use base64::Engine as _;
    let value = inbound
        .header("authorization")
        .ok_or(VerifyError::MissingHeader("Authorization"))?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(|| VerifyError::Malformed("Authorization", "expected `Basic <base64>`".into()))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| VerifyError::Malformed("Authorization", "not base64".into()))?;
    if credentials.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    if signature::token_matches(&decoded, credentials) {
        Ok(())
    } else {
        Err(VerifyError::TokenMismatch("Authorization"))
    }
}

impl Scheme for Bitbucket {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        vec![("X-Event-Key".into(), event.into())]
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        if self.basic_required {
            verify_basic(inbound, &self.basic_auth)?;
        }
        if self.signature_required {
            let value = inbound
                .header("x-hub-signature")
                .ok_or(VerifyError::MissingHeader("X-Hub-Signature"))?;
            signature::verify_prefixed_hex(
                &self.keys,
                value,
                "X-Hub-Signature",
                Algorithm::Sha256,
                &[inbound.body],
            )?;
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
            .header("x-event-key")
            .ok_or(DescribeError::MissingEventHeader("X-Event-Key"))?;
        let delivery = delivery_id(inbound, &["x-request-uuid", "x-request-id"]);
        describe(source, name, delivery, verified.payload())
    }

    fn sign(&self, body: &[u8], _now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        if let Some(key) = self.keys.first() {
            let mac = signature::hmac(Algorithm::Sha256, key.expose(), &[body]);
            out.push(("X-Hub-Signature".into(), format!("sha256={}", hex::encode(mac))));
        }
        if let Some(creds) = self.basic_auth.first() {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(creds.expose());
            out.push(("Authorization".into(), format!("Basic {encoded}")));
        }
        if out.is_empty() {
            return Err("the source has no secret to sign with".into());
        }
        Ok(out)
    }
}

// --- Bitbucket Cloud payloads ---

#[derive(Deserialize)]
struct CloudPush {
    push: CloudChanges,
    repository: Option<CloudRepo>,
    actor: Option<CloudActor>,
}

#[derive(Deserialize)]
struct CloudChanges {
    #[serde(default)]
    changes: Vec<CloudChange>,
}

#[derive(Deserialize)]
struct CloudChange {
    new: Option<CloudRef>,
    old: Option<CloudRef>,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    closed: bool,
    #[serde(default)]
    forced: bool,
}

#[derive(Deserialize)]
struct CloudRef {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    target: Option<CloudTarget>,
}

#[derive(Deserialize)]
struct CloudTarget {
    hash: Option<String>,
}

#[derive(Deserialize)]
struct CloudRepo {
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct CloudActor {
    nickname: Option<String>,
    username: Option<String>,
    display_name: Option<String>,
}

impl CloudActor {
    fn name(self) -> Option<String> {
        self.username.or(self.nickname).or(self.display_name)
    }
}

#[derive(Deserialize)]
struct CloudPullRequest {
    pullrequest: CloudPr,
    repository: Option<CloudRepo>,
    actor: Option<CloudActor>,
}

#[derive(Deserialize)]
struct CloudPr {
    id: Option<u64>,
    source: CloudPrSide,
    destination: CloudPrSide,
}

#[derive(Deserialize)]
struct CloudPrSide {
    branch: CloudBranch,
    commit: Option<CloudTarget>,
}

#[derive(Deserialize)]
struct CloudBranch {
    name: String,
}

// --- Bitbucket Data Center payloads ---

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcRefsChanged {
    #[serde(default)]
    changes: Vec<DcChange>,
    repository: Option<DcRepo>,
    actor: Option<DcActor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcChange {
    ref_id: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<DcRef>,
    from_hash: Option<String>,
    to_hash: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct DcRef {
    id: String,
}

#[derive(Deserialize)]
struct DcRepo {
    slug: Option<String>,
    project: Option<DcProject>,
}

impl DcRepo {
    fn full_name(self) -> Option<String> {
        match (self.project.and_then(|p| p.key), self.slug) {
            (Some(key), Some(slug)) => Some(format!("{key}/{slug}")),
            (None, slug) => slug,
            (Some(_), None) => None,
        }
    }
}

#[derive(Deserialize)]
struct DcProject {
    key: Option<String>,
}

#[derive(Deserialize)]
struct DcActor {
    slug: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcPullRequestEvent {
    pull_request: DcPr,
    actor: Option<DcActor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcPr {
    id: Option<u64>,
    from_ref: DcPrRef,
    to_ref: DcPrRef,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcPrRef {
    id: String,
    latest_commit: Option<String>,
    repository: Option<DcRepo>,
}

fn describe(source: &str, name: &str, delivery: String, payload: &[u8]) -> Result<Event, DescribeError> {
    let (normalized, action) = match name {
        "repo:push" | "repo:refs_changed" => (kind::PUSH, None),
        "diagnostics:ping" => (kind::PING, None),
        "pullrequest:created" | "pr:opened" => (kind::PULL_REQUEST, Some("opened")),
        "pullrequest:updated" | "pr:from_ref_updated" => (kind::PULL_REQUEST, Some("synchronize")),
        "pullrequest:fulfilled" | "pr:merged" => (kind::PULL_REQUEST, Some("merged")),
        "pullrequest:rejected" | "pr:declined" | "pr:deleted" => (kind::PULL_REQUEST, Some("closed")),
        "pr:reopened" => (kind::PULL_REQUEST, Some("reopened")),
        other => (other, None),
    };
    let mut event = Event::new(source, Provider::Bitbucket, name, normalized, delivery);
    let cloud = name.starts_with("repo:push") || name.starts_with("pullrequest:");
    match (normalized, cloud) {
        (kind::PUSH, true) => {
            let p: CloudPush = parse(payload)?;
            for c in p.push.changes {
                event_push(&mut event, cloud_change(c));
            }
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.actor.and_then(CloudActor::name);
            event.paths_unknown = Some("Bitbucket push payloads do not list changed files".into());
        }
        (kind::PUSH, false) => {
            let p: DcRefsChanged = parse(payload)?;
            for c in p.changes {
                let Some(git_ref) = c.ref_id.or(c.git_ref.map(|r| r.id)) else {
                    continue;
                };
                let mut change = RefChange::new(&git_ref, c.from_hash.as_deref(), c.to_hash.as_deref());
                change.created |= c.kind.as_deref() == Some("ADD");
                change.deleted |= c.kind.as_deref() == Some("DELETE");
                event_push(&mut event, change);
            }
            event.repository = p.repository.and_then(DcRepo::full_name);
            event.sender = p.actor.and_then(|a| a.slug.or(a.name));
            event.paths_unknown = Some("Bitbucket push payloads do not list changed files".into());
        }
        (kind::PULL_REQUEST, true) => {
            let p: CloudPullRequest = parse(payload)?;
            let word = name.trim_start_matches("pullrequest:");
            event.set_action(word, action.unwrap_or(word));
            event.number = p.pullrequest.id;
            event.set_ref(&format!("refs/heads/{}", p.pullrequest.source.branch.name));
            // Bitbucket Cloud sends an abbreviated (12-character) hash here.
            event.sha = p.pullrequest.source.commit.and_then(|c| c.hash);
            event.base_branch = Some(p.pullrequest.destination.branch.name);
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.actor.and_then(CloudActor::name);
            event.paths_unknown = Some("pull request payloads do not list changed files".into());
        }
        (kind::PULL_REQUEST, false) => {
            let p: DcPullRequestEvent = parse(payload)?;
            let word = name.trim_start_matches("pr:");
            event.set_action(word, action.unwrap_or(word));
            event.number = p.pull_request.id;
            event.set_ref(&p.pull_request.from_ref.id);
            event.sha = p.pull_request.from_ref.latest_commit;
            event.base_branch = crate::event::split_ref(&p.pull_request.to_ref.id).0;
            event.repository = p.pull_request.to_ref.repository.and_then(DcRepo::full_name);
            event.sender = p.actor.and_then(|a| a.slug.or(a.name));
            event.paths_unknown = Some("pull request payloads do not list changed files".into());
        }
        _ => {
            // Ping and other events: validate the JSON, describe nothing more.
            parse::<serde::de::IgnoredAny>(payload)?;
        }
    }
    Ok(event)
}

/// Record a ref change; the first one also becomes the event's own ref.
fn event_push(event: &mut Event, change: RefChange) {
    if event.changes.is_empty() {
        event.set_push(change);
    } else {
        event.changes.push(change);
    }
}

fn cloud_change(c: CloudChange) -> RefChange {
    let side = c.new.as_ref().or(c.old.as_ref());
    let (name, ref_kind) = side.map_or(("", "branch"), |r| (r.name.as_str(), r.kind.as_str()));
    let git_ref = match ref_kind {
        "tag" | "annotated_tag" => format!("refs/tags/{name}"),
        _ => format!("refs/heads/{name}"),
    };
    let hash = |r: &Option<CloudRef>| {
        r.as_ref()
            .and_then(|r| r.target.as_ref())
            .and_then(|t| t.hash.clone())
    };
    let mut change = RefChange::new(&git_ref, None, None);
    change.sha = hash(&c.new);
    change.before = hash(&c.old);
    change.created = c.created || c.old.is_none();
    change.deleted = c.closed || c.new.is_none();
    change.forced = c.forced;
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_plugin_vector() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/payloads/bitbucket-cloud/repo-push-signed.json"
        ))
        .unwrap();
        let b = Bitbucket::with_secrets(&[Secret::new("Gkvl$k$wyNpQAF42")]);
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-hub-signature",
            "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035"
                .parse()
                .unwrap(),
        );
        assert!(b.verify(&Inbound::new(&h, &body)).is_ok());
        h.insert(
            "x-hub-signature",
            "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a036"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            b.verify(&Inbound::new(&h, &body)).err(),
            Some(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_valid_sha1_signature_is_refused() {
        let b = Bitbucket::with_secrets(&[Secret::new("s")]);
        let body = br#"{"push":{"changes":[]}}"#;
        let sha1 = hex::encode(signature::hmac(Algorithm::Sha1, b"s", &[body]));
        let mut h = http::HeaderMap::new();
        h.insert("x-hub-signature", format!("sha1={sha1}").parse().unwrap());
        let err = b.verify(&Inbound::new(&h, body)).err().unwrap();
        assert!(
            matches!(err, VerifyError::Malformed("X-Hub-Signature", _)),
            "{err}"
        );
        assert_eq!(err.status(), 401);
    }
}
