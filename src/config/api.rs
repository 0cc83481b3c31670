//! `[sources.NAME.api]`: where a source's VCS keeps its REST API and the
//! token hookbridge calls it with (commit statuses now, changed files
//! later), compiled into [`crate::vcs::Api`].
//!
//! Only the senders whose VCS has a status API take one: GitHub (and GHES),
//! GitLab, Bitbucket Cloud and Data Center, Gitea, Forgejo. The token is a
//! secret like every other; the URL may not carry credentials, and a
//! snippet never shows one that does.

use std::collections::BTreeMap;

use toml::Spanned;

use super::diagnostic::Diagnostic;
use super::loader::Loader;
use super::raw::{RawApi, RawSource};
use super::secret::Secret;
use crate::store::status::Vcs;
use crate::vcs::Api;

/// The source types whose VCS takes commit statuses.
pub(crate) const STATUS_SOURCE_TYPES: [&str; 5] = ["github", "gitlab", "bitbucket", "gitea", "forgejo"];

/// The API a source of type `kind` calls when `api.url` is not set: the
/// public service, where there is one. Bitbucket's is Cloud's; a Data
/// Center server sets its own.
fn default_url(kind: &str) -> Option<&'static str> {
    let vcs = match kind {
        "github" => Vcs::Github,
        "gitlab" => Vcs::Gitlab,
        "bitbucket" => Vcs::BitbucketCloud,
        "gitea" => Vcs::Gitea,
        "forgejo" => Vcs::Forgejo,
        _ => return None,
    };
    crate::vcs::default_url(vcs)
}

/// What to write as `url` for a source of type `kind`.
fn url_example(kind: &str) -> &'static str {
    match kind {
        "github" => "https://ghe.example.com/api/v3",
        "gitlab" => "https://gitlab.example.com",
        "bitbucket" => "https://bitbucket.example.com",
        "forgejo" => "https://forgejo.example.com",
        _ => "https://gitea.example.com",
    }
}

/// Every source's `api`, by source name; a source whose `api` has an error
/// is left out (the error is reported).
pub(crate) fn compile(
    sources: &BTreeMap<Spanned<String>, Spanned<RawSource>>,
    loader: &mut Loader,
) -> BTreeMap<String, Api> {
    let mut out = BTreeMap::new();
    for (name, source) in sources {
        let source = source.get_ref();
        let Some(api) = &source.api else { continue };
        if let Some(api) = one(name.get_ref(), source.kind.get_ref(), api, loader) {
            out.insert(name.get_ref().clone(), api);
        }
    }
    out
}

/// One `[sources.NAME.api]`, or `None` with its errors reported.
fn one(name: &str, kind: &str, raw: &Spanned<RawApi>, loader: &mut Loader) -> Option<Api> {
    let errors_before = loader.error_count();
    if !STATUS_SOURCE_TYPES.contains(&kind) {
        // An unknown type already has its own error.
        if crate::source::SourceKind::parse(kind).is_some() {
            loader.push(
                Diagnostic::error(
                    format!("source `{name}`: commit statuses and changed files are not supported for `{kind}` sources"),
                    Some(raw.span()),
                )
                .with_help(
                    "`[sources.NAME.api]` is for github, gitlab, bitbucket, gitea and forgejo sources; remove it here",
                ),
            );
        }
        return None;
    }
    let raw_ref = raw.get_ref();
    let url = match (&raw_ref.url, default_url(kind)) {
        (Some(u), _) => base_url(name, kind, u, loader),
        (None, Some(default)) => Some(default.to_owned()),
        (None, None) => {
            loader.push(
                Diagnostic::error(
                    format!("source `{name}`: `api.url` is required for {kind} sources"),
                    Some(raw.span()),
                )
                .with_help(format!(
                    "the instance's base URL, e.g. `url = \"{}\"`",
                    url_example(kind)
                )),
            );
            None
        }
    };
    let user = raw_ref.user.as_ref().and_then(|u| user(name, kind, u, loader));
    let token = loader.secret(&raw_ref.token);
    if loader.error_count() != errors_before {
        return None;
    }
    Some(Api {
        url: url?,
        // Unavailable under `check` (a warning): the config is still checked.
        token: token.unwrap_or_else(|| Secret::new("")),
        user,
    })
}

/// `api.user`: Bitbucket only, a name Basic authentication can carry.
fn user(name: &str, kind: &str, u: &Spanned<String>, loader: &mut Loader) -> Option<String> {
    if kind != "bitbucket" {
        loader.push(
            Diagnostic::error(
                format!("source `{name}`: `api.user` is for bitbucket sources"),
                Some(u.span()),
            )
            .with_help(format!("{kind} sources authenticate with `token` alone")),
        );
        return None;
    }
    let value = u.get_ref();
    if value.trim().is_empty() || value.contains(':') || value.chars().any(char::is_control) {
        loader.error(
            format!(
                "source `{name}`: `api.user` is a user name or account email, not empty and without `:` (Basic auth splits there)"
            ),
            u.span(),
        );
        return None;
    }
    Some(value.clone())
}

/// `api.url`: http(s), without credentials, trailing `/` dropped.
fn base_url(name: &str, kind: &str, u: &Spanned<String>, loader: &mut Loader) -> Option<String> {
    let url = u.get_ref().trim_end_matches('/').to_owned();
    let parsed = reqwest::Url::parse(&url)
        .ok()
        .filter(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some());
    let Some(parsed) = parsed else {
        // Not shown: whatever it is, it may hold a credential.
        if url.contains('@') {
            loader.mark_sensitive(u.span());
        }
        loader.push(
            Diagnostic::error(
                format!("source `{name}`: `api.url` is not an http(s) URL"),
                Some(u.span()),
            )
            .with_help(format!("e.g. `url = \"{}\"`", url_example(kind))),
        );
        return None;
    };
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
        loader.mark_sensitive(u.span());
        loader.push(
            Diagnostic::error(
                format!("source `{name}`: `api.url` may not carry credentials or a query"),
                Some(u.span()),
            )
            .with_help("put the token in `api.token` (and a Bitbucket user in `api.user`)"),
        );
        return None;
    }
    if parsed.scheme() == "http" && !is_loopback(&parsed) {
        let origin = parsed.origin().ascii_serialization();
        loader.push(
            Diagnostic::warning(
                format!("source `{name}`: `{origin}` is plain http; the API token travels unencrypted"),
                Some(u.span()),
            )
            .with_help("use https, unless the way to the VCS is private"),
        );
    }
    Some(url)
}

/// `localhost`, `127.0.0.0/8` or `::1`: traffic that never leaves the machine.
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
