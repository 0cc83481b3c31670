//! Gitea and Forgejo: a push's files through compare (with the per-commit
//! fallback when it lists none), a new branch from the default branch,
//! pull request files page by page, and what errors come to. Every test
//! runs against both forks' stand-ins.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hookbridge::config::secret::Secret;
use hookbridge::store::status::Vcs;
use hookbridge::vcs::Api;
use hookbridge::vcs::files::FilesRead;
use serde_json::json;

use crate::support::vcs::files::{FileChange, History};
use crate::support::vcs::{TOKENS, VcsStandIn};
use crate::{REPO, failed, files, no_problems, pull, push, read, read_with};

/// What the stand-in reads in a commit's message as "the compare lists
/// this commit without its files" (`support::vcs::files::gitea`).
const FILES_UNLISTED: &str = "[files unlisted]";

const FORKS: [(Vcs, &str); 2] = [(Vcs::Gitea, "Gitea"), (Vcs::Forgejo, "Forgejo")];

/// A base commit, then five commits with additions, changes, a rename and
/// a removal.
fn five_commits() -> (History, String, String) {
    let mut h = History::new(REPO, "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    h.commits(3, |i| {
        (0..40)
            .map(|j| FileChange::added(&format!("services/s{i}/f{j:02}.go")))
            .collect()
    });
    h.commit(vec![
        FileChange::renamed("docs/old-name.md", "docs/new-name.md"),
        FileChange::removed("scripts/legacy.sh"),
    ]);
    let after = h.commit(vec![FileChange::modified("services/s0/f00.go")]);
    h.branch("main", &after);
    (h, base, after)
}

#[tokio::test]
async fn a_push_is_read_from_one_compare() {
    for (fork, name) in FORKS {
        let vcs = VcsStandIn::start(fork).await;
        let (h, base, after) = five_commits();
        let expected = History::touched(h.between(&base, &after).unwrap());
        vcs.set_history(h);
        let got = files(read(&vcs, &push(Some(&base), &after)).await);
        assert_eq!(got.paths, expected, "{name}");
        for path in ["docs/old-name.md", "docs/new-name.md", "scripts/legacy.sh"] {
            assert!(got.paths.contains(&path.to_owned()), "{name}: {path}");
        }
        assert_eq!(got.paths.len(), 123);
        assert_eq!(got.requests, 1);
        assert_eq!(
            vcs.reads(),
            [format!("/api/v1/repos/{REPO}/compare/{base}...{after}")]
        );
        assert_eq!(
            got.from,
            format!("{name} compare {}...{}", &base[..7], &after[..7])
        );
        no_problems(&vcs);
    }
}

#[tokio::test]
async fn an_api_url_that_names_api_v1_is_not_extended() {
    for (fork, _) in FORKS {
        let vcs = VcsStandIn::start(fork).await;
        let (h, base, after) = five_commits();
        vcs.set_history(h);
        let api = Api {
            url: format!("{}/api/v1/", vcs.url()),
            ..vcs.api()
        };
        let got = files(read_with(fork, &api, &push(Some(&base), &after)).await);
        assert_eq!(got.paths.len(), 123);
        no_problems(&vcs);
    }
}

#[tokio::test]
async fn a_new_branch_is_compared_with_the_default_branch() {
    for (fork, name) in FORKS {
        let vcs = VcsStandIn::start(fork).await;
        let mut h = History::new(REPO, "develop");
        let develop = h.commit(vec![FileChange::modified("README.md")]);
        h.branch("develop", &develop);
        let after = h.commits(2, |i| vec![FileChange::added(&format!("feature/f{i}.rs"))]);
        vcs.set_history(h);
        let got = files(read(&vcs, &push(None, &after)).await);
        assert_eq!(got.paths, ["feature/f0.rs", "feature/f1.rs"]);
        assert_eq!(got.requests, 2);
        assert_eq!(
            vcs.reads(),
            [
                format!("/api/v1/repos/{REPO}"),
                format!("/api/v1/repos/{REPO}/compare/develop...{after}")
            ]
        );
        assert_eq!(got.from, format!("{name} compare develop...{}", &after[..7]));
        no_problems(&vcs);
    }
}

#[tokio::test]
async fn commits_listed_without_files_are_read_one_by_one() {
    for (fork, name) in FORKS {
        let vcs = VcsStandIn::start(fork).await;
        let (mut h, base, after) = five_commits();
        for c in &mut h.commits[1..] {
            c.message.push_str(&format!(" {FILES_UNLISTED}"));
        }
        let expected = History::touched(h.between(&base, &after).unwrap());
        vcs.set_history(h.clone());
        let got = files(read(&vcs, &push(Some(&base), &after)).await);
        assert_eq!(got.paths, expected, "{name}");
        assert_eq!(got.requests, 6);
        let reads = vcs.reads();
        assert_eq!(
            reads[1],
            format!(
                "/api/v1/repos/{REPO}/git/commits/{}?stat=false&verification=false&files=true",
                h.commits[1].sha
            )
        );
        assert_eq!(
            got.from,
            format!(
                "{name} compare {}...{} (no files listed), then the files of 5 commits",
                &base[..7],
                &after[..7]
            )
        );
        no_problems(&vcs);
    }
}

/// A pull request of `n` files, one of them a rename.
fn with_request(n: usize) -> History {
    let mut h = History::new(REPO, "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    h.branch("main", &base);
    let mut changes: Vec<FileChange> = (0..n - 2)
        .map(|j| FileChange::added(&format!("pkg/f{j:03}.go")))
        .collect();
    changes.push(FileChange::renamed("cmd/old/main.go", "cmd/new/main.go"));
    changes.push(FileChange::removed("README.md"));
    let head = h.commit(changes);
    h.branch("feature", &head);
    h.request(7, &base, &head, "feature", "main");
    h
}

#[tokio::test]
async fn pull_request_files_are_read_page_by_page() {
    for (fork, name) in FORKS {
        let vcs = VcsStandIn::start(fork).await;
        vcs.set_history(with_request(120));
        let got = files(read(&vcs, &pull(7)).await);
        assert_eq!(got.paths.len(), 121, "{name}");
        for path in ["cmd/old/main.go", "cmd/new/main.go", "README.md"] {
            assert!(got.paths.contains(&path.to_owned()), "{name}: {path}");
        }
        assert_eq!(got.requests, 3);
        assert_eq!(got.from, format!("{name} pull request #7 files (3 pages)"));
        let pages: Vec<String> = (1..=3)
            .map(|p| format!("/api/v1/repos/{REPO}/pulls/7/files?limit=50&page={p}"))
            .collect();
        assert_eq!(vcs.reads(), pages);
        // Exactly a page's worth: the last page says there is no more.
        vcs.set_history(with_request(50));
        let got = files(read(&vcs, &pull(7)).await);
        assert_eq!((got.paths.len(), got.requests), (51, 1));
        assert_eq!(got.from, format!("{name} pull request #7 files (1 page)"));
        no_problems(&vcs);
    }
}

#[tokio::test]
async fn errors_are_retried_or_fail_and_no_reason_carries_the_token() {
    for (fork, _) in FORKS {
        let vcs = VcsStandIn::start(fork).await;
        let (h, base, after) = five_commits();
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
        vcs.fail_reads(404, 1);
        reasons.push(failed(read(&vcs, &query).await));
        reasons.push(failed(read(&vcs, &pull(99)).await));
        let unknown = push(Some(&base), "0123456789abcdef0123456789abcdef01234567");
        reasons.push(failed(read(&vcs, &unknown).await));
        assert!(reasons[1..].iter().all(|r| r.contains("404")), "{reasons:#?}");
        no_problems(&vcs);

        let wrong = "gitea-not-the-stand-ins-token-0123456789abcdef";
        let api = Api {
            token: Secret::new(wrong),
            ..vcs.api()
        };
        let reason = failed(read_with(fork, &api, &query).await);
        assert!(reason.contains("401") && !reason.contains(wrong), "{reason}");
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
}

/// A broken server: its compare lists commits without files, and so does
/// each commit read on its own.
#[tokio::test]
async fn commits_that_list_no_files_anywhere_fail_the_read() {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let sha = "e".repeat(40);
    let listed = sha.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        seen.fetch_add(1, Ordering::SeqCst);
        let body = if uri.path().contains("/compare/") {
            json!({"total_commits": 1, "commits": [{"sha": listed, "files": null}], "files": []})
        } else {
            json!({"sha": listed})
        };
        async move { axum::Json(body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let api = Api {
        url: origin,
        token: Secret::new(TOKENS[4]),
        user: None,
    };
    let reason = failed(read_with(Vcs::Forgejo, &api, &push(Some(&"c".repeat(40)), &sha)).await);
    assert!(
        reason
            .starts_with("Forgejo compare ccccccc...eeeeeee lists no files, and neither does commit eeeeeee"),
        "{reason}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_stand_in_flags_what_gitea_would_not_take() {
    let vcs = VcsStandIn::start(Vcs::Gitea).await;
    vcs.set_history(with_request(10));
    let url = format!(
        "{}/api/v1/repos/{REPO}/pulls/7/files?limit=100&page=-1&per_page=5",
        vcs.url()
    );
    let answer = reqwest::Client::new()
        .get(url)
        .header("authorization", format!("token {}", vcs.token()))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let problems = vcs.problems().join("\n");
    for expected in [
        "limit `100` is not an integer from 1 to 50",
        "page `-1` is not an integer from 1",
        "query parameter `per_page` is not one of repoGetPullRequestFiles's",
        "Accept is `text/html`, not JSON",
        "no User-Agent",
    ] {
        assert!(problems.contains(expected), "{expected}\n{problems}");
    }
}
