//! The VCS REST APIs hookbridge calls (`[sources.NAME.api]`): commit
//! statuses now, changed files later. One file per VCS:
//!
//! | VCS | file | call |
//! |---|---|---|
//! | GitHub, GHES (`https://HOST/api/v3`) | [`github`] | `POST /repos/{owner}/{repo}/statuses/{sha}` |
//! | GitLab | [`gitlab`] | `POST /api/v4/projects/{path}/statuses/{sha}` |
//! | Bitbucket Cloud | [`bitbucket_cloud`] | `POST /2.0/repositories/{workspace}/{slug}/commit/{sha}/statuses/build` |
//! | Bitbucket Data Center | [`bitbucket_dc`] | `POST /rest/api/latest/projects/{KEY}/repos/{slug}/commits/{sha}/builds` |
//! | Gitea, Forgejo | [`gitea`] | `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}` |
//!
//! A status goes out as the targets' calls do: [`status_request`] builds a
//! printable [`OutboundRequest`] with `***` where the token goes, the
//! [`Transport`] puts the token there on the wire, and the answer is sorted
//! into a [`Posted`] by one `match` ([`classify`]): 2xx done; 408, 425, 429,
//! 5xx and transport errors retried (honouring `Retry-After`); any other
//! answer permanent. Every reason passes through a [`Redactor`] of the
//! token, so no reason can carry it.
//!
//! What comes from outside (the repository and commit of an event, a
//! context rendered from a template) is checked before it becomes a URL: a
//! commit is 7 to 64 hex digits, a repository has its VCS's shape, and each
//! value is percent-encoded into path segments of its own.

use std::time::{Duration, SystemTime};

use crate::config::secret::Secret;
use crate::store::status::{StatusState, Vcs};
use crate::target::client::{SendError, Transport};
use crate::target::redact::Redactor;
use crate::target::{
    AUTHORIZATION, Credential, Header, OutboundRequest, REDACTED, Response, USER_AGENT, error_message,
    retry_after, truncate_body,
};

pub mod bitbucket_cloud;
pub mod bitbucket_dc;
pub mod files;
pub mod gitea;
pub mod github;
pub mod gitlab;

/// A source's `[sources.NAME.api]`: where its VCS's REST API is, and the
/// token that may write commit statuses there.
#[derive(Debug, Clone)]
pub struct Api {
    /// The API's base URL, without a trailing slash.
    pub url: String,
    pub token: Secret,
    /// For Basic authentication (`user:token`): Bitbucket API tokens and
    /// app passwords. Bearer (or the VCS's own header) without it.
    pub user: Option<String>,
}

/// One status to post on one commit.
#[derive(Debug, Clone, Copy)]
pub struct StatusPost<'a> {
    /// The event's repository: `owner/repo` (GitHub, Gitea, Forgejo),
    /// `group/sub/project` (GitLab), `workspace/slug` (Bitbucket Cloud),
    /// `KEY/slug` (Bitbucket Data Center).
    pub repository: &'a str,
    /// The commit, 7 to 64 hex digits.
    pub sha: &'a str,
    /// The full ref (`refs/heads/main`), for the VCSs that take one.
    pub git_ref: Option<&'a str>,
    pub context: &'a str,
    pub state: StatusState,
    /// Already cut to the VCS's length by the caller.
    pub description: &'a str,
    pub target_url: Option<&'a str>,
}

/// What posting a status came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// The VCS took it (a 2xx).
    Done { status: u16 },
    /// Not taken; try again, after `after` when the VCS said so.
    Retry {
        reason: String,
        after: Option<Duration>,
        status: Option<u16>,
    },
    /// Will not be taken as it is: a 4xx, or a request that cannot be built.
    Permanent { reason: String, status: Option<u16> },
}

/// The public API's URL where a VCS has one; self-hosted ones have none.
pub fn default_url(vcs: Vcs) -> Option<&'static str> {
    match vcs {
        Vcs::Github => Some("https://api.github.com"),
        Vcs::Gitlab => Some("https://gitlab.com"),
        Vcs::BitbucketCloud => Some("https://api.bitbucket.org"),
        Vcs::BitbucketDatacenter | Vcs::Gitea | Vcs::Forgejo => None,
    }
}

/// `state` in the VCS's vocabulary.
pub fn wire_state(vcs: Vcs, state: StatusState) -> &'static str {
    match vcs {
        Vcs::Github => github::state(state),
        Vcs::Gitlab => gitlab::state(state),
        Vcs::BitbucketCloud => bitbucket_cloud::state(state),
        Vcs::BitbucketDatacenter => bitbucket_dc::state(state),
        Vcs::Gitea | Vcs::Forgejo => gitea::state(state),
    }
}

/// The request that posts `post` to `api`, or why there can be none (the
/// reason names the offending value, never the token).
pub fn status_request(vcs: Vcs, api: &Api, post: &StatusPost<'_>) -> Result<OutboundRequest, String> {
    check_sha(post.sha)?;
    if post.context.trim().is_empty() {
        return Err("the status context is empty".into());
    }
    let base = api.url.trim_end_matches('/');
    if base.is_empty() {
        return Err(format!("no API URL for {}", vcs.as_str()));
    }
    match vcs {
        Vcs::Github => github::request(base, post),
        Vcs::Gitlab => gitlab::request(base, post),
        Vcs::BitbucketCloud => bitbucket_cloud::request(base, api.user.as_deref(), post),
        Vcs::BitbucketDatacenter => bitbucket_dc::request(base, api.user.as_deref(), post),
        Vcs::Gitea | Vcs::Forgejo => gitea::request(base, post),
    }
}

/// Post `post` through `transport`, and say what came of it.
pub async fn post_status(
    transport: &dyn Transport,
    vcs: Vcs,
    api: &Api,
    post: &StatusPost<'_>,
    timeout: Duration,
    now: SystemTime,
) -> Posted {
    let redact = Redactor::new(api.token.expose());
    let request = match status_request(vcs, api, post) {
        Ok(r) => r,
        Err(reason) => {
            return Posted::Permanent {
                reason: redact.text(&reason),
                status: None,
            };
        }
    };
    match transport.send(&request, Some(&api.token), timeout).await {
        // GitHub answers its rate limits (commit statuses count as content
        // creation) with 403 and says when to come back.
        Ok(response)
            if vcs == Vcs::Github
                && response.status == 403
                && let Some(after) = crate::target::github_actions::retry_wait(
                    &response,
                    &String::from_utf8_lossy(&response.body),
                    now,
                ) =>
        {
            Posted::Retry {
                reason: redact.text(&format!(
                    "HTTP 403: {}",
                    message(&redact.bytes(response.body.to_vec()))
                )),
                after: Some(after),
                status: Some(403),
            }
        }
        Ok(response) => match classify(&response, &redact, now) {
            // GitLab refuses a status the commit already has ("Cannot
            // transition status via :run from :running"): it shows what
            // was to be posted, so the post is done.
            Posted::Permanent {
                reason,
                status: Some(400),
            } if vcs == Vcs::Gitlab && reason.contains("Cannot transition status") => {
                Posted::Done { status: 400 }
            }
            posted => posted,
        },
        Err(SendError::Build(e)) => Posted::Permanent {
            reason: redact.text(&format!("cannot build the request: {e}")),
            status: None,
        },
        Err(e) => {
            let reason = match e {
                SendError::Timeout => "timed out waiting for the VCS API".to_owned(),
                SendError::Connect(e) => format!("cannot connect to the VCS API: {e}"),
                SendError::Failed(e) | SendError::Build(e) => format!("request failed: {e}"),
            };
            Posted::Retry {
                reason: redact.text(&reason),
                after: None,
                status: None,
            }
        }
    }
}

/// What a VCS's answer means: the one `match` on its status.
pub fn classify(response: &Response, redact: &Redactor, now: SystemTime) -> Posted {
    let status = response.status;
    let reason = || {
        let body = redact.bytes(response.body.to_vec());
        redact.text(&format!("HTTP {status}: {}", message(&body)))
    };
    match status {
        200..=299 => Posted::Done { status },
        408 | 425 | 429 | 500..=599 => Posted::Retry {
            reason: reason(),
            after: retry_after(&response.headers, now),
            status: Some(status),
        },
        _ => Posted::Permanent {
            reason: reason(),
            status: Some(status),
        },
    }
}

/// The message of a VCS's error body: Bitbucket Cloud's
/// `{"error": {"message"}}`, Bitbucket Data Center's `{"errors": [{"message"}]}`,
/// else `{"message"}` / `{"error"}` (GitHub, GitLab, Gitea) or the text.
fn message(body: &[u8]) -> String {
    let nested = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/errors/0/message"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        });
    match nested {
        Some(m) => truncate_body(m.as_bytes(), 500),
        None => error_message(body),
    }
}

// ---------------------------------------------------------------------------
// What the per-VCS files share

/// A value from outside as a message shows it: quoted, at most 80 characters.
pub(crate) fn shown(value: &str) -> String {
    let mut out: String = value.chars().take(80).collect();
    if out.len() < value.len() {
        out.push('…');
    }
    format!("`{}`", out.escape_debug())
}

/// A commit: 7 to 64 hex digits (an abbreviated SHA-1 up to a full SHA-256).
fn check_sha(sha: &str) -> Result<(), String> {
    if (7..=64).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "commit {} is not a hex sha of 7 to 64 digits",
            shown(sha)
        ))
    }
}

/// `repository` split at `/` into exactly two non-empty parts.
pub(crate) fn two_parts<'a>(repository: &'a str, shape: &str) -> Result<(&'a str, &'a str), String> {
    match repository.split_once('/') {
        Some((a, b)) if is_segment(a) && is_segment(b) && !b.contains('/') => Ok((a, b)),
        _ => Err(format!("repository {} is not `{shape}`", shown(repository))),
    }
}

/// Whether `part` can be one path segment: not blank, not `.` or `..`
/// (which percent-encoding keeps, and a URL parser would resolve).
pub(crate) fn is_segment(part: &str) -> bool {
    !part.trim().is_empty() && part != "." && part != ".."
}

/// `url` unless a dot segment would move it elsewhere than it says.
pub(crate) fn checked(url: String) -> Result<String, String> {
    if crate::target::encode::has_dot_segment(&url) {
        Err(format!(
            "the status URL {} has a `.` or `..` segment",
            shown(&url)
        ))
    } else {
        Ok(url)
    }
}

/// A branch or tag's short name (`refs/heads/main` → `main`), for the VCSs
/// that take one; `None` for other refs (`refs/pull/1/head`) and empty ones.
pub(crate) fn short_ref(git_ref: Option<&str>) -> Option<&str> {
    let r = git_ref?.trim();
    let short = match r
        .strip_prefix("refs/heads/")
        .or_else(|| r.strip_prefix("refs/tags/"))
    {
        Some(name) => name,
        None if r.starts_with("refs/") => return None,
        None => r,
    };
    (!short.is_empty()).then_some(short)
}

/// The JSON headers every call sends, then the token's header.
pub(crate) fn headers(token_header: &'static str, token_value: String) -> Vec<Header> {
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
        Header {
            name: token_header.into(),
            value: token_value,
        },
    ]
}

/// A JSON `POST` of `body` to `url` with the token where `credential` says.
pub(crate) fn post(
    url: String,
    headers: Vec<Header>,
    body: serde_json::Value,
    credential: Credential,
) -> OutboundRequest {
    OutboundRequest {
        method: "POST",
        url,
        headers,
        body,
        encoding: crate::target::Encoding::Json,
        credential,
    }
}

/// Bitbucket's two products: `Authorization: Bearer` with an access token,
/// `Basic user:token` when the API names a user.
pub(crate) fn bearer_or_basic(user: Option<&str>) -> Result<(Vec<Header>, Credential), String> {
    match user.filter(|u| !u.is_empty()) {
        Some(user) if user.contains(':') => Err(format!("the API user {} has a `:`", shown(user))),
        Some(user) => Ok((
            headers(AUTHORIZATION, format!("Basic {REDACTED}")),
            Credential::Basic(user.to_owned()),
        )),
        None => Ok((
            headers(AUTHORIZATION, format!("Bearer {REDACTED}")),
            Credential::Authorization("Bearer"),
        )),
    }
}

#[cfg(test)]
mod tests;
