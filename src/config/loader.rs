//! The config compiler's working state: the diagnostics found so far and how
//! strictly a missing secret counts. A leaf: `source`, `rules` and `target`
//! compile their parts of the config against it without depending on
//! [`crate::config`] itself.

use std::ops::Range;

use toml::Spanned;

use super::diagnostic::{Diagnostic, Report};
use super::raw::SpannedList;
use super::secret::{Secret, SecretRef};

/// How strictly missing secrets are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// `serve`: every referenced secret must resolve.
    Serve,
    /// `check`, `explain`, `test`: missing secrets are warnings (CI rarely has them).
    Check,
}

/// Collects diagnostics and resolves secrets while a config compiles.
pub struct Loader {
    pub mode: LoadMode,
    report: Report,
}

impl Loader {
    pub fn new(mode: LoadMode, report: Report) -> Self {
        Loader { mode, report }
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.report.push(d);
    }

    pub fn error(&mut self, message: impl Into<String>, span: Range<usize>) {
        self.report.push(Diagnostic::error(message, Some(span)));
    }

    /// Never show `span` of the file in a snippet (it holds a secret).
    pub fn mark_sensitive(&mut self, span: Range<usize>) {
        self.report.mark_sensitive(span);
    }

    pub(crate) fn error_count(&self) -> usize {
        self.report.errors().count()
    }

    /// Resolve one secret. Missing ones are errors when serving, warnings otherwise.
    pub fn secret(&mut self, r: &Spanned<SecretRef>) -> Option<Secret> {
        if r.get_ref().is_literal() {
            self.report.mark_sensitive(r.span());
            self.push(
                Diagnostic::warning("secret written literally in the config", Some(r.span()))
                    .with_help("use `env:NAME` or `file:PATH` so the secret stays out of the file"),
            );
        }
        match r.get_ref().resolve() {
            Ok(s) => Some(s),
            Err(why) => {
                let message = format!("secret `{}` is unavailable: {why}", r.get_ref());
                let d = match self.mode {
                    LoadMode::Serve => Diagnostic::error(message, Some(r.span())),
                    LoadMode::Check => Diagnostic::warning(message, Some(r.span())),
                };
                self.push(d);
                None
            }
        }
    }

    pub(crate) fn secrets_with_spans(
        &mut self,
        list: &SpannedList<SecretRef>,
    ) -> Vec<(Secret, Range<usize>)> {
        list.get_ref()
            .iter()
            .filter_map(|r| self.secret(r).map(|s| (s, r.span())))
            .collect()
    }

    pub fn secrets(&mut self, list: &SpannedList<SecretRef>) -> Vec<Secret> {
        self.secrets_with_spans(list)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    pub(super) fn finish(self) -> Report {
        self.report
    }
}
