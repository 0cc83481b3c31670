//! Bitbucket Cloud (diffstat `after..before`, paged by `next`; a pull
//! request's diffstat through its redirect) and Data Center (changes paged
//! by `nextPageStart`), new branches, pull requests, and the answers that
//! are not files.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use hookbridge::config::secret::Secret;
use hookbridge::store::status::Vcs;
use hookbridge::vcs::Api;
use hookbridge::vcs::files::{Changes, FilesRead, short};
use serde_json::json;

use crate::gitlab::{files, push, read, serve_with};
use crate::support::vcs::files::{FileChange, History};
use crate::support::vcs::{BITBUCKET_CLOUD_TOKEN, TOKENS, VcsStandIn};

/// `n` files of commit `i`, every tenth a rename.
fn changes(i: usize, n: usize) -> Vec<FileChange> {
    (0..n)
        .map(|j| {
            let path = format!("services/s{i}/f{j}.rs");
            if j % 10 == 0 {
                FileChange::renamed(&format!("legacy/s{i}/f{j}.rs"), &path)
            } else {
                FileChange::added(&path)
            }
        })
        .collect()
}

fn assert_no_token(reason: &str) {
    assert!(!TOKENS.iter().any(|t| reason.contains(t)), "{reason}");
}

// ---------------------------------------------------------------------------
// Cloud

#[tokio::test]
async fn cloud_diffstat_pages_by_next_and_counts_both_paths_of_a_rename() {
    let vcs = VcsStandIn::start(Vcs::BitbucketCloud).await;
    let mut h = History::new("acme/monorepo", "main");
    let before = h.commit(vec![FileChange::modified("README.md")]);
    let after = h.commits(6, |i| changes(i, 200));
    vcs.set_history(h.clone());

    let all = files(
        read(
            Vcs::BitbucketCloud,
            &vcs.api_basic(),
            "acme/monorepo",
            push(&before, &after),
        )
        .await,
    );
    assert_eq!(all.paths, History::touched(h.between(&before, &after).unwrap()));
    assert_eq!(all.paths.len(), 1200 + 120);
    assert!(all.paths.iter().any(|p| p == "legacy/s5/f190.rs"));
    // Bitbucket's order: the commit with the changes first.
    assert_eq!(
        all.from,
        format!(
            "Bitbucket Cloud diffstat {}..{} (3 pages)",
            short(&after),
            short(&before)
        )
    );
    let reads = vcs.reads();
    assert_eq!(
        reads[0],
        format!("/2.0/repositories/acme/monorepo/diffstat/{after}..{before}?pagelen=500")
    );
    assert_eq!(reads.len(), 3);
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn cloud_new_branch_is_compared_with_the_head_of_the_main_branch() {
    let vcs = VcsStandIn::start(Vcs::BitbucketCloud).await;
    let mut h = History::new("acme/monorepo", "trunk");
    let main = h.commits(3, |i| changes(i, 3));
    h.branch("trunk", &main);
    let after = h.commits(1, |_| {
        vec![FileChange::removed("old.txt"), FileChange::modified("app.rs")]
    });
    vcs.set_history(h.clone());

    let new_branch = Changes::Push {
        before: None,
        after: after.clone(),
    };
    let all = files(read(Vcs::BitbucketCloud, &vcs.api(), "acme/monorepo", new_branch).await);
    assert_eq!(all.paths, ["app.rs", "old.txt"]);
    let reads = vcs.reads();
    assert_eq!(reads[0], "/2.0/repositories/acme/monorepo");
    assert_eq!(reads[1], "/2.0/repositories/acme/monorepo/refs/branches/trunk");
    assert!(reads[2].ends_with(&format!("/diffstat/{after}..{main}?pagelen=500")));
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn cloud_pull_request_follows_the_redirect_to_its_diffstat() {
    let vcs = VcsStandIn::start(Vcs::BitbucketCloud).await;
    let mut h = History::new("acme/monorepo", "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    let head = h.commits(3, |i| changes(i, 200));
    h.request(5, &base, &head, "feature", "main");
    vcs.set_history(h.clone());

    let pr = Changes::Request {
        number: 5,
        head: Some(head.clone()),
    };
    let all = files(read(Vcs::BitbucketCloud, &vcs.api(), "acme/monorepo", pr).await);
    assert_eq!(all.paths, History::touched(h.between(&base, &head).unwrap()));
    assert_eq!(all.from, "Bitbucket Cloud pull request #5 diffstat (2 pages)");
    let reads = vcs.reads();
    assert_eq!(
        reads[0],
        "/2.0/repositories/acme/monorepo/pullrequests/5/diffstat"
    );
    assert!(
        reads[1].starts_with(&format!(
            "/2.0/repositories/acme/monorepo/diffstat/acme/monorepo:{head}%0D{base}?"
        )),
        "{reads:#?}"
    );
    assert_eq!(reads.len(), 3);
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn cloud_answers_that_are_not_files_are_retried_or_fail_without_the_token() {
    let vcs = VcsStandIn::start(Vcs::BitbucketCloud).await;
    let mut h = History::new("acme/monorepo", "main");
    let before = h.commit(vec![FileChange::modified("README.md")]);
    let after = h.commit(vec![FileChange::modified("src/lib.rs")]);
    vcs.set_history(h);

    vcs.fail_reads(503, 1);
    match read(
        Vcs::BitbucketCloud,
        &vcs.api(),
        "acme/monorepo",
        push(&before, &after),
    )
    .await
    {
        FilesRead::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(1))),
        other => panic!("{other:?}"),
    }
    vcs.fail_reads(401, 1);
    let unknown = "abcdef0123456789abcdef0123456789abcdef01";
    for before in [before.as_str(), unknown] {
        match read(
            Vcs::BitbucketCloud,
            &vcs.api(),
            "acme/monorepo",
            push(before, &after),
        )
        .await
        {
            FilesRead::Failed(reason) => assert_no_token(&reason),
            other => panic!("{other:?}"),
        }
    }
    // Pull request 9 does not exist: its 404 comes before any redirect.
    let pr = Changes::Request {
        number: 9,
        head: None,
    };
    match read(Vcs::BitbucketCloud, &vcs.api(), "acme/monorepo", pr).await {
        FilesRead::Failed(reason) => {
            assert!(reason.contains("404"), "{reason}");
            assert_no_token(&reason);
        }
        other => panic!("{other:?}"),
    }
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn cloud_next_links_and_redirects_off_the_api_are_refused() {
    let (elsewhere, elsewhere_hits) = serve_with(|_| StatusCode::OK.into_response()).await;
    let hostile = elsewhere.clone();
    let (origin, _) = serve_with(move |uri| {
        if uri.path().ends_with("/pullrequests/1/diffstat") {
            let to = format!("{hostile}/2.0/repositories/acme/app/diffstat/x");
            return (StatusCode::FOUND, [("location", to)]).into_response();
        }
        axum::Json(json!({
            "pagelen": 500,
            "values": [{"type": "diffstat", "status": "added", "old": null, "new": {"path": "a", "type": "commit_file"}}],
            "next": format!("{hostile}/2.0/repositories/acme/app/diffstat/x?page=2"),
        }))
        .into_response()
    })
    .await;
    let api = Api {
        url: origin,
        token: Secret::new(BITBUCKET_CLOUD_TOKEN),
        user: None,
    };
    let (a, b) = (
        "1111111111111111111111111111111111111111",
        "2222222222222222222222222222222222222222",
    );
    let pr = Changes::Request {
        number: 1,
        head: None,
    };
    for changes in [push(a, b), pr] {
        match read(Vcs::BitbucketCloud, &api, "acme/app", changes).await {
            FilesRead::Failed(reason) => assert!(reason.contains("not under its URL"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------
// Data Center

#[tokio::test]
async fn datacenter_changes_page_by_next_page_start() {
    let vcs = VcsStandIn::start(Vcs::BitbucketDatacenter).await;
    let mut h = History::new("PRJ/monorepo", "main");
    let before = h.commit(vec![FileChange::modified("README.md")]);
    let after = h.commits(5, |i| changes(i, 500));
    vcs.set_history(h.clone());

    let all = files(
        read(
            Vcs::BitbucketDatacenter,
            &vcs.api_basic(),
            "PRJ/monorepo",
            push(&before, &after),
        )
        .await,
    );
    assert_eq!(all.paths, History::touched(h.between(&before, &after).unwrap()));
    assert_eq!(all.paths.len(), 2500 + 250);
    assert_eq!(
        all.from,
        format!(
            "Bitbucket Data Center changes {}..{} (3 pages)",
            short(&before),
            short(&after)
        )
    );
    let reads = vcs.reads();
    let changes = "/rest/api/latest/projects/PRJ/repos/monorepo/changes";
    assert_eq!(
        reads,
        [0, 1000, 2000]
            .map(|start| format!("{changes}?since={before}&until={after}&limit=1000&start={start}"))
    );
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn datacenter_new_branch_is_compared_with_the_default_branch() {
    let vcs = VcsStandIn::start(Vcs::BitbucketDatacenter).await;
    let mut h = History::new("PRJ/monorepo", "main");
    let main = h.commits(2, |i| changes(i, 3));
    h.branch("main", &main);
    let after = h.commits(1, |_| vec![FileChange::renamed("a.rs", "b.rs")]);
    vcs.set_history(h.clone());

    let new_branch = Changes::Push {
        before: None,
        after: after.clone(),
    };
    let all = files(read(Vcs::BitbucketDatacenter, &vcs.api(), "PRJ/monorepo", new_branch).await);
    assert_eq!(all.paths, ["a.rs", "b.rs"]);
    let reads = vcs.reads();
    let repo = "/rest/api/latest/projects/PRJ/repos/monorepo";
    assert_eq!(reads[0], format!("{repo}/default-branch"));
    assert_eq!(
        reads[1],
        format!("{repo}/compare/changes?from={after}&to=refs%2Fheads%2Fmain&limit=1000&start=0")
    );
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn datacenter_pull_request_changes_are_paged() {
    let vcs = VcsStandIn::start(Vcs::BitbucketDatacenter).await;
    let mut h = History::new("~DEV/tools", "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    let head = h.commits(3, |i| changes(i, 400));
    h.request(12, &base, &head, "feature", "main");
    vcs.set_history(h.clone());

    let pr = Changes::Request {
        number: 12,
        head: None,
    };
    let all = files(read(Vcs::BitbucketDatacenter, &vcs.api(), "~DEV/tools", pr).await);
    assert_eq!(all.paths, History::touched(h.between(&base, &head).unwrap()));
    assert_eq!(
        all.from,
        "Bitbucket Data Center pull request #12 changes (2 pages)"
    );
    let reads = vcs.reads();
    assert_eq!(
        reads[1],
        "/rest/api/latest/projects/~DEV/repos/tools/pull-requests/12/changes?limit=1000&start=1000"
    );
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn datacenter_answers_that_are_not_files_are_retried_or_fail_without_the_token() {
    let vcs = VcsStandIn::start(Vcs::BitbucketDatacenter).await;
    let mut h = History::new("PRJ/monorepo", "main");
    let before = h.commit(vec![FileChange::modified("README.md")]);
    let after = h.commit(vec![FileChange::modified("src/lib.rs")]);
    vcs.set_history(h);

    vcs.fail_reads(429, 1);
    let read_push = |before: String| {
        let api = vcs.api();
        let after = after.clone();
        async move {
            read(
                Vcs::BitbucketDatacenter,
                &api,
                "PRJ/monorepo",
                push(&before, &after),
            )
            .await
        }
    };
    assert!(matches!(
        read_push(before.clone()).await,
        FilesRead::Retry { after: Some(_), .. }
    ));
    vcs.fail_reads(401, 1);
    let unknown = "abcdef0123456789abcdef0123456789abcdef01".to_owned();
    for before in [before.clone(), unknown] {
        match read_push(before).await {
            FilesRead::Failed(reason) => assert_no_token(&reason),
            other => panic!("{other:?}"),
        }
    }
    match read(
        Vcs::BitbucketDatacenter,
        &vcs.api(),
        "PRJ/a/b",
        push(&before, &after),
    )
    .await
    {
        FilesRead::Failed(reason) => assert!(reason.contains("PROJECT/repo_slug"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}
