//! How complex a template, an `if` expression or a glob may be, checked
//! before the template engine or the glob compiler sees it.
//!
//! minijinja parses unary operators (`not not not …`, `- - - x`) by
//! recursion with no limit, builds left-nested trees from operator chains
//! (`a and b and c …`, `x.a.b.c …`), and compiles those trees by recursion:
//! an `if` of 10,000 `not` overflowed the stack and aborted the daemon on a
//! reload. globset turns each `{a,b}` into a regex group and panics when the
//! regex compiler refuses 250 nested groups. Neither library takes a depth
//! limit we can set, so the text is measured here first, over-approximating
//! what the parser would build: when in doubt a construct is counted, so a
//! pattern that passes cannot recurse deeper than the limits in
//! [`crate::config::limits`] allow.

use crate::config::limits;

/// Why a template, expression or glob is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TooComplex {
    #[error(
        "too complex: {0} operators in one expression, at most {max} are allowed",
        max = limits::EXPRESSION_OPERATORS
    )]
    Operators(usize),
    #[error(
        "too complex: brackets nested {0} deep, at most {max} are allowed",
        max = limits::EXPRESSION_NESTING
    )]
    Brackets(usize),
    #[error(
        "too complex: blocks (`{{% if %}}`, `{{% for %}}`, ...) nested {0} deep, at most {max} are allowed",
        max = limits::TEMPLATE_BLOCK_NESTING
    )]
    Blocks(usize),
    #[error(
        "glob too long: {0} characters, at most {max} are allowed",
        max = limits::GLOB_LENGTH
    )]
    GlobLength(usize),
    #[error(
        "glob too complex: `{{...}}` nested {0} deep, at most {max} are allowed",
        max = limits::GLOB_NESTING
    )]
    GlobNesting(usize),
}

/// Check a template source (text with `{{ }}`, `{% %}`, `{# #}`) the way
/// minijinja's lexer splits it: a tag ends at `}}` / `%}` only outside
/// strings and brackets.
pub(crate) fn check_template(source: &str) -> Result<(), TooComplex> {
    let b = source.as_bytes();
    let mut i = 0;
    let mut blocks = 0usize;
    while i + 1 < b.len() {
        if b[i] != b'{' {
            i += 1;
            continue;
        }
        match b[i + 1] {
            b'#' => {
                i = source[i + 2..].find("#}").map_or(b.len(), |j| i + 2 + j + 2);
            }
            b'%' if basic_tag(&b[i + 2..], "raw").is_some() => {
                // Raw text up to `{% endraw %}`, not lexed at all; without
                // one, minijinja stops with an error here.
                match end_of_raw(b, i + 2) {
                    Some(end) => i = end,
                    None => return Ok(()),
                }
            }
            open @ (b'{' | b'%') => {
                let tag = scan_tag(b, i + 2, open == b'%');
                if tag.operators > limits::EXPRESSION_OPERATORS {
                    return Err(TooComplex::Operators(tag.operators));
                }
                if tag.nesting > limits::EXPRESSION_NESTING {
                    return Err(TooComplex::Brackets(tag.nesting));
                }
                let keyword = tag.keyword.map(|(s, e)| &source[s..e]).unwrap_or_default();
                if BLOCK_OPENERS.contains(&keyword) && !(keyword == "set" && tag.assigns) {
                    blocks += 1;
                    if blocks > limits::TEMPLATE_BLOCK_NESTING {
                        return Err(TooComplex::Blocks(blocks));
                    }
                } else if keyword.starts_with("end") {
                    blocks = blocks.saturating_sub(1);
                }
                i = tag.end;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Statements that open a block closed by an `end…` tag (`set` only in its
/// block form, without `=`).
const BLOCK_OPENERS: [&str; 9] = [
    "if",
    "for",
    "with",
    "macro",
    "call",
    "filter",
    "block",
    "autoescape",
    "set",
];

/// The length of `[-+]? ws* name ws* [-+]? %}` at the start of `rest` (what
/// follows a `{%`), as minijinja recognises `raw` and `endraw` tags.
fn basic_tag(rest: &[u8], name: &str) -> Option<usize> {
    let skip_ws = |mut i: usize| {
        while rest.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(usize::from(matches!(rest.first(), Some(b'-' | b'+'))));
    if !rest[i..].starts_with(name.as_bytes()) {
        return None;
    }
    i = skip_ws(i + name.len());
    i += usize::from(matches!(rest.get(i), Some(b'-' | b'+')));
    rest[i..].starts_with(b"%}").then_some(i + 2)
}

/// Index just past the `{% endraw %}` closing the raw block whose content
/// starts at or after `from`.
fn end_of_raw(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(at) = b[i..].windows(2).position(|w| w == b"{%") {
        let after = i + at + 2;
        if let Some(n) = basic_tag(&b[after..], "endraw") {
            return Some(after + n);
        }
        i = after;
    }
    None
}

/// Keywords that are operators in an expression.
const KEYWORD_OPERATORS: [&str; 7] = ["not", "and", "or", "in", "is", "if", "else"];

/// What one tag holds.
struct Tag {
    /// Index just past the tag's end marker (or the end of the text).
    end: usize,
    operators: usize,
    /// Deepest bracket nesting.
    nesting: usize,
    /// The first word of a `{% %}` tag (the statement), as a byte range.
    keyword: Option<(usize, usize)>,
    /// Whether the tag has an `=` outside strings (`{% set x = 1 %}`).
    assigns: bool,
}

fn scan_tag(b: &[u8], start: usize, statement: bool) -> Tag {
    let mut tag = Tag {
        end: b.len(),
        operators: 0,
        nesting: 0,
        keyword: None,
        assigns: false,
    };
    // Signed, as in minijinja: a stray closer keeps the tag open.
    let mut balance: isize = 0;
    let mut first_word = statement;
    let mut i = start;
    // Whitespace control (`{%-`, `{{+`) is not an operator.
    if matches!(b.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    while i < b.len() {
        let rest = &b[i..];
        if balance == 0 {
            let ends: &[&[u8]] = if statement {
                &[b"%}", b"-%}", b"+%}"]
            } else {
                &[b"}}", b"-}}"]
            };
            if let Some(marker) = ends.iter().find(|m| rest.starts_with(m)) {
                tag.end = i + marker.len();
                return tag;
            }
        }
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'\'' | b'"' => i = skip_string(b, i),
            c if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 => {
                let word_end = rest
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
                    .map_or(b.len(), |n| i + n);
                let word = &b[i..word_end];
                if first_word {
                    // The statement (`if`, `for`): counted as a block, not an operator.
                    tag.keyword = Some((i, word_end));
                } else if KEYWORD_OPERATORS.iter().any(|k| k.as_bytes() == word) {
                    tag.operators += 1;
                }
                i = word_end;
            }
            b'(' | b'[' | b'{' => {
                balance += 1;
                tag.nesting = tag.nesting.max(usize::try_from(balance).unwrap_or(0));
                tag.operators += 1;
                i += 1;
            }
            b')' | b']' | b'}' => {
                balance -= 1;
                i += 1;
            }
            b',' | b':' => i += 1,
            _ => {
                // `.`, `|`, `+`, `-`, `==`, `~`, ...: each character counts.
                tag.assigns |= c == b'=';
                tag.operators += 1;
                i += 1;
            }
        }
        first_word = false;
    }
    tag
}

/// Index just past the string literal starting at `start` (its quote).
fn skip_string(b: &[u8], start: usize) -> usize {
    let quote = b[start];
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// Check one glob pattern: its length and how deeply `{}` nest (a
/// backslash escapes the next character, as the compiler is told).
pub(crate) fn check_glob(pattern: &str) -> Result<(), TooComplex> {
    let length = pattern.chars().count();
    if length > limits::GLOB_LENGTH {
        return Err(TooComplex::GlobLength(length));
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > limits::GLOB_NESTING {
        return Err(TooComplex::GlobNesting(deepest));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
