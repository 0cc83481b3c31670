//! The deliveries list both stores run: its filters, the one search box and
//! the cursor, built once as SQL with each store's placeholders; and the
//! rules' verdicts counted from recent summaries.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{DeliveryFilter, Summary, millis};

/// A value bound to a placeholder of [`list`]'s SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Text(String),
    Int(i64),
}

/// What the search box finds: a delivery by its hookbridge id, by the
/// provider's delivery id (the GUID users copy from GitHub), or by the
/// commit sha or a prefix of it (as GitHub and GitLab show it, 7 or more
/// characters; 4 at least).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// The hookbridge id, when the text is one (ULIDs are stored upper case).
    pub id: Option<String>,
    /// The provider's delivery id, as typed.
    pub delivery: String,
    /// `[from, to)`: every lower-case hex sha that starts with the text.
    pub sha: Option<(String, String)>,
}

/// The longest text the search box takes.
pub const MAX_SEARCH: usize = 256;

impl Search {
    /// `None` for blank text.
    pub fn parse(text: &str) -> Option<Search> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let id = ulid::Ulid::from_string(text).ok().map(|u| u.to_string());
        let hex = (4..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
        // `g` sorts after every hex digit, so `[p, p + "g")` is the prefix `p`.
        let sha = hex.then(|| {
            let lower = text.to_ascii_lowercase();
            let upper = format!("{lower}g");
            (lower, upper)
        });
        Some(Search {
            id,
            delivery: text.to_owned(),
            sha,
        })
    }
}

/// The SQL of one page of the list, newest first, and its arguments.
/// `mark(n)` writes the n-th placeholder (`?1`, `$1`); `collate` follows
/// the sha column where it is compared (PostgreSQL compares it as `"C"`, the
/// collation its index is built with).
pub fn list(
    f: &DeliveryFilter,
    columns: &str,
    mark: fn(usize) -> String,
    collate: &str,
) -> (String, Vec<Arg>) {
    let mut sql = format!("SELECT {columns} FROM deliveries d WHERE 1 = 1");
    let mut args = Vec::new();
    let push = |args: &mut Vec<Arg>, arg: Arg| {
        args.push(arg);
        mark(args.len())
    };
    if let Some(s) = f.status {
        let m = push(&mut args, Arg::Text(s.as_str().to_owned()));
        sql.push_str(&format!(" AND d.status = {m}"));
    }
    if let Some(s) = &f.source {
        let m = push(&mut args, Arg::Text(s.clone()));
        sql.push_str(&format!(" AND d.source = {m}"));
    }
    if let Some(r) = &f.repository {
        let m = push(&mut args, Arg::Text(r.clone()));
        sql.push_str(&format!(" AND d.repository = {m}"));
    }
    if let Some(r) = &f.rule {
        let m = push(&mut args, Arg::Text(r.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.id AND j.rule = {m})"
        ));
    }
    if let Some(since) = f.since {
        let m = push(&mut args, Arg::Int(millis(since)));
        sql.push_str(&format!(" AND d.received_at >= {m}"));
    }
    if let Some(until) = f.until {
        let m = push(&mut args, Arg::Int(millis(until)));
        sql.push_str(&format!(" AND d.received_at < {m}"));
    }
    if let Some(search) = f.search.as_deref().and_then(Search::parse) {
        // Each arm reads its own index; the union is a handful of ids.
        let mut arms = Vec::new();
        if let Some(id) = search.id {
            let m = push(&mut args, Arg::Text(id));
            arms.push(format!("SELECT id FROM deliveries WHERE id = {m}"));
        }
        let m = push(&mut args, Arg::Text(search.delivery));
        arms.push(format!("SELECT id FROM deliveries WHERE delivery = {m}"));
        if let Some((from, to)) = search.sha {
            let a = push(&mut args, Arg::Text(from));
            let b = push(&mut args, Arg::Text(to));
            arms.push(format!(
                "SELECT id FROM deliveries WHERE sha{collate} >= {a} AND sha{collate} < {b}"
            ));
        }
        sql.push_str(&format!(" AND d.id IN ({})", arms.join(" UNION ALL ")));
    }
    if let Some(before) = &f.before {
        let m = push(&mut args, Arg::Text(before.clone()));
        sql.push_str(&format!(" AND d.id < {m}"));
    }
    let m = push(
        &mut args,
        Arg::Int(i64::try_from(f.limit.max(1)).unwrap_or(i64::MAX)),
    );
    sql.push_str(&format!(" ORDER BY d.id DESC LIMIT {m}"));
    (sql, args)
}

/// One rule's verdicts over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleCounts {
    pub matched: u64,
    pub skipped: u64,
    pub errors: u64,
}

/// The verdicts of the deliveries received since a time, per rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecentVerdicts {
    pub rules: BTreeMap<String, RuleCounts>,
    /// How many deliveries were counted.
    pub deliveries: u64,
    /// When the window held more deliveries than the count reads: the
    /// receipt time (ms) of the oldest one counted. The counts then cover
    /// only the deliveries since.
    pub truncated_at: Option<i64>,
}

impl RecentVerdicts {
    /// Count one stored summary (its JSON). A summary that does not parse
    /// is left out: it is counted as a delivery, with no verdicts.
    pub fn add(&mut self, summary: &str) {
        self.deliveries = self.deliveries.saturating_add(1);
        let Ok(summary) = serde_json::from_str::<Summary>(summary) else {
            return;
        };
        // A rule with several jobs in one delivery matched once.
        let mut matched: Vec<&str> = summary.matched.iter().map(|m| m.rule.as_str()).collect();
        matched.dedup();
        for rule in matched {
            let c = self.rules.entry(rule.to_owned()).or_default();
            c.matched = c.matched.saturating_add(1);
        }
        for s in &summary.skipped {
            let c = self.rules.entry(s.rule.clone()).or_default();
            c.skipped = c.skipped.saturating_add(1);
        }
        for e in &summary.errors {
            let c = self.rules.entry(e.rule.clone()).or_default();
            c.errors = c.errors.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_search_box_reads_ids_guids_and_sha_prefixes() {
        let s = Search::parse(" 01j0000000000000000000000a ").unwrap();
        assert_eq!(s.id.as_deref(), Some("01J0000000000000000000000A"));
        assert_eq!(s.sha, None);
        let s = Search::parse("72d3162e-cc78-11e3-81ab-4c9367dc0958").unwrap();
        assert_eq!((s.id, s.sha), (None, None));
        let s = Search::parse("ABC1234").unwrap();
        assert_eq!(s.sha, Some(("abc1234".into(), "abc1234g".into())));
        assert_eq!(Search::parse("abc").unwrap().sha, None);
        assert_eq!(Search::parse("   "), None);
    }

    #[test]
    fn placeholders_count_in_order_and_the_limit_is_last() {
        let f = DeliveryFilter {
            source: Some("github".into()),
            search: Some("abcdef1".into()),
            limit: 50,
            ..Default::default()
        };
        let (sql, args) = list(&f, "d.id", |n| format!("${n}"), " COLLATE \"C\"");
        assert!(sql.contains("d.source = $1"), "{sql}");
        assert!(
            sql.contains("sha COLLATE \"C\" >= $3 AND sha COLLATE \"C\" < $4"),
            "{sql}"
        );
        assert!(sql.ends_with("LIMIT $5"), "{sql}");
        assert_eq!(args.len(), 5);
        assert_eq!(args[4], Arg::Int(50));
    }

    proptest! {
        #[test]
        fn any_search_text_builds_a_query(text in "\\PC{0,300}") {
            let f = DeliveryFilter { search: Some(text.clone()), limit: 10, ..Default::default() };
            let (sql, args) = list(&f, "d.id", |n| format!("?{n}"), "");
            // Text is only ever an argument, never part of the SQL.
            if !text.trim().is_empty() {
                prop_assert!(sql.contains("UNION ALL") || sql.contains("delivery = ?1") || sql.contains("id = ?1"));
            }
            let mark = format!("?{}", args.len());
            prop_assert!(sql.ends_with(&mark));
        }

        #[test]
        fn any_summary_text_counts_without_panic(text in "\\PC{0,200}") {
            let mut v = RecentVerdicts::default();
            v.add(&text);
            prop_assert_eq!(v.deliveries, 1);
        }
    }
}
