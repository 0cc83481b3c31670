//! The config file's JSON Schema, derived from the raw serde types in
//! [`super::raw`], so it cannot drift from what the parser accepts.
//!
//! Used by `hookbridge schema` (editors validate `hookbridge.toml` with it) and
//! by the documentation test, which fails when a key has no entry in
//! `docs/configuration.md`. Value types that parse from strings (secret
//! references, durations, sizes) are described here by hand.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::raw::{OneOrMany, RawConfig};
use super::secret::SecretRef;
use super::units::{ByteSize, DurationAtMost, HumanDuration, SizeAtMost, TimeoutAtMost};

/// The JSON Schema (draft 2020-12) of the whole config file.
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(RawConfig).to_value()
}

impl JsonSchema for SecretRef {
    fn schema_name() -> Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "`env:NAME`, `file:PATH` (`${VAR}` expanded, e.g. `${CREDENTIALS_DIRECTORY}`), or a literal secret",
            "examples": ["env:GITHUB_WEBHOOK_SECRET", "file:${CREDENTIALS_DIRECTORY}/github-webhook-secret"]
        })
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "a duration: `500ms`, `30s`, `10m`, `2h`, `14d`, or combined like `1h30m`",
            "examples": ["30s", "10m", "14d"]
        })
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "minimum": 0,
            "description": "a size: `25MiB`, `512KiB`, `1MB`, or a number of bytes",
            "examples": ["25MiB", 1048576]
        })
    }
}

/// Durations with a maximum of their own are written out at each key (the
/// maximum differs), as `"Duration"` with the maximum in the description.
impl<const MAX: u64> JsonSchema for DurationAtMost<MAX> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let max = HumanDuration(Self::MAX);
        json_schema!({
            "type": "string",
            "description": format!("a duration of at most `{max}`: `500ms`, `30s`, `10m`, `2h`, `14d`, or combined like `1h30m`"),
            "examples": ["30s", "10m"]
        })
    }
}

impl<const MAX: u64> JsonSchema for TimeoutAtMost<MAX> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Timeout".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let max = HumanDuration(std::time::Duration::from_secs(MAX));
        json_schema!({
            "type": "string",
            "description": format!("a timeout of at least `1ms` and at most `{max}`: `500ms`, `30s`, `10m`"),
            "examples": ["30s", "10m"]
        })
    }
}

impl<const MAX: u64> JsonSchema for SizeAtMost<MAX> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let max = ByteSize(MAX);
        json_schema!({
            "type": ["string", "integer"],
            "minimum": 0,
            "maximum": MAX,
            "description": format!("a size of at most `{max}`: `25MiB`, `512KiB`, `1MB`, or a number of bytes"),
            "examples": ["25MiB", 1048576]
        })
    }
}

impl JsonSchema for OneOrMany {
    fn schema_name() -> Cow<'static, str> {
        "SourceNames".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "a source name or a list of source names",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_every_table() {
        let s = schema();
        let props = &s["properties"];
        for table in [
            "server", "admin", "store", "retry", "dispatch", "sources", "targets", "rules",
        ] {
            assert!(props.get(table).is_some(), "{table} missing from {s}");
        }
        assert_eq!(s["additionalProperties"], serde_json::Value::Bool(false));
    }
}
