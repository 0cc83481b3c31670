//! The config file as written: serde structs that reject unknown keys and keep
//! the span of every value that a later check may need to point at.
//!
//! These types are only a parse tree. [`super::load`] compiles them into the
//! validated [`super::Config`]; nothing else in the daemon reads them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::secret::SecretRef;
use super::units::{ByteSize, HumanDuration};

pub type SpannedList<T> = Spanned<Vec<Spanned<T>>>;
pub type SpannedTable = Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub dispatch: RawDispatch,
    #[serde(default)]
    pub sources: BTreeMap<Spanned<String>, Spanned<RawSource>>,
    #[serde(default)]
    pub targets: BTreeMap<Spanned<String>, Spanned<RawTarget>>,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub max_body: Option<ByteSize>,
    /// Time allowed to receive a whole request (headers and body).
    pub read_timeout: Option<HumanDuration>,
    /// How long shutdown waits for in-flight requests and trigger attempts.
    pub shutdown_grace: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token: Option<Spanned<SecretRef>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub url: Option<Spanned<String>>,
    pub retention: Option<HumanDuration>,
    /// PostgreSQL: password, instead of putting it in the URL.
    pub password: Option<Spanned<SecretRef>>,
    /// PostgreSQL: connections in the pool.
    pub pool_size: Option<Spanned<u32>>,
    /// PostgreSQL: `statement_timeout` for every session.
    pub statement_timeout: Option<HumanDuration>,
    /// PostgreSQL: `sslmode` (disable, prefer, require).
    pub tls: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<Spanned<u32>>,
    pub initial_backoff: Option<HumanDuration>,
    pub max_backoff: Option<HumanDuration>,
    pub request_timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDispatch {
    /// Trigger requests in flight at once.
    pub concurrency: Option<Spanned<u32>>,
    /// How long a worker owns a job before another may take it over.
    pub lease: Option<HumanDuration>,
}

/// Every key any source type accepts; [`crate::source`] checks which apply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub secrets: Option<SpannedList<SecretRef>>,
    pub signing_secrets: Option<SpannedList<SecretRef>>,
    pub basic_auth: Option<SpannedList<SecretRef>>,
    pub tolerance: Option<Spanned<HumanDuration>>,
    pub header: Option<Spanned<String>>,
    pub algorithm: Option<Spanned<String>>,
    pub encoding: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub event_header: Option<Spanned<String>>,
    pub event: Option<Spanned<String>>,
    pub delivery_header: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub url: Option<Spanned<String>>,
    pub token: Option<Spanned<SecretRef>>,
    pub retry: Option<RawRetry>,
}

/// `source = "github"` or `source = ["github", "gitea"]`.
#[derive(Debug)]
pub struct OneOrMany(pub Vec<Spanned<String>>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a source name or a list of source names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                // A bare string carries no span of its own; the caller uses the field's span.
                Ok(OneOrMany(vec![Spanned::new(0..0, v.to_owned())]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    out.push(item);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub source: Option<Spanned<OneOrMany>>,
    pub events: Option<SpannedList<String>>,
    pub actions: Option<SpannedList<String>>,
    pub branches: Option<SpannedList<String>>,
    pub branches_ignore: Option<SpannedList<String>>,
    pub tags: Option<SpannedList<String>>,
    pub tags_ignore: Option<SpannedList<String>>,
    pub paths: Option<SpannedList<String>>,
    pub paths_ignore: Option<SpannedList<String>>,
    pub paths_unknown: Option<Spanned<String>>,
    pub repositories: Option<SpannedList<String>>,
    #[serde(rename = "if")]
    pub condition: Option<Spanned<String>>,
    pub trigger: Spanned<RawTrigger>,
    pub retry: Option<RawRetry>,
}

/// Every key any trigger accepts; the target's type decides which apply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    pub target: Spanned<String>,
    pub project: Option<Spanned<String>>,
    // CircleCI
    pub job: Option<Spanned<String>>,
    pub branch: Option<Spanned<String>>,
    pub tag: Option<Spanned<String>>,
    pub revision: Option<Spanned<String>>,
    pub parallel: Option<Spanned<toml::Value>>,
    pub build_parameters: Option<SpannedTable>,
    pub parameters: Option<SpannedTable>,
    pub definition_id: Option<Spanned<String>>,
    pub config: Option<SpannedTable>,
    pub checkout: Option<SpannedTable>,
    // GitLab
    #[serde(rename = "ref")]
    pub git_ref: Option<Spanned<String>>,
    pub variables: Option<SpannedTable>,
    pub inputs: Option<SpannedTable>,
    pub token: Option<Spanned<SecretRef>>,
}

impl RawTrigger {
    /// The keys present, with their spans, for "not valid for this target" errors.
    pub fn present_keys(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        macro_rules! key {
            ($field:ident, $name:literal) => {
                if let Some(v) = &self.$field {
                    out.push(($name, v.span()));
                }
            };
        }
        key!(project, "project");
        key!(job, "job");
        key!(branch, "branch");
        key!(tag, "tag");
        key!(revision, "revision");
        key!(parallel, "parallel");
        key!(build_parameters, "build_parameters");
        key!(parameters, "parameters");
        key!(definition_id, "definition_id");
        key!(config, "config");
        key!(checkout, "checkout");
        key!(git_ref, "ref");
        key!(variables, "variables");
        key!(inputs, "inputs");
        key!(token, "token");
        out
    }
}
