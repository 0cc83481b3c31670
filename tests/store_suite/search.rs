//! The dashboard's reads on every store: the search box (hookbridge id,
//! provider delivery id, sha and sha prefix), the repository and time
//! filters, the cursor, and each rule's verdicts over a window.

use super::*;

/// `delivery`, with its internal id made at `at`, as the daemon makes it on
/// receipt: the list is ordered by that id. (Ids made in the same
/// millisecond are in no particular order.)
fn received(mut d: NewDelivery) -> NewDelivery {
    d.id = ulid::Ulid::from_datetime(d.received_at).to_string();
    d
}

/// A delivery of `repository` at commit `sha`, with one job of `rule-0`.
fn at_commit(id: &str, repository: &str, sha: &str, at: SystemTime) -> NewDelivery {
    let mut d = received(delivery("github", id, 1, at));
    d.event.repository = Some(repository.into());
    d.event.sha = Some(sha.into());
    d
}

async fn found(s: &Arc<dyn Store>, f: DeliveryFilter) -> Vec<String> {
    let f = DeliveryFilter { limit: 50, ..f };
    s.list(&f)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.delivery)
        .collect()
}

fn search(text: &str) -> DeliveryFilter {
    DeliveryFilter {
        search: Some(text.into()),
        ..Default::default()
    }
}

async fn the_search_box_finds_by_id_guid_and_sha(h: Harness) {
    let s = &h.store;
    let now = SystemTime::now();
    let a = at_commit(
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "acme/app",
        "0D1A26E67D8F5EAF1F6BA5C57FC3C7D91AC0FD1C",
        now - Duration::from_secs(60),
    );
    let a_id = a.id.clone();
    s.ingest(a).await.unwrap();
    s.ingest(at_commit(
        "guid-b",
        "acme/web",
        "0d1a99aa00000000000000000000000000000000",
        now,
    ))
    .await
    .unwrap();
    s.ingest(delivery("gitlab", "guid-c", 0, now)).await.unwrap();

    let by_guid = found(s, search("72d3162e-cc78-11e3-81ab-4c9367dc0958")).await;
    assert_eq!(by_guid, ["72d3162e-cc78-11e3-81ab-4c9367dc0958"]);
    let by_id = found(s, search(&a_id.to_lowercase())).await;
    assert_eq!(by_id, ["72d3162e-cc78-11e3-81ab-4c9367dc0958"]);
    // The sha as GitHub shows it, full or short, in either case.
    let by_sha = found(s, search("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c")).await;
    assert_eq!(by_sha, ["72d3162e-cc78-11e3-81ab-4c9367dc0958"]);
    assert_eq!(found(s, search("0D1A26E")).await, by_sha);
    // A shorter prefix finds both commits, newest first.
    assert_eq!(
        found(s, search("0d1a")).await,
        ["guid-b", "72d3162e-cc78-11e3-81ab-4c9367dc0958"]
    );
    assert!(found(s, search("ffff")).await.is_empty());
    assert!(found(s, search("no such thing")).await.is_empty());
    // Search and filters combine.
    let f = DeliveryFilter {
        repository: Some("acme/web".into()),
        ..search("0d1a")
    };
    assert_eq!(found(s, f).await, ["guid-b"]);
    // Text no stored name holds (PostgreSQL cannot compare with NUL) names nothing.
    for id in ["guid-b\0", "\0"] {
        let e = s.get(&key(id)).await.unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::NotFound, "{e}");
    }
    let shown = s.get(&key("guid-b")).await.unwrap();
    assert_eq!(
        shown.row.sha.as_deref(),
        Some("0d1a99aa00000000000000000000000000000000")
    );
}

async fn time_filters_and_the_cursor_page_through(h: Harness) {
    let s = &h.store;
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for i in 0..5u64 {
        let at = t0 + Duration::from_secs(i * 60);
        s.ingest(received(delivery("github", &format!("t-{i}"), 1, at)))
            .await
            .unwrap();
    }
    let window = DeliveryFilter {
        since: Some(t0 + Duration::from_secs(60)),
        until: Some(t0 + Duration::from_secs(240)),
        ..Default::default()
    };
    assert_eq!(found(s, window.clone()).await, ["t-3", "t-2", "t-1"]);
    let first = s
        .list(&DeliveryFilter {
            limit: 2,
            ..window.clone()
        })
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let next = DeliveryFilter {
        before: Some(first[1].id.clone()),
        ..window
    };
    assert_eq!(found(s, next).await, ["t-1"]);
}

async fn verdicts_count_each_rule_over_the_window(h: Harness) {
    let s = &h.store;
    let now = SystemTime::now();
    let mut old = delivery("github", "old", 1, now - Duration::from_secs(2 * 86400));
    old.summary.skipped.push(hookbridge::rules::Skipped {
        rule: "rule-x".into(),
        reason: "old".into(),
    });
    s.ingest(old).await.unwrap();
    for i in 0..3 {
        let mut d = delivery("github", &format!("v-{i}"), 1, now - Duration::from_secs(10 - i));
        d.summary.skipped.push(hookbridge::rules::Skipped {
            rule: "rule-x".into(),
            reason: "branch".into(),
        });
        if i == 2 {
            d.summary.errors.push(hookbridge::rules::Errored {
                rule: "rule-y".into(),
                error: "template".into(),
            });
        }
        s.ingest(d).await.unwrap();
    }
    let day = now - Duration::from_secs(86400);
    let v = s.verdicts(day, 1000).await.unwrap();
    assert_eq!(v.deliveries, 3);
    assert_eq!(v.truncated_at, None);
    assert_eq!(
        v.rules["rule-0"],
        RuleCounts {
            matched: 3,
            skipped: 0,
            errors: 0
        }
    );
    assert_eq!(v.rules["rule-x"].skipped, 3);
    assert_eq!(v.rules["rule-y"].errors, 1);
    // A cap reads the newest and says from when.
    let capped = s.verdicts(day, 2).await.unwrap();
    assert_eq!(capped.deliveries, 2);
    assert_eq!(capped.rules["rule-x"].skipped, 2);
    assert!(capped.truncated_at.is_some());
}

suite!(
    the_search_box_finds_by_id_guid_and_sha,
    time_filters_and_the_cursor_page_through,
    verdicts_count_each_rule_over_the_window,
);
