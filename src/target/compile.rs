//! Config time: a `[targets.NAME]` table becomes a [`Target`], and a rule's
//! `[rules.trigger]` a [`TriggerTemplate`], checked against the keys its
//! target kind takes. Nothing here runs per event.

use std::collections::BTreeMap;

use toml::Spanned;

use super::{Target, TargetKind, TriggerTemplate, circleci, gitlab};
use crate::config::diagnostic::{Diagnostic, suggest};
use crate::config::loader::Loader;
use crate::config::raw::{RawTarget, RawTrigger};
use crate::config::retry::RetryPolicy;
use crate::template::{TemplateCompiler, TemplateValue};

/// Build a target from its config table.
pub fn build(
    name: &str,
    raw: &Spanned<RawTarget>,
    retry: &RetryPolicy,
    loader: &mut Loader,
) -> Option<Target> {
    let raw = raw.get_ref();
    let kind = match raw.kind.get_ref().as_str() {
        "circleci" => TargetKind::Circleci,
        "gitlab" => TargetKind::Gitlab,
        other => {
            let mut d = Diagnostic::error(
                format!("target `{name}`: unknown type `{other}`"),
                Some(raw.kind.span()),
            )
            .with_help("types are circleci, gitlab");
            if let Some(s) = suggest(other, ["circleci", "gitlab"]) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            loader.push(d);
            return None;
        }
    };
    let base_url = match (&raw.url, kind) {
        (Some(u), _) => {
            let url = u.get_ref().trim_end_matches('/').to_owned();
            match reqwest::Url::parse(&url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
                    if parsed.query().is_some()
                        || !parsed.username().is_empty()
                        || parsed.password().is_some()
                    {
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
                                format!(
                                    "target `{name}`: `{origin}` is plain http; the token travels unencrypted"
                                ),
                                Some(u.span()),
                            )
                            .with_help(
                                "use https, unless the way to the CI is private (a sidecar, a tunnel)",
                            ),
                        );
                    }
                    url
                }
                _ => {
                    loader.error(
                        format!("target `{name}`: `{url}` is not an http(s) URL"),
                        u.span(),
                    );
                    return None;
                }
            }
        }
        (None, TargetKind::Circleci) => "https://circleci.com".to_owned(),
        (None, TargetKind::Gitlab) => {
            loader.push(
                Diagnostic::error(
                    format!("target `{name}`: `url` is required for gitlab targets"),
                    Some(raw.kind.span()),
                )
                .with_help("e.g. `url = \"https://gitlab.com\"`"),
            );
            return None;
        }
    };
    let token = raw.token.as_ref().and_then(|t| loader.secret(t));
    if kind == TargetKind::Circleci && raw.token.is_none() {
        loader.push(Diagnostic::error(
            format!("target `{name}`: `token` is required (a CircleCI personal API token)"),
            Some(raw.kind.span()),
        ));
    }
    let api_token = raw.api_token.as_ref().and_then(|t| loader.secret(t));
    if let (TargetKind::Circleci, Some(t)) = (kind, &raw.api_token) {
        loader.push(
            Diagnostic::error(
                format!("target `{name}`: `api_token` is for gitlab targets"),
                Some(t.span()),
            )
            .with_help("CircleCI cancels with the personal API token in `token`"),
        );
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
        retry,
    })
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

/// `localhost`, `127.0.0.0/8` or `::1`: traffic that never leaves the machine.
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
