//! Configuration: the TOML file parsed once into validated types.
//!
//! [`load`] reads the file, rejects unknown keys, resolves secrets, compiles
//! sources, targets, globs, templates and `if` expressions, and reports every
//! problem with its file, line and column. The result is immutable; a reload
//! builds a new [`Config`] and swaps it in whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

pub(crate) mod api;
pub mod diagnostic;
pub(crate) mod limits;
pub mod loader;
pub mod raw;
pub mod retry;
pub mod schema;
pub mod secret;
pub mod store_url;
pub mod telemetry;
pub mod units;

pub use diagnostic::{Diagnostic, Report, Severity, suggest};
pub use loader::{LoadMode, Loader};
pub use retry::RetryPolicy;
pub use secret::{HmacKey, KeyError, Secret, SecretRef, SecretSlot};
pub use store_url::{StoreUrl, redact_url};
pub use telemetry::TelemetrySettings;

use crate::rules::RuleSet;
use crate::source::Source;
use crate::target::Target;
use raw::RawConfig;

/// Where the config file is looked for when `--config` is not given.
pub fn default_path() -> PathBuf {
    std::env::var_os("HOOKBRIDGE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("hookbridge.toml"))
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_body: u64,
    /// Bytes of request bodies held at once (read, verified, waiting for their commit).
    pub body_memory: u64,
    pub read_timeout: Duration,
    /// Longest pause between body bytes before a sender is cut off.
    pub body_idle_timeout: Duration,
    /// Longest a connection may go without a complete request head (new,
    /// kept alive, or sending its headers slowly) before it is closed.
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
}

impl AdminSettings {
    /// Whether `given` is the admin token, compared in constant time
    /// (false when there is none): the API's bearer token, the dashboard's login.
    pub fn accepts(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.token
            .as_ref()
            .is_some_and(|t| bool::from(given.as_bytes().ct_eq(t.expose().as_bytes())))
    }
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub url: StoreUrl,
    pub retention: Duration,
    pub password: Option<Secret>,
    pub pool_size: u32,
    pub statement_timeout: Duration,
    pub tls: String,
}

#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Trigger requests in flight at once.
    pub concurrency: usize,
    /// How long a leased job belongs to its worker before another may take it over.
    pub lease: Duration,
    /// The lease is long enough to lease jobs ahead of free slots
    /// ([`lease_ahead_needs`] of the longest request timeout).
    pub lease_ahead: bool,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub store: StoreSettings,
    pub retry: RetryPolicy,
    pub dispatch: DispatchSettings,
    pub sources: BTreeMap<String, Source>,
    /// Each source's `[sources.NAME.api]`, by source name: [`Config::source_api`].
    /// Loaded for `check` (and `explain`, `test`) with its token unavailable
    /// (a warning), an API's token is empty; `serve` refuses that.
    pub source_apis: BTreeMap<String, crate::vcs::Api>,
    pub targets: BTreeMap<String, Target>,
    pub rules: RuleSet,
    /// `[telemetry]`, when the table is there (traces: [`crate::telemetry`]).
    pub telemetry: Option<TelemetrySettings>,
}

impl Config {
    /// The VCS API of source `name` (`[sources.NAME.api]`), which posts
    /// the commit statuses of the jobs its deliveries start.
    pub fn source_api(&self, name: &str) -> Option<&crate::vcs::Api> {
        self.source_apis.get(name)
    }

    /// The one-line summary `check` prints.
    pub fn summary(&self) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}: ok — {}, {}, {}",
            self.path.display(),
            plural(self.sources.len(), "source"),
            plural(self.targets.len(), "target"),
            plural(self.rules.len(), "rule"),
        )
    }
}

/// A loaded config with the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Report,
}

/// Read and compile the config at `path`.
pub fn load(path: &Path, mode: LoadMode) -> Result<Loaded, Report> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut r = Report::new(path, "");
        r.push(Diagnostic::error(format!("cannot read config file: {e}"), None));
        r
    })?;
    parse(path, &text, mode)
}

/// Compile config text; `path` is used in messages only.
pub fn parse(path: &Path, text: &str, mode: LoadMode) -> Result<Loaded, Report> {
    let mut loader = Loader::new(mode, Report::new(path, text));
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let mut message = e.message().trim().to_owned();
            if let Some(first) = message.lines().next() {
                message = first.to_owned();
            }
            loader.push(Diagnostic::error(message, e.span()));
            return Err(loader.finish());
        }
    };
    let config = compile(path, raw, &mut loader);
    let report = loader.finish();
    match config {
        Some(config) if !report.has_errors() => Ok(Loaded {
            config,
            warnings: report,
        }),
        _ => Err(report),
    }
}

fn socket_addr(value: Option<&Spanned<String>>, default: &str, loader: &mut Loader) -> SocketAddr {
    let fallback: SocketAddr = default.parse().expect("default listen addresses are valid");
    match value {
        None => fallback,
        Some(v) => v.get_ref().parse().unwrap_or_else(|_| {
            loader.push(
                Diagnostic::error(format!("`{}` is not an address", v.get_ref()), Some(v.span()))
                    .with_help("write an IP and port, e.g. `0.0.0.0:8080` or `127.0.0.1:9090`"),
            );
            fallback
        }),
    }
}

/// `[server] body_memory` when unset: room for thousands of ordinary pushes
/// (7–10 KB), or thirty-two one-megabyte ones, while the store commits; one
/// source or connection may use seven eighths (28 MiB), more than `max_body`.
pub(crate) const DEFAULT_BODY_MEMORY: u64 = 32 * 1024 * 1024;

/// The part of `body_memory` that one source or one connection may hold: all
/// but an eighth, which stays for the others.
pub(crate) fn body_share(body_memory: u64) -> u64 {
    body_memory.saturating_sub(body_memory / 8).max(1)
}

fn compile(path: &Path, raw: RawConfig, loader: &mut Loader) -> Option<Config> {
    let server = ServerSettings {
        listen: socket_addr(raw.server.listen.as_ref(), "0.0.0.0:8080", loader),
        max_body: raw.server.max_body.map_or(25 * 1024 * 1024, |b| b.0),
        body_memory: raw.server.body_memory.map_or(DEFAULT_BODY_MEMORY, |b| b.0.max(1)),
        read_timeout: raw.server.read_timeout.map_or(Duration::from_secs(30), |d| d.0),
        body_idle_timeout: raw
            .server
            .body_idle_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
        idle_timeout: raw.server.idle_timeout.map_or(Duration::from_secs(15), |d| d.0),
        shutdown_grace: raw.server.shutdown_grace.map_or(Duration::from_secs(25), |d| d.0),
    };
    if server.max_body > body_share(server.body_memory) {
        loader.push(
            Diagnostic::warning(
                format!(
                    "`[server] max_body` ({}) is more than one request may hold: seven eighths of `body_memory` ({}); larger bodies are answered 413",
                    units::ByteSize(server.max_body),
                    units::ByteSize(body_share(server.body_memory)),
                ),
                None,
            )
            .with_help("raise `body_memory` to at least 8/7 of `max_body`, or lower `max_body`"),
        );
    }
    let admin_listen = socket_addr(raw.admin.listen.as_ref(), "127.0.0.1:9090", loader);
    let admin_token = raw.admin.token.as_ref().and_then(|t| loader.secret(t));
    if !admin_listen.ip().is_loopback() && raw.admin.token.is_none() {
        let span = raw.admin.listen.as_ref().map(Spanned::span);
        loader.push(
            Diagnostic::error(
                format!("the admin listener on non-loopback `{admin_listen}` needs `[admin] token`"),
                span,
            )
            .with_help("set `token = \"env:HOOKBRIDGE_ADMIN_TOKEN\"` or listen on 127.0.0.1"),
        );
    }
    let admin = AdminSettings {
        listen: admin_listen,
        token: admin_token,
    };

    if let Some(u) = &raw.store.url
        && redact_url(u.get_ref()) != *u.get_ref()
    {
        loader.mark_sensitive(u.span());
    }
    let url = match &raw.store.url {
        None => StoreUrl::Sqlite(PathBuf::from("hookbridge.db")),
        Some(u) => StoreUrl::parse(u.get_ref()).unwrap_or_else(|e| {
            loader.error(e, u.span());
            StoreUrl::Sqlite(PathBuf::from("hookbridge.db"))
        }),
    };
    let store = StoreSettings {
        url,
        retention: raw
            .store
            .retention
            .map_or(Duration::from_secs(14 * 86400), |d| d.0),
        password: raw.store.password.as_ref().and_then(|p| loader.secret(p)),
        pool_size: pool_size(raw.store.pool_size.as_ref(), loader),
        statement_timeout: raw
            .store
            .statement_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
        tls: raw
            .store
            .tls
            .as_ref()
            .map_or_else(|| "prefer".to_owned(), |t| t.get_ref().clone()),
    };

    let retry = RetryPolicy::default().overlay(&raw.retry, loader);
    let mut sources = BTreeMap::new();
    for (name, source) in &raw.sources {
        check_name(name, "source", loader);
        if let Some(s) = crate::source::build(name.get_ref(), source, loader) {
            sources.insert(name.get_ref().clone(), s);
        }
    }
    let source_apis = api::compile(&raw.sources, loader);
    let mut targets = BTreeMap::new();
    for (name, target) in &raw.targets {
        check_name(name, "target", loader);
        if let Some(t) = crate::target::build(name.get_ref(), target, &retry, loader) {
            targets.insert(name.get_ref().clone(), t);
        }
    }
    let source_names: Vec<&str> = raw.sources.keys().map(|k| k.get_ref().as_str()).collect();
    // As written: a source whose `api` has an error is not also "without one".
    let api_sources: Vec<&str> = raw
        .sources
        .iter()
        .filter(|(_, s)| s.get_ref().api.is_some())
        .map(|(k, _)| k.get_ref().as_str())
        .collect();
    let rules = crate::rules::build(
        &raw.rules,
        &crate::rules::SourceNames {
            all: &source_names,
            with_api: &api_sources,
        },
        &raw.targets,
        &targets,
        loader,
    );
    crate::rules::status::check_retention(&rules, &raw.rules, store.retention, loader);
    let (lease, lease_ahead) = lease(raw.dispatch.lease.map(|d| d.0), &retry, &targets, &rules, loader);
    let dispatch = DispatchSettings {
        concurrency: dispatch_concurrency(raw.dispatch.concurrency.as_ref(), loader),
        lease,
        lease_ahead,
    };
    let telemetry = telemetry::compile(raw.telemetry.as_ref(), loader);

    Some(Config {
        path: path.to_path_buf(),
        server,
        admin,
        store,
        retry,
        dispatch,
        sources,
        source_apis,
        targets,
        rules,
        telemetry,
    })
}

/// The lease under which a dispatcher may lease jobs ahead of its free
/// slots, when the longest request timeout is `longest`: a job leased ahead
/// waits at most one timeout for a slot and runs at most one more, and a
/// tenth on top covers the scheduling and the record's commit, so the
/// attempt ends inside its lease (else it is taken over, and sent and
/// counted again, while its record is on the way).
fn lease_ahead_needs(longest: Duration) -> Duration {
    longest.saturating_mul(2).saturating_add(longest / 10)
}

/// `[dispatch] lease`: longer than every request's timeout (`[retry]`'s, a
/// target's or a rule's own), or no attempt could finish within its lease
/// and another replica (or this one) would send the job again meanwhile.
/// By default long enough to lease ahead ([`lease_ahead_needs`]), and at
/// least a minute. Answers the lease and whether it is long enough to
/// lease ahead.
fn lease(
    set: Option<Duration>,
    retry: &RetryPolicy,
    targets: &BTreeMap<String, crate::target::Target>,
    rules: &crate::rules::RuleSet,
    loader: &mut Loader,
) -> (Duration, bool) {
    let (longest, whose) = targets
        .iter()
        .map(|(name, t)| {
            (
                t.retry.request_timeout,
                format!("`[targets.{name}.retry] request_timeout`"),
            )
        })
        .chain(rules.rules().iter().map(|r| {
            (
                r.retry.request_timeout,
                format!("the `request_timeout` of rule `{}`", r.name),
            )
        }))
        .fold(
            (retry.request_timeout, "`[retry] request_timeout`".to_owned()),
            |a, b| if b.0 > a.0 { b } else { a },
        );
    let Some(lease) = set else {
        return (lease_ahead_needs(longest).max(Duration::from_secs(60)), true);
    };
    if lease <= longest {
        loader.push(Diagnostic::error(
            format!(
                "`[dispatch] lease` ({}) must be longer than {whose} ({})",
                units::HumanDuration(lease),
                units::HumanDuration(longest)
            ),
            None,
        ));
    }
    (lease, lease >= lease_ahead_needs(longest))
}

/// `[store] pool_size`, 10 by default, between 1 and its maximum (the
/// pool's bookkeeping is allocated for it up front).
fn pool_size(value: Option<&Spanned<u32>>, loader: &mut Loader) -> u32 {
    let Some(value) = value else { return 10 };
    let n = *value.get_ref();
    if !(1..=limits::POOL_SIZE).contains(&n) {
        loader.error(
            format!(
                "`pool_size` is between 1 and {}: PostgreSQL connections per replica (the server's own `max_connections` is usually 100)",
                limits::POOL_SIZE
            ),
            value.span(),
        );
    }
    n.clamp(1, limits::POOL_SIZE)
}

/// `[dispatch] concurrency`, 16 by default, between 1 and its maximum.
fn dispatch_concurrency(value: Option<&Spanned<u32>>, loader: &mut Loader) -> usize {
    let Some(value) = value else { return 16 };
    let n = *value.get_ref();
    if n == 0 {
        loader.error(
            "`concurrency` is at least 1: trigger requests in flight at once, per replica",
            value.span(),
        );
    } else if n > limits::DISPATCH_CONCURRENCY {
        loader.error(
            format!(
                "`concurrency` is at most {}: trigger requests in flight at once, per replica",
                limits::DISPATCH_CONCURRENCY
            ),
            value.span(),
        );
    }
    usize::try_from(n.clamp(1, limits::DISPATCH_CONCURRENCY)).unwrap_or(1)
}

/// Names appear in URLs (`/hooks/{source}`) and logs: keep them simple.
fn check_name(name: &Spanned<String>, what: &str, loader: &mut Loader) {
    let ok = !name.get_ref().is_empty()
        && name
            .get_ref()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        loader.error(
            format!(
                "{what} name `{}` may only contain letters, digits, `-`, `_` and `.`",
                name.get_ref()
            ),
            name.span(),
        );
    }
}
