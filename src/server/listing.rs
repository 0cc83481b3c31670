//! The deliveries list's query, read the same way by the API
//! (`GET /api/v1/deliveries`) and the dashboard (`/ui/deliveries`): every
//! filter, the search box, the cursor and the page size. An empty value is
//! no filter (what a form sends for a field left blank).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::units::parse_since;
use crate::store::query::MAX_SEARCH;
use crate::store::{DeliveryFilter, DeliveryStatus};

/// Largest page.
pub(crate) const MAX_PAGE: usize = 500;

/// Page size when the query names none.
pub(crate) const DEFAULT_PAGE: usize = 50;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Received within this long (`1h`) or since an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Received before this long ago or this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The search box: hookbridge id, provider delivery id, or sha (prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Cursor: the `next` value of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A field that is present and not blank.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl ListQuery {
    /// The text filters by name, in the order a page's address lists them.
    fn filters(&self) -> [(&'static str, &Option<String>); 7] {
        [
            ("status", &self.status),
            ("source", &self.source),
            ("rule", &self.rule),
            ("repository", &self.repository),
            ("since", &self.since),
            ("until", &self.until),
            ("q", &self.q),
        ]
    }

    /// The store's filter, or why the query is wrong (a sentence about the
    /// caller's own input).
    pub(crate) fn filter(&self, now: SystemTime) -> Result<DeliveryFilter, String> {
        // No stored name holds a control character; PostgreSQL cannot even
        // compare text with NUL. Say so instead of finding nothing, or failing.
        let before = ("before", &self.before);
        for (name, value) in self.filters().into_iter().chain([before]) {
            if value.as_deref().is_some_and(|v| v.chars().any(char::is_control)) {
                return Err(format!("`{name}` holds a control character"));
            }
        }
        let status = given(&self.status)
            .map(str::parse::<DeliveryStatus>)
            .transpose()
            .map_err(|e| e.to_string())?;
        let time = |v: &Option<String>| {
            given(v)
                .map(|s| parse_since(s, now))
                .transpose()
                .map_err(|e| e.to_string())
        };
        if self.limit == Some(0) {
            return Err("`limit` must be at least 1".into());
        }
        let q = given(&self.q);
        if q.is_some_and(|q| q.len() > MAX_SEARCH) {
            return Err(format!("the search text is longer than {MAX_SEARCH} bytes"));
        }
        // The cursor is a delivery's own id, the `next` of a page, compared
        // as the store writes it (upper case).
        let before = given(&self.before)
            .map(|b| {
                ulid::Ulid::from_string(b)
                    .map(|u| u.to_string())
                    .map_err(|_| "`before` is not a cursor: pass the `next` of the previous page".to_owned())
            })
            .transpose()?;
        Ok(DeliveryFilter {
            status,
            source: given(&self.source).map(str::to_owned),
            rule: given(&self.rule).map(str::to_owned),
            repository: given(&self.repository).map(str::to_owned),
            since: time(&self.since)?,
            until: time(&self.until)?,
            search: q.map(str::to_owned),
            before,
            limit: self.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE),
        })
    }

    /// The same query on another page (`before`), as a query string.
    pub(crate) fn page(&self, before: Option<&str>) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        let limit = self.limit.map(|l| l.to_string());
        let fields = self
            .filters()
            .into_iter()
            .map(|(name, value)| (name, given(value)))
            .chain([("limit", limit.as_deref()), ("before", before)]);
        for (name, value) in fields {
            if let Some(v) = value {
                out.append_pair(name, v);
            }
        }
        out.finish()
    }
}
