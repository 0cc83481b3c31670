//! The readers of changed files (`hookbridge::vcs::files`) against the
//! stand-in VCS APIs (`support::vcs`), which page, cap and answer as the
//! real ones do and check every request (and, where the vendor publishes a
//! description, every answer they give) against it. One module per VCS.
#![allow(clippy::unwrap_used)]

mod support;

#[path = "vcs_files/bitbucket.rs"]
mod bitbucket;
#[path = "vcs_files/gitea.rs"]
mod gitea;
#[path = "vcs_files/github.rs"]
mod github;
#[path = "vcs_files/gitlab.rs"]
mod gitlab;
