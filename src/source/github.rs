//! GitHub (github.com, GHEC, GHES): `X-Hub-Signature-256: sha256=<hex>` over the
//! raw body, JSON or form-encoded (`payload=`) bodies, `X-GitHub-Event`,
//! `X-GitHub-Delivery`.
//!
//! GitHub sends the SHA-256 header with every signed delivery; the legacy
//! `X-Hub-Signature: sha1=` copy is never accepted, so a weaker hash cannot
//! stand in for the one GitHub uses.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::Deserialize;

use super::signature::{self, Algorithm};
use super::{
    DescribeError, Inbound, Scheme, Verified, VerifyError, delivery_id, hmac_keys, parse, required_secrets,
};
use crate::config::raw::RawSource;
use crate::config::{HmacKey, Loader, Secret};
use crate::event::{Event, Provider, RefChange, kind, union_paths};

/// GitHub lists at most this many commits in a push payload.
const MAX_PUSH_COMMITS: usize = 2048;

#[derive(Debug)]
pub struct GitHub {
    /// The webhook secrets as HMAC keys; any one of them verifies (rotation).
    keys: Vec<HmacKey>,
}

impl GitHub {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let secrets = required_secrets(name, "secrets", raw.secrets.as_ref(), raw.kind.span(), loader);
        GitHub {
            keys: hmac_keys(secrets.iter().map(|(s, _)| s)),
        }
    }

    pub fn with_secrets(secrets: &[Secret]) -> Self {
        GitHub {
            keys: hmac_keys(secrets),
        }
    }
}

impl Scheme for GitHub {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        vec![("X-GitHub-Event".into(), event.into())]
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        let value = inbound
            .header("x-hub-signature-256")
            .ok_or(VerifyError::MissingHeader("X-Hub-Signature-256"))?;
        signature::verify_prefixed_hex(
            &self.keys,
            value,
            "X-Hub-Signature-256",
            Algorithm::Sha256,
            &[inbound.body],
        )?;
        // GitHub signs the body as sent; a form body carries the JSON in `payload`.
        let payload = if inbound.is_form() {
            Cow::Owned(inbound.form_payload()?)
        } else {
            Cow::Borrowed(inbound.body)
        };
        Ok(Verified::new(payload))
    }

    fn describe(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError> {
        let name = inbound
            .header("x-github-event")
            .ok_or(DescribeError::MissingEventHeader("X-GitHub-Event"))?;
        let delivery = delivery_id(inbound, &["x-github-delivery"]);
        describe(source, Provider::Github, name, name, delivery, verified.payload())
    }

    fn sign(&self, body: &[u8], _now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let key = self.keys.first().ok_or("the source has no secret to sign with")?;
        let mac = signature::hmac(Algorithm::Sha256, key.expose(), &[body]);
        Ok(vec![(
            "X-Hub-Signature-256".into(),
            format!("sha256={}", hex::encode(mac)),
        )])
    }
}

#[derive(Deserialize)]
pub(super) struct Repo {
    pub full_name: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct User {
    pub login: Option<String>,
    pub username: Option<String>,
}

impl User {
    pub fn name(self) -> Option<String> {
        self.login.or(self.username)
    }
}

#[derive(Deserialize)]
pub(super) struct Commit {
    pub added: Option<Vec<String>>,
    pub modified: Option<Vec<String>>,
    pub removed: Option<Vec<String>>,
}

impl Commit {
    /// False for senders (Gogs) whose commits carry no file lists.
    pub fn lists_files(&self) -> bool {
        self.added.is_some() || self.modified.is_some() || self.removed.is_some()
    }

    pub fn files(&self) -> impl Iterator<Item = &str> {
        [&self.added, &self.modified, &self.removed]
            .into_iter()
            .flatten()
            .flatten()
            .map(String::as_str)
    }
}

#[derive(Deserialize)]
pub(super) struct Push {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub before: Option<String>,
    pub after: Option<String>,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub forced: bool,
    #[serde(default)]
    pub commits: Option<Vec<Commit>>,
    /// Gitea: the real number of commits when `commits` was capped.
    pub total_commits: Option<usize>,
    pub repository: Option<Repo>,
    pub sender: Option<User>,
    pub pusher: Option<User>,
}

#[derive(Deserialize)]
pub(super) struct PullRequest {
    pub action: Option<String>,
    pub number: Option<u64>,
    pub pull_request: Pr,
    pub repository: Option<Repo>,
    pub sender: Option<User>,
}

#[derive(Deserialize)]
pub(super) struct Pr {
    pub number: Option<u64>,
    pub head: PrRef,
    pub base: PrRef,
    #[serde(default)]
    pub merged: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct PrRef {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Release {
    pub action: Option<String>,
    pub release: ReleaseInfo,
    pub repository: Option<Repo>,
    pub sender: Option<User>,
}

#[derive(Deserialize)]
pub(super) struct ReleaseInfo {
    pub tag_name: String,
}

#[derive(Deserialize)]
pub(super) struct CreateDelete {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub ref_type: String,
    pub sha: Option<String>,
    pub repository: Option<Repo>,
    pub sender: Option<User>,
}

#[derive(Deserialize)]
pub(super) struct Other {
    pub action: Option<String>,
    pub repository: Option<Repo>,
    pub sender: Option<User>,
}

/// Describe a GitHub-shaped payload. Gitea, Forgejo and Gogs share this shape,
/// with their own provider tag and a few different words. `name` is the event
/// name users see; `coarse` the GitHub-compatible one that decides the shape.
pub(super) fn describe(
    source: &str,
    provider: Provider,
    name: &str,
    coarse: &str,
    delivery: String,
    payload: &[u8],
) -> Result<Event, DescribeError> {
    let normalized = match coarse {
        "push" => kind::PUSH,
        "pull_request" | "pull_request_target" => kind::PULL_REQUEST,
        "release" => kind::RELEASE,
        "ping" => kind::PING,
        other => other,
    };
    let mut event = Event::new(source, provider, name, normalized, delivery);
    match normalized {
        kind::PUSH => {
            let p: Push = parse(payload)?;
            let mut change = RefChange::new(&p.git_ref, p.before.as_deref(), p.after.as_deref());
            change.created |= p.created;
            change.deleted |= p.deleted;
            change.forced = p.forced;
            event.set_push(change);
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p
                .sender
                .and_then(User::name)
                .or_else(|| p.pusher.and_then(User::name));
            match p.commits {
                Some(commits) if commits.len() >= MAX_PUSH_COMMITS => {
                    event.paths_unknown = Some(format!(
                        "the payload lists only the first {MAX_PUSH_COMMITS} commits of this push"
                    ));
                }
                Some(commits) if p.total_commits.is_some_and(|t| t > commits.len()) => {
                    event.paths_unknown = Some(format!(
                        "the payload lists {} of {} commits; changed files are incomplete",
                        commits.len(),
                        p.total_commits.unwrap_or_default()
                    ));
                }
                Some(commits) if !commits.iter().all(Commit::lists_files) => {
                    event.paths_unknown = Some("the payload's commits do not list changed files".into());
                }
                Some(commits) => event.paths = Some(union_paths(commits.iter().flat_map(Commit::files))),
                None => event.paths_unknown = Some("the payload lists no commits".into()),
            }
        }
        kind::PULL_REQUEST => {
            let p: PullRequest = parse(payload)?;
            let word = p.action.unwrap_or_default();
            let action = pr_action(&word, p.pull_request.merged.unwrap_or(false));
            event.set_action(&word, action);
            event.number = p.number.or(p.pull_request.number);
            event.set_ref(&format!("refs/heads/{}", p.pull_request.head.git_ref));
            event.sha = p.pull_request.head.sha;
            event.base_branch = Some(p.pull_request.base.git_ref);
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.sender.and_then(User::name);
            event.paths_unknown = Some("pull request payloads do not list changed files".into());
        }
        kind::RELEASE => {
            let p: Release = parse(payload)?;
            if let Some(a) = p.action {
                event.set_action(&a, &a);
            }
            event.set_ref(&format!("refs/tags/{}", p.release.tag_name));
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.sender.and_then(User::name);
        }
        "create" | "delete" => {
            let p: CreateDelete = parse(payload)?;
            // These events carry the short name; rebuild the full ref.
            let full = match p.ref_type.as_str() {
                "tag" => format!("refs/tags/{}", p.git_ref),
                _ => format!("refs/heads/{}", p.git_ref),
            };
            event.set_ref(&full);
            event.sha = p.sha;
            event.created = coarse == "create";
            event.deleted = coarse == "delete";
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.sender.and_then(User::name);
        }
        _ => {
            let p: Other = parse(payload)?;
            if let Some(a) = p.action {
                event.set_action(&a, &a);
            }
            event.repository = p.repository.and_then(|r| r.full_name);
            event.sender = p.sender.and_then(User::name);
        }
    }
    Ok(event)
}

/// Map a pull request action word onto the common vocabulary.
pub(super) fn pr_action(word: &str, merged: bool) -> &str {
    match word {
        "closed" if merged => "merged",
        "synchronized" => "synchronize",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn github() -> GitHub {
        GitHub::with_secrets(&[Secret::new("It's a Secret to Everybody")])
    }

    #[test]
    fn docs_vector_verifies_and_bad_ones_do_not() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
                .parse()
                .unwrap(),
        );
        let gh = github();
        assert!(gh.verify(&Inbound::new(&h, b"Hello, World!")).is_ok());
        assert_eq!(
            gh.verify(&Inbound::new(&h, b"Hello, World?")).err(),
            Some(VerifyError::Mismatch)
        );
        h.insert("x-hub-signature-256", "sha256=757107ea0eb2509f".parse().unwrap());
        assert_eq!(
            gh.verify(&Inbound::new(&h, b"Hello, World!")).err(),
            Some(VerifyError::Mismatch)
        );
        h.insert("x-hub-signature-256", "sha256=".parse().unwrap());
        assert!(matches!(
            gh.verify(&Inbound::new(&h, b"x")),
            Err(VerifyError::Malformed(..))
        ));
        let empty = HeaderMap::new();
        assert_eq!(
            gh.verify(&Inbound::new(&empty, b"x")).err(),
            Some(VerifyError::MissingHeader("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn sha1_signatures_are_refused_in_either_header() {
        // The docs vector's SHA-1 twin: valid HMAC-SHA1, but GitHub signs with SHA-256.
        let sha1 = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";
        let mut h = HeaderMap::new();
        h.insert("x-hub-signature", sha1.parse().unwrap());
        assert_eq!(
            github().verify(&Inbound::new(&h, b"Hello, World!")).err(),
            Some(VerifyError::MissingHeader("X-Hub-Signature-256"))
        );
        h.insert("x-hub-signature-256", sha1.parse().unwrap());
        assert!(matches!(
            github().verify(&Inbound::new(&h, b"Hello, World!")),
            Err(VerifyError::Malformed("X-Hub-Signature-256", _))
        ));
    }

    #[test]
    fn closed_and_merged_becomes_merged() {
        assert_eq!(pr_action("closed", true), "merged");
        assert_eq!(pr_action("closed", false), "closed");
        assert_eq!(pr_action("synchronized", false), "synchronize");
    }
}
