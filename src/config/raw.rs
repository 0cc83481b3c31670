//! The config file as written: serde structs that reject unknown keys and keep
//! the span of every value that a later check may need to point at.
//!
//! These types are only a parse tree. [`super::load`] compiles them into the
//! validated [`super::Config`]; nothing else in the daemon reads them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::limits;
use super::secret::SecretRef;
use super::units::{DurationAtMost, SizeAtMost, TimeoutAtMost};

pub type SpannedList<T> = Spanned<Vec<Spanned<T>>>;
pub type SpannedTable = Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>;

#[derive(Debug, Deserialize, Default, JsonSchema)]
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
    #[schemars(with = "BTreeMap<String, RawSource>")]
    pub sources: BTreeMap<Spanned<String>, Spanned<RawSource>>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawTarget>")]
    pub targets: BTreeMap<Spanned<String>, Spanned<RawTarget>>,
    #[serde(default)]
    #[schemars(with = "Vec<RawRule>")]
    pub rules: Vec<Spanned<RawRule>>,
    /// OpenTelemetry traces; off without this table (unless the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
    pub telemetry: Option<RawTelemetry>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[schemars(with = "Option<String>")]
    pub listen: Option<Spanned<String>>,
    pub max_body: Option<SizeAtMost<{ limits::MAX_BODY }>>,
    /// Most request-body bytes held in memory at once, over all requests.
    pub body_memory: Option<SizeAtMost<{ limits::BODY_MEMORY }>>,
    /// Time allowed to receive a whole request body.
    pub read_timeout: Option<TimeoutAtMost<{ limits::READ_TIMEOUT }>>,
    /// A sender that sends no body bytes for this long is cut off.
    pub body_idle_timeout: Option<TimeoutAtMost<{ limits::READ_TIMEOUT }>>,
    /// A connection must send a complete request head within this long of
    /// opening or of its previous answer, or it is closed.
    pub idle_timeout: Option<TimeoutAtMost<{ limits::IDLE_TIMEOUT }>>,
    /// How long shutdown waits for in-flight requests and trigger attempts.
    pub shutdown_grace: Option<DurationAtMost<{ limits::SHUTDOWN_GRACE }>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[schemars(with = "Option<String>")]
    pub listen: Option<Spanned<String>>,
    #[schemars(with = "Option<SecretRef>")]
    pub token: Option<Spanned<SecretRef>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    pub retention: Option<DurationAtMost<{ limits::RETENTION }>>,
    /// PostgreSQL: password, instead of putting it in the URL.
    #[schemars(with = "Option<SecretRef>")]
    pub password: Option<Spanned<SecretRef>>,
    /// PostgreSQL: connections in the pool.
    #[schemars(with = "Option<u32>")]
    pub pool_size: Option<Spanned<u32>>,
    /// PostgreSQL: `statement_timeout` for every session.
    pub statement_timeout: Option<DurationAtMost<{ limits::STATEMENT_TIMEOUT }>>,
    /// PostgreSQL: `sslmode` (disable, prefer, require).
    #[schemars(with = "Option<String>")]
    pub tls: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    #[schemars(with = "Option<u32>")]
    pub max_attempts: Option<Spanned<u32>>,
    pub initial_backoff: Option<DurationAtMost<{ limits::INITIAL_BACKOFF }>>,
    pub max_backoff: Option<DurationAtMost<{ limits::MAX_BACKOFF }>>,
    pub request_timeout: Option<TimeoutAtMost<{ limits::REQUEST_TIMEOUT }>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDispatch {
    /// Trigger requests in flight at once.
    #[schemars(with = "Option<u32>")]
    pub concurrency: Option<Spanned<u32>>,
    /// How long a worker owns a job before another may take it over.
    pub lease: Option<DurationAtMost<{ limits::LEASE }>>,
}

/// `[telemetry]`: where traces go, under which name, and how many.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/HTTP base URL: spans go to `{otlp_endpoint}/v1/traces`.
    #[schemars(with = "Option<String>")]
    pub otlp_endpoint: Option<Spanned<String>>,
    /// The `service.name` of every span (default `hookbridge`).
    #[schemars(with = "Option<String>")]
    pub service_name: Option<Spanned<String>>,
    /// Share of deliveries traced, 0.0 to 1.0 (default 1.0).
    #[schemars(with = "Option<f64>")]
    pub sample_ratio: Option<Spanned<f64>>,
}

/// Every key any source type accepts; [`crate::source`] checks which apply.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub kind: Spanned<String>,
    #[schemars(with = "Option<Vec<SecretRef>>")]
    pub secrets: Option<SpannedList<SecretRef>>,
    #[schemars(with = "Option<Vec<SecretRef>>")]
    pub signing_secrets: Option<SpannedList<SecretRef>>,
    #[schemars(with = "Option<Vec<SecretRef>>")]
    pub basic_auth: Option<SpannedList<SecretRef>>,
    #[schemars(with = "Option<DurationAtMost<{ limits::TOLERANCE }>>")]
    pub tolerance: Option<Spanned<DurationAtMost<{ limits::TOLERANCE }>>>,
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub algorithm: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub encoding: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub prefix: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub event_header: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub event: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub delivery_header: Option<Spanned<String>>,
    /// The VCS's REST API (commit statuses): github, gitlab, bitbucket,
    /// gitea and forgejo sources.
    #[schemars(with = "Option<RawApi>")]
    pub api: Option<Spanned<RawApi>>,
}

/// `[sources.NAME.api]`: where the VCS's REST API is and the token for it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// Base URL; defaults to the public service where there is one.
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// A token that may write commit statuses.
    #[schemars(with = "SecretRef")]
    pub token: Spanned<SecretRef>,
    /// Bitbucket: the user (or account email) whose API token or app
    /// password `token` is, for Basic authentication.
    #[schemars(with = "Option<String>")]
    pub user: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub kind: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    #[schemars(with = "Option<SecretRef>")]
    pub token: Option<Spanned<SecretRef>>,
    /// GitLab: an access token with the `api` scope (cancelling pipelines).
    #[schemars(with = "Option<SecretRef>")]
    pub api_token: Option<Spanned<SecretRef>>,
    /// Jenkins: the user whose API token `token` is.
    #[schemars(with = "Option<String>")]
    pub user: Option<Spanned<String>>,
    /// `http`: the header `token` goes in, as it is (default: `Authorization: Bearer`).
    #[schemars(with = "Option<String>")]
    pub token_header: Option<Spanned<String>>,
    /// `http`: `"standard"` signs each request with Standard Webhooks headers.
    #[schemars(with = "Option<String>")]
    pub signing: Option<Spanned<String>>,
    /// `http` with `signing`: the `whsec_...` secret.
    #[schemars(with = "Option<SecretRef>")]
    pub signing_secret: Option<Spanned<SecretRef>>,
    /// GitLab with `api_token`: `false` stops marking triggers with
    /// `HOOKBRIDGE_JOB` and reconciling ambiguous attempts.
    #[schemars(with = "Option<bool>")]
    pub reconcile: Option<Spanned<bool>>,
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    pub description: Option<String>,
    #[schemars(with = "Option<OneOrMany>")]
    pub source: Option<Spanned<OneOrMany>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub events: Option<SpannedList<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub actions: Option<SpannedList<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub branches: Option<SpannedList<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub branches_ignore: Option<SpannedList<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub tags: Option<SpannedList<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub tags_ignore: Option<SpannedList<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub paths: Option<SpannedList<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub paths_ignore: Option<SpannedList<String>>,
    #[schemars(with = "Option<String>")]
    pub paths_unknown: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub paths_unknown_on_error: Option<Spanned<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub repositories: Option<SpannedList<String>>,
    #[serde(rename = "if")]
    #[schemars(with = "Option<String>")]
    pub condition: Option<Spanned<String>>,
    #[schemars(with = "RawTrigger")]
    pub trigger: Spanned<RawTrigger>,
    pub retry: Option<RawRetry>,
    pub concurrency: Option<RawConcurrency>,
    #[schemars(with = "Option<RawStatus>")]
    pub status: Option<Spanned<RawStatus>>,
}

/// `[rules.status]`: report the rule's job on its commit.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// Template; the status's name on the commit (default `hookbridge/{{ rule }}`).
    #[schemars(with = "Option<String>")]
    pub context: Option<Spanned<String>>,
    /// Report the pipeline's final result, not only its creation (default true).
    #[schemars(with = "Option<bool>")]
    pub follow: Option<Spanned<bool>>,
    /// Ask the CI when no completion event came in this long.
    #[schemars(with = "Option<DurationAtMost<{ limits::STATUS_POLL }>>")]
    pub poll: Option<Spanned<DurationAtMost<{ limits::STATUS_POLL }>>>,
    /// Stop waiting for the result after this long (default 12h).
    #[schemars(with = "Option<DurationAtMost<{ limits::STATUS_POLL_TIMEOUT }>>")]
    pub poll_timeout: Option<Spanned<DurationAtMost<{ limits::STATUS_POLL_TIMEOUT }>>>,
}

/// `[rules.concurrency]`: newest wins within a group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    /// Template; jobs rendering the same string share a group, across rules.
    #[schemars(with = "String")]
    pub group: Spanned<String>,
    /// Hold each job this long before its first attempt.
    pub debounce: Option<DurationAtMost<{ limits::DEBOUNCE }>>,
    /// Cancel the pipelines this group created earlier.
    #[schemars(with = "Option<bool>")]
    pub cancel_in_progress: Option<Spanned<bool>>,
}

/// Every key any trigger accepts; the target's type decides which apply.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    #[schemars(with = "String")]
    pub target: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub project: Option<Spanned<String>>,
    // CircleCI
    #[schemars(with = "Option<String>")]
    pub job: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub branch: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub tag: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub revision: Option<Spanned<String>>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub parallel: Option<Spanned<toml::Value>>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub build_parameters: Option<SpannedTable>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub parameters: Option<SpannedTable>,
    #[schemars(with = "Option<String>")]
    pub definition_id: Option<Spanned<String>>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub config: Option<SpannedTable>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub checkout: Option<SpannedTable>,
    // GitLab
    #[serde(rename = "ref")]
    #[schemars(with = "Option<String>")]
    pub git_ref: Option<Spanned<String>>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub variables: Option<SpannedTable>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub inputs: Option<SpannedTable>,
    #[schemars(with = "Option<SecretRef>")]
    pub token: Option<Spanned<SecretRef>>,
    // GitHub and Gitea Actions
    #[schemars(with = "Option<String>")]
    pub repository: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub workflow: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub event_type: Option<Spanned<String>>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub client_payload: Option<SpannedTable>,
    // Buildkite
    #[schemars(with = "Option<String>")]
    pub organization: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub pipeline: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub commit: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub message: Option<Spanned<String>>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub env: Option<SpannedTable>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub meta_data: Option<SpannedTable>,
    // http
    #[schemars(with = "Option<String>")]
    pub method: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub headers: Option<SpannedTable>,
    /// A template string sent as is, or a table sent as JSON.
    #[schemars(with = "Option<serde_json::Value>")]
    pub body: Option<Spanned<toml::Value>>,
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
        key!(repository, "repository");
        key!(workflow, "workflow");
        key!(event_type, "event_type");
        key!(client_payload, "client_payload");
        key!(organization, "organization");
        key!(pipeline, "pipeline");
        key!(commit, "commit");
        key!(message, "message");
        key!(env, "env");
        key!(meta_data, "meta_data");
        key!(method, "method");
        key!(path, "path");
        key!(headers, "headers");
        key!(body, "body");
        out
    }
}
