//! Changed files from GitLab.
//!
//! A push is the repository compare
//! `GET {url}/api/v4/projects/{path}/repository/compare?from={before}&to={after}&straight=false`
//! (from their merge base, as `before...after`), one answer with every diff.
//! GitLab cuts that list at its diff limits (1,000 files by default): it
//! then says `compare_timeout: true`, and its `diffs` may be empty or
//! partial. Then each of the compare's commits is read instead
//! (`repository/commits/{sha}/diff`, paged) and the paths are united. A new
//! branch is compared with the project's `default_branch`.
//!
//! A merge request's `changes_count` (`GET merge_requests/{iid}`) ends in
//! `+` when GitLab cut its stored diff at the same limits; its diffs
//! (`merge_requests/{iid}/diffs`, paged) are then partial, so the compare
//! of its `diff_refs` (`base_sha` to `head_sha`) is read instead.
//! Otherwise its diffs are read page by page.
//!
//! Pages are `per_page=100` (GitLab's most) and followed by `X-Next-Page`
//! (empty on the last page), else by `Link: rel="next"` under the API's base
//! URL, else by the page number after a full page.

use serde::Deserialize;

use super::bitbucket_cloud::{pages_of, within, zero};
use super::{Changes, FilesQuery, Found, Paths, Reader, Stop, sha, short};
use crate::target::encode::path_segment;
use crate::vcs::{is_segment, shown};

/// Items per page asked for: GitLab's most.
const PER_PAGE: usize = 100;

/// One file of a diff (`API_Entities_Diff`): a rename has both paths.
#[derive(Deserialize)]
struct Diff {
    old_path: Option<String>,
    new_path: Option<String>,
}

/// `API_Entities_Compare`, the parts read.
#[derive(Deserialize)]
struct Compare {
    #[serde(default)]
    commits: Option<Vec<Commit>>,
    #[serde(default)]
    diffs: Option<Vec<Diff>>,
    /// GitLab's name for "the diff overflowed its limits".
    #[serde(default)]
    compare_timeout: Option<bool>,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
}

#[derive(Deserialize)]
struct Project {
    default_branch: Option<String>,
}

#[derive(Deserialize)]
struct MergeRequest {
    changes_count: Option<String>,
    diff_refs: Option<DiffRefs>,
}

#[derive(Deserialize)]
struct DiffRefs {
    base_sha: Option<String>,
    head_sha: Option<String>,
}

pub(super) async fn read(r: &mut Reader<'_>, q: &FilesQuery) -> Found {
    let project = project_url(r.base(), &q.repository)?;
    match &q.changes {
        Changes::Push { after, .. } if zero(after) => Ok((Paths::default(), "a deleted branch".into())),
        Changes::Push {
            before: Some(before),
            after,
        } if !zero(before) => compare(r, &project, sha(before)?, sha(after)?).await,
        Changes::Push { after, .. } => {
            let (_, p): (_, Project) = r.json(project.clone()).await?;
            let branch = p
                .default_branch
                .filter(|b| !b.trim().is_empty())
                .ok_or_else(|| Stop::Failed("the GitLab project has no default branch".into()))?;
            compare(r, &project, &branch, sha(after)?).await
        }
        Changes::Request { number, .. } => merge_request(r, &project, *number).await,
    }
}

/// `{url}/api/v4/projects/{path}`: the project's path (`group/sub/project`)
/// or numeric id, URL-encoded into one segment as GitLab asks.
fn project_url(base: &str, repository: &str) -> Result<String, Stop> {
    let parts: Vec<&str> = repository.split('/').collect();
    let numeric = !repository.is_empty() && repository.bytes().all(|b| b.is_ascii_digit());
    if !numeric && (parts.len() < 2 || !parts.iter().all(|p| is_segment(p))) {
        return Err(Stop::Failed(format!(
            "repository {} is not a GitLab project path `group/project`",
            shown(repository)
        )));
    }
    let root = if base.ends_with("/api/v4") {
        base.to_owned()
    } else {
        format!("{base}/api/v4")
    };
    Ok(format!("{root}/projects/{}", path_segment(repository)))
}

/// The compare of `from...to`, or of its commits one by one when GitLab
/// cut the compare's diffs.
async fn compare(r: &mut Reader<'_>, project: &str, from: &str, to: &str) -> Found {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("from", from)
        .append_pair("to", to)
        .append_pair("straight", "false")
        .finish();
    let (_, c): (_, Compare) = r.json(format!("{project}/repository/compare?{query}")).await?;
    let label = format!("GitLab compare {}...{}", rev(from), rev(to));
    let commits = c.commits.unwrap_or_default();
    let diffs = c.diffs.unwrap_or_default();
    let mut paths = Paths::default();
    let cut = c.compare_timeout == Some(true) || (diffs.is_empty() && !commits.is_empty());
    if !cut {
        for d in &diffs {
            add(&mut paths, d)?;
        }
        return Ok((paths, label));
    }
    for commit in &commits {
        let id = sha(&commit.id)?;
        pages(r, &format!("{project}/repository/commits/{id}/diff"), &mut paths).await?;
    }
    let n = commits.len();
    let s = if n == 1 { "" } else { "s" };
    Ok((
        paths,
        format!("{label} (over GitLab's diff limits), then the diffs of {n} commit{s}"),
    ))
}

async fn merge_request(r: &mut Reader<'_>, project: &str, iid: u64) -> Found {
    let url = format!("{project}/merge_requests/{iid}");
    let (_, mr): (_, MergeRequest) = r.json(url.clone()).await?;
    let count = mr.changes_count.unwrap_or_default();
    if count.trim_end().ends_with('+') {
        let refs = mr.diff_refs.ok_or_else(|| Stop::Retry {
            reason: format!("GitLab has not worked out the diff of merge request !{iid} yet"),
            after: None,
        })?;
        let base = refs.base_sha.unwrap_or_default();
        let head = refs.head_sha.unwrap_or_default();
        let (paths, from) = compare(r, project, sha(&base)?, sha(&head)?).await?;
        let count = count.trim();
        return Ok((
            paths,
            format!("GitLab merge request !{iid} ({count} files): {from}"),
        ));
    }
    let mut paths = Paths::default();
    let n = pages(r, &format!("{url}/diffs"), &mut paths).await?;
    Ok((
        paths,
        format!("GitLab merge request !{iid} diffs ({})", pages_of(n)),
    ))
}

/// Every page of a list of diffs at `url`, into `paths`; how many pages.
async fn pages(r: &mut Reader<'_>, url: &str, paths: &mut Paths) -> Result<u32, Stop> {
    let at = |page: u32| format!("{url}?per_page={PER_PAGE}&page={page}");
    let mut page: u32 = 1;
    let mut read: u32 = 0;
    let mut next = Some(at(page));
    while let Some(link) = next.take() {
        let (headers, diffs): (_, Vec<Diff>) = r.json(link).await?;
        read = read.saturating_add(1);
        for d in &diffs {
            add(paths, d)?;
        }
        next = match next_page(&headers, page, diffs.len() >= PER_PAGE)? {
            Next::Page(n) => {
                page = n;
                Some(at(n))
            }
            Next::Link(link) => {
                page = page.saturating_add(1);
                Some(within(r.base(), &link)?)
            }
            Next::Done => None,
        };
    }
    Ok(read)
}

/// Where the page after page `page` is.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Page(u32),
    Link(String),
    Done,
}

/// The page after `page`, from GitLab's headers: `X-Next-Page` (a number,
/// or empty on the last page), else `Link` rel="next", else the next number
/// when this page was `full`. A next page that is not after this one is
/// refused: following it would loop.
fn next_page(headers: &http::HeaderMap, page: u32, full: bool) -> Result<Next, Stop> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?").trim());
    if let Some(next) = text("x-next-page") {
        if next.is_empty() {
            return Ok(Next::Done);
        }
        return match next.parse::<u32>() {
            Ok(n) if n > page => Ok(Next::Page(n)),
            _ => Err(Stop::Failed(format!(
                "GitLab's next page {} does not follow page {page}",
                shown(next)
            ))),
        };
    }
    if let Some(link) = text("link").and_then(next_link) {
        return Ok(Next::Link(link));
    }
    Ok(match page.checked_add(1) {
        Some(n) if full => Next::Page(n),
        _ => Next::Done,
    })
}

/// The `rel="next"` URL of a `Link` header (RFC 8288).
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        let url = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| url.to_owned())
    })
}

fn add(paths: &mut Paths, d: &Diff) -> Result<(), Stop> {
    paths.add(d.old_path.as_deref().unwrap_or(""))?;
    paths.add(d.new_path.as_deref().unwrap_or(""))
}

/// A revision for people: a commit shortened, a branch as it is.
fn rev(r: &str) -> &str {
    if r.bytes().all(|b| b.is_ascii_hexdigit()) {
        short(r)
    } else {
        r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_project_is_one_encoded_segment_under_api_v4() {
        let url = project_url("https://gitlab.example.com", "group/sub/app").unwrap();
        assert_eq!(
            url,
            "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fapp"
        );
        let url = project_url("https://gitlab.example.com/api/v4", "42").unwrap();
        assert_eq!(url, "https://gitlab.example.com/api/v4/projects/42");
        for bad in ["", "app", "group/../app", "group//app", "group/ "] {
            assert!(project_url("https://gitlab.com", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_next_page_comes_from_x_next_page_then_link_then_a_full_page() {
        assert_eq!(
            next_page(&headers(&[("x-next-page", "3")]), 2, true).unwrap(),
            Next::Page(3)
        );
        assert_eq!(
            next_page(&headers(&[("x-next-page", "")]), 2, true).unwrap(),
            Next::Done
        );
        assert!(next_page(&headers(&[("x-next-page", "2")]), 2, true).is_err());
        assert!(next_page(&headers(&[("x-next-page", "-1")]), 2, true).is_err());
        let link = r#"<https://gitlab.com/api/v4/x?page=1>; rel="prev", <https://gitlab.com/api/v4/x?page=3>; rel="next""#;
        assert_eq!(
            next_page(&headers(&[("link", link)]), 2, false).unwrap(),
            Next::Link("https://gitlab.com/api/v4/x?page=3".into())
        );
        assert_eq!(next_page(&headers(&[]), 2, true).unwrap(), Next::Page(3));
        assert_eq!(next_page(&headers(&[]), 2, false).unwrap(), Next::Done);
        assert_eq!(next_page(&headers(&[]), u32::MAX, true).unwrap(), Next::Done);
    }

    proptest! {
        #[test]
        fn no_header_makes_the_pager_panic_or_go_back(next in "\\PC{0,24}", link in "\\PC{0,80}", page in any::<u32>(), full in any::<bool>()) {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&next) {
                h.insert("x-next-page", v);
            }
            if let Ok(Next::Page(n)) = next_page(&h, page, full) {
                prop_assert!(n > page);
            }
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&link) {
                h.insert("link", v);
            }
            let _ = next_page(&h, page, full);
            let _ = next_link(&link);
        }
    }
}
