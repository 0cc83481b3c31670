//! Changed files from Bitbucket Cloud's diffstat:
//! `GET {url}/2.0/repositories/{workspace}/{slug}/diffstat/{after}..{before}`
//! for a push, paged by the `next` link in the body (`pagelen` 500).
//!
//! Bitbucket reads a two-commit spec the other way round from git: the
//! first commit is the one holding the changes, the second the state they
//! are compared with, and without `topic=false` the diff starts from their
//! merge base (the description of `diffstat/{spec}`). So a push is
//! `after..before`. A new branch is compared with the commit at the head of
//! the repository's main branch (`mainbranch`, then `refs/branches/{name}`):
//! a spec names commits, not branches.
//!
//! A pull request's diffstat (`pullrequests/{id}/diffstat`) answers with a
//! 302 to the diffstat of its commits. The HTTP client follows no
//! redirect, so [`get_following`] follows it here, only under the API's base
//! URL, as every `next` link ([`within`]): the token goes with each request,
//! and a hostile or broken API must not be able to send it elsewhere.
//!
//! [`within`], [`zero`] and [`pages_of`] serve the GitLab and Data Center
//! readers too (`mod.rs`, shared by every reader, is not theirs to grow).

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Changes, FilesQuery, Found, Paths, Reader, Stop, sha, short};
use crate::target::client::SendError;
use crate::target::encode::path_segment;
use crate::target::{OutboundRequest, error_message, retry_after};
use crate::vcs::{shown, two_parts};

/// Entries per diffstat page asked for: Bitbucket's default for a diffstat.
const PAGELEN: u32 = 500;
/// Redirects followed for one answer: Bitbucket sends a pull request's
/// diffstat on once; more is a loop.
const REDIRECTS: usize = 3;

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    values: Vec<Stat>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct Stat {
    /// `null` for an added file.
    old: Option<File>,
    /// `null` for a removed file.
    new: Option<File>,
}

#[derive(Deserialize)]
struct File {
    path: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    mainbranch: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Branch {
    target: Option<Target>,
}

#[derive(Deserialize)]
struct Target {
    hash: Option<String>,
}

pub(super) async fn read(r: &mut Reader<'_>, q: &FilesQuery) -> Found {
    let (workspace, slug) = two_parts(&q.repository, "workspace/repo_slug").map_err(Stop::Failed)?;
    let root = r.base().trim_end_matches("/2.0").to_owned();
    let repo = format!(
        "{root}/2.0/repositories/{}/{}",
        path_segment(workspace),
        path_segment(slug)
    );
    match &q.changes {
        Changes::Push { after, .. } if zero(after) => Ok((Paths::default(), "a deleted branch".into())),
        Changes::Push {
            before: Some(before),
            after,
        } if !zero(before) => diffstat(r, &repo, sha(after)?, sha(before)?).await,
        Changes::Push { after, .. } => {
            let main = main_commit(r, &repo).await?;
            diffstat(r, &repo, sha(after)?, &main).await
        }
        Changes::Request { number, .. } => {
            let first = format!("{repo}/pullrequests/{number}/diffstat");
            let (paths, pages) = stats(r, first).await?;
            Ok((
                paths,
                format!(
                    "Bitbucket Cloud pull request #{number} diffstat ({})",
                    pages_of(pages)
                ),
            ))
        }
    }
}

/// The diffstat of `after` against `before`, every page.
async fn diffstat(r: &mut Reader<'_>, repo: &str, after: &str, before: &str) -> Found {
    let first = format!("{repo}/diffstat/{after}..{before}?pagelen={PAGELEN}");
    let (paths, pages) = stats(r, first).await?;
    Ok((
        paths,
        format!(
            "Bitbucket Cloud diffstat {}..{} ({})",
            short(after),
            short(before),
            pages_of(pages)
        ),
    ))
}

/// The paths of every diffstat page from `first` on, and how many pages.
async fn stats(r: &mut Reader<'_>, first: String) -> Result<(Paths, u32), Stop> {
    let mut paths = Paths::default();
    let mut pages: u32 = 0;
    let mut next = Some(first);
    while let Some(url) = next.take() {
        let page: Page = get_following(r, url).await?;
        pages = pages.saturating_add(1);
        for stat in &page.values {
            for file in [&stat.old, &stat.new].into_iter().flatten() {
                paths.add(file.path.as_deref().unwrap_or(""))?;
            }
        }
        next = match page.next {
            Some(link) => Some(within(r.base(), &link)?),
            None => None,
        };
    }
    Ok((paths, pages))
}

/// The commit at the head of the repository's main branch.
async fn main_commit(r: &mut Reader<'_>, repo: &str) -> Result<String, Stop> {
    let (_, repository): (_, Repository) = r.json(repo.to_owned()).await?;
    let name = repository
        .mainbranch
        .and_then(|b| b.name)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| Stop::Failed("Bitbucket Cloud names no main branch for the repository".into()))?;
    let url = format!("{repo}/refs/branches/{}", path_segment(&name));
    let (_, branch): (_, Branch) = r.json(url).await?;
    let hash = branch.target.and_then(|t| t.hash).unwrap_or_default();
    Ok(sha(&hash)?.to_owned())
}

/// `1 page`, `3 pages`.
pub(super) fn pages_of(n: u32) -> String {
    if n == 1 {
        "1 page".into()
    } else {
        format!("{n} pages")
    }
}

/// Whether `sha` is the all-zero commit, git's "no commit": a push's
/// `before` on a new branch, its `after` on a deleted one.
pub(super) fn zero(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// `link` (a `next` page or a redirect the API gave, absolute or from the
/// root) as a URL to read, when it stays under `base`; a failed read
/// otherwise, since the token would go with it.
pub(super) fn within(base: &str, link: &str) -> Result<String, Stop> {
    let link = link.trim();
    let absolute = if link.starts_with('/') && !link.starts_with("//") {
        format!("{}{link}", origin(base))
    } else {
        link.to_owned()
    };
    let under = !base.is_empty()
        && absolute
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']));
    if under
        && !absolute
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        Ok(absolute)
    } else {
        Err(Stop::Failed(format!(
            "the VCS API pointed to {}, which is not under its URL {}: not followed",
            shown(link),
            shown(base)
        )))
    }
}

/// `scheme://host:port` of `base`.
fn origin(base: &str) -> &str {
    let host_at = base.find("://").map_or(0, |i| i.saturating_add(3));
    match base.get(host_at..).and_then(|rest| rest.find('/')) {
        Some(slash) => base.get(..host_at.saturating_add(slash)).unwrap_or(base),
        None => base,
    }
}

/// [`Reader::json`], except that a redirect under the API's base URL is
/// followed (at most [`REDIRECTS`] of them). [`Reader::get`] counts a 3xx as
/// a failure, as it is for every other read, so this one sends the request
/// itself and sorts the answer as `get` does.
async fn get_following<T: DeserializeOwned>(r: &mut Reader<'_>, first: String) -> Result<T, Stop> {
    let mut url = first;
    for _ in 0..=REDIRECTS {
        if r.requests >= super::MAX_REQUESTS {
            return Err(Stop::Failed(format!(
                "reading the changed files would take more than {} requests",
                super::MAX_REQUESTS
            )));
        }
        r.requests = r.requests.saturating_add(1);
        let (headers, credential) = r.auth()?;
        let request = OutboundRequest {
            method: "GET",
            url: crate::vcs::checked(url).map_err(Stop::Failed)?,
            headers,
            body: serde_json::Value::Null,
            encoding: crate::target::Encoding::Json,
            credential,
        };
        let response = r
            .transport
            .send_limited(&request, Some(&r.api.token), r.timeout, super::BODY_LIMIT)
            .await
            .map_err(|e| {
                let reason = match e {
                    SendError::Build(e) => return Stop::Failed(format!("cannot build the request: {e}")),
                    SendError::Timeout => "timed out waiting for the VCS API".to_owned(),
                    SendError::Connect(e) => format!("cannot connect to the VCS API: {e}"),
                    SendError::Failed(e) => format!("request failed: {e}"),
                };
                Stop::Retry { reason, after: None }
            })?;
        let status = response.status;
        let message = || {
            let body = r.redact.bytes(response.body.to_vec());
            format!("HTTP {status}: {}", error_message(&body))
        };
        match status {
            300..=399 => {
                let location = response
                    .headers
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Stop::Failed(format!("HTTP {status} without a Location")))?;
                url = within(r.base(), location)?;
            }
            200..=299 if response.body.len() >= super::BODY_LIMIT => {
                return Err(Stop::Failed(format!(
                    "an answer of the VCS API is larger than {} MiB",
                    super::BODY_LIMIT / (1024 * 1024)
                )));
            }
            200..=299 => {
                return serde_json::from_slice(&response.body).map_err(|e| {
                    Stop::Failed(format!(
                        "the VCS API's answer is not what {} sends: {e}",
                        r.vcs.as_str()
                    ))
                });
            }
            408 | 425 | 429 | 500..=599 => {
                return Err(Stop::Retry {
                    reason: message(),
                    after: retry_after(&response.headers, r.now),
                });
            }
            _ => return Err(Stop::Failed(message())),
        }
    }
    Err(Stop::Failed(format!(
        "the VCS API redirected more than {REDIRECTS} times"
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_link_is_followed_only_under_the_base_url() {
        let base = "https://api.bitbucket.org";
        let next = "https://api.bitbucket.org/2.0/repositories/w/r/diffstat/a..b?page=2";
        assert_eq!(within(base, next).unwrap(), next);
        assert_eq!(
            within(base, "/2.0/repositories/w/r/diffstat/a..b?page=2").unwrap(),
            next
        );
        for hostile in [
            "https://api.bitbucket.org.evil.example/2.0/x",
            "https://api.bitbucket.org@evil.example/x",
            "https://evil.example/2.0/x",
            "//evil.example/2.0/x",
            "http://api.bitbucket.org/2.0/x",
            "https://api.bitbucket.org/2.0/x\\@evil",
            "2.0/x",
            "",
        ] {
            assert!(within(base, hostile).is_err(), "{hostile}");
        }
        let base = "http://127.0.0.1:8080/bitbucket";
        assert_eq!(
            within(base, "/bitbucket/rest/x").unwrap(),
            "http://127.0.0.1:8080/bitbucket/rest/x"
        );
        assert!(within(base, "/other/rest/x").is_err());
        assert!(within(base, "http://127.0.0.1:8080/bitbucketx/y").is_err());
    }

    #[test]
    fn only_the_all_zero_commit_is_none() {
        assert!(zero("0000000000000000000000000000000000000000"));
        assert!(!zero("0000000000000000000000000000000000000001"));
        assert!(!zero(""));
    }

    proptest! {
        #[test]
        fn whatever_a_link_says_it_is_followed_only_under_the_base(link in "\\PC{0,80}", path in "[a-z/?=.]{0,20}") {
            let base = "https://api.bitbucket.org";
            for candidate in [link.clone(), format!("{base}{link}"), format!("/{path}{link}")] {
                if let Ok(url) = within(base, &candidate) {
                    prop_assert!(url.starts_with("https://api.bitbucket.org/") || url.starts_with("https://api.bitbucket.org?") || url == base);
                }
            }
            let _ = origin(&link);
        }
    }
}
