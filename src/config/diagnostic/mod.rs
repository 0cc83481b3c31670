//! Config diagnostics: a message tied to a place in the file, rendered the way
//! compilers do (`--> file:line:col`, the line, a caret under the span).

mod mask;

use mask::secret_ranges;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How bad a diagnostic is. Warnings never stop `serve`; errors always do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a config file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// Byte range in the file; `None` for findings about the file as a whole.
    pub span: Option<Range<usize>>,
    /// A hint on how to fix it, printed after the snippet.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
            span,
            help: None,
        }
    }

    pub fn warning(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Self {
            severity: Severity::Warning,
            message: message.into(),
            span,
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Line and column (both 1-based, column counted in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// A set of diagnostics for one file, with the text needed to render snippets.
#[derive(Clone)]
pub struct Report {
    pub path: PathBuf,
    pub text: String,
    pub diagnostics: Vec<Diagnostic>,
    /// Byte ranges of the text that hold secrets (literal secrets, a store
    /// URL's password): a snippet shows `***` in their place.
    sensitive: Vec<Range<usize>>,
}

/// The file's text may hold literal secrets (a warning, not an error), so
/// `Debug` (reached from `{:?}` of a loaded config) prints only its length.
impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("path", &self.path)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("diagnostics", &self.diagnostics)
            .finish()
    }
}

impl Report {
    pub fn new(path: &Path, text: &str) -> Self {
        Self {
            path: path.to_path_buf(),
            text: text.to_owned(),
            diagnostics: Vec::new(),
            sensitive: Vec::new(),
        }
    }

    /// Never show `range` of the text in a snippet.
    pub fn mark_sensitive(&mut self, range: Range<usize>) {
        self.sensitive.push(range);
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    /// Render one diagnostic with its location and snippet.
    pub fn render(&self, d: &Diagnostic) -> String {
        let mut out = String::new();
        let label = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("{label}: {}\n", self.masked_message(&d.message)));
        match &d.span {
            Some(span) => {
                let (line, col) = line_col(&self.text, span.start);
                out.push_str(&format!("  --> {}:{line}:{col}\n", self.path.display()));
                let line_start = self
                    .text
                    .get(..span.start)
                    .and_then(|before| before.rfind('\n'))
                    .map_or(0, |i| i + 1);
                let line_text = self.text.lines().nth(line - 1).unwrap_or("");
                let gutter = line.to_string().len();
                let pad = " ".repeat(gutter);
                // The caret covers the span, clipped to the first line.
                let span_text = self.text.get(span.clone()).unwrap_or("");
                let first = span_text.split('\n').next().unwrap_or("");
                let width = first.chars().count().max(1);
                let (line_text, col, width) = self.masked(line_text, line_start, col, width);
                let (shown, col, width) = snippet(&line_text, col, width);
                out.push_str(&format!("{pad} |\n{line} | {shown}\n"));
                out.push_str(&format!("{pad} | {}{}\n", " ".repeat(col - 1), "^".repeat(width)));
            }
            None => out.push_str(&format!("  --> {}\n", self.path.display())),
        }
        if let Some(help) = &d.help {
            out.push_str(&format!("  = help: {help}\n"));
        }
        out
    }

    /// `message` with every secret of the file in it shown as `***`. A
    /// parser's message may quote a value (`invalid type: string "…",
    /// expected a sequence` for `secrets = "…"`): quoted, a secret is hidden
    /// whatever its length; bare, from 8 characters on (shorter ones would
    /// hide pieces of ordinary words).
    fn masked_message(&self, message: &str) -> String {
        let mut secrets: Vec<&str> = self
            .sensitive
            .iter()
            .filter_map(|r| self.text.get(r.clone()))
            .map(|s| s.trim_matches(['"', '\'']))
            .collect();
        secrets.extend(
            secret_ranges(&self.text)
                .into_iter()
                .filter_map(|r| self.text.get(r)),
        );
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a secret that contains another is hidden whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = message.to_owned();
        for secret in secrets {
            for quoted in [
                format!("{secret:?}"),
                format!("\"{secret}\""),
                format!("'{secret}'"),
            ] {
                out = out.replace(&quoted, "\"***\"");
            }
            if secret.chars().count() >= 8 {
                out = out.replace(secret, "***");
            }
        }
        out
    }

    /// `line` (starting at byte `line_start` of the text) with every
    /// sensitive range, and every value of a secret-bearing key, shown as
    /// `***`; the caret's column and width moved to match.
    fn masked(&self, line: &str, line_start: usize, col: usize, width: usize) -> (String, usize, usize) {
        let line_end = line_start + line.len();
        let mut hidden: Vec<Range<usize>> = self
            .sensitive
            .iter()
            .chain(secret_ranges(&self.text).iter())
            .filter(|r| r.start < line_end && r.end > line_start)
            .map(|r| r.start.max(line_start) - line_start..r.end.min(line_end) - line_start)
            .filter(|r| line.is_char_boundary(r.start) && line.is_char_boundary(r.end))
            .collect();
        hidden.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::new();
        for r in hidden {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        let mut chars: Vec<char> = line.chars().collect();
        let (mut start, mut end) = (col - 1, col - 1 + width);
        // Right to left, so the character positions of the ranges still to do hold.
        for r in merged.iter().rev() {
            let from = line[..r.start].chars().count();
            let to = line[..r.end].chars().count();
            chars.splice(from..to, "***".chars());
            let moved = |p: usize, inside: usize| match p {
                p if p <= from => p,
                p if p < to => inside,
                p => p - (to - from) + 3,
            };
            start = moved(start, from);
            end = moved(end, from + 3);
        }
        let shown: String = chars.into_iter().collect();
        (shown, start + 1, end.saturating_sub(start).max(1))
    }
}

/// Characters of a source line shown in a snippet.
const SNIPPET_WIDTH: usize = 100;

/// The part of `line` to show, and where the caret goes in it: a long line
/// (an `if` of 10,000 `not`) is cut to a window starting a little before the
/// span, with `…` where text was left out.
fn snippet(line: &str, col: usize, width: usize) -> (String, usize, usize) {
    let length = line.chars().count();
    if length <= SNIPPET_WIDTH {
        return (line.to_owned(), col, width);
    }
    // From the line's start when the span starts early; else a little before it.
    let start = if col <= SNIPPET_WIDTH / 2 { 0 } else { col - 11 };
    let end = (start + SNIPPET_WIDTH).min(length);
    let mut shown: String = line.chars().skip(start).take(end - start).collect();
    let mut col = col - start;
    if start > 0 {
        shown.insert(0, '…');
        col += 1;
    }
    if end < length {
        shown.push('…');
    }
    // The caret stops at the end of what is shown.
    let width = width.min(shown.chars().count().saturating_sub(col - 1)).max(1);
    (shown, col, width)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for d in self.errors().chain(self.warnings()) {
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{}", self.render(d))?;
        }
        Ok(())
    }
}

impl std::error::Error for Report {}

/// "Did you mean" for a misspelled name: the closest candidate within a small edit distance.
pub fn suggest<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(given, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1) + 1 && *d > 0)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 6));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(suggest("circle", ["circleci", "gitlab"]), Some("circleci"));
        assert_eq!(suggest("zzz", ["circleci", "gitlab"]), None);
    }

    proptest::proptest! {
        /// Whatever the line around it and wherever the diagnostic points,
        /// a marked secret is never rendered, and rendering never panics.
        #[test]
        fn a_marked_secret_is_never_rendered(
            key in "[a-z_]{1,12}",
            secret in "[A-Za-z0-9]{12,20}",
            before in "[ -~é]{0,40}",
            after in "[ -~é]{0,40}",
            at in 0usize..200,
            width in 0usize..80,
        ) {
            let line = format!("{before}{key} = \"{secret}\" {after}");
            let text = format!("[a]\n{line}\nnext = 1\n");
            let start = text.find(&secret).unwrap() - 1;
            let mut r = Report::new(Path::new("x.toml"), &text);
            r.mark_sensitive(start..start + secret.len() + 2);
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            r.push(Diagnostic::error("somewhere", Some(at..(at + width).min(text.len()))));
            let out = r.to_string();
            proptest::prop_assert!(!out.contains(&secret), "{out}");
        }
    }

    #[test]
    fn long_lines_are_cut_around_the_span() {
        let line = format!("{}if = \"{}x\"", "a".repeat(200), "not ".repeat(10_000));
        let mut r = Report::new(Path::new("x.toml"), &format!("[a]\n{line}\n"));
        let start = 4 + 205;
        r.push(Diagnostic::error("too complex", Some(start..start + 40_002)));
        let out = r.to_string();
        assert!(out.contains("--> x.toml:2:206"), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[3], format!("2 | …aaaaaif = \"{}n…", "not ".repeat(22)));
        assert_eq!(lines[4], format!("  | {}{}", " ".repeat(11), "^".repeat(91)));
        assert!(out.len() < 400, "{out}");
    }

    #[test]
    fn renders_caret_under_span() {
        let mut r = Report::new(Path::new("x.toml"), "[a]\nkey = \"bad\"\n");
        r.push(Diagnostic::error("bad value", Some(10..15)));
        let out = r.to_string();
        assert!(out.contains("--> x.toml:2:7"), "{out}");
        assert!(out.contains("  |       ^^^^^"), "{out}");
    }
}
