//! Changed files from Gitea and Forgejo (one API, two forks; `url` is the
//! server's root, `/api/v1` added unless it is there).
//!
//! - A push: `GET /api/v1/repos/{owner}/{repo}/compare/{before}...{after}`
//!   lists every commit of the comparison at once, each with the files it
//!   touched (`commits[].files`, a rename as its removed and added paths);
//!   Forgejo also lists them all in a top-level `files`. Both are put
//!   together. When the commits come back with no files at all (seen on
//!   Forgejo 15), each commit is read on its own with
//!   `GET /api/v1/repos/{owner}/{repo}/git/commits/{sha}?files=true`; a
//!   commit that still lists none fails the read, since an empty list
//!   cannot be told from a missing one there.
//! - A new branch: the same compare from the repository's `default_branch`
//!   (`GET /api/v1/repos/{owner}/{repo}`).
//! - A pull request: `GET /api/v1/repos/{owner}/{repo}/pulls/{index}/files?limit=50&page=N`,
//!   page by page until `X-HasMore` says there is no more (or, without it,
//!   a short page), checked against `X-Total-Count`.
//!
//! Pages are asked for by number rather than by following `Link`: Gitea
//! writes its links with its configured `ROOT_URL`, which need not be the
//! URL hookbridge reaches it at, and the token must not follow them there.

use serde::Deserialize;

use super::{Changes, FilesQuery, Found, Paths, Reader, Stop, sha, short};
use crate::store::status::Vcs;
use crate::target::encode::path_segment;

/// The page size asked for: Gitea's and Forgejo's default most
/// (`[api] MAX_RESPONSE_ITEMS`).
const LIMIT: usize = 50;

/// One file a commit touched (`CommitAffectedFiles`).
#[derive(Deserialize)]
struct Affected {
    filename: String,
}

/// What is read of a commit (`Commit`): `files` absent or `null` when the
/// server did not list them, `[]` when there were none.
#[derive(Deserialize)]
struct Commit {
    sha: String,
    #[serde(default)]
    files: Option<Vec<Affected>>,
}

/// What is read of a `Compare`.
#[derive(Deserialize)]
struct Compare {
    #[serde(default)]
    commits: Option<Vec<Commit>>,
    /// Forgejo's union of the commits' files.
    #[serde(default)]
    files: Option<Vec<Affected>>,
}

/// One file of a pull request (`ChangedFile`).
#[derive(Deserialize)]
struct Changed {
    filename: String,
    #[serde(default)]
    previous_filename: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    default_branch: String,
}

pub(super) async fn read(r: &mut Reader<'_>, q: &FilesQuery) -> Found {
    let (owner, repo) = super::super::two_parts(&q.repository, "owner/repo").map_err(Stop::Failed)?;
    let base = r.base();
    let api = if base.ends_with("/api/v1") {
        base.to_owned()
    } else {
        format!("{base}/api/v1")
    };
    let root = format!("{api}/repos/{}/{}", path_segment(owner), path_segment(repo));
    match &q.changes {
        Changes::Push { before, after } => push(r, &root, before.as_deref(), after).await,
        Changes::Request { number, .. } => request(r, &root, *number).await,
    }
}

/// `Gitea` or `Forgejo`, for the reasons and the `from` text.
fn name(r: &Reader<'_>) -> &'static str {
    if r.vcs == Vcs::Forgejo { "Forgejo" } else { "Gitea" }
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
    let from = format!("{} compare {shown_base}...{}", name(r), short(after));
    let (_, compare): (_, Compare) = r.json(format!("{root}/compare/{base}...{after}")).await?;
    let commits = compare.commits.unwrap_or_default();
    let mut paths = Paths::default();
    for f in compare.files.iter().flatten() {
        paths.add(&f.filename)?;
    }
    for f in commits.iter().filter_map(|c| c.files.as_ref()).flatten() {
        paths.add(&f.filename)?;
    }
    if !paths.is_empty() || commits.is_empty() {
        return Ok((paths, from));
    }
    // Commits and not one file: the list was left out, so read each commit.
    for commit in &commits {
        let commit = sha(&commit.sha)?;
        let url = format!("{root}/git/commits/{commit}?stat=false&verification=false&files=true");
        let (_, read): (_, Commit) = r.json(url).await?;
        let Some(files) = read.files else {
            return Err(Stop::Failed(format!(
                "{from} lists no files, and neither does commit {}",
                short(commit)
            )));
        };
        for f in &files {
            paths.add(&f.filename)?;
        }
    }
    let n = commits.len();
    let s = if n == 1 { "" } else { "s" };
    Ok((
        paths,
        format!("{from} (no files listed), then the files of {n} commit{s}"),
    ))
}

async fn request(r: &mut Reader<'_>, root: &str, number: u64) -> Found {
    let mut paths = Paths::default();
    let (mut page, mut count) = (1u32, 0usize);
    let total = loop {
        let url = format!("{root}/pulls/{number}/files?limit={LIMIT}&page={page}");
        let (headers, files): (_, Vec<Changed>) = r.json(url).await?;
        count = count.saturating_add(files.len());
        for f in &files {
            paths.add(&f.filename)?;
            if let Some(previous) = f.previous_filename.as_deref() {
                paths.add(previous)?;
            }
        }
        // The server may cap the page size below what was asked; it says
        // what it used in `X-PerPage`.
        let per_page = number_header(&headers, "x-perpage").unwrap_or(LIMIT as u64);
        let more = match header(&headers, "x-hasmore") {
            Some(more) => more.eq_ignore_ascii_case("true"),
            None => files.len() as u64 >= per_page,
        };
        if files.is_empty() || !more {
            break number_header(&headers, "x-total-count");
        }
        page = page
            .checked_add(1)
            .ok_or_else(|| Stop::Failed("too many pages of files".into()))?;
    };
    if let Some(total) = total
        && (count as u64) < total
    {
        return Err(Stop::Failed(format!(
            "{} pull request #{number} lists {count} of its {total} files",
            name(r)
        )));
    }
    let s = if page == 1 { "" } else { "s" };
    Ok((
        paths,
        format!("{} pull request #{number} files ({page} page{s})", name(r)),
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

fn header<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// A header holding a count; `None` when absent or not a number.
fn number_header(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    header(headers, name).and_then(|v| v.parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_headers_or_not_at_all() {
        let mut h = http::HeaderMap::new();
        h.insert("x-total-count", " 120 ".parse().unwrap());
        h.insert("x-perpage", "-3".parse().unwrap());
        h.insert("x-page", "99999999999999999999999".parse().unwrap());
        assert_eq!(number_header(&h, "x-total-count"), Some(120));
        assert_eq!(number_header(&h, "x-perpage"), None);
        assert_eq!(number_header(&h, "x-page"), None);
        assert_eq!(number_header(&h, "x-hasmore"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_count_header_is_read_without_panic(value in "[ -~]{0,40}") {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = value.parse() {
                h.insert("x-total-count", v);
            }
            let _ = number_header(&h, "x-total-count");
        }
    }
}
