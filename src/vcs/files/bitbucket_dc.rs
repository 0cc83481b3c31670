//! Changed files from Bitbucket Data Center's changes:
//! `GET {url}/rest/api/latest/projects/{KEY}/repos/{slug}/changes?since={before}&until={after}`
//! for a push, `pull-requests/{id}/changes` for a pull request, both paged
//! by `start`/`limit` (at most 1,000 a page) until `isLastPage`, each next
//! page at the `nextPageStart` the server gave (Atlassian asks clients not
//! to compute it). A move or copy counts both its `srcPath` and its `path`.
//!
//! A new branch is compared with the repository's default branch
//! (`GET .../default-branch`, its `id`) through `compare/changes?from={after}&to={id}`:
//! the changes on `from` that are not on `to`, so from their merge base, as
//! the other VCSs' compares, rather than `changes`' plain two-tree diff,
//! which would also list whatever the default branch gained since.

use serde::Deserialize;

use super::bitbucket_cloud::{pages_of, zero};
use super::{Changes, FilesQuery, Found, Paths, Reader, Stop, sha, short};
use crate::target::encode::path_segment;
use crate::vcs::two_parts;

/// Changes per page asked for: Data Center's usual most.
const LIMIT: u64 = 1000;

/// A page of a Data Center list.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    values: Vec<Change>,
    is_last_page: bool,
    next_page_start: Option<u64>,
}

/// A `RestChange`, the parts read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Change {
    path: Option<RestPath>,
    /// A move's or copy's source.
    src_path: Option<RestPath>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestPath {
    to_string: Option<String>,
    #[serde(default)]
    components: Vec<String>,
}

impl RestPath {
    fn text(&self) -> String {
        match &self.to_string {
            Some(s) => s.clone(),
            None => self.components.join("/"),
        }
    }
}

/// `RestMinimalRef`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ref {
    id: Option<String>,
    display_id: Option<String>,
}

pub(super) async fn read(r: &mut Reader<'_>, q: &FilesQuery) -> Found {
    let (project, slug) = two_parts(&q.repository, "PROJECT/repo_slug").map_err(Stop::Failed)?;
    let repo = format!(
        "{}/rest/api/latest/projects/{}/repos/{}",
        r.base(),
        path_segment(project),
        path_segment(slug)
    );
    match &q.changes {
        Changes::Push { after, .. } if zero(after) => Ok((Paths::default(), "a deleted branch".into())),
        Changes::Push {
            before: Some(before),
            after,
        } if !zero(before) => {
            let (before, after) = (sha(before)?, sha(after)?);
            let url = format!("{repo}/changes?{}", form(&[("since", before), ("until", after)]));
            let (paths, pages) = changes(r, &url).await?;
            let from = format!(
                "Bitbucket Data Center changes {}..{} ({})",
                short(before),
                short(after),
                pages_of(pages)
            );
            Ok((paths, from))
        }
        Changes::Push { after, .. } => {
            let after = sha(after)?;
            let (_, default): (_, Ref) = r.json(format!("{repo}/default-branch")).await?;
            let id = default
                .id
                .filter(|id| !id.trim().is_empty())
                .ok_or_else(|| Stop::Failed("Bitbucket Data Center names no default branch".into()))?;
            let url = format!("{repo}/compare/changes?{}", form(&[("from", after), ("to", &id)]));
            let (paths, pages) = changes(r, &url).await?;
            let name = default.display_id.unwrap_or(id);
            let from = format!(
                "Bitbucket Data Center changes of {} not on {name} ({})",
                short(after),
                pages_of(pages)
            );
            Ok((paths, from))
        }
        Changes::Request { number, .. } => {
            let (paths, pages) = changes(r, &format!("{repo}/pull-requests/{number}/changes?")).await?;
            let from = format!(
                "Bitbucket Data Center pull request #{number} changes ({})",
                pages_of(pages)
            );
            Ok((paths, from))
        }
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Every page of changes at `url` (which ends in its query, or `?`), into
/// paths; how many pages.
async fn changes(r: &mut Reader<'_>, url: &str) -> Result<(Paths, u32), Stop> {
    let sep = if url.ends_with('?') { "" } else { "&" };
    let mut paths = Paths::default();
    let mut start: u64 = 0;
    let mut pages: u32 = 0;
    loop {
        let (_, page): (_, Page) = r.json(format!("{url}{sep}limit={LIMIT}&start={start}")).await?;
        pages = pages.saturating_add(1);
        for change in &page.values {
            for p in [&change.src_path, &change.path].into_iter().flatten() {
                paths.add(&p.text())?;
            }
        }
        if page.is_last_page {
            return Ok((paths, pages));
        }
        start = next_start(start, page.next_page_start)?;
    }
}

/// The `start` of the page after the one at `start`: the server's
/// `nextPageStart`, which must be past it, or the list would loop.
fn next_start(start: u64, next: Option<u64>) -> Result<u64, Stop> {
    match next {
        Some(n) if n > start => Ok(n),
        Some(n) => Err(Stop::Failed(format!(
            "Bitbucket Data Center's next page starts at {n}, not after {start}"
        ))),
        None => Err(Stop::Failed(
            "Bitbucket Data Center said there is another page but not where it starts".into(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_page_is_read_as_data_center_sends_it() {
        let page: Page = serde_json::from_str(
            r#"{"size": 2, "limit": 2, "isLastPage": false, "start": 0, "nextPageStart": 2,
                "values": [{"path": {"components": ["a", "b.rs"], "toString": "a/b.rs"}, "type": "MODIFY"},
                           {"path": {"components": ["c"]}, "srcPath": {"toString": "d"}, "type": "MOVE"}]}"#,
        )
        .unwrap();
        let paths: Vec<String> = page
            .values
            .iter()
            .flat_map(|c| [&c.src_path, &c.path])
            .flatten()
            .map(RestPath::text)
            .collect();
        assert_eq!(paths, ["a/b.rs", "d", "c"]);
        assert_eq!(next_start(0, page.next_page_start).unwrap(), 2);
        assert!(next_start(2, Some(2)).is_err());
        assert!(next_start(2, None).is_err());
    }

    #[test]
    fn a_page_start_that_is_not_a_count_is_no_page() {
        for bad in [r#"-1"#, "1.5", "1e30", "\"7\""] {
            let text = format!(r#"{{"isLastPage": false, "nextPageStart": {bad}, "values": []}}"#);
            assert!(serde_json::from_str::<Page>(&text).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn no_page_start_makes_the_pager_panic_or_go_back(start in any::<u64>(), next in proptest::option::of(any::<u64>())) {
            if let Ok(n) = next_start(start, next) {
                prop_assert!(n > start);
            }
        }
    }
}
