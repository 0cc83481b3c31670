//! Changed files read from a VCS's REST API, for the path filters a
//! payload cannot decide (`paths_unknown = "fetch"`). One file per VCS:
//!
//! | VCS | file | push | pull/merge request |
//! |---|---|---|---|
//! | GitHub, GHES | [`github`] | compare `before...after`; beyond its 300 files, each commit's files | PR files |
//! | GitLab | [`gitlab`] | repository compare; per-commit diffs when it comes back empty | MR diffs; compare of `diff_refs` when `changes_count` ends in `+` |
//! | Bitbucket Cloud | [`bitbucket_cloud`] | diffstat `after..before` | PR diffstat |
//! | Bitbucket Data Center | [`bitbucket_dc`] | changes `since`/`until` | PR changes |
//! | Gitea, Forgejo | [`gitea`] | compare `before...after` | PR files |
//!
//! A new branch (no `before`) is compared with the repository's default
//! branch, read from the API. A rename counts both of its paths. Every
//! list is followed page by page as the VCS pages it, within [`MAX_REQUESTS`]
//! requests and [`MAX_FILES`] paths per read; a read that would need more
//! fails with the reason rather than deciding on part of the list.
//!
//! What an answer means is the same for every VCS ([`Reader::get`]): a 2xx is
//! read; 408, 425, 429, 5xx, GitHub's rate-limit 403 and transport errors
//! are worth another read later ([`FilesRead::Retry`], honouring
//! `Retry-After`); 401, 403, 404, any other 4xx and an answer that is not
//! the VCS's JSON fail the read ([`FilesRead::Failed`]). The token is
//! redacted from every reason.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use super::Api;
use crate::event::{Event, is_null_sha, kind};
use crate::store::status::Vcs;
use crate::target::client::{SendError, Transport};
use crate::target::redact::Redactor;
use crate::target::{Credential, Header, OutboundRequest, error_message, retry_after};

pub mod bitbucket_cloud;
pub mod bitbucket_dc;
pub mod cache;
pub mod gitea;
pub mod github;
pub mod gitlab;

/// The most requests one read makes.
pub const MAX_REQUESTS: u32 = 300;
/// The most paths one read collects.
pub const MAX_FILES: usize = 100_000;
/// The longest path taken (Linux's `PATH_MAX`); a longer one is no file.
pub const MAX_PATH: usize = 4096;
/// The most bytes of paths one read collects.
pub const MAX_PATH_BYTES: usize = 32 * 1024 * 1024;
/// The most bytes read of one answer (a page of files with their patches).
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What changed: a push, or a pull/merge request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Changes {
    /// A push that moved a branch to `after`; `before` is `None` for a new
    /// branch, which is compared with the repository's default branch.
    Push { before: Option<String>, after: String },
    /// A pull or merge request's files, by its number; `head` is the head
    /// commit the event saw (for the cache key: a new push to the request
    /// changes its files).
    Request { number: u64, head: Option<String> },
}

/// One read: a repository (as the event names it: `owner/repo`,
/// `group/sub/project`, `workspace/slug`, `KEY/slug`) and what changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilesQuery {
    pub repository: String,
    pub changes: Changes,
}

impl FilesQuery {
    /// What to read for `event`: a push's `before`→`after` (a new branch's
    /// from the default branch), a pull request's files by number; or why
    /// the VCS cannot say which files it changed.
    pub fn of(event: &Event) -> Result<FilesQuery, String> {
        let repository = event
            .repository
            .clone()
            .ok_or("the event names no repository to read them from")?;
        let changes = match event.kind.as_str() {
            kind::PUSH => {
                let after = event
                    .sha
                    .clone()
                    .filter(|s| !is_null_sha(s))
                    .ok_or("the push names no commit to read them from")?;
                let before = event
                    .before
                    .clone()
                    .filter(|b| !b.is_empty() && !is_null_sha(b) && !event.created);
                Changes::Push { before, after }
            }
            kind::PULL_REQUEST => Changes::Request {
                number: event
                    .number
                    .ok_or("the pull request has no number to read them by")?,
                head: event.sha.clone(),
            },
            other => {
                return Err(format!(
                    "the files of `{other}` events cannot be read (only pushes' and pull requests')"
                ));
            }
        };
        Ok(FilesQuery { repository, changes })
    }
}

/// The files a change touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedFiles {
    /// Every path, sorted and unique; a rename gives both of its paths.
    pub paths: Vec<String>,
    /// Where they were read, for people: `GitHub compare 1a2b3c4...5d6e7f8,
    /// then the files of 12 commits`.
    pub from: String,
    /// The HTTP requests the read made.
    pub requests: u32,
}

/// What reading came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesRead {
    Read(ChangedFiles),
    /// Not now (timeout, 429, 5xx): read again later, after `after` when the VCS said so.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Will not work by waiting: refused (401, 403, 404), not the VCS's
    /// JSON, or more than [`MAX_REQUESTS`] / [`MAX_FILES`].
    Failed(String),
}

/// Read the files `query` changed, from `api`.
pub async fn read(
    transport: &dyn Transport,
    vcs: Vcs,
    api: &Api,
    query: &FilesQuery,
    timeout: Duration,
    now: SystemTime,
) -> FilesRead {
    let mut reader = Reader::new(transport, vcs, api, timeout, now);
    let result = match vcs {
        Vcs::Github => github::read(&mut reader, query).await,
        Vcs::Gitlab => gitlab::read(&mut reader, query).await,
        Vcs::BitbucketCloud => bitbucket_cloud::read(&mut reader, query).await,
        Vcs::BitbucketDatacenter => bitbucket_dc::read(&mut reader, query).await,
        Vcs::Gitea | Vcs::Forgejo => gitea::read(&mut reader, query).await,
    };
    let requests = reader.requests;
    match result {
        Ok((paths, from)) => FilesRead::Read(ChangedFiles {
            paths: paths.into_iter().collect(),
            from,
            requests,
        }),
        Err(Stop::Retry { reason, after }) => FilesRead::Retry {
            reason: reader.redact.text(&reason),
            after,
        },
        Err(Stop::Failed(reason)) => FilesRead::Failed(reader.redact.text(&reason)),
    }
}

/// Why a read stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Retry { reason: String, after: Option<Duration> },
    Failed(String),
}

/// The paths collected so far: sorted, unique, bounded by [`MAX_FILES`]
/// paths of at most [`MAX_PATH`] bytes, [`MAX_PATH_BYTES`] in all.
#[derive(Debug, Default)]
pub struct Paths {
    paths: BTreeSet<String>,
    bytes: usize,
}

impl Paths {
    /// Add one path (an empty one is ignored).
    pub fn add(&mut self, path: &str) -> Result<(), Stop> {
        if path.is_empty() || self.paths.contains(path) {
            return Ok(());
        }
        if path.len() > MAX_PATH {
            return Err(Stop::Failed(format!(
                "the VCS lists a path of {} bytes, longer than {MAX_PATH}",
                path.len()
            )));
        }
        if self.paths.len() >= MAX_FILES || self.bytes.saturating_add(path.len()) > MAX_PATH_BYTES {
            return Err(Stop::Failed(format!(
                "the change touches more than {MAX_FILES} files (or {} MiB of paths)",
                MAX_PATH_BYTES / (1024 * 1024)
            )));
        }
        self.bytes = self.bytes.saturating_add(path.len());
        self.paths.insert(path.to_owned());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    fn into_iter(self) -> impl Iterator<Item = String> {
        self.paths.into_iter()
    }
}

/// A reader's result: the paths and where they came from (see [`ChangedFiles::from`]).
pub type Found = Result<(Paths, String), Stop>;

/// The GET requests of one read, on one VCS with one token: its headers,
/// the count against [`MAX_REQUESTS`], and the answer sorted into a 2xx or
/// a [`Stop`].
pub struct Reader<'a> {
    transport: &'a dyn Transport,
    pub vcs: Vcs,
    api: &'a Api,
    timeout: Duration,
    now: SystemTime,
    redact: Redactor,
    /// Requests made so far.
    pub requests: u32,
}

impl<'a> Reader<'a> {
    pub fn new(
        transport: &'a dyn Transport,
        vcs: Vcs,
        api: &'a Api,
        timeout: Duration,
        now: SystemTime,
    ) -> Reader<'a> {
        Reader {
            transport,
            vcs,
            api,
            timeout,
            now,
            redact: Redactor::new(api.token.expose()),
            requests: 0,
        }
    }

    /// The API's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        self.api.url.trim_end_matches('/')
    }

    /// `GET url` (a full URL under [`base`](Self::base), or a `next` link
    /// the VCS gave), answered with its 2xx response's headers and body.
    pub async fn get(&mut self, url: String) -> Result<(http::HeaderMap, bytes::Bytes), Stop> {
        if self.requests >= MAX_REQUESTS {
            return Err(Stop::Failed(format!(
                "reading the changed files would take more than {MAX_REQUESTS} requests"
            )));
        }
        self.requests = self.requests.saturating_add(1);
        let url = super::checked(url).map_err(Stop::Failed)?;
        let (headers, credential) = self.auth()?;
        let request = OutboundRequest {
            method: "GET",
            url,
            headers,
            body: serde_json::Value::Null,
            encoding: crate::target::Encoding::Json,
            credential,
        };
        let response = match self
            .transport
            .send_limited(&request, Some(&self.api.token), self.timeout, BODY_LIMIT)
            .await
        {
            Ok(r) => r,
            Err(e @ SendError::Build(_)) => return Err(Stop::Failed(e.to_string())),
            Err(e) => {
                let reason = match e {
                    SendError::Timeout => "timed out waiting for the VCS API".to_owned(),
                    SendError::Connect(e) => format!("cannot connect to the VCS API: {e}"),
                    SendError::Failed(e) | SendError::Build(e) => format!("request failed: {e}"),
                };
                return Err(Stop::Retry { reason, after: None });
            }
        };
        let status = response.status;
        let message = || {
            let body = self.redact.bytes(response.body.to_vec());
            format!("HTTP {status}: {}", error_message(&body))
        };
        match status {
            200..=299 if response.body.len() >= BODY_LIMIT => Err(Stop::Failed(format!(
                "an answer of the VCS API is larger than {} MiB",
                BODY_LIMIT / (1024 * 1024)
            ))),
            200..=299 => Ok((response.headers, response.body)),
            403 if self.vcs == Vcs::Github
                && let Some(after) = crate::target::github_actions::retry_wait(
                    &response,
                    &String::from_utf8_lossy(&response.body),
                    self.now,
                ) =>
            {
                Err(Stop::Retry {
                    reason: message(),
                    after: Some(after),
                })
            }
            408 | 425 | 429 | 500..=599 => Err(Stop::Retry {
                reason: message(),
                after: retry_after(&response.headers, self.now),
            }),
            _ => Err(Stop::Failed(message())),
        }
    }

    /// [`get`](Self::get), its body read as JSON of `T`.
    pub async fn json<T: DeserializeOwned>(&mut self, url: String) -> Result<(http::HeaderMap, T), Stop> {
        let (headers, body) = self.get(url).await?;
        match serde_json::from_slice(&body) {
            Ok(v) => Ok((headers, v)),
            Err(e) => Err(Stop::Failed(format!(
                "the VCS API's answer is not what {} sends: {e}",
                self.vcs.as_str()
            ))),
        }
    }

    /// The headers of a GET and where the token goes, per VCS.
    fn auth(&self) -> Result<(Vec<Header>, Credential), Stop> {
        use crate::target::{AUTHORIZATION, REDACTED, USER_AGENT};
        let header = |name: &'static str, value: String| Header {
            name: name.into(),
            value,
        };
        let accept = |value: &str| header("Accept", value.into());
        let agent = header("User-Agent", USER_AGENT.into());
        Ok(match self.vcs {
            Vcs::Github => (
                vec![
                    accept("application/vnd.github+json"),
                    header(
                        "X-GitHub-Api-Version",
                        crate::target::github_actions::API_VERSION.into(),
                    ),
                    agent,
                    header(AUTHORIZATION, format!("Bearer {REDACTED}")),
                ],
                Credential::Authorization("Bearer"),
            ),
            Vcs::Gitlab => (
                vec![
                    accept("application/json"),
                    agent,
                    header("PRIVATE-TOKEN", REDACTED.into()),
                ],
                Credential::Header("PRIVATE-TOKEN".into()),
            ),
            Vcs::Gitea | Vcs::Forgejo => (
                vec![
                    accept("application/json"),
                    agent,
                    header(AUTHORIZATION, format!("token {REDACTED}")),
                ],
                Credential::Authorization("token"),
            ),
            Vcs::BitbucketCloud | Vcs::BitbucketDatacenter => {
                let (headers, credential) =
                    super::bearer_or_basic(self.api.user.as_deref()).map_err(Stop::Failed)?;
                // Those are a POST's: no body here, so no Content-Type.
                let headers = headers
                    .into_iter()
                    .filter(|h| !h.name.eq_ignore_ascii_case("Content-Type"))
                    .collect();
                (headers, credential)
            }
        })
    }
}

/// A commit as a URL may hold it: 7 to 64 hex digits.
pub fn sha(sha: &str) -> Result<&str, Stop> {
    super::check_sha(sha).map_err(Stop::Failed)?;
    Ok(sha)
}

/// A commit shortened for people (`1a2b3c4`).
pub fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

#[cfg(test)]
mod tests;
