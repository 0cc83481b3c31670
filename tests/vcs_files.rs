//! The readers of changed files (`hookbridge::vcs::files`) against the
//! stand-in VCS APIs (`support::vcs`), which page, cap and answer as the
//! real ones do and check every request (and, where the vendor publishes a
//! description, every answer they give) against it. One module per VCS.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime};

use hookbridge::store::status::Vcs;
use hookbridge::target::client::Http;
use hookbridge::vcs::Api;
use hookbridge::vcs::files::{ChangedFiles, Changes, FilesQuery, FilesRead};
use support::vcs::VcsStandIn;

/// The repository the GitHub, Gitea and Forgejo tests read.
const REPO: &str = "acme/monorepo";

async fn read_with(vcs: Vcs, api: &Api, query: &FilesQuery) -> FilesRead {
    hookbridge::vcs::files::read(
        &Http::new(),
        vcs,
        api,
        query,
        Duration::from_secs(20),
        SystemTime::now(),
    )
    .await
}

async fn read(vcs: &VcsStandIn, query: &FilesQuery) -> FilesRead {
    read_with(vcs.vcs(), &vcs.api(), query).await
}

fn push(before: Option<&str>, after: &str) -> FilesQuery {
    FilesQuery {
        repository: REPO.into(),
        changes: Changes::Push {
            before: before.map(str::to_owned),
            after: after.into(),
        },
    }
}

fn pull(number: u64) -> FilesQuery {
    FilesQuery {
        repository: REPO.into(),
        changes: Changes::Request { number, head: None },
    }
}

fn files(read: FilesRead) -> ChangedFiles {
    match read {
        FilesRead::Read(files) => files,
        other => panic!("expected files, got {other:?}"),
    }
}

fn failed(read: FilesRead) -> String {
    match read {
        FilesRead::Failed(reason) => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn no_problems(vcs: &VcsStandIn) {
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[path = "vcs_files/bitbucket.rs"]
mod bitbucket;
#[path = "vcs_files/gitea.rs"]
mod gitea;
#[path = "vcs_files/github.rs"]
mod github;
#[path = "vcs_files/gitlab.rs"]
mod gitlab;
