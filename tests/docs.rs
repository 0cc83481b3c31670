//! The documentation cannot drift: every config key the parser accepts has an
//! entry in docs/configuration.md (and every entry there is a real key), and
//! every guide is linked from the README.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Follow `$ref` into `$defs`.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        schema = &root["$defs"][name];
    }
    schema
}

/// Every leaf key path: `server.max_body`, `sources.*.tolerance`, `rules.trigger.job`.
fn key_paths(root: &Value, schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let schema = resolve(root, schema);
    for combinator in ["anyOf", "oneOf", "allOf"] {
        for variant in schema
            .get(combinator)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            key_paths(root, variant, prefix, out);
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if is_table(root, sub) {
                key_paths(root, sub, &path, out);
            } else {
                out.insert(path);
            }
        }
    }
    if let Some(items) = schema.get("items") {
        key_paths(root, items, prefix, out);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object())
        && is_table(root, extra)
    {
        key_paths(root, extra, &format!("{prefix}.*"), out);
    }
}

/// A table of named keys (a struct), or a map or list of them.
fn is_table(root: &Value, schema: &Value) -> bool {
    let schema = resolve(root, schema);
    let nested = |v: &Value| is_table(root, v);
    schema.get("properties").is_some()
        || schema.get("items").is_some_and(nested)
        || schema
            .get("additionalProperties")
            .is_some_and(|v| v.is_object() && nested(v))
        || ["anyOf", "oneOf"].iter().any(|c| {
            schema
                .get(*c)
                .and_then(Value::as_array)
                .is_some_and(|vs| vs.iter().any(nested))
        })
}

/// Keys documented in docs/configuration.md: a heading names the table
/// (`` ## `[sources.NAME]` ``, `` ## `[[rules]]` ``), a table row starting with a
/// backticked key documents `table.key`. Upper-case segments are placeholders.
fn documented_keys(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut table: Option<String> = None;
    for line in doc.lines() {
        if line.starts_with('#') {
            table = line.split('`').nth(1).filter(|t| t.starts_with('[')).map(|t| {
                t.trim_matches(['[', ']'])
                    .split('.')
                    .map(|seg| {
                        if seg.chars().all(|c| c.is_ascii_uppercase()) {
                            "*"
                        } else {
                            seg
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(".")
            });
        } else if let (Some(table), Some(row)) = (&table, line.strip_prefix("| `"))
            && let Some(key) = row.split('`').next()
        {
            out.insert(format!("{table}.{key}"));
        }
    }
    out
}

#[test]
fn every_config_key_is_documented() {
    let schema = hookbridge::config::schema::schema();
    let mut keys = BTreeSet::new();
    key_paths(&schema, &schema, "", &mut keys);
    for expected in [
        "server.max_body",
        "sources.*.tolerance",
        "rules.trigger.definition_id",
        "targets.*.retry.max_attempts",
    ] {
        assert!(keys.contains(expected), "walker missed {expected}: {keys:?}");
    }
    let documented = documented_keys(&read("docs/configuration.md"));
    let missing: Vec<_> = keys.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "config keys with no entry in docs/configuration.md: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&keys).collect();
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents keys the parser rejects: {stale:?}"
    );
}

#[test]
fn every_guide_is_linked_from_the_readme() {
    let readme = read("README.md");
    for guide in [
        "getting-started",
        "configuration",
        "recipes",
        "operations",
        "troubleshooting",
    ] {
        let link = format!("(docs/{guide}.md)");
        assert!(readme.contains(&link), "README.md does not link {link}");
    }
}

#[test]
fn the_unit_and_the_docs_agree_on_the_security_score() {
    // deploy/check.sh prints the score; operations.md reports it to users.
    let ops = read("docs/operations.md");
    assert!(
        ops.contains("systemd-analyze security"),
        "operations.md reports no score"
    );
}
