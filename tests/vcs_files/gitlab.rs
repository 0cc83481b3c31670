//! GitLab: pushes through the repository compare (commit by commit when
//! the compare is over GitLab's diff limits), new branches against the
//! default branch, merge requests through their diffs (or the compare of
//! their `diff_refs` when `changes_count` ends in `+`), and the answers
//! that are not files.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hookbridge::config::secret::Secret;
use hookbridge::store::status::Vcs;
use hookbridge::target::client::Http;
use hookbridge::vcs::Api;
use hookbridge::vcs::files::{ChangedFiles, Changes, FilesQuery, FilesRead, short};
use serde_json::json;

use crate::support::vcs::files::{FileChange, History};
use crate::support::vcs::{GITLAB_STATUS_TOKEN, TOKENS, VcsStandIn};

const PROJECT: &str = "acme/platform/monorepo";

pub(crate) async fn read(vcs: Vcs, api: &Api, repository: &str, changes: Changes) -> FilesRead {
    let query = FilesQuery {
        repository: repository.into(),
        changes,
    };
    hookbridge::vcs::files::read(
        &Http::new(),
        vcs,
        api,
        &query,
        Duration::from_secs(20),
        SystemTime::now(),
    )
    .await
}

pub(crate) fn files(read: FilesRead) -> ChangedFiles {
    match read {
        FilesRead::Read(files) => files,
        other => panic!("expected files, got {other:?}"),
    }
}

pub(crate) fn push(before: &str, after: &str) -> Changes {
    Changes::Push {
        before: Some(before.into()),
        after: after.into(),
    }
}

/// A server answering every request with `answer`, and how many it got.
pub(crate) async fn serve_with(
    answer: impl Fn(&Uri) -> Response + Clone + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let (answer, counted) = (answer.clone(), counted.clone());
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            answer(&uri)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (origin, hits)
}

fn services(i: usize, n: usize) -> Vec<FileChange> {
    (0..n)
        .map(|j| FileChange::added(&format!("services/s{i}/f{j}.rs")))
        .collect()
}

#[tokio::test]
async fn a_push_of_25_commits_reads_every_file_through_the_compare() {
    let vcs = VcsStandIn::start(Vcs::Gitlab).await;
    let mut h = History::new(PROJECT, "main");
    let before = h.commit(vec![FileChange::modified("README.md")]);
    let after = h.commits(25, |i| {
        let mut files = vec![FileChange::modified(&format!("services/s{i}/main.rs"))];
        match i {
            3 => files.push(FileChange::added("services/billing/x")),
            20 => files.push(FileChange::renamed("docs/old.md", "docs/new.md")),
            _ => {}
        }
        files
    });
    h.branch("main", &after);
    vcs.set_history(h.clone());

    // The payload would list the last 20 commits: the billing change is in
    // the 4th, and only the compare sees it.
    let all = files(read(Vcs::Gitlab, &vcs.api(), PROJECT, push(&before, &after)).await);
    assert_eq!(all.paths, History::touched(h.between(&before, &after).unwrap()));
    assert_eq!(all.paths.len(), 25 + 1 + 2);
    for path in ["services/billing/x", "docs/old.md", "docs/new.md"] {
        assert!(all.paths.iter().any(|p| p == path), "{path}");
    }
    assert!(!all.paths.iter().any(|p| p == "README.md"));
    assert_eq!(
        all.from,
        format!("GitLab compare {}...{}", short(&before), short(&after))
    );
    assert_eq!(all.requests, 1);
    let reads = vcs.reads();
    assert_eq!(
        reads,
        [format!(
            "/api/v4/projects/acme%2Fplatform%2Fmonorepo/repository/compare?from={before}&to={after}&straight=false"
        )]
    );

    // From just after the billing commit, it is not there.
    let later = h.commits[4].sha.clone();
    let some = files(read(Vcs::Gitlab, &vcs.api(), PROJECT, push(&later, &after)).await);
    assert_eq!(some.paths, History::touched(h.between(&later, &after).unwrap()));
    assert!(!some.paths.iter().any(|p| p == "services/billing/x"));
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn a_compare_over_the_diff_limits_is_read_commit_by_commit() {
    let vcs = VcsStandIn::start(Vcs::Gitlab).await;
    let mut h = History::new(PROJECT, "main");
    let before = h.commit(vec![FileChange::modified("README.md")]);
    let big = h.commit(
        (0..250)
            .map(|j| FileChange::added(&format!("assets/a{j}.png")))
            .collect(),
    );
    let after = h.commits(20, |i| services(i, 50));
    vcs.set_history(h.clone());

    let all = files(read(Vcs::Gitlab, &vcs.api(), PROJECT, push(&before, &after)).await);
    assert_eq!(all.paths.len(), 1250);
    assert_eq!(all.paths, History::touched(h.between(&before, &after).unwrap()));
    assert!(all.from.ends_with("then the diffs of 21 commits"), "{}", all.from);
    // The compare, the big commit's 3 pages, one page for each other.
    assert_eq!(all.requests, 1 + 3 + 20);
    let reads = vcs.reads();
    let project = "/api/v4/projects/acme%2Fplatform%2Fmonorepo";
    for page in 1..=3 {
        let url = format!("{project}/repository/commits/{big}/diff?per_page=100&page={page}");
        assert!(reads.contains(&url), "{url} in {reads:#?}");
    }
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn a_new_branch_is_compared_with_the_default_branch() {
    let vcs = VcsStandIn::start(Vcs::Gitlab).await;
    let mut h = History::new(PROJECT, "main");
    let main = h.commits(3, |i| services(i, 2));
    h.branch("main", &main);
    let after = h.commits(2, |i| vec![FileChange::added(&format!("feature/f{i}.rs"))]);
    vcs.set_history(h.clone());

    let new_branch = Changes::Push {
        before: None,
        after: after.clone(),
    };
    let all = files(read(Vcs::Gitlab, &vcs.api(), PROJECT, new_branch).await);
    assert_eq!(all.paths, ["feature/f0.rs", "feature/f1.rs"]);
    assert_eq!(all.from, format!("GitLab compare main...{}", short(&after)));
    let reads = vcs.reads();
    assert_eq!(reads[0], "/api/v4/projects/acme%2Fplatform%2Fmonorepo");
    assert!(reads[1].contains("compare?from=main&to="), "{reads:?}");

    // git's all-zero `before` is a new branch too.
    let zeros = "0".repeat(40);
    let again = files(read(Vcs::Gitlab, &vcs.api(), PROJECT, push(&zeros, &after)).await);
    assert_eq!(again.paths, all.paths);
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn a_merge_request_pages_its_diffs() {
    let vcs = VcsStandIn::start(Vcs::Gitlab).await;
    let mut h = History::new(PROJECT, "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    let head = h.commits(2, |i| {
        let mut f = services(i, 115);
        f.push(FileChange::renamed(
            &format!("old/{i}.md"),
            &format!("new/{i}.md"),
        ));
        f
    });
    h.request(7, &base, &head, "feature", "main");
    vcs.set_history(h.clone());

    let mr = Changes::Request {
        number: 7,
        head: Some(head.clone()),
    };
    let all = files(read(Vcs::Gitlab, &vcs.api(), PROJECT, mr).await);
    assert_eq!(all.paths, History::touched(h.between(&base, &head).unwrap()));
    assert_eq!(all.paths.len(), 234);
    assert_eq!(all.from, "GitLab merge request !7 diffs (3 pages)");
    let reads = vcs.reads();
    assert_eq!(
        reads[0],
        "/api/v4/projects/acme%2Fplatform%2Fmonorepo/merge_requests/7"
    );
    assert!(
        reads[3].ends_with("/merge_requests/7/diffs?per_page=100&page=3"),
        "{reads:?}"
    );
    assert_eq!(reads.len(), 4);
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn a_merge_request_over_the_limits_is_read_through_the_compare_of_its_diff_refs() {
    let vcs = VcsStandIn::start(Vcs::Gitlab).await;
    let mut h = History::new(PROJECT, "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    let head = h.commits(11, |i| services(i, 100));
    h.request(8, &base, &head, "feature", "main");
    vcs.set_history(h.clone());

    let mr = Changes::Request {
        number: 8,
        head: None,
    };
    let all = files(read(Vcs::Gitlab, &vcs.api(), PROJECT, mr).await);
    // Its stored diffs would hold 1,000 of the 1,100.
    assert_eq!(all.paths.len(), 1100);
    assert_eq!(all.paths, History::touched(h.between(&base, &head).unwrap()));
    assert!(
        all.from.starts_with(&format!(
            "GitLab merge request !8 (1000+ files): GitLab compare {}...{}",
            short(&base),
            short(&head)
        )),
        "{}",
        all.from
    );
    let reads = vcs.reads();
    assert!(!reads.iter().any(|r| r.contains("/diffs?")), "{reads:#?}");
    assert!(reads[1].contains(&format!("compare?from={base}&to={head}")));
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn answers_that_are_not_files_are_retried_or_fail_without_the_token() {
    let vcs = VcsStandIn::start(Vcs::Gitlab).await;
    let mut h = History::new(PROJECT, "main");
    let before = h.commit(vec![FileChange::modified("README.md")]);
    let after = h.commit(vec![FileChange::modified("src/lib.rs")]);
    vcs.set_history(h);

    vcs.fail_reads(503, 1);
    match read(Vcs::Gitlab, &vcs.api(), PROJECT, push(&before, &after)).await {
        FilesRead::Retry { reason, after } => {
            assert_eq!(after, Some(Duration::from_secs(1)));
            assert!(reason.contains("503"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    vcs.fail_reads(401, 1);
    let mut reasons = Vec::new();
    match read(Vcs::Gitlab, &vcs.api(), PROJECT, push(&before, &after)).await {
        FilesRead::Failed(reason) => reasons.push(reason),
        other => panic!("{other:?}"),
    }
    // An unknown commit, and an unknown project: 404s that echo the token.
    let unknown = "1234567890abcdef1234567890abcdef12345678";
    for (project, before) in [(PROJECT, unknown), ("acme/other", before.as_str())] {
        match read(Vcs::Gitlab, &vcs.api(), project, push(before, &after)).await {
            FilesRead::Failed(reason) => {
                assert!(reason.contains("404"), "{reason}");
                reasons.push(reason);
            }
            other => panic!("{other:?}"),
        }
    }
    for reason in &reasons {
        assert!(!TOKENS.iter().any(|t| reason.contains(t)), "{reason}");
    }
    // Nothing from outside becomes a URL unchecked.
    for (project, before) in [("acme", before.as_str()), (PROJECT, "main?x=1")] {
        let read = read(Vcs::Gitlab, &vcs.api(), project, push(before, &after)).await;
        assert!(matches!(read, FilesRead::Failed(_)), "{read:?}");
    }
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

#[tokio::test]
async fn a_next_page_off_the_api_is_refused() {
    let (elsewhere, elsewhere_hits) = serve_with(|_| StatusCode::OK.into_response()).await;
    let next = format!("{elsewhere}/api/v4/projects/acme%2Fapp/merge_requests/3/diffs?page=2");
    let (origin, _) = serve_with(move |uri| {
        let diff = json!([{"old_path": "a", "new_path": "a", "diff": ""}]);
        if uri.path().ends_with("/diffs") {
            let link = format!("<{next}>; rel=\"next\"");
            (StatusCode::OK, [("link", link)], axum::Json(diff)).into_response()
        } else {
            axum::Json(json!({"changes_count": "1", "diff_refs": null})).into_response()
        }
    })
    .await;
    let api = Api {
        url: origin,
        token: Secret::new(GITLAB_STATUS_TOKEN),
        user: None,
    };
    let mr = Changes::Request {
        number: 3,
        head: None,
    };
    match read(Vcs::Gitlab, &api, "acme/app", mr).await {
        FilesRead::Failed(reason) => assert!(reason.contains("not under its URL"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
}
