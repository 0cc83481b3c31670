//! Config time: a `[targets.NAME]` table becomes a [`Target`], and a rule's
//! `[rules.trigger]` a [`TriggerTemplate`], checked against the keys its
//! target kind takes. Nothing here runs per event.

use std::collections::BTreeMap;

use toml::Spanned;

use super::{
    Target, TargetKind, TriggerTemplate, buildkite, circleci, gitea_actions, github_actions, gitlab,
    http_endpoint, jenkins,
};
use crate::config::diagnostic::{Diagnostic, suggest};
use crate::config::loader::Loader;
use crate::config::raw::{RawTarget, RawTrigger};
use crate::config::retry::RetryPolicy;
use crate::template::{TemplateCompiler, TemplateValue};

/// The URL a target of `kind` calls when the config names none, if any.
fn default_url(kind: TargetKind) -> Option<&'static str> {
    match kind {
        TargetKind::Circleci => Some("https://circleci.com"),
        TargetKind::GithubActions => Some("https://api.github.com"),
        TargetKind::Buildkite => Some("https://api.buildkite.com"),
        TargetKind::Gitlab | TargetKind::GiteaActions | TargetKind::Jenkins | TargetKind::Http => None,
    }
}

/// What the `token` of a target of `kind` is, when it is required.
fn token_required(kind: TargetKind) -> Option<&'static str> {
    match kind {
        TargetKind::Circleci => Some("a CircleCI personal API token"),
        TargetKind::GithubActions => Some("a GitHub token with Actions write access"),
        TargetKind::GiteaActions => Some("an access token with the write:repository scope"),
        TargetKind::Buildkite => Some("a Buildkite API access token with write_builds"),
        TargetKind::Jenkins => Some("the API token of `user`"),
        TargetKind::Gitlab | TargetKind::Http => None,
    }
}

/// Build a target from its config table.
pub fn build(
    name: &str,
    raw: &Spanned<RawTarget>,
    retry: &RetryPolicy,
    loader: &mut Loader,
) -> Option<Target> {
    let raw = raw.get_ref();
    let Some(kind) = TargetKind::parse(raw.kind.get_ref()) else {
        let names = TargetKind::ALL.map(TargetKind::as_str);
        let other = raw.kind.get_ref();
        let mut d = Diagnostic::error(
            format!("target `{name}`: unknown type `{other}`"),
            Some(raw.kind.span()),
        )
        .with_help(format!("types are {}", names.join(", ")));
        if let Some(s) = suggest(other, names) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        loader.push(d);
        return None;
    };
    let base_url = match (&raw.url, default_url(kind)) {
        (Some(u), _) => base_url(name, u, loader)?,
        (None, Some(default)) => default.to_owned(),
        (None, None) => {
            loader.push(
                Diagnostic::error(
                    format!("target `{name}`: `url` is required for {} targets", kind.as_str()),
                    Some(raw.kind.span()),
                )
                .with_help("e.g. `url = \"https://ci.example.com\"`"),
            );
            return None;
        }
    };
    let token = raw.token.as_ref().and_then(|t| loader.secret(t));
    if let (Some(what), None) = (token_required(kind), &raw.token) {
        loader.push(Diagnostic::error(
            format!("target `{name}`: `token` is required ({what})"),
            Some(raw.kind.span()),
        ));
    }
    let api_token = raw.api_token.as_ref().and_then(|t| loader.secret(t));
    if let Some(t) = &raw.api_token
        && kind != TargetKind::Gitlab
    {
        loader.push(
            Diagnostic::error(
                format!("target `{name}`: `api_token` is for gitlab targets"),
                Some(t.span()),
            )
            .with_help("this target authenticates with `token`"),
        );
    }
    if let Some(r) = &raw.reconcile
        && !matches!(kind, TargetKind::Gitlab | TargetKind::Circleci)
    {
        loader.push(
            Diagnostic::error(
                format!("target `{name}`: `reconcile` is for gitlab and circleci targets"),
                Some(r.span()),
            )
            .with_help("hookbridge cannot look up the runs of this type: an ambiguous attempt is sent again"),
        );
    }
    let user = only_for(name, kind, TargetKind::Jenkins, "user", raw.user.as_ref(), loader);
    if kind == TargetKind::Jenkins && raw.user.is_none() {
        loader.push(
            Diagnostic::error(
                format!("target `{name}`: `user` is required (the Jenkins user whose API token `token` is)"),
                Some(raw.kind.span()),
            )
            .with_help("e.g. `user = \"hookbridge\"`"),
        );
    }
    let signs = only_for(
        name,
        kind,
        TargetKind::Http,
        "signing",
        raw.signing.as_ref(),
        loader,
    )
    .is_some();
    if let Some(s) = &raw.signing
        && s.get_ref() != "standard"
    {
        loader.error(
            format!(
                "target `{name}`: signing `{}`: the one scheme is \"standard\" (Standard Webhooks)",
                s.get_ref()
            ),
            s.span(),
        );
    }
    let signing = raw.signing_secret.as_ref().and_then(|t| {
        let secret = loader.secret(t)?;
        match crate::config::secret::HmacKey::from_whsec(&secret) {
            Ok(key) => Some(key),
            Err(e) => {
                loader.error(format!("target `{name}`: signing_secret: {e}"), t.span());
                None
            }
        }
    });
    let token_header = only_for(
        name,
        kind,
        TargetKind::Http,
        "token_header",
        raw.token_header.as_ref(),
        loader,
    );
    if let (Some(header), Some(raw_header)) = (&token_header, &raw.token_header)
        && let Err(e) = http_endpoint::check_token_header(header)
    {
        loader.error(format!("target `{name}`: token_header: {e}"), raw_header.span());
    }
    if let (Some(user), Some(raw_user)) = (&user, &raw.user)
        && (user.is_empty() || user.contains(':'))
    {
        loader.error(
            format!("target `{name}`: `user` is a Jenkins user name, not empty and without `:` (Basic auth splits there)"),
            raw_user.span(),
        );
    }
    match (&raw.signing, &raw.signing_secret) {
        (Some(s), None) => loader.error(
            format!("target `{name}`: `signing` needs `signing_secret` (a `whsec_...` secret)"),
            s.span(),
        ),
        (None, Some(t)) => loader.error(
            format!("target `{name}`: `signing_secret` without `signing = \"standard\"` signs nothing"),
            t.span(),
        ),
        _ => {}
    }
    let retry = match &raw.retry {
        Some(r) => retry.overlay(r, loader),
        None => retry.clone(),
    };
    Some(Target {
        name: name.to_owned(),
        kind,
        base_url,
        token,
        has_token: raw.token.is_some(),
        api_token,
        has_api_token: raw.api_token.is_some(),
        user,
        token_header,
        signing,
        signs,
        reconcile: raw.reconcile.as_ref().is_none_or(|r| *r.get_ref()),
        retry,
    })
}

/// A key only targets of kind `only` take: its value, or an error.
fn only_for(
    name: &str,
    kind: TargetKind,
    only: TargetKind,
    key: &str,
    value: Option<&Spanned<String>>,
    loader: &mut Loader,
) -> Option<String> {
    let value = value?;
    if kind != only {
        loader.error(
            format!("target `{name}`: `{key}` is for {} targets", only.as_str()),
            value.span(),
        );
        return None;
    }
    Some(value.get_ref().clone())
}

/// A configured `url`: http(s), without credentials, trailing `/` dropped.
fn base_url(name: &str, u: &Spanned<String>, loader: &mut Loader) -> Option<String> {
    let url = u.get_ref().trim_end_matches('/').to_owned();
    match reqwest::Url::parse(&url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
            if parsed.query().is_some() || !parsed.username().is_empty() || parsed.password().is_some() {
                loader.error(
                    format!("target `{name}`: put tokens in `token`, not in the URL"),
                    u.span(),
                );
            }
            if parsed.scheme() == "http" && !is_loopback(&parsed) {
                // Only the origin: the URL may carry credentials (refused above).
                let origin = parsed.origin().ascii_serialization();
                loader.push(
                    Diagnostic::warning(
                        format!("target `{name}`: `{origin}` is plain http; the token travels unencrypted"),
                        Some(u.span()),
                    )
                    .with_help("use https, unless the way to the CI is private (a sidecar, a tunnel)"),
                );
            }
            Some(url)
        }
        _ => {
            loader.error(
                format!("target `{name}`: `{url}` is not an http(s) URL"),
                u.span(),
            );
            None
        }
    }
}

impl TriggerTemplate {
    /// Compile `[rules.trigger]` for `target`, rejecting keys that target does not take.
    pub fn compile(
        rule: &str,
        raw: &Spanned<RawTrigger>,
        target: &Target,
        compiler: &mut TemplateCompiler,
        loader: &mut Loader,
    ) -> Option<TriggerTemplate> {
        let mut fields = TriggerCompiler {
            rule,
            compiler,
            loader,
            ok: true,
        };
        let t = match target.kind {
            TargetKind::Circleci => {
                circleci::Trigger::compile(raw, &mut fields).map(TriggerTemplate::Circleci)
            }
            TargetKind::Gitlab => {
                gitlab::Trigger::compile(raw, target, &mut fields).map(TriggerTemplate::Gitlab)
            }
            TargetKind::GithubActions => {
                github_actions::Trigger::compile(raw, &mut fields).map(TriggerTemplate::GithubActions)
            }
            TargetKind::GiteaActions => {
                gitea_actions::Trigger::compile(raw, &mut fields).map(TriggerTemplate::GiteaActions)
            }
            TargetKind::Buildkite => {
                buildkite::Trigger::compile(raw, &mut fields).map(TriggerTemplate::Buildkite)
            }
            TargetKind::Jenkins => jenkins::Trigger::compile(raw, &mut fields).map(TriggerTemplate::Jenkins),
            TargetKind::Http => http_endpoint::Trigger::compile(raw, &mut fields).map(TriggerTemplate::Http),
        };
        t.filter(|_| fields.ok)
    }
}

/// The context a rule's trigger compiles in: the rule's name for messages,
/// the template compiler and the loader collecting diagnostics. `ok` turns
/// false with the first error, so a trigger with any bad field is dropped.
pub struct TriggerCompiler<'a> {
    pub rule: &'a str,
    pub compiler: &'a mut TemplateCompiler,
    pub loader: &'a mut Loader,
    pub ok: bool,
}

impl TriggerCompiler<'_> {
    pub fn error(&mut self, message: impl Into<String>, span: std::ops::Range<usize>) {
        self.ok = false;
        self.loader
            .error(format!("rule `{}`: {}", self.rule, message.into()), span);
    }

    /// Reject keys this trigger kind does not take.
    pub fn allow(
        &mut self,
        raw: &RawTrigger,
        kind: &str,
        allowed: &[&str],
        hint: impl Fn(&str) -> Option<String>,
    ) {
        for (key, span) in raw.present_keys() {
            if !allowed.contains(&key) {
                let mut d = Diagnostic::error(
                    format!("rule `{}`: `{key}` is not valid for {kind}", self.rule),
                    Some(span),
                )
                .with_help(format!("{kind} takes: {}", allowed.join(", ")));
                if let Some(h) = hint(key) {
                    d = d.with_help(h);
                }
                self.ok = false;
                self.loader.push(d);
            }
        }
    }

    pub fn text(&mut self, key: &str, v: &Spanned<String>) -> Option<TemplateValue> {
        let name = format!("rule `{}` trigger.{key}", self.rule);
        match self.compiler.text(&name, v.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(format!("trigger.{key}: {e}"), v.span());
                None
            }
        }
    }

    pub fn opt_text(&mut self, key: &str, v: &Option<Spanned<String>>) -> Option<TemplateValue> {
        v.as_ref().and_then(|v| self.text(key, v))
    }

    pub fn value(&mut self, key: &str, v: &Spanned<toml::Value>) -> Option<TemplateValue> {
        let name = format!("rule `{}` trigger.{key}", self.rule);
        match self.compiler.value(&name, v.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(format!("trigger.{key}: {e}"), v.span());
                None
            }
        }
    }

    pub fn table(
        &mut self,
        key: &str,
        v: &Option<crate::config::raw::SpannedTable>,
        check_key: impl Fn(&str) -> Result<(), String>,
    ) -> BTreeMap<String, TemplateValue> {
        let mut out = BTreeMap::new();
        let Some(table) = v else {
            return out;
        };
        for (k, value) in table.get_ref() {
            if let Err(e) = check_key(k.get_ref()) {
                self.error(format!("trigger.{key}: {e}"), k.span());
                continue;
            }
            if let Some(t) = self.value(&format!("{key}.{}", k.get_ref()), value) {
                out.insert(k.get_ref().clone(), t);
            }
        }
        out
    }
}

impl TriggerCompiler<'_> {
    /// A required key: its template, or an error naming what it is.
    pub fn required(
        &mut self,
        raw: &Spanned<RawTrigger>,
        key: &str,
        v: &Option<Spanned<String>>,
        what: &str,
    ) -> Option<TemplateValue> {
        match v {
            Some(v) if v.get_ref().trim().is_empty() => {
                self.error(format!("trigger.{key} cannot be empty: {what}"), v.span());
                None
            }
            Some(v) => self.text(key, v),
            None => {
                self.error(format!("trigger needs `{key}`, {what}"), raw.span());
                None
            }
        }
    }

    /// A table whose values go out as text (environment variables, form
    /// fields, Gitea inputs), with at most `max` keys. A list or table value
    /// is refused; with `strict`, so is a number or boolean literal (the API
    /// takes strings only, and converting would hide it).
    pub fn text_table(
        &mut self,
        key: &str,
        v: &Option<crate::config::raw::SpannedTable>,
        max: usize,
        strict: bool,
        check_key: impl Fn(&str) -> Result<(), String>,
    ) -> BTreeMap<String, TemplateValue> {
        self.limit(key, v, max);
        if let Some(table) = v {
            for (k, value) in table.get_ref() {
                let refused = match value.get_ref() {
                    toml::Value::Array(_) | toml::Value::Table(_) => Some("a list or table"),
                    toml::Value::String(_) => None,
                    _ if strict => Some("not a string"),
                    _ => None,
                };
                if let Some(what) = refused {
                    self.error(
                        format!(
                            "trigger.{key}.{}: values are sent as text, and this is {what}; write it as a string",
                            k.get_ref()
                        ),
                        value.span(),
                    );
                }
            }
        }
        self.table(key, v, check_key)
    }

    /// At most `max` keys in a table (an API limit).
    pub fn limit(&mut self, key: &str, v: &Option<crate::config::raw::SpannedTable>, max: usize) {
        if let Some(table) = v
            && table.get_ref().len() > max
        {
            self.error(
                format!(
                    "trigger.{key} has {} keys; the API takes at most {max}",
                    table.get_ref().len()
                ),
                table.span(),
            );
        }
    }
}

/// An environment variable's name: letters, digits and `_`, not starting
/// with a digit (CircleCI build parameters, Buildkite `env`).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `localhost`, `127.0.0.0/8` or `::1`: traffic that never leaves the machine.
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
