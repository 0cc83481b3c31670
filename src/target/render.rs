//! Event time: the helpers a trigger renders its fields with, and [`GitRef`].
//! Errors are the texts a rule's evaluation reports ("trigger.branch rendered
//! null").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::template::{TemplateValue, Templates};

/// Render a value that must be a non-empty string (numbers are written as text).
pub fn render_string(
    t: &Templates,
    v: &TemplateValue,
    scope: &minijinja::Value,
    key: &str,
) -> Result<String, String> {
    match t.render(v, scope)? {
        serde_json::Value::String(s) if !s.is_empty() => Ok(s),
        serde_json::Value::String(_) => Err(format!("trigger.{key} rendered an empty string")),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Null => Err(format!("trigger.{key} rendered null")),
        other => Err(format!("trigger.{key} must be text, got {}", json_type(&other))),
    }
}

/// [`render_string`] for a field that may be left out.
pub fn render_opt_string(
    t: &Templates,
    v: &Option<TemplateValue>,
    scope: &minijinja::Value,
    key: &str,
) -> Result<Option<String>, String> {
    v.as_ref().map(|v| render_string(t, v, scope, key)).transpose()
}

/// Render every value of a table, keeping its JSON type.
pub fn render_table(
    t: &Templates,
    table: &BTreeMap<String, TemplateValue>,
    scope: &minijinja::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    table
        .iter()
        .map(|(k, v)| Ok((k.clone(), t.render(v, scope)?)))
        .collect()
}

/// Render a table whose values go out as text: strings as they are,
/// numbers and booleans written as text unless `strict` (an API that
/// takes strings only); null, lists and tables are the rule's error.
pub fn render_text_table(
    t: &Templates,
    table: &BTreeMap<String, TemplateValue>,
    scope: &minijinja::Value,
    key: &str,
    strict: bool,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut out = serde_json::Map::new();
    for (k, v) in render_table(t, table, scope)? {
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) if !strict => n.to_string(),
            serde_json::Value::Bool(b) if !strict => b.to_string(),
            other => {
                return Err(format!(
                    "trigger.{key}.{k} must be text, got {}",
                    json_type(&other)
                ));
            }
        };
        out.insert(k, text.into());
    }
    Ok(out)
}

/// The event's branch, else its tag: the ref a trigger builds by default.
pub fn default_ref(event: &Event, key: &str) -> Result<String, String> {
    event
        .branch
        .clone()
        .or_else(|| event.tag.clone())
        .ok_or_else(|| format!("the event has no branch or tag; set `{key}` in the trigger"))
}

/// `owner/repo`, split; anything else is the rule's error.
pub fn owner_repo(repository: &str) -> Result<(&str, &str), String> {
    match repository.split_once('/') {
        Some((owner, repo)) if !owner.is_empty() && !repo.is_empty() && !repo.contains('/') => {
            Ok((owner, repo))
        }
        _ => Err(format!("repository `{repository}` is not `owner/repo`")),
    }
}

/// How a JSON value's type reads in a message ("a list").
pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a table",
    }
}

/// A branch or a tag (CircleCI `config` / `checkout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GitRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl GitRef {
    /// As CircleCI takes it: `{"branch": ...}` or `{"tag": ...}` (the stored form).
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        if let Some(b) = &self.branch {
            out.insert("branch".into(), b.clone().into());
        }
        if let Some(t) = &self.tag {
            out.insert("tag".into(), t.clone().into());
        }
        serde_json::Value::Object(out)
    }

    /// The event's branch, else its tag.
    pub fn of_event(event: &Event) -> Result<GitRef, String> {
        match (&event.branch, &event.tag) {
            (Some(b), _) => Ok(GitRef {
                branch: Some(b.clone()),
                tag: None,
            }),
            (None, Some(t)) => Ok(GitRef {
                branch: None,
                tag: Some(t.clone()),
            }),
            (None, None) => {
                Err("the event has no branch or tag; set `branch` or `tag` in the trigger".into())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_git_ref_reads_as_its_stored_form() {
        let refs = [
            GitRef::default(),
            GitRef {
                branch: Some("main".into()),
                tag: None,
            },
            GitRef {
                branch: None,
                tag: Some("v1".into()),
            },
            GitRef {
                branch: Some("b".into()),
                tag: Some("t".into()),
            },
        ];
        for r in refs {
            assert_eq!(r.to_json(), serde_json::to_value(&r).unwrap());
        }
    }
}
