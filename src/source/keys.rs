//! A source's credentials at config load: the secrets it requires, and the
//! HMAC keys they become, decoded once so no request copies or decodes them.

use std::ops::Range;

use crate::config::diagnostic::Diagnostic;
use crate::config::loader::Loader;
use crate::config::raw::SpannedList;
use crate::config::secret::{HmacKey, Secret, SecretRef};

/// Resolve a list of secrets, requiring at least one entry.
pub(crate) fn required_secrets(
    name: &str,
    key: &str,
    list: Option<&SpannedList<SecretRef>>,
    whole: Range<usize>,
    loader: &mut Loader,
) -> Vec<(Secret, Range<usize>)> {
    match list {
        Some(list) if !list.get_ref().is_empty() => loader.secrets_with_spans(list),
        Some(list) => {
            loader.push(Diagnostic::error(
                format!(
                    "source `{name}`: `{key}` is empty; hookbridge does not accept unauthenticated webhooks"
                ),
                Some(list.span()),
            ));
            Vec::new()
        }
        None => {
            loader.push(
                Diagnostic::error(
                    format!("source `{name}`: `{key}` is required; hookbridge does not accept unauthenticated webhooks"),
                    Some(whole),
                )
                .with_help(format!("add `{key} = [\"env:YOUR_SECRET\"]`")),
            );
            Vec::new()
        }
    }
}

/// Secrets used as HMAC keys as typed (GitHub, Bitbucket, Gitea, generic HMAC).
pub(crate) fn hmac_keys<'s>(secrets: impl IntoIterator<Item = &'s Secret>) -> Vec<HmacKey> {
    secrets.into_iter().map(HmacKey::from_secret).collect()
}

/// Decode `whsec_` secrets (Standard Webhooks, GitLab signing tokens) into
/// keys once, at config load; each one that does not decode is an error at
/// its own place in the file.
pub(crate) fn whsec_keys(
    name: &str,
    secrets: &[(Secret, Range<usize>)],
    loader: &mut Loader,
) -> Vec<HmacKey> {
    let mut keys = Vec::with_capacity(secrets.len());
    for (secret, span) in secrets {
        match HmacKey::from_whsec(secret) {
            Ok(key) => keys.push(key),
            Err(e) => loader.push(Diagnostic::error(
                format!("source `{name}`: {e}"),
                Some(span.clone()),
            )),
        }
    }
    keys
}
