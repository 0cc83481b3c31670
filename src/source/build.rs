//! Config time: a `[sources.NAME]` table checked against its `type` and built
//! into a [`Source`] with that provider's [`Scheme`].

use crate::config::diagnostic::{Diagnostic, suggest};
use crate::config::loader::Loader;
use crate::config::raw::RawSource;

use super::{Scheme, Source, azure, bitbucket, circleci, gitea, github, gitlab, hmac, standard};

/// The `type` of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Github,
    Gitlab,
    Bitbucket,
    Gitea,
    Forgejo,
    Gogs,
    AzureDevops,
    Standard,
    Hmac,
    Circleci,
}

impl SourceKind {
    pub const ALL: [(&'static str, SourceKind); 10] = [
        ("github", SourceKind::Github),
        ("gitlab", SourceKind::Gitlab),
        ("bitbucket", SourceKind::Bitbucket),
        ("gitea", SourceKind::Gitea),
        ("forgejo", SourceKind::Forgejo),
        ("gogs", SourceKind::Gogs),
        ("azure-devops", SourceKind::AzureDevops),
        ("standard", SourceKind::Standard),
        ("hmac", SourceKind::Hmac),
        ("circleci", SourceKind::Circleci),
    ];

    pub fn parse(s: &str) -> Option<SourceKind> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    /// Keys besides `type` that this kind accepts.
    fn settings(self) -> &'static [&'static str] {
        match self {
            SourceKind::Github => &["secrets"],
            SourceKind::Gitlab => &["secrets", "signing_secrets", "tolerance"],
            SourceKind::Bitbucket => &["secrets", "basic_auth"],
            SourceKind::Gitea | SourceKind::Forgejo | SourceKind::Gogs => &["secrets"],
            SourceKind::AzureDevops => &["secrets"],
            SourceKind::Circleci => &["secrets"],
            SourceKind::Standard => &["secrets", "tolerance"],
            SourceKind::Hmac => &[
                "secrets",
                "header",
                "algorithm",
                "encoding",
                "prefix",
                "event_header",
                "event",
                "delivery_header",
            ],
        }
    }
}

/// Build a source from its config table, reporting every problem with its span.
pub fn build(name: &str, raw: &toml::Spanned<RawSource>, loader: &mut Loader) -> Option<Source> {
    let raw_ref = raw.get_ref();
    let Some(kind) = SourceKind::parse(raw_ref.kind.get_ref()) else {
        let names: Vec<&str> = SourceKind::ALL.iter().map(|(n, _)| *n).collect();
        let mut d = Diagnostic::error(
            format!("source `{name}`: unknown type `{}`", raw_ref.kind.get_ref()),
            Some(raw_ref.kind.span()),
        )
        .with_help(format!("types are {}", names.join(", ")));
        if let Some(s) = suggest(raw_ref.kind.get_ref(), names.iter().copied()) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        loader.push(d);
        return None;
    };
    let allowed = kind.settings();
    for (key, span) in present_settings(raw_ref) {
        if !allowed.contains(&key) {
            loader.push(
                Diagnostic::error(
                    format!(
                        "source `{name}`: `{key}` is not a setting of `{}` sources",
                        kind.as_str()
                    ),
                    Some(span),
                )
                .with_help(format!(
                    "`{}` sources take: type, {}",
                    kind.as_str(),
                    allowed.join(", ")
                )),
            );
        }
    }
    let errors_before = loader.error_count();
    let scheme: Box<dyn Scheme> = match kind {
        SourceKind::Github => Box::new(github::GitHub::build(name, raw_ref, loader)),
        SourceKind::Gitlab => Box::new(gitlab::GitLab::build(name, raw_ref, loader)),
        SourceKind::Bitbucket => Box::new(bitbucket::Bitbucket::build(name, raw_ref, loader)),
        SourceKind::Gitea => Box::new(gitea::Gitea::build(name, raw_ref, loader, gitea::Flavor::Gitea)),
        SourceKind::Forgejo => Box::new(gitea::Gitea::build(name, raw_ref, loader, gitea::Flavor::Forgejo)),
        SourceKind::Gogs => Box::new(gitea::Gitea::build(name, raw_ref, loader, gitea::Flavor::Gogs)),
        SourceKind::AzureDevops => Box::new(azure::AzureDevops::build(name, raw_ref, loader)),
        SourceKind::Standard => Box::new(standard::Standard::build(name, raw_ref, loader)),
        SourceKind::Hmac => Box::new(hmac::GenericHmac::build(name, raw_ref, loader)),
        SourceKind::Circleci => Box::new(circleci::Circleci::build(name, raw_ref, loader)),
    };
    (loader.error_count() == errors_before).then(|| Source {
        name: name.to_owned(),
        kind,
        scheme,
    })
}

fn present_settings(raw: &RawSource) -> Vec<(&'static str, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    macro_rules! key {
        ($field:ident) => {
            if let Some(v) = &raw.$field {
                out.push((stringify!($field), v.span()));
            }
        };
    }
    key!(secrets);
    key!(signing_secrets);
    key!(basic_auth);
    key!(tolerance);
    key!(header);
    key!(algorithm);
    key!(encoding);
    key!(prefix);
    key!(event_header);
    key!(event);
    key!(delivery_header);
    out
}
