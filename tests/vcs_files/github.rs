//! GitHub (and GHES): a push's files through compare, and beyond its 300
//! files through each commit; a new branch from the default branch; pull
//! request files page by page; what errors and hostile links come to.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hookbridge::config::secret::Secret;
use hookbridge::store::status::Vcs;
use hookbridge::vcs::Api;
use hookbridge::vcs::files::{FilesQuery, FilesRead};
use serde_json::json;

use crate::support::vcs::files::{FileChange, History};
use crate::support::vcs::{TOKENS, VcsStandIn};
use crate::{REPO, failed, files, no_problems, pull, push, read, read_with};

const BILLING: &str = "services/billing/src/invoice.rs";

/// A base commit, then 12 commits of 100 new files each: 1,200 files, four
/// times what one compare lists. With `billing`, the last commit's last
/// file is under `services/billing/`, far past the compare's 300.
fn twelve_commits(billing: bool) -> (History, String, String) {
    let mut h = History::new(REPO, "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    let after = h.commits(12, |i| {
        (0..100)
            .map(|j| match (billing, i, j) {
                (true, 11, 99) => FileChange::modified(BILLING),
                _ => FileChange::added(&format!("services/s{i:02}/src/f{j:03}.rs")),
            })
            .collect()
    });
    h.branch("main", &after);
    (h, base, after)
}

#[tokio::test]
async fn a_push_beyond_the_compare_limit_reads_every_commit_of_it() {
    let vcs = VcsStandIn::start(Vcs::Github).await;
    for billing in [true, false] {
        let (h, base, after) = twelve_commits(billing);
        let expected = History::touched(h.between(&base, &after).unwrap());
        vcs.set_history(h.clone());
        let before_reads = vcs.reads().len();
        let got = files(read(&vcs, &push(Some(&base), &after)).await);
        assert_eq!(got.paths.len(), 1200);
        assert_eq!(got.paths, expected);
        assert_eq!(got.paths.contains(&BILLING.to_owned()), billing);
        // The compare (12 commits fit its first page), then each commit once.
        assert_eq!(got.requests, 13);
        let reads = vcs.reads()[before_reads..].to_vec();
        assert_eq!(
            reads[0],
            format!("/repos/{REPO}/compare/{base}...{after}?per_page=100")
        );
        let commits: Vec<String> = h.commits[1..]
            .iter()
            .map(|c| format!("/repos/{REPO}/commits/{}", c.sha))
            .collect();
        assert_eq!(reads[1..], commits[..]);
        assert_eq!(
            got.from,
            format!(
                "GitHub compare {}...{} (300 files, its limit), then the files of 12 commits",
                &base[..7],
                &after[..7]
            )
        );
    }
    no_problems(&vcs);
}

#[tokio::test]
async fn a_long_push_pages_the_commits_and_a_large_commit_pages_its_files() {
    let vcs = VcsStandIn::start(Vcs::Github).await;
    let mut h = History::new(REPO, "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    let big = h.commit(
        (0..700)
            .map(|j| FileChange::added(&format!("vendor/lib/f{j:03}.c")))
            .collect(),
    );
    let after = h.commits(149, |i| {
        vec![
            FileChange::modified(&format!("apps/a{i:03}/main.rs")),
            FileChange::renamed(&format!("apps/a{i:03}/old.rs"), &format!("apps/a{i:03}/new.rs")),
            FileChange::removed(&format!("apps/a{i:03}/gone.rs")),
        ]
    });
    let expected = History::touched(h.between(&base, &after).unwrap());
    vcs.set_history(h);
    let got = files(read(&vcs, &push(Some(&base), &after)).await);
    assert_eq!(got.paths, expected);
    assert!(
        got.paths.contains(&"apps/a000/old.rs".to_owned())
            && got.paths.contains(&"apps/a148/gone.rs".to_owned())
    );
    assert_eq!(got.paths.len(), 700 + 149 * 4);
    // Two pages of 150 commits, 150 commits, and two more pages of the
    // 700-file commit (300 a page).
    assert_eq!(got.requests, 2 + 150 + 2);
    let reads = vcs.reads();
    assert_eq!(reads.len(), 154);
    assert_eq!(
        reads[1],
        format!("/repositories/1296269/compare/{base}...{after}?per_page=100&page=2")
    );
    assert_eq!(reads[2], format!("/repos/{REPO}/commits/{big}"));
    assert_eq!(reads[3], format!("/repositories/1296269/commits/{big}?page=2"));
    assert_eq!(reads[4], format!("/repositories/1296269/commits/{big}?page=3"));
    assert!(
        got.from.ends_with("then the files of 150 commits"),
        "{}",
        got.from
    );
    no_problems(&vcs);
}

#[tokio::test]
async fn a_push_under_the_limit_takes_one_request_with_renames_and_removals() {
    let vcs = VcsStandIn::start(Vcs::Github).await;
    let mut h = History::new(REPO, "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    h.commit(vec![
        FileChange::renamed("docs/old-name.md", "docs/new-name.md"),
        FileChange::removed("scripts/legacy.sh"),
    ]);
    let after = h.commits(3, |i| {
        (0..50)
            .map(|j| FileChange::added(&format!("web/p{i}/f{j}.ts")))
            .collect()
    });
    let expected = History::touched(h.between(&base, &after).unwrap());
    vcs.set_history(h);
    let got = files(read(&vcs, &push(Some(&base), &after)).await);
    assert_eq!(got.paths, expected);
    for path in ["docs/old-name.md", "docs/new-name.md", "scripts/legacy.sh"] {
        assert!(got.paths.contains(&path.to_owned()), "{path}");
    }
    assert!(!got.paths.contains(&"README.md".to_owned()));
    assert_eq!(got.requests, 1);
    assert_eq!(
        got.from,
        format!("GitHub compare {}...{}", &base[..7], &after[..7])
    );
    // Nothing new: one request, no files.
    let same = files(read(&vcs, &push(Some(&after), &after)).await);
    assert!(same.paths.is_empty() && same.requests == 1);
    no_problems(&vcs);
}

#[tokio::test]
async fn a_new_branch_is_compared_with_the_default_branch() {
    let vcs = VcsStandIn::start(Vcs::Github).await;
    let mut h = History::new(REPO, "trunk");
    let trunk = h.commit(vec![FileChange::modified("README.md")]);
    h.branch("trunk", &trunk);
    let after = h.commits(2, |i| vec![FileChange::added(&format!("feature/f{i}.rs"))]);
    vcs.set_history(h);
    let got = files(read(&vcs, &push(None, &after)).await);
    assert_eq!(got.paths, ["feature/f0.rs", "feature/f1.rs"]);
    assert_eq!(got.requests, 2);
    assert_eq!(
        vcs.reads(),
        [
            format!("/repos/{REPO}"),
            format!("/repos/{REPO}/compare/trunk...{after}?per_page=100")
        ]
    );
    assert_eq!(got.from, format!("GitHub compare trunk...{}", &after[..7]));
    no_problems(&vcs);
}

fn with_request(files: usize) -> History {
    let mut h = History::new(REPO, "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    h.branch("main", &base);
    let mut changes: Vec<FileChange> = (0..files.saturating_sub(1))
        .map(|j| FileChange::added(&format!("pkg/m{:02}/f{j:04}.go", j % 40)))
        .collect();
    changes.push(FileChange::renamed("cmd/old/main.go", "cmd/new/main.go"));
    let head = h.commit(changes);
    h.branch("feature", &head);
    h.request(7, &base, &head, "feature", "main");
    h
}

#[tokio::test]
async fn pull_request_files_are_read_page_by_page() {
    let vcs = VcsStandIn::start(Vcs::Github).await;
    vcs.set_history(with_request(250));
    let got = files(read(&vcs, &pull(7)).await);
    assert_eq!(got.paths.len(), 251);
    assert!(got.paths.contains(&"cmd/old/main.go".to_owned()));
    assert_eq!(got.requests, 3);
    assert_eq!(got.from, "GitHub pull request #7 files (3 pages)");
    assert_eq!(
        vcs.reads(),
        [
            format!("/repos/{REPO}/pulls/7/files?per_page=100"),
            "/repositories/1296269/pulls/7/files?per_page=100&page=2".to_owned(),
            "/repositories/1296269/pulls/7/files?per_page=100&page=3".to_owned(),
        ]
    );
    no_problems(&vcs);
}

#[tokio::test]
async fn a_pull_request_at_githubs_3000_file_limit_fails_rather_than_decide_on_part() {
    let vcs = VcsStandIn::start(Vcs::Github).await;
    for n in [3000, 3400] {
        vcs.set_history(with_request(n));
        let reason = failed(read(&vcs, &pull(7)).await);
        assert!(
            reason.contains("lists 3000 files") && reason.contains("limit"),
            "{reason}"
        );
    }
    no_problems(&vcs);
}

#[tokio::test]
async fn errors_are_retried_or_fail_and_no_reason_carries_the_token() {
    let vcs = VcsStandIn::start(Vcs::Github).await;
    let (h, base, after) = twelve_commits(false);
    vcs.set_history(h);
    let query = push(Some(&base), &after);
    let mut reasons = Vec::new();

    vcs.fail_reads(503, 1);
    match read(&vcs, &query).await {
        FilesRead::Retry { reason, after } => {
            assert!(reason.contains("503"), "{reason}");
            assert_eq!(after, Some(Duration::from_secs(1)));
            reasons.push(reason);
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    for status in [404, 422] {
        vcs.fail_reads(status, 1);
        let reason = failed(read(&vcs, &query).await);
        assert!(reason.contains(&status.to_string()), "{reason}");
        reasons.push(reason);
    }
    let unknown = push(Some(&base), "0123456789abcdef0123456789abcdef01234567");
    reasons.push(failed(read(&vcs, &unknown).await));
    assert!(reasons[3].contains("404"), "{}", reasons[3]);
    let bad = FilesQuery {
        repository: "acme/monorepo/extra".into(),
        ..query.clone()
    };
    reasons.push(failed(read(&vcs, &bad).await));
    no_problems(&vcs);

    // A token the stand-in does not know: 401, with the credential echoed
    // in the answer, which no reason may repeat.
    let wrong = "ghp_notTheStandInsToken000000000000000001";
    let api = Api {
        token: Secret::new(wrong),
        ..vcs.api()
    };
    let reason = failed(read_with(Vcs::Github, &api, &query).await);
    assert!(
        reason.contains("401") && reason.contains("Bad credentials"),
        "{reason}"
    );
    assert!(!reason.contains(wrong), "{reason}");
    reasons.push(reason);
    for reason in &reasons {
        assert!(TOKENS.iter().all(|t| !reason.contains(t)), "{reason}");
    }
    assert!(
        vcs.problems().iter().all(|p| p.contains("Authorization")),
        "{:#?}",
        vcs.problems()
    );
}

#[tokio::test]
async fn github_enterprise_server_answers_under_api_v3() {
    let vcs = VcsStandIn::start_ghes().await;
    let mut h = History::new(REPO, "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    let after = h.commits(4, |i| {
        (0..100)
            .map(|j| FileChange::added(&format!("s{i}/f{j}.rs")))
            .collect()
    });
    let expected = History::touched(h.between(&base, &after).unwrap());
    h.request(9, &base, &after, "feature", "main");
    vcs.set_history(h);
    let got = files(read(&vcs, &push(Some(&base), &after)).await);
    assert_eq!(got.paths, expected);
    assert_eq!(got.requests, 5);
    let pr = files(read(&vcs, &pull(9)).await);
    assert_eq!(pr.paths.len(), 400);
    assert_eq!(pr.requests, 4);
    assert!(
        vcs.reads().iter().all(|r| r.starts_with("/api/v3/")),
        "{:#?}",
        vcs.reads()
    );
    assert!(
        vcs.reads()
            .contains(&"/api/v3/repositories/1296269/pulls/9/files?per_page=100&page=4".to_owned())
    );
    no_problems(&vcs);
}

/// Where a hostile answer's next link goes, given the server's origin.
type NextOf = fn(&str) -> String;

/// A server that answers every request with a page of files (a compare at
/// GitHub's 300, or a pull request's) and a `Link` to `next(origin)`,
/// counting the requests.
async fn linking_server(next: NextOf) -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let link = format!("<{}>; rel=\"next\"", next(&origin));
    let entry = |i: usize| {
        json!({"sha": "a".repeat(40), "filename": format!("f{i}.rs"), "status": "added",
               "additions": 1, "deletions": 0, "changes": 1,
               "blob_url": "https://example.com/b", "raw_url": "https://example.com/r",
               "contents_url": "https://example.com/c"})
    };
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        seen.fetch_add(1, Ordering::SeqCst);
        let body = if uri.path().contains("/compare/") {
            let files: Vec<_> = (0..300).map(entry).collect();
            json!({"total_commits": 150, "commits": [{"sha": "b".repeat(40)}], "files": files})
        } else {
            json!([entry(0)])
        };
        let link = link.clone();
        async move { ([("link", link)], axum::Json(body)) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (origin, count)
}

#[tokio::test]
async fn a_next_link_away_from_the_api_is_not_followed() {
    let cases: [(NextOf, &str); 4] = [
        (
            |_| "http://127.0.0.1:9/repositories/1/pulls/7/files?page=2".into(),
            "",
        ),
        (|_| "http://evil.invalid/api/v3/x?page=2".into(), "/api/v3"),
        // The same host, but outside the API's path.
        (|origin| format!("{origin}/api/v30/x?page=2"), "/api/v3"),
        (|origin| format!("{origin}.evil.invalid/x?page=2"), ""),
    ];
    for (next, base) in cases {
        let (origin, count) = linking_server(next).await;
        let api = Api {
            url: format!("{origin}{base}"),
            token: Secret::new(TOKENS[0]),
            user: None,
        };
        let reason = failed(read_with(Vcs::Github, &api, &pull(7)).await);
        assert!(reason.contains("is not under the API's URL"), "{reason}");
        assert!(reason.contains("not followed"), "{reason}");
        assert_eq!(count.load(Ordering::SeqCst), 1);
        let before = "c".repeat(40);
        let reason = failed(read_with(Vcs::Github, &api, &push(Some(&before), &"d".repeat(40))).await);
        assert!(reason.contains("not followed"), "{reason}");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test]
async fn the_stand_in_flags_what_github_would_not_take() {
    let vcs = VcsStandIn::start(Vcs::Github).await;
    let (h, base, after) = twelve_commits(false);
    vcs.set_history(h);
    let url = format!(
        "{}/repos/{REPO}/compare/{base}..{after}?per_page=500&page=0&sort=asc",
        vcs.url()
    );
    let answer = reqwest::Client::new()
        .get(url)
        .header("authorization", format!("Bearer {}", vcs.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let problems = vcs.problems().join("\n");
    for expected in [
        "per_page `500` is not an integer from 1 to 100",
        "page `0` is not an integer from 1",
        "query parameter `sort` is not one of repos/compare-commits-with-basehead's",
        "is not `base...head` (three dots)",
        "not application/vnd.github+json",
        "X-GitHub-Api-Version is ``",
        "no User-Agent",
    ] {
        assert!(problems.contains(expected), "{expected}\n{problems}");
    }
}
