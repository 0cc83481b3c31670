//! Changed files from GitHub and GitHub Enterprise Server (`url` is
//! `https://api.github.com` or `https://HOST/api/v3`; both serve the same
//! calls under their root).
//!
//! - A push: `GET /repos/{owner}/{repo}/compare/{before}...{after}?per_page=100`
//!   (three dots: from the merge base). Its files are on the first page
//!   only, and at most 300 for the whole comparison. Fewer than 300 are the
//!   answer; at 300 there may be more, so the comparison's commits are read
//!   page by page (`Link: rel="next"`, `total_commits` says how many) and
//!   each commit's files with `GET /repos/{owner}/{repo}/commits/{sha}`,
//!   which pages them itself (300 a page, up to 3000 a commit), and all are
//!   put together.
//! - A new branch: the same compare from the repository's `default_branch`
//!   (`GET /repos/{owner}/{repo}`).
//! - A pull request: `GET /repos/{owner}/{repo}/pulls/{number}/files?per_page=100`,
//!   page by page; GitHub lists at most 3000, so a list that long may be cut
//!   and the read fails rather than decide on part of it.
//!
//! A rename counts its old path (`previous_filename`) too. A `next` link is
//! followed only while it stays under the API's URL: the token goes with
//! every request, and a broken or hostile answer must not send it elsewhere.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{Changes, FilesQuery, Found, MAX_REQUESTS, Paths, Reader, Stop, sha, short};
use crate::target::encode::path_segment;

/// The most files a compare lists, for the whole comparison.
const COMPARE_LIMIT: usize = 300;
/// The most files GitHub lists for one commit, and for one pull request.
const LIST_LIMIT: usize = 3000;
/// The page size of the lists that take `per_page` (GitHub's maximum).
const PER_PAGE: u32 = 100;

/// One entry of a list of files (`diff-entry`).
#[derive(Deserialize)]
struct Entry {
    filename: String,
    #[serde(default)]
    previous_filename: Option<String>,
}

/// What is read of a `commit-comparison`.
#[derive(Deserialize)]
struct Comparison {
    #[serde(default)]
    total_commits: u64,
    #[serde(default)]
    commits: Vec<Listed>,
    /// On the first page only.
    #[serde(default)]
    files: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
struct Listed {
    sha: String,
}

/// What is read of one page of a `commit`.
#[derive(Deserialize)]
struct CommitPage {
    #[serde(default)]
    files: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
struct Repository {
    default_branch: String,
}

pub(super) async fn read(r: &mut Reader<'_>, q: &FilesQuery) -> Found {
    let (owner, repo) = super::super::two_parts(&q.repository, "owner/repo").map_err(Stop::Failed)?;
    let root = format!(
        "{}/repos/{}/{}",
        r.base(),
        path_segment(owner),
        path_segment(repo)
    );
    match &q.changes {
        Changes::Push { before, after } => push(r, &root, before.as_deref(), after).await,
        Changes::Request { number, .. } => request(r, &root, *number).await,
    }
}

async fn push(r: &mut Reader<'_>, root: &str, before: Option<&str>, after: &str) -> Found {
    let after = sha(after)?;
    let (base, shown_base) = match before {
        Some(before) => {
            let before = sha(before)?;
            (before.to_owned(), short(before).to_owned())
        }
        None => {
            let branch = default_branch(r, root).await?;
            (path_segment(&branch), branch)
        }
    };
    let from = format!("GitHub compare {shown_base}...{}", short(after));
    let url = format!("{root}/compare/{base}...{after}?per_page={PER_PAGE}");
    let (headers, first): (_, Comparison) = r.json(url).await?;
    // `files` is optional in GitHub's description: a comparison of commits
    // without it says nothing of their files, unlike an empty list.
    let cut = first.files.is_none() && first.total_commits > 0;
    let listed = first.files.unwrap_or_default();
    let mut paths = Paths::default();
    add_all(&mut paths, &listed)?;
    if listed.len() < COMPARE_LIMIT && !cut {
        return Ok((paths, from));
    }
    // At the limit the list may be cut: read each commit of the comparison,
    // which takes the compare's pages of commits and a request per commit.
    let needed = first
        .total_commits
        .saturating_add(first.total_commits.div_ceil(u64::from(PER_PAGE)));
    if needed.saturating_add(u64::from(r.requests)) > u64::from(MAX_REQUESTS) {
        return Err(Stop::Failed(format!(
            "the push has {} commits and more than GitHub's {COMPARE_LIMIT} files in one compare; \
             reading each commit would take more than {MAX_REQUESTS} requests",
            first.total_commits
        )));
    }
    let mut commits = Commits::default();
    commits.extend(first.commits);
    let mut next = next_page(r, &headers)?;
    while let Some(url) = next {
        let (headers, page): (_, Comparison) = r.json(url).await?;
        commits.extend(page.commits);
        next = next_page(r, &headers)?;
    }
    if (commits.order.len() as u64) < first.total_commits {
        return Err(Stop::Failed(format!(
            "{from} lists {} of its {} commits",
            commits.order.len(),
            first.total_commits
        )));
    }
    for commit in &commits.order {
        commit_files(r, root, commit, &mut paths).await?;
    }
    let n = commits.order.len();
    Ok((
        paths,
        format!(
            "{from} ({COMPARE_LIMIT} files, its limit), then the files of {n} commit{}",
            plural(n)
        ),
    ))
}

/// The commits of a comparison in the order listed, each once (a page
/// repeated by a broken API is not read twice).
#[derive(Default)]
struct Commits {
    order: Vec<String>,
    seen: BTreeSet<String>,
}

impl Commits {
    fn extend(&mut self, listed: Vec<Listed>) {
        for c in listed {
            if self.seen.insert(c.sha.clone()) {
                self.order.push(c.sha);
            }
        }
    }
}

/// Every file of one commit, following its pages.
async fn commit_files(r: &mut Reader<'_>, root: &str, commit: &str, paths: &mut Paths) -> Result<(), Stop> {
    let commit = sha(commit)?;
    let mut next = Some(format!("{root}/commits/{commit}"));
    let mut count = 0usize;
    while let Some(url) = next {
        let (headers, page): (_, CommitPage) = r.json(url).await?;
        let Some(files) = page.files else {
            return Err(Stop::Failed(format!(
                "GitHub lists no files for commit {}",
                short(commit)
            )));
        };
        count = count.saturating_add(files.len());
        add_all(paths, &files)?;
        next = next_page(r, &headers)?;
    }
    if count >= LIST_LIMIT {
        return Err(Stop::Failed(format!(
            "commit {} lists {count} files, GitHub's limit for one commit: the rest cannot be read",
            short(commit)
        )));
    }
    Ok(())
}

async fn request(r: &mut Reader<'_>, root: &str, number: u64) -> Found {
    let mut next = Some(format!("{root}/pulls/{number}/files?per_page={PER_PAGE}"));
    let (mut pages, mut count) = (0usize, 0usize);
    let mut paths = Paths::default();
    while let Some(url) = next {
        let (headers, files): (_, Vec<Entry>) = r.json(url).await?;
        pages = pages.saturating_add(1);
        count = count.saturating_add(files.len());
        add_all(&mut paths, &files)?;
        next = next_page(r, &headers)?;
    }
    if count >= LIST_LIMIT {
        return Err(Stop::Failed(format!(
            "pull request #{number} lists {count} files, GitHub's limit: the rest cannot be read"
        )));
    }
    Ok((
        paths,
        format!(
            "GitHub pull request #{number} files ({pages} page{})",
            plural(pages)
        ),
    ))
}

/// The repository's default branch, for a new branch's compare.
async fn default_branch(r: &mut Reader<'_>, root: &str) -> Result<String, Stop> {
    let (_, repo): (_, Repository) = r.json(root.to_owned()).await?;
    let branch = repo.default_branch;
    // Git refuses `..` in a ref name, so one here is not a branch, and it
    // would change what `base...head` means.
    if branch.trim().is_empty() || branch.contains("..") {
        return Err(Stop::Failed(format!(
            "the default branch {} is not a branch name",
            super::super::shown(&branch)
        )));
    }
    Ok(branch)
}

fn add_all(paths: &mut Paths, files: &[Entry]) -> Result<(), Stop> {
    for f in files {
        paths.add(&f.filename)?;
        if let Some(previous) = &f.previous_filename {
            paths.add(previous)?;
        }
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The `rel="next"` link of an answer, if it stays under the API's URL.
pub(super) fn next_page(r: &Reader<'_>, headers: &http::HeaderMap) -> Result<Option<String>, Stop> {
    let next = headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(link_next);
    let Some(url) = next else {
        return Ok(None);
    };
    if is_under(url, r.base()) {
        Ok(Some(url.to_owned()))
    } else {
        Err(Stop::Failed(format!(
            "the next page {} is not under the API's URL {}: not followed, so the token is not sent there",
            super::super::shown(url),
            super::super::shown(r.base())
        )))
    }
}

/// Whether `url` is `base` followed by a path (`base` has no trailing `/`).
fn is_under(url: &str, base: &str) -> bool {
    url.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
}

/// The target of the `rel="next"` link in a `Link` header value
/// (`<url>; rel="next", <url>; rel="last"`, RFC 8288). The URL is read
/// between its angle brackets, so a comma inside it does not split it.
pub(super) fn link_next(value: &str) -> Option<&str> {
    let mut rest = value;
    loop {
        let (_, after_open) = rest.split_once('<')?;
        let (url, after_url) = after_open.split_once('>')?;
        // The link's parameters run to the next link's `<`.
        let (params, tail) = match after_url.find('<') {
            Some(at) => after_url.split_at(at),
            None => (after_url, ""),
        };
        if params.split([';', ',']).any(is_rel_next) {
            return Some(url.trim());
        }
        rest = tail;
    }
}

/// `rel="next"` (or `rel=next`, or `next` among several relations).
fn is_rel_next(param: &str) -> bool {
    param.split_once('=').is_some_and(|(key, value)| {
        key.trim().eq_ignore_ascii_case("rel")
            && value
                .trim()
                .trim_matches('"')
                .split_ascii_whitespace()
                .any(|rel| rel.eq_ignore_ascii_case("next"))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_is_found_among_others() {
        let github = "<https://api.github.com/repositories/1/pulls/7/files?per_page=100&page=2>; rel=\"next\", \
                      <https://api.github.com/repositories/1/pulls/7/files?per_page=100&page=3>; rel=\"last\"";
        assert_eq!(
            link_next(github),
            Some("https://api.github.com/repositories/1/pulls/7/files?per_page=100&page=2")
        );
        let last_page = "<https://h/x?page=1>; rel=\"first\", <https://h/x?page=2>; rel=\"prev\"";
        assert_eq!(link_next(last_page), None);
        assert_eq!(
            link_next("<https://h/a,b?page=2>; rel=next"),
            Some("https://h/a,b?page=2")
        );
        assert_eq!(
            link_next("<https://h/1>; rel=\"prev\", <https://h/3>; title=\"x\"; rel=\"last next\""),
            Some("https://h/3")
        );
        assert_eq!(link_next(""), None);
        assert_eq!(link_next("<https://h/2; rel=\"next\""), None);
        assert_eq!(link_next("https://h/2; rel=\"next\""), None);
    }

    #[test]
    fn only_links_under_the_base_url_are_followed() {
        let base = "https://ghe.example.com/api/v3";
        assert!(is_under(
            "https://ghe.example.com/api/v3/repositories/1/compare/a...b?page=2",
            base
        ));
        assert!(!is_under("https://ghe.example.com/api/v30/x", base));
        assert!(!is_under("https://ghe.example.com.evil.test/api/v3/x", base));
        assert!(!is_under("https://ghe.example.com/api/v3@evil.test/x", base));
        assert!(!is_under("https://evil.test/api/v3/x", base));
        assert!(!is_under("http://ghe.example.com/api/v3/x", base));
    }

    proptest::proptest! {
        #[test]
        fn any_link_header_is_read_without_panic(value in "\\PC*") {
            let _ = link_next(&value);
        }

        #[test]
        fn a_written_next_link_is_read_back(
            url in "https://[a-z]{1,10}(/[a-z0-9,._~%-]{0,8}){0,4}(\\?[a-z]=[0-9]{1,3}){0,1}",
            other in "https://[a-z]{1,10}/[a-z]{0,8}",
            first in proptest::bool::ANY,
        ) {
            let value = if first {
                format!("<{url}>; rel=\"next\", <{other}>; rel=\"last\"")
            } else {
                format!("<{other}>; rel=\"prev\", <{url}>; rel=\"next\"")
            };
            proptest::prop_assert_eq!(link_next(&value), Some(url.as_str()));
        }
    }
}
