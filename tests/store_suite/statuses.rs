//! Commit statuses (`[rules.status]`) on every store: each step of a job
//! with a status spec queues the status it wants, in the transaction that
//! moves it (ingest, attempt record, superseding, replay, a completion
//! event, a watch's read); statuses of one commit and context are posted
//! one at a time, in order, each by one owner; an equal status is never
//! queued twice; a job without a spec costs no row.

use super::*;
use hookbridge::event::PipelineRun;
use hookbridge::store::follow::FollowOutcome;
use hookbridge::store::status::{
    LeasedStatus, LeasedWatch, PipelineState, PostOutcome, StatusSpec, Vcs, WatchRecord, Workflow,
};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const NEWER: &str = "fedcba9876543210fedcba9876543210fedcba98";
const POLL: Duration = Duration::from_secs(60);
const CIRCLE_PIPELINE: &str = "5034460f-c7c4-4c43-9457-de07e2029e7b";

fn spec(sha: &str, follow: bool) -> StatusSpec {
    StatusSpec {
        source: "github".into(),
        vcs: Vcs::Github,
        repository: "acme/app".into(),
        sha: sha.into(),
        git_ref: Some("refs/heads/main".into()),
        context: "hookbridge/ci".into(),
        follow,
        poll: Some(POLL),
        poll_timeout: Duration::from_secs(3600),
    }
}

/// A push of `sha` whose one job reports statuses.
fn reporting(id: &str, sha: &str, follow: bool, at: SystemTime) -> NewDelivery {
    let mut d = delivery("github", id, 1, at);
    d.event.sha = Some(sha.into());
    d.jobs[0].status = Some(spec(sha, follow));
    d
}

/// The same, for a CircleCI pipeline.
fn circleci(id: &str, at: SystemTime) -> NewDelivery {
    let mut d = reporting(id, SHA, true, at);
    d.jobs[0].target = "circleci".into();
    d.jobs[0].request = serde_json::from_value(
        serde_json::json!({"api": "circleci_pipeline", "project": "gh/acme/app", "branch": "main"}),
    )
    .unwrap();
    d
}

fn pipeline(id: &str) -> TriggerResult {
    TriggerResult {
        id: Some(id.into()),
        number: Some(7),
        url: Some(format!("https://ci.example/pipelines/{id}")),
        state: None,
        follow: None,
    }
}

/// A completion event: `ci`'s pipeline `id` reached `status` (a CircleCI
/// workflow's, with its name).
fn completed(
    id: &str,
    ci: &str,
    run: &str,
    status: &str,
    workflow: Option<&str>,
    at: SystemTime,
) -> NewDelivery {
    let mut d = delivery(ci, id, 0, at);
    d.event.kind = "pipeline".into();
    d.event.pipeline = Some(PipelineRun {
        ci: ci.into(),
        id: run.into(),
        number: Some(7),
        status: status.into(),
        workflow: workflow.map(str::to_owned),
        workflow_id: None,
        url: workflow.map(|w| format!("https://app.circleci.com/workflow/{w}")),
    });
    d
}

/// Store `d`, lease its job (the only one due) and record `next`, at `at`.
async fn recorded(s: &Arc<dyn Store>, d: NewDelivery, next: Transition, at: SystemTime) -> LeasedJob {
    s.ingest(d).await.unwrap();
    let job = s.lease_due("w", 1, LEASE, at).await.unwrap().remove(0);
    s.record_attempt(&job, "w", attempt(201), next, at).await.unwrap();
    job
}

/// The statuses delivery `id`'s job queued, oldest first: context, state, description.
async fn statuses(s: &Arc<dyn Store>, id: &str) -> Vec<(String, String, String)> {
    rows_of(s, id)
        .await
        .into_iter()
        .map(|r| (r.context, r.state, r.description))
        .collect()
}

async fn rows_of(s: &Arc<dyn Store>, id: &str) -> Vec<StatusRow> {
    let detail = s.get(&key(id)).await.unwrap();
    assert_eq!(detail.jobs.len(), 1);
    detail.jobs[0].statuses.clone()
}

async fn pipeline_state(s: &Arc<dyn Store>, id: &str) -> Option<String> {
    s.get(&key(id)).await.unwrap().jobs[0].pipeline_state.clone()
}

fn want(list: &[(&str, &str)]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|(state, description)| ("hookbridge/ci".into(), (*state).into(), (*description).into()))
        .collect()
}

async fn lease(s: &Arc<dyn Store>, owner: &str, at: SystemTime) -> Vec<LeasedStatus> {
    s.lease_statuses(owner, 10, LEASE, at).await.unwrap()
}

async fn watches(s: &Arc<dyn Store>, owner: &str, at: SystemTime) -> Vec<LeasedWatch> {
    s.lease_watches(owner, 10, LEASE, at).await.unwrap()
}

/// Rows of `table`, read behind the store's back.
async fn rows(h: &Harness, table: &str) -> i64 {
    let count = format!("SELECT COUNT(*) FROM {table}");
    if let Some(dir) = &h._sqlite {
        let conn = rusqlite::Connection::open(dir.path().join("hb.db")).unwrap();
        return conn.query_row(&count, [], |r| r.get(0)).unwrap();
    }
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&h._postgres.as_ref().unwrap().url)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar(&count).fetch_one(&mut conn).await.unwrap();
    let _ = conn.close().await;
    n
}

fn brief(leased: &[LeasedStatus]) -> Vec<(String, String)> {
    leased
        .iter()
        .map(|l| (l.job.clone(), l.description.clone()))
        .collect()
}

/// A job with a status spec is stored with its pending "queued", ready to
/// post at once with everything the post needs; deliveries stored at the
/// same time (one batch on PostgreSQL) each get their own.
async fn a_reporting_job_queues_queued_with_its_delivery(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let d = reporting("q-1", SHA, true, t);
    let (job, id) = (d.jobs[0].id.clone(), d.id.clone());
    s.ingest(d).await.unwrap();
    assert_eq!(statuses(s, "q-1").await, want(&[("pending", "queued")]));
    let leased = lease(s, "p", t).await;
    assert_eq!(leased.len(), 1);
    let l = &leased[0];
    assert_eq!(
        (l.job.as_str(), l.delivery_id.as_str()),
        (job.as_str(), id.as_str())
    );
    assert_eq!(
        (l.context.as_str(), l.description.as_str()),
        ("hookbridge/ci", "queued")
    );
    assert_eq!(
        (l.state.as_str(), l.target_url.as_deref(), l.attempt),
        ("pending", None, 1)
    );
    assert_eq!(l.spec, spec(SHA, true));
    assert_eq!(rows_of(s, "q-1").await[0].post, "running");

    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let sha = format!("{i:040x}");
            s.ingest(reporting(&format!("q-batch-{i}"), &sha, true, t))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for i in 0..6 {
        assert_eq!(
            statuses(s, &format!("q-batch-{i}")).await,
            want(&[("pending", "queued")])
        );
    }
    assert_eq!(lease(s, "p", t).await.len(), 6, "six commits, one status each");
}

/// A created pipeline is reported running with its URL, and watched
/// when followed (first read at the poll); without `follow` creation is
/// the result; a dead letter is an error with its reason; a retry is
/// still "queued" and queues nothing.
async fn each_step_of_a_job_queues_the_status_it_wants(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let job = recorded(
        s,
        reporting("c-1", SHA, true, t),
        Transition::Done(pipeline("42")),
        t,
    )
    .await;
    let created = [("pending", "queued"), ("running", "GitLab pipeline #7 running")];
    assert_eq!(statuses(s, "c-1").await, want(&created));
    let row = &rows_of(s, "c-1").await[1];
    assert_eq!(row.target_url.as_deref(), Some("https://ci.example/pipelines/42"));
    assert_eq!(pipeline_state(s, "c-1").await.as_deref(), Some("created"));
    assert!(watches(s, "w", t).await.is_empty(), "first read at the poll");
    let w = watches(s, "w", t + POLL).await;
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].job.as_str(), w[0].pipeline.as_str(), w[0].check),
        (job.id.as_str(), "42", 1)
    );
    assert_eq!((w[0].target.as_str(), &w[0].request), ("gitlab", &request()));
    assert_eq!(
        (w[0].delivery_id.as_str(), &w[0].spec),
        (job.delivery_id.as_str(), &spec(SHA, true))
    );
    assert_eq!(millis(w[0].deadline), millis(t + Duration::from_secs(3600)));

    recorded(
        s,
        reporting("c-2", NEWER, false, t),
        Transition::Done(pipeline("43")),
        t,
    )
    .await;
    let done = [("pending", "queued"), ("success", "GitLab pipeline #7 created")];
    assert_eq!(statuses(s, "c-2").await, want(&done));
    assert_eq!(rows(&h, "watches").await, 1, "not followed: not watched");

    let dead = Transition::Dead("HTTP 404: project not found".into());
    recorded(s, reporting("c-3", &"3".repeat(40), true, t), dead, t).await;
    let dead = [("pending", "queued"), ("error", "not triggered: HTTP 404")];
    assert_eq!(statuses(s, "c-3").await, want(&dead));

    let retry = Transition::Retry {
        at: t + POLL,
        reason: "HTTP 503".into(),
    };
    recorded(s, reporting("c-4", &"4".repeat(40), true, t), retry, t).await;
    assert_eq!(statuses(s, "c-4").await, want(&[("pending", "queued")]));
}

fn grouped(d: NewDelivery) -> NewDelivery {
    let mut d = d;
    d.jobs[0].group = Some("acme/app/main".into());
    d.summary.matched[0].group = Some("acme/app/main".into());
    d
}

/// A superseded job says by which commit, at the ingest that ends it or
/// at the start that finds it marked. A newer job of the same commit and
/// context reports after the older one it superseded, so the commit ends
/// at the newer job's "queued".
async fn a_superseded_job_says_by_which_commit(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(grouped(reporting("g-1", SHA, true, t))).await.unwrap();
    s.ingest(grouped(reporting("g-2", NEWER, true, t))).await.unwrap();
    let superseded = [("pending", "queued"), ("error", "superseded by fedcba9")];
    assert_eq!(statuses(s, "g-1").await, want(&superseded));
    assert_eq!(statuses(s, "g-2").await, want(&[("pending", "queued")]));

    let again = grouped(reporting("g-3", NEWER, true, t));
    let j3 = again.jobs[0].id.clone();
    s.ingest(again).await.unwrap();
    assert_eq!(statuses(s, "g-2").await, want(&superseded));
    assert_eq!(statuses(s, "g-3").await, want(&[("pending", "queued")]));
    let mut posted = Vec::new();
    for _ in 0..5 {
        for l in lease(s, "p", t).await {
            posted.push(l.description.clone());
            s.record_status(&l, "p", PostOutcome::Posted { status: 201 }, t)
                .await
                .unwrap();
        }
    }
    assert_eq!(
        posted,
        [
            "queued",
            "queued",
            "superseded by fedcba9",
            "superseded by fedcba9",
            "queued"
        ],
        "g-1's and g-2's commits in turn; g-3's last"
    );

    // g-3 starts; g-4 marks it; its retry's start ends it.
    let leased = s.lease_due("w", 1, LEASE, t).await.unwrap().remove(0);
    assert_eq!(leased.id, j3);
    assert_eq!(s.start_attempt(&leased, "w", t).await.unwrap(), Start::Go);
    s.ingest(grouped(reporting("g-4", &"4".repeat(40), true, t)))
        .await
        .unwrap();
    let retry = Transition::Retry {
        at: t,
        reason: "HTTP 503".into(),
    };
    s.record_attempt(&leased, "w", attempt(503), retry, t)
        .await
        .unwrap();
    let due = s.lease_due("w", 10, LEASE, t).await.unwrap();
    let again = due.iter().find(|j| j.id == j3).unwrap();
    assert_eq!(s.start_attempt(again, "w", t).await.unwrap(), Start::Superseded);
    let ended = [("pending", "queued"), ("error", "superseded by 4444444")];
    assert_eq!(statuses(s, "g-3").await, want(&ended));
}

/// Of one commit and context, only the oldest unposted status is offered,
/// and not while it is out or waiting for its retry; other commits' go
/// meanwhile. A post is recorded only by the holder of its lease (owner
/// and attempt); a lease that ran out, or was given back, is offered again.
async fn a_commits_statuses_are_posted_one_at_a_time_in_order(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let a = recorded(
        s,
        reporting("o-1", SHA, true, t),
        Transition::Done(pipeline("42")),
        t,
    )
    .await;
    let d = reporting("o-2", NEWER, true, t);
    let b = d.jobs[0].id.clone();
    s.ingest(d).await.unwrap();
    let first = lease(s, "a", t).await;
    let queued = |job: &str| (job.to_owned(), "queued".to_owned());
    assert_eq!(brief(&first), [queued(&a.id), queued(&b)]);
    assert!(first[0].seq < first[1].seq);
    assert!(lease(s, "b", t).await.is_empty(), "both commits have one out");

    let retry = PostOutcome::Retry {
        at: t + Duration::from_secs(30),
        reason: "HTTP 503".into(),
        status: Some(503),
    };
    s.record_status(&first[0], "a", retry, t).await.unwrap();
    assert!(
        lease(s, "b", t + Duration::from_secs(1)).await.is_empty(),
        "waits for its retry"
    );
    let at = t + Duration::from_secs(30);
    let second = lease(s, "b", at).await;
    assert_eq!(brief(&second), [queued(&a.id)]);
    assert_eq!(second[0].attempt, 2);
    let posted = PostOutcome::Posted { status: 201 };
    // Neither the first lease (an earlier attempt) nor another owner records it.
    s.record_status(&first[0], "b", posted.clone(), at).await.unwrap();
    s.record_status(&second[0], "a", posted.clone(), at)
        .await
        .unwrap();
    let row = rows_of(s, "o-1").await.remove(0);
    assert_eq!(
        (row.post.as_str(), row.attempts, row.http_status),
        ("running", 2, Some(503))
    );
    assert_eq!(row.error.as_deref(), Some("HTTP 503"));
    s.record_status(&second[0], "b", posted.clone(), at)
        .await
        .unwrap();
    let row = rows_of(s, "o-1").await.remove(0);
    assert_eq!(
        (row.post.as_str(), row.http_status, row.error),
        ("done", Some(201), None)
    );

    let created = lease(s, "c", at).await;
    assert_eq!(
        brief(&created),
        [(a.id.clone(), "GitLab pipeline #7 running".to_owned())]
    );
    let dead = PostOutcome::Dead {
        reason: "HTTP 422: bad state".into(),
        status: Some(422),
    };
    s.record_status(&created[0], "c", dead, at).await.unwrap();
    assert_eq!(rows_of(s, "o-1").await[1].post, "dead");

    // o-2's "queued" is still a's, until its lease runs out.
    assert!(lease(s, "c", t + LEASE).await.is_empty());
    let expired = t + LEASE + Duration::from_secs(1);
    let taken = lease(s, "c", expired).await;
    assert_eq!((brief(&taken), taken[0].attempt), (vec![queued(&b)], 2));
    s.record_status(&first[1], "a", posted.clone(), expired)
        .await
        .unwrap();
    assert_eq!(rows_of(s, "o-2").await[0].post, "running", "a's lease ran out");
    // c stops: what it held is due at once.
    s.release("c", expired).await.unwrap();
    let given = lease(s, "d", expired).await;
    assert_eq!((brief(&given), given[0].attempt), (vec![queued(&b)], 3));
}

/// GitLab `Pipeline Hook` deliveries move a reporting job's pipeline on
/// (by the pipeline id its trigger recorded): "running" (which its
/// creation already reported), then the result,
/// each queued once; a repeated or late event, or one about another
/// pipeline or CI, queues nothing. The result ends the watch.
async fn gitlab_pipeline_events_report_the_result_once(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    recorded(
        s,
        reporting("gl-1", SHA, true, t),
        Transition::Done(pipeline("42")),
        t,
    )
    .await;
    s.ingest(completed("hook-1", "gitlab", "42", "running", None, t))
        .await
        .unwrap();
    let running = [("pending", "queued"), ("running", "GitLab pipeline #7 running")];
    assert_eq!(statuses(s, "gl-1").await, want(&running));
    assert_eq!(pipeline_state(s, "gl-1").await.as_deref(), Some("running"));
    s.ingest(completed("hook-2", "gitlab", "42", "running", None, t))
        .await
        .unwrap();
    let dup = s
        .ingest(completed("hook-1", "gitlab", "42", "success", None, t))
        .await
        .unwrap();
    assert!(matches!(dup, Ingested::Duplicate { .. }));
    assert_eq!(statuses(s, "gl-1").await, want(&running));

    s.ingest(completed("hook-3", "gitlab", "42", "success", None, t))
        .await
        .unwrap();
    let mut passed = running.to_vec();
    passed.push(("success", "GitLab pipeline #7 passed"));
    assert_eq!(statuses(s, "gl-1").await, want(&passed));
    assert_eq!(pipeline_state(s, "gl-1").await.as_deref(), Some("success"));
    assert!(
        watches(s, "w", t + Duration::from_secs(7200)).await.is_empty(),
        "the watch ended"
    );
    for (id, ci, run, status) in [
        ("hook-4", "gitlab", "42", "running"),
        ("hook-5", "gitlab", "43", "failed"),
        ("hook-6", "circleci", "42", "failed"),
    ] {
        s.ingest(completed(
            id,
            ci,
            run,
            status,
            Some("build").filter(|_| ci == "circleci"),
            t,
        ))
        .await
        .unwrap();
    }
    assert_eq!(statuses(s, "gl-1").await, want(&passed));
    assert_eq!(pipeline_state(s, "gl-1").await.as_deref(), Some("success"));
}

fn circle_run() -> TriggerResult {
    TriggerResult {
        id: Some(CIRCLE_PIPELINE.into()),
        number: Some(7),
        url: Some("https://app.circleci.com/pipelines/gh/acme/app/7".into()),
        state: None,
        follow: None,
    }
}

/// A CircleCI `workflow-completed` wakes the pipeline's watch at once (a
/// pipeline is done when all its workflows are: the watch reads that); one
/// that comes while the read is out makes it due again at once; the read
/// that finds the pipeline failed reports it and ends the watch.
async fn circleci_workflows_wake_the_watch_whose_read_reports(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    recorded(s, circleci("cc-1", t), Transition::Done(circle_run()), t).await;
    assert!(watches(s, "w", t).await.is_empty());
    let t1 = t + Duration::from_secs(1);
    s.ingest(completed(
        "wf-1",
        "circleci",
        CIRCLE_PIPELINE,
        "success",
        Some("build"),
        t1,
    ))
    .await
    .unwrap();
    let running = [("pending", "queued"), ("running", "CircleCI pipeline #7 running")];
    let running = want(&running);
    assert_eq!(statuses(s, "cc-1").await, running);
    let w = watches(s, "w", t1).await;
    assert_eq!(
        (w.len(), w[0].pipeline.as_str(), w[0].check),
        (1, CIRCLE_PIPELINE, 1)
    );

    let t2 = t + Duration::from_secs(2);
    s.ingest(completed(
        "wf-2",
        "circleci",
        CIRCLE_PIPELINE,
        "failed",
        Some("test"),
        t2,
    ))
    .await
    .unwrap();
    let read = WatchRecord {
        pipeline: Some(PipelineState::Running),
        next: Some(t2 + POLL),
        ..WatchRecord::default()
    };
    s.record_watch(&w[0], "w", read, t2).await.unwrap();
    assert_eq!(statuses(s, "cc-1").await, running);
    let again = watches(s, "w", t2).await;
    assert_eq!(again.len(), 1, "a workflow completed during the read");
    assert_eq!(again[0].check, 2);

    let workflow = |status: &str| Workflow {
        status: status.into(),
        url: None,
    };
    let fin = WatchRecord {
        pipeline: Some(PipelineState::Failed),
        workflows: vec![
            ("build".into(), workflow("success")),
            ("test".into(), workflow("failed")),
        ],
        next: None,
        ..WatchRecord::default()
    };
    s.record_watch(&again[0], "w", fin.clone(), t2).await.unwrap();
    let mut failed = running.clone();
    failed.extend(want(&[("failure", "CircleCI pipeline #7 failed")]));
    assert_eq!(statuses(s, "cc-1").await, failed);
    assert_eq!(pipeline_state(s, "cc-1").await.as_deref(), Some("failed"));
    assert!(watches(s, "w", t + Duration::from_secs(7200)).await.is_empty());
    // A stale record of a read changes nothing.
    s.record_watch(&w[0], "w", fin, t2).await.unwrap();
    assert_eq!(statuses(s, "cc-1").await, failed);
}

/// When the CI will not list a pipeline's workflows, each workflow is
/// reported under `<context>/<workflow>`.
async fn workflows_are_reported_one_by_one_when_the_ci_will_not_list_them(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    recorded(s, circleci("pw-1", t), Transition::Done(circle_run()), t).await;
    let w = watches(s, "w", t + POLL).await.remove(0);
    let workflow = |status: &str| Workflow {
        status: status.into(),
        url: Some("https://app.circleci.com/workflow/x".into()),
    };
    let read = WatchRecord {
        workflows: vec![
            ("build".into(), workflow("success")),
            ("test".into(), workflow("running")),
        ],
        per_workflow: true,
        next: Some(t + POLL * 2),
        ..WatchRecord::default()
    };
    s.record_watch(&w, "w", read, t + POLL).await.unwrap();
    let line = |context: &str, state: &str, description: &str| {
        (context.to_owned(), state.to_owned(), description.to_owned())
    };
    let mut each = vec![
        line("hookbridge/ci", "pending", "queued"),
        line("hookbridge/ci", "running", "CircleCI pipeline #7 running"),
        line(
            "hookbridge/ci/build",
            "success",
            "CircleCI workflow build success",
        ),
        line("hookbridge/ci/test", "running", "CircleCI workflow test running"),
    ];
    assert_eq!(statuses(s, "pw-1").await, each);
    let url = rows_of(s, "pw-1").await[2].target_url.clone();
    assert_eq!(url.as_deref(), Some("https://app.circleci.com/workflow/x"));

    let w = watches(s, "w", t + POLL * 2).await.remove(0);
    let read = WatchRecord {
        workflows: vec![("test".into(), workflow("failed"))],
        per_workflow: true,
        next: None,
        ..WatchRecord::default()
    };
    s.record_watch(&w, "w", read, t + POLL * 2).await.unwrap();
    each.push(line(
        "hookbridge/ci/test",
        "failure",
        "CircleCI workflow test failed",
    ));
    assert_eq!(statuses(s, "pw-1").await, each);
}

/// A replayed job runs anew: "queued" again, its old pipeline forgotten
/// (events about it reach it no more) and its watch gone.
async fn a_replayed_job_reports_queued_again_and_stops_watching(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    recorded(
        s,
        reporting("r-1", SHA, true, t),
        Transition::Done(pipeline("42")),
        t,
    )
    .await;
    s.ingest(completed("hook-1", "gitlab", "42", "running", None, t))
        .await
        .unwrap();
    assert_eq!(rows(&h, "watches").await, 1);
    s.replay(&key("r-1"), None, t).await.unwrap();
    let replayed = [
        ("pending", "queued"),
        ("running", "GitLab pipeline #7 running"),
        ("pending", "queued"),
    ];
    assert_eq!(statuses(s, "r-1").await, want(&replayed));
    assert_eq!(pipeline_state(s, "r-1").await, None);
    assert_eq!(rows(&h, "watches").await, 0);
    assert!(watches(s, "w", t + Duration::from_secs(7200)).await.is_empty());
    s.ingest(completed("hook-2", "gitlab", "42", "success", None, t))
        .await
        .unwrap();
    assert_eq!(statuses(s, "r-1").await, want(&replayed));
}

/// A run the CI only queued is reported with its number once its follow-up
/// finds it, with its URL, and watched from then on.
async fn a_run_found_by_its_follow_up_is_reported_and_watched(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let queued = TriggerResult {
        id: None,
        number: None,
        url: Some("https://ci.example/queue/item/9/".into()),
        state: Some("queued".into()),
        follow: Some("9".into()),
    };
    recorded(s, reporting("f-1", SHA, true, t), Transition::Done(queued), t).await;
    let before = [("pending", "queued"), ("running", "GitLab pipeline running")];
    assert_eq!(statuses(s, "f-1").await, want(&before));
    assert!(watches(s, "w", t + Duration::from_secs(7200)).await.is_empty());
    let f = s.lease_follow_ups("a", 10, LEASE, t).await.unwrap().remove(0);
    s.record_follow_up(&f, "a", FollowOutcome::Done(pipeline("12")), t)
        .await
        .unwrap();
    let mut after = before.to_vec();
    after.push(("running", "GitLab pipeline #7 running"));
    assert_eq!(statuses(s, "f-1").await, want(&after));
    assert_eq!(pipeline_state(s, "f-1").await.as_deref(), Some("created"));
    assert_eq!(watches(s, "w", t + POLL).await[0].pipeline, "12");
}

/// The purge keeps a delivery while a status of its jobs is still to post
/// (pending or out) or its pipeline is still watched, without letting it
/// fill a batch; once all are posted and the watch has ended, the delivery
/// goes, and its statuses and watches with its jobs.
async fn the_purge_takes_statuses_and_watches_along(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let cutoff = t + POLL * 2;
    recorded(
        s,
        reporting("p-1", SHA, true, t),
        Transition::Done(pipeline("42")),
        t,
    )
    .await;
    s.ingest(delivery("github", "p-2", 0, t)).await.unwrap();
    assert_eq!((rows(&h, "statuses").await, rows(&h, "watches").await), (2, 1));
    // p-1 is older, but held: a batch of one takes p-2.
    assert_eq!(s.purge(cutoff, 1).await.unwrap(), 1);
    assert!(s.get(&key("p-2")).await.is_err());
    assert_eq!(s.purge(cutoff, 10).await.unwrap(), 0, "statuses to post");

    let post_all = |at: SystemTime| async move {
        loop {
            let leased = lease(s, "p", at).await;
            if leased.is_empty() {
                break;
            }
            for l in leased {
                s.record_status(&l, "p", PostOutcome::Posted { status: 201 }, at)
                    .await
                    .unwrap();
            }
        }
    };
    post_all(t).await;
    assert_eq!(s.purge(cutoff, 10).await.unwrap(), 0, "a watch open");
    assert_eq!((rows(&h, "statuses").await, rows(&h, "watches").await), (2, 1));

    // The read that finds the result ends the watch and queues its status:
    // held until posted, also while the post is out.
    let w = watches(s, "w", t + POLL).await.remove(0);
    let fin = WatchRecord {
        pipeline: Some(PipelineState::Success),
        next: None,
        ..WatchRecord::default()
    };
    s.record_watch(&w, "w", fin, t + POLL).await.unwrap();
    assert_eq!(s.purge(cutoff, 10).await.unwrap(), 0, "a status to post");
    let out = lease(s, "p", t + POLL).await;
    assert_eq!(
        brief(&out),
        [(w.job.clone(), "GitLab pipeline #7 passed".to_owned())]
    );
    assert_eq!(s.purge(cutoff, 10).await.unwrap(), 0, "a post out");
    s.record_status(&out[0], "p", PostOutcome::Posted { status: 201 }, t + POLL)
        .await
        .unwrap();

    assert_eq!((rows(&h, "statuses").await, rows(&h, "watches").await), (3, 1));
    assert_eq!(s.purge(cutoff, 10).await.unwrap(), 1);
    assert!(s.get(&key("p-1")).await.is_err());
    assert_eq!((rows(&h, "statuses").await, rows(&h, "watches").await), (0, 0));
    assert!(lease(s, "p", t + Duration::from_secs(7200)).await.is_empty());
    assert_eq!(h.orphans().await, 0);
}

/// Jobs without a status spec queue nothing and create no row, whatever
/// happens to them.
async fn jobs_without_a_status_spec_queue_nothing(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(delivery("github", "n-1", 2, t)).await.unwrap();
    let jobs = s.lease_due("w", 2, LEASE, t).await.unwrap();
    s.record_attempt(&jobs[0], "w", attempt(201), Transition::Done(pipeline("42")), t)
        .await
        .unwrap();
    s.record_attempt(
        &jobs[1],
        "w",
        attempt(404),
        Transition::Dead("HTTP 404".into()),
        t,
    )
    .await
    .unwrap();
    s.ingest(completed("hook-1", "gitlab", "42", "success", None, t))
        .await
        .unwrap();
    s.ingest(grouped(delivery("github", "n-2", 1, t))).await.unwrap();
    s.ingest(grouped(delivery("github", "n-3", 1, t))).await.unwrap();
    s.replay(&key("n-1"), None, t).await.unwrap();
    assert_eq!((rows(&h, "statuses").await, rows(&h, "watches").await), (0, 0));
    assert!(lease(s, "p", t + Duration::from_secs(7200)).await.is_empty());
    assert!(watches(s, "w", t + Duration::from_secs(7200)).await.is_empty());
    let detail = s.get(&key("n-1")).await.unwrap();
    assert!(
        detail
            .jobs
            .iter()
            .all(|j| j.statuses.is_empty() && j.pipeline_state.is_none())
    );
}

/// A completion event that comes before the record of the pipeline's
/// creation (a pipeline that finished at once, a trigger whose answer was
/// late) is kept, and tells the job once it records that pipeline.
async fn a_completion_before_the_record_tells_the_job_once_it_records(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(completed("early-1", "gitlab", "77", "success", None, t))
        .await
        .unwrap();
    assert_eq!(rows(&h, "completions").await, 1);
    recorded(
        s,
        reporting("late-1", SHA, true, t),
        Transition::Done(pipeline("77")),
        t,
    )
    .await;
    assert_eq!(
        statuses(s, "late-1").await,
        want(&[
            ("pending", "queued"),
            ("running", "GitLab pipeline #7 running"),
            ("success", "GitLab pipeline #7 passed"),
        ])
    );
    assert_eq!(pipeline_state(s, "late-1").await.as_deref(), Some("success"));
    assert_eq!(rows(&h, "completions").await, 0, "applied, then dropped");
}

/// Only pipeline events of the job's own project tell it anything: a
/// pipeline of the same id in another project (another GitLab), or a
/// CircleCI `job-completed`, moves nothing.
async fn completions_of_other_projects_and_job_events_tell_nothing(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    recorded(
        s,
        reporting("own-1", SHA, true, t),
        Transition::Done(pipeline("42")),
        t,
    )
    .await;
    let mut other = completed("other-1", "gitlab", "42", "failed", None, t);
    other.event.repository = Some("unrelated/project".into());
    s.ingest(other).await.unwrap();
    let mut job = completed("job-1", "gitlab", "42", "failed", None, t);
    job.event.kind = "job".into();
    s.ingest(job).await.unwrap();
    assert_eq!(
        statuses(s, "own-1").await,
        want(&[("pending", "queued"), ("running", "GitLab pipeline #7 running")])
    );
    assert_eq!(pipeline_state(s, "own-1").await.as_deref(), Some("created"));
    // The project's own event does, whatever case the path is written in.
    let mut own = completed("own-hook", "gitlab", "42", "failed", None, t);
    own.event.repository = Some("Acme/App".into());
    s.ingest(own).await.unwrap();
    assert_eq!(pipeline_state(s, "own-1").await.as_deref(), Some("failed"));
}

/// Two jobs on one commit and context (a push and a pull request) do not
/// re-post each other's statuses when one of them moves again.
async fn two_jobs_on_one_commit_do_not_repost_each_other(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    recorded(
        s,
        reporting("two-1", SHA, true, t),
        Transition::Done(pipeline("51")),
        t,
    )
    .await;
    recorded(
        s,
        reporting("two-2", SHA, true, t),
        Transition::Done(pipeline("52")),
        t,
    )
    .await;
    let before = rows(&h, "statuses").await;
    // Each one's running again (a poll that learned nothing new).
    for (id, run) in [("r-1", "51"), ("r-2", "52"), ("r-3", "51")] {
        s.ingest(completed(id, "gitlab", run, "running", None, t))
            .await
            .unwrap();
    }
    assert_eq!(rows(&h, "statuses").await, before);
}

suite!(
    a_reporting_job_queues_queued_with_its_delivery,
    each_step_of_a_job_queues_the_status_it_wants,
    a_superseded_job_says_by_which_commit,
    a_commits_statuses_are_posted_one_at_a_time_in_order,
    gitlab_pipeline_events_report_the_result_once,
    circleci_workflows_wake_the_watch_whose_read_reports,
    workflows_are_reported_one_by_one_when_the_ci_will_not_list_them,
    a_replayed_job_reports_queued_again_and_stops_watching,
    a_run_found_by_its_follow_up_is_reported_and_watched,
    the_purge_takes_statuses_and_watches_along,
    jobs_without_a_status_spec_queue_nothing,
    a_completion_before_the_record_tells_the_job_once_it_records,
    completions_of_other_projects_and_job_events_tell_nothing,
    two_jobs_on_one_commit_do_not_repost_each_other,
);
