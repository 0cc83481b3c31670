//! Which parts of a config file's text a diagnostic hides: the values of
//! secret-bearing keys (and of keys named like them), the lines of a secrets
//! list, a URL's userinfo and query.

use std::ops::Range;

use super::edit_distance;

/// Byte ranges of `text` to hide, line by line as [`secret_values`] says,
/// and besides: every value, quoted or bare (`token = abc`, which TOML
/// refuses, and the error shows), after a secret-bearing key, and on the
/// lines of an array such a key opened (`secrets = [` over several lines,
/// one of which the error points at).
pub(super) fn secret_ranges(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut offset = 0;
    // Brackets still open of an array a secret-bearing key opened.
    let mut open = 0i64;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let at = |r: Range<usize>| r.start + offset..r.end + offset;
        if open > 0 {
            out.extend(every_value(content, 0).into_iter().map(at));
            open += brackets(content);
        } else {
            out.extend(secret_values(content).into_iter().map(at));
            if let Some(eq) = content.find('=') {
                let key = content[..eq].trim().trim_matches(['"', '\'']);
                if is_secret_key(key) {
                    out.extend(every_value(content, eq + 1).into_iter().map(at));
                    open = brackets(&content[eq + 1..]).max(0);
                }
            }
        }
        offset += line.len();
    }
    out
}

/// The values in `line` from byte `from` on: quoted strings (inside their
/// quotes, except `env:` and `file:` references) and bare words, up to a
/// comment.
fn every_value(line: &str, from: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => break,
            q @ (b'"' | b'\'') => {
                let close = line[i + 1..].find(q as char).map_or(line.len(), |j| i + 1 + j);
                let value = &line[i + 1..close];
                if !value.is_empty() && !value.starts_with("env:") && !value.starts_with("file:") {
                    out.push(i + 1..close);
                }
                i = close + 1;
            }
            b if b.is_ascii_whitespace() || b",[]{}=".contains(&b) => i += 1,
            _ => {
                let end = line[i..]
                    .find(|c: char| c.is_ascii_whitespace() || ",[]{}#\"'".contains(c))
                    .map_or(line.len(), |j| i + j);
                out.push(i..end);
                i = end;
            }
        }
    }
    out
}

/// How many more `[` than `]` `s` has (a rough count: a bracket inside a
/// quoted value counts too, which can only hide more).
fn brackets(s: &str) -> i64 {
    s.chars().fold(0, |n, c| match c {
        '[' => n + 1,
        ']' => n - 1,
        _ => n,
    })
}

/// Keys whose values are secrets, or may carry one (a store URL's password).
const SECRET_KEYS: &[&str] = &[
    "secrets",
    "signing_secrets",
    "basic_auth",
    "token",
    "api_token",
    "password",
];

/// Byte ranges of `line` to hide whatever the file parsed to (a line of a
/// file TOML cannot parse has no spans): the quoted values (`"…"` or `'…'`)
/// of a secret-bearing key, except `env:`/`file:` references, and the
/// userinfo of a URL (`://user:password@`).
fn secret_values(line: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches(['"', '\'']);
    let secret_key = line.contains('=') && is_secret_key(key);
    let mut rest = 0;
    while let Some(open) = line[rest..].find(['"', '\'']).map(|i| rest + i) {
        let quote = &line[open..open + 1];
        let close = line[open + 1..].find(quote).map_or(line.len(), |i| open + 1 + i);
        let value = &line[open + 1..close];
        let secret_value = secret_key || nearest_key_is_secret(&line[..open]);
        if secret_value && !value.starts_with("env:") && !value.starts_with("file:") && !value.is_empty() {
            out.push(open + 1..close);
        } else if let Some(scheme) = value.find("://") {
            // A URL's userinfo and its query (`?private_token=…`), which
            // may carry credentials.
            if let Some(at) = value.rfind('@')
                && at > scheme + 3
            {
                out.push(open + 1 + scheme + 3..open + 1 + at);
            }
            if let Some(q) = value.find('?')
                && q + 1 < value.len()
            {
                out.push(open + 1 + q + 1..close);
            }
        }
        rest = (close + 1).min(line.len());
        if rest >= line.len() {
            break;
        }
    }
    out
}

/// Whether the key assigned nearest before a value (`before` is the line up
/// to the value's opening quote) is secret-bearing: `secrets` in an inline
/// table (`gh = { type = "github", secrets = "…" }`), or the last part of a
/// dotted key (`sources.gh.secrets = "…"`); an array's later items count
/// for the key that opened it.
fn nearest_key_is_secret(before: &str) -> bool {
    let Some(eq) = before.rfind('=') else { return false };
    let key = before[..eq].trim_end();
    let key = key
        .rsplit([',', '{', ' ', '\t'])
        .next()
        .unwrap_or("")
        .rsplit('.')
        .next()
        .unwrap_or("")
        .trim_matches(['"', '\'']);
    is_secret_key(key)
}

/// Whether the values of `key` are hidden in diagnostics: a secret-bearing
/// key, a misspelling of one (`secret`, `tokn`: an unknown key the error
/// is about), or any key whose name says it holds a credential.
fn is_secret_key(key: &str) -> bool {
    const WORDS: &[&str] = &[
        "secret",
        "token",
        "pass",
        "pwd",
        "auth",
        "credential",
        "private",
        "key",
        "psk",
        "bearer",
    ];
    key.split('.').any(|part| {
        let part = part.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
        SECRET_KEYS.contains(&part.as_str())
            || WORDS.iter().any(|w| part.contains(w))
            || SECRET_KEYS.iter().any(|k| edit_distance(&part, k) <= 2)
    })
}
