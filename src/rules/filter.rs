//! GitHub Actions-style glob lists: `*` stays within a path segment, `**`
//! crosses segments, and a pattern starting with `!` excludes what earlier
//! patterns included. Patterns are evaluated in order and the last one that
//! matches decides, as in GitHub Actions.

use globset::{Glob, GlobBuilder, GlobMatcher};
use toml::Spanned;

#[derive(Debug, Clone)]
struct Pattern {
    negated: bool,
    matcher: GlobMatcher,
    text: String,
}

/// A compiled list of glob patterns.
#[derive(Debug, Clone)]
pub struct PatternList {
    patterns: Vec<Pattern>,
}

impl PatternList {
    /// Compile `list`; the error carries the offending pattern's span.
    pub fn compile(
        list: &Spanned<Vec<Spanned<String>>>,
        case_insensitive: bool,
    ) -> Result<PatternList, (String, std::ops::Range<usize>)> {
        if list.get_ref().is_empty() {
            return Err((
                "an empty list matches nothing; remove the key instead".into(),
                list.span(),
            ));
        }
        let mut patterns = Vec::new();
        for item in list.get_ref() {
            let text = item.get_ref();
            let (negated, glob) = match text.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, text.as_str()),
            };
            if glob.is_empty() {
                return Err(("empty pattern".into(), item.span()));
            }
            // globset panics on a pattern its regex compiler refuses (250
            // nested `{}`): measure it first.
            super::bounds::check_glob(glob).map_err(|e| (e.to_string(), item.span()))?;
            let compiled: Glob = GlobBuilder::new(glob)
                .literal_separator(true)
                .backslash_escape(true)
                .case_insensitive(case_insensitive)
                .build()
                .map_err(|e| {
                    let text = crate::config::units::shown(text);
                    (format!("invalid glob `{text}`: {}", e.kind()), item.span())
                })?;
            patterns.push(Pattern {
                negated,
                matcher: compiled.compile_matcher(),
                text: text.clone(),
            });
        }
        if patterns.iter().all(|p| p.negated) {
            return Err((
                "a list of only `!` patterns matches nothing; add a pattern to include, e.g. `**`".into(),
                list.span(),
            ));
        }
        Ok(PatternList { patterns })
    }

    /// Whether `value` is included: the last matching pattern decides.
    pub fn matches(&self, value: &str) -> bool {
        self.decisive(value).is_some_and(|p| !p.negated)
    }

    /// The pattern that decided `value`'s fate, if any matched.
    pub fn deciding_pattern(&self, value: &str) -> Option<&str> {
        self.decisive(value).map(|p| p.text.as_str())
    }

    fn decisive(&self, value: &str) -> Option<&Pattern> {
        self.patterns.iter().rev().find(|p| p.matcher.is_match(value))
    }

    /// `["main", "release/**"]`, for messages.
    pub fn display(&self) -> String {
        let items: Vec<String> = self.patterns.iter().map(|p| format!("{:?}", p.text)).collect();
        format!("[{}]", items.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> PatternList {
        let spanned = Spanned::new(
            0..0,
            items
                .iter()
                .map(|s| Spanned::new(0..0, (*s).to_owned()))
                .collect(),
        );
        PatternList::compile(&spanned, false).unwrap()
    }

    #[test]
    fn star_stays_in_a_segment_double_star_crosses() {
        let l = list(&["feature/*"]);
        assert!(l.matches("feature/x"));
        assert!(!l.matches("feature/x/y"));
        let l = list(&["release/**"]);
        assert!(l.matches("release/1.0"));
        assert!(l.matches("release/1.0/hotfix"));
        let l = list(&["**/*.js"]);
        assert!(l.matches("a.js"));
        assert!(l.matches("src/app/a.js"));
        let l = list(&["*.md"]);
        assert!(l.matches("README.md"));
        assert!(!l.matches("docs/a.md"));
    }

    #[test]
    fn later_negation_excludes_and_later_inclusion_readds() {
        let l = list(&["releases/**", "!releases/**-alpha", "releases/**-alpha-keep"]);
        assert!(l.matches("releases/1.0"));
        assert!(!l.matches("releases/1.0-alpha"));
        assert!(l.matches("releases/1.0-alpha-keep"));
    }

    #[test]
    fn only_negations_is_rejected() {
        let spanned = Spanned::new(0..0, vec![Spanned::new(0..0, "!main".to_owned())]);
        assert!(PatternList::compile(&spanned, false).is_err());
    }

    #[test]
    fn invalid_glob_is_an_error() {
        let spanned = Spanned::new(0..0, vec![Spanned::new(3..8, "[main".to_owned())]);
        let (msg, span) = PatternList::compile(&spanned, false).unwrap_err();
        assert!(msg.contains("invalid glob"), "{msg}");
        assert_eq!(span, 3..8);
    }
}
