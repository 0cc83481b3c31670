//! The stand-ins' reads of changed files: one repository's history, served
//! through each VCS's own endpoints with the VCS's own paging, limits and
//! response shapes (checked against the vendor's published description
//! where there is one; see each VCS's file).
//!
//! The model is a line of commits (oldest first), each with the files it
//! changed; branches point into it, and pull/merge requests compare a base
//! commit with a head commit. A comparison `before...after` is the commits
//! after `before` up to `after`, and its files the union of theirs, as the
//! real VCSs compute it from the merge base (which, on a line, is `before`).
//!
//! ```ignore
//! let mut h = History::new("acme/monorepo", "main");
//! let base = h.commit(vec![FileChange::modified("README.md")]);
//! let after = h.commits(12, |i| (0..100).map(|j| FileChange::added(&format!("services/s{i}/f{j}.rs"))).collect());
//! h.branch("main", &after);
//! vcs.set_history(h);
//! // ... vcs.reads() lists the GETs, vcs.problems() the violations
//! ```
#![allow(dead_code)]

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Uri};
use axum::response::Response;

use super::server::State;

mod bitbucket;
mod gitea;
mod github;
mod gitlab;

/// One file a commit changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileChange {
    pub path: String,
    /// A rename's old path.
    pub previous: Option<String>,
    /// `added`, `modified`, `removed` or `renamed`.
    pub status: &'static str,
}

impl FileChange {
    pub(crate) fn added(path: &str) -> FileChange {
        FileChange {
            path: path.into(),
            previous: None,
            status: "added",
        }
    }

    pub(crate) fn modified(path: &str) -> FileChange {
        FileChange {
            status: "modified",
            ..FileChange::added(path)
        }
    }

    pub(crate) fn removed(path: &str) -> FileChange {
        FileChange {
            status: "removed",
            ..FileChange::added(path)
        }
    }

    pub(crate) fn renamed(from: &str, to: &str) -> FileChange {
        FileChange {
            path: to.into(),
            previous: Some(from.into()),
            status: "renamed",
        }
    }
}

/// One commit of the line.
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    /// 40 hex digits.
    pub sha: String,
    pub parent: Option<String>,
    pub message: String,
    pub files: Vec<FileChange>,
}

/// A pull/merge request: `base` (the target branch's commit) to `head`.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub number: u64,
    pub base: String,
    pub head: String,
    pub source_branch: String,
    pub target_branch: String,
}

/// What a stand-in's file reads see.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    /// As the VCS names it: `owner/repo`, `group/project`, `workspace/slug`, `KEY/slug`.
    pub repository: String,
    pub default_branch: String,
    pub commits: Vec<Commit>,
    pub branches: BTreeMap<String, String>,
    pub requests: BTreeMap<u64, Request>,
}

impl History {
    pub(crate) fn new(repository: &str, default_branch: &str) -> History {
        History {
            repository: repository.into(),
            default_branch: default_branch.into(),
            ..History::default()
        }
    }

    /// Add a commit on top of the line; its sha.
    pub(crate) fn commit(&mut self, files: Vec<FileChange>) -> String {
        let n = self.commits.len() + 1;
        let sha = format!("{:040x}", 0xc0ffee_u64 * 1_000_003 + n as u64);
        let parent = self.commits.last().map(|c| c.sha.clone());
        self.commits.push(Commit {
            sha: sha.clone(),
            parent,
            message: format!("commit {n}"),
            files,
        });
        sha
    }

    /// Add `n` commits, the `i`-th (from 0) changing `files(i)`; the last one's sha.
    pub(crate) fn commits(&mut self, n: usize, files: impl Fn(usize) -> Vec<FileChange>) -> String {
        let mut last = String::new();
        for i in 0..n {
            last = self.commit(files(i));
        }
        last
    }

    /// Point `branch` at `sha`.
    pub(crate) fn branch(&mut self, branch: &str, sha: &str) {
        self.branches.insert(branch.into(), sha.into());
    }

    /// Open request `number` from `head` (on `source_branch`) into `base` (on `target_branch`).
    pub(crate) fn request(
        &mut self,
        number: u64,
        base: &str,
        head: &str,
        source_branch: &str,
        target_branch: &str,
    ) {
        self.requests.insert(
            number,
            Request {
                number,
                base: base.into(),
                head: head.into(),
                source_branch: source_branch.into(),
                target_branch: target_branch.into(),
            },
        );
    }

    /// The position of the commit `sha` names (a full sha, or a prefix of
    /// 7 or more digits), or of the head of the branch it names.
    pub(crate) fn position(&self, rev: &str) -> Option<usize> {
        let rev = rev.strip_prefix("refs/heads/").unwrap_or(rev);
        let sha = self.branches.get(rev).map_or(rev, String::as_str);
        if sha.len() < 7 {
            return None;
        }
        self.commits.iter().position(|c| c.sha.starts_with(sha))
    }

    /// The commits after `base` up to and including `head`, oldest first;
    /// `None` when either is unknown or `base` is not before `head`.
    pub(crate) fn between(&self, base: &str, head: &str) -> Option<&[Commit]> {
        let (b, h) = (self.position(base)?, self.position(head)?);
        (b <= h).then(|| &self.commits[b + 1..=h])
    }

    /// The files of a comparison, one entry per path as the VCS's compare
    /// lists them (the last change of each path wins), in first-seen order.
    pub(crate) fn compare_files(commits: &[Commit]) -> Vec<FileChange> {
        let mut order: Vec<String> = Vec::new();
        let mut last: BTreeMap<String, FileChange> = BTreeMap::new();
        for f in commits.iter().flat_map(|c| &c.files) {
            if !last.contains_key(&f.path) {
                order.push(f.path.clone());
            }
            last.insert(f.path.clone(), f.clone());
        }
        order.into_iter().filter_map(|p| last.remove(&p)).collect()
    }

    /// Every path a list of commits touched, renames' old paths too: what a
    /// correct reader must return.
    pub(crate) fn touched(commits: &[Commit]) -> Vec<String> {
        let mut all: Vec<String> = commits
            .iter()
            .flat_map(|c| &c.files)
            .flat_map(|f| std::iter::once(f.path.clone()).chain(f.previous.clone()))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// The query parameters of `uri`, decoded.
pub(crate) fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Answer one GET: a queued failure, else the VCS's endpoint for it.
pub(super) fn serve(state: &State, uri: &Uri, headers: &HeaderMap, problems: &mut Vec<String>) -> Response {
    let shared = &state.shared;
    shared.reads.lock().unwrap().push(uri.to_string());
    super::checks::auth(state.vcs, headers, problems);
    if let Some(failure) = shared.read_failures.lock().unwrap().pop_front() {
        let mut response = super::server::error(state.vcs, failure.status, "stand-in failure");
        if let Some(after) = failure.retry_after {
            response
                .headers_mut()
                .insert("retry-after", after.to_string().parse().unwrap());
        }
        return response;
    }
    let history = shared.history.lock().unwrap().clone();
    use hookbridge::store::status::Vcs;
    match state.vcs {
        Vcs::Github => github::serve(state.ghes, &history, uri, headers, problems),
        Vcs::Gitlab => gitlab::serve(&history, uri, headers, problems),
        Vcs::BitbucketCloud => bitbucket::serve_cloud(&history, uri, headers, problems),
        Vcs::BitbucketDatacenter => bitbucket::serve_datacenter(&history, uri, headers, problems),
        Vcs::Gitea | Vcs::Forgejo => gitea::serve(state.vcs, &history, uri, headers, problems),
    }
}
