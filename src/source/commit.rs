//! A commit as GitHub-shaped push payloads list it (GitHub, Gitea, Forgejo,
//! Gogs, GitLab): the files it added, modified and removed, when listed.

use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct Commit {
    added: Option<Vec<String>>,
    modified: Option<Vec<String>>,
    removed: Option<Vec<String>>,
}

impl Commit {
    /// False for commits without file lists (Gogs pushes, GitLab system hooks).
    pub(super) fn lists_files(&self) -> bool {
        self.added.is_some() || self.modified.is_some() || self.removed.is_some()
    }

    pub(super) fn files(&self) -> impl Iterator<Item = &str> {
        [&self.added, &self.modified, &self.removed]
            .into_iter()
            .flatten()
            .flatten()
            .map(String::as_str)
    }
}
