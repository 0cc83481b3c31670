//! Hiding the token that was sent from whatever comes back.
//!
//! A CI API or a proxy in front of it may echo the request: in its error
//! body, in a redirect's `Location`, as a JSON string that escapes it, as a
//! query parameter or a `Basic` credential. Whatever is recorded or logged
//! of an answer (its body, its headers, the reason derived from them) passes
//! through one [`Redactor`] built from the token, which replaces every form
//! of it that it knows by `***`:
//! - as sent, and as a JSON string writes it (with `/` as is or as `\/`);
//! - percent-encoded, with upper- or lower-case hex (`/` encoded or kept);
//! - base64, standard or URL-safe alphabet, at any of the three alignments
//!   (what lies inside a longer encoded text, such as `user:token` in a
//!   `Basic` credential): the run of characters that depends on the
//!   token's bytes alone;
//! - hex-encoded (lower or upper case);
//! - escaped in any mix of JSON escapes (`\u0053`, `\/`), percent-encoding
//!   (`%53`) and HTML character references (`&#83;`, `&#x53;`), in any
//!   text, parseable or not: the escapes are decoded in a copy that maps
//!   back to the original, and the runs that decode to the token are
//!   replaced;
//! - inside a JSON body, any string that holds the token once decoded:
//!   the body is written again with it replaced.
//!
//! A token shorter than [`TOKEN_ANYWHERE`] (a test token such as `t`) is
//! replaced only where it stands alone, not inside a word, and only as sent
//! or JSON-escaped; its base64 forms only from [`BASE64_FROM`] characters
//! on, shorter ones being too short to tell from text.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// A token this long is replaced wherever it appears, and percent-encoded.
pub const TOKEN_ANYWHERE: usize = 8;
/// A token this long is replaced base64-encoded too.
pub const BASE64_FROM: usize = 16;

/// RFC 3986's unreserved characters stay; everything else is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// As [`COMPONENT`], keeping `/` (Python's `quote`, path encoders).
const PATH: &AsciiSet = &COMPONENT.remove(b'/');

/// Every form of one token, longest first.
pub struct Redactor {
    token: String,
    forms: Vec<Vec<u8>>,
}

impl Redactor {
    pub fn new(token: &str) -> Redactor {
        let mut forms: Vec<Vec<u8>> = Vec::new();
        if !token.is_empty() {
            let quoted = serde_json::to_string(token).unwrap_or_default();
            let escaped = quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or(token)
                .to_owned();
            forms.push(escaped.replace('/', "\\/").into_bytes());
            forms.push(escaped.into_bytes());
            forms.push(token.as_bytes().to_vec());
            if token.len() >= TOKEN_ANYWHERE {
                let hex = hex::encode(token);
                forms.push(hex.to_ascii_uppercase().into_bytes());
                forms.push(hex.into_bytes());
                for set in [COMPONENT, PATH] {
                    let upper = utf8_percent_encode(token, set).to_string();
                    forms.push(upper.to_ascii_lowercase_hex().into_bytes());
                    forms.push(upper.into_bytes());
                }
            }
            if token.len() >= BASE64_FROM {
                forms.extend(base64_cores(token.as_bytes()));
            }
            forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
            forms.dedup();
        }
        Redactor {
            token: token.to_owned(),
            forms,
        }
    }

    /// `text` with every form of the token replaced.
    pub fn text(&self, text: &str) -> String {
        match String::from_utf8(self.bytes_flat(text.as_bytes().to_vec())) {
            Ok(s) => s,
            // Unreachable (only ASCII `***` replaces whole UTF-8 runs), but a
            // lossy copy is still scrubbed text.
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// A body with every form of the token replaced; a JSON body whose
    /// strings hold the token once decoded is written again without it.
    pub fn bytes(&self, body: Vec<u8>) -> Vec<u8> {
        let body = self.bytes_flat(body);
        if self.token.is_empty() {
            return body;
        }
        let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return body;
        };
        if self.json(&mut value) {
            serde_json::to_vec(&value).unwrap_or(body)
        } else {
            body
        }
    }

    /// Header values with every form of the token replaced (a value that is
    /// no longer a valid header value is dropped).
    pub fn headers(&self, headers: http::HeaderMap) -> http::HeaderMap {
        let mut out = http::HeaderMap::with_capacity(headers.len());
        let mut name = None;
        for (k, v) in headers {
            if let Some(k) = k {
                name = Some(k);
            }
            let Some(name) = name.clone() else { continue };
            let scrubbed = self.bytes_flat(v.as_bytes().to_vec());
            if scrubbed == v.as_bytes() {
                out.append(name, v);
            } else if let Ok(v) = http::HeaderValue::from_bytes(&scrubbed) {
                out.append(name, v);
            }
        }
        out
    }

    fn json(&self, value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => self.string(s),
            serde_json::Value::Array(items) => items.iter_mut().fold(false, |any, v| self.json(v) | any),
            serde_json::Value::Object(map) => {
                let mut any = false;
                let keys: Vec<String> = map.keys().filter(|k| self.holds(k)).cloned().collect();
                for key in keys {
                    if let Some(v) = map.remove(&key) {
                        map.insert(self.text(&key), v);
                        any = true;
                    }
                }
                map.values_mut().fold(any, |any, v| self.json(v) | any)
            }
            _ => false,
        }
    }

    fn string(&self, s: &mut String) -> bool {
        if self.holds(s) {
            *s = self.text(s);
            true
        } else {
            false
        }
    }

    fn holds(&self, s: &str) -> bool {
        self.text(s) != s
    }

    fn bytes_flat(&self, mut body: Vec<u8>) -> Vec<u8> {
        let anywhere = self.token.len() >= TOKEN_ANYWHERE;
        let alone = |b: Option<&u8>| b.is_none_or(|b| !b.is_ascii_alphanumeric());
        for form in &self.forms {
            if form.is_empty() || !contains(&body, form) {
                continue;
            }
            let mut out = Vec::with_capacity(body.len());
            let mut at = 0;
            while at < body.len() {
                let is_match = body[at..].starts_with(form)
                    && (anywhere
                        || (alone(at.checked_sub(1).and_then(|i| body.get(i)))
                            && alone(body.get(at + form.len()))));
                if is_match {
                    out.extend_from_slice(b"***");
                    at += form.len();
                } else {
                    out.push(body[at]);
                    at += 1;
                }
            }
            body = out;
        }
        if anywhere {
            body = self.escaped(body);
        }
        body
    }

    /// `body` with every escaped run that decodes to the token replaced.
    fn escaped(&self, body: Vec<u8>) -> Vec<u8> {
        let token = self.token.as_bytes();
        let Some((plain, spans)) = unescape(&body) else {
            return body;
        };
        let mut cut: Vec<(usize, usize)> = Vec::new();
        let mut at = 0;
        while let Some(i) = plain.get(at..).and_then(|rest| find(rest, token)).map(|i| at + i) {
            let (Some(first), Some(last)) = (spans.get(i), spans.get(i + token.len() - 1)) else {
                break;
            };
            cut.push((first.0, last.1));
            at = i + token.len();
        }
        if cut.is_empty() {
            return body;
        }
        let mut out = Vec::with_capacity(body.len());
        let mut from = 0;
        for (start, end) in cut {
            if start < from {
                continue;
            }
            out.extend_from_slice(&body[from..start]);
            out.extend_from_slice(b"***");
            from = end;
        }
        out.extend_from_slice(&body[from..]);
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where each decoded byte came from: a range of the original.
type Spans = Vec<(usize, usize)>;

/// `body` with JSON escapes, percent-encoding and HTML numeric character
/// references decoded, and for each decoded byte the span of `body` it came
/// from; `None` when there is nothing to decode.
fn unescape(body: &[u8]) -> Option<(Vec<u8>, Spans)> {
    if !body.iter().any(|b| matches!(b, b'\\' | b'%' | b'&')) {
        return None;
    }
    let mut plain = Vec::with_capacity(body.len());
    let mut spans = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let (bytes, len) = escape_at(body, i).unwrap_or_else(|| (vec![body[i]], 1));
        for b in bytes {
            plain.push(b);
            spans.push((i, i + len));
        }
        i += len;
    }
    Some((plain, spans))
}

/// The escape starting at `i`, if one does: what it stands for, and its length.
fn escape_at(body: &[u8], i: usize) -> Option<(Vec<u8>, usize)> {
    let rest = body.get(i..)?;
    let hex = |digits: &[u8]| -> Option<u32> {
        let text = std::str::from_utf8(digits).ok()?;
        u32::from_str_radix(text, 16).ok()
    };
    let utf8 = |c: char| c.to_string().into_bytes();
    match rest {
        [b'\\', b'u', ..] => {
            let unit = hex(rest.get(2..6)?)?;
            if (0xD800..0xDC00).contains(&unit) {
                // A surrogate pair: `\uD83D\uDE00`.
                let low = match rest.get(6..8) {
                    Some(b"\\u") => hex(rest.get(8..12)?)?,
                    _ => return None,
                };
                let c = char::decode_utf16([unit as u16, low as u16]).next()?.ok()?;
                return Some((utf8(c), 12));
            }
            Some((utf8(char::from_u32(unit)?), 6))
        }
        [b'\\', c, ..] => {
            let b = match c {
                b'"' | b'\\' | b'/' => *c,
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                _ => return None,
            };
            Some((vec![b], 2))
        }
        [b'%', a, b, ..] => Some((vec![u8::try_from(hex(&[*a, *b])?).ok()?], 3)),
        [b'&', b'#', ..] => {
            let end = rest.iter().take(12).position(|b| *b == b';')?;
            let number = rest.get(2..end)?;
            let code = match number.first() {
                Some(b'x' | b'X') => hex(number.get(1..)?)?,
                _ => std::str::from_utf8(number).ok()?.parse().ok()?,
            };
            Some((utf8(char::from_u32(code)?), end + 1))
        }
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

trait LowerHex {
    fn to_ascii_lowercase_hex(&self) -> String;
}

impl LowerHex for String {
    /// The `%XX` escapes with lower-case hex digits, the rest unchanged.
    fn to_ascii_lowercase_hex(&self) -> String {
        let mut out = String::with_capacity(self.len());
        let mut hex = 0;
        for c in self.chars() {
            if c == '%' {
                hex = 2;
                out.push(c);
            } else if hex > 0 {
                hex -= 1;
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// For each alignment of `token` in a longer byte string (0, 1 or 2 bytes
/// before it in its 3-byte group) and each alphabet, the base64 characters
/// that encode only the token's own bytes: whole groups, 4 characters for 3
/// bytes, which any base64 text holding the token at that alignment contains.
fn base64_cores(token: &[u8]) -> Vec<Vec<u8>> {
    let mut cores = Vec::new();
    for lead in 0..3usize {
        let mut padded = vec![0u8; lead];
        padded.extend_from_slice(token);
        let first = lead.div_ceil(3);
        let end = padded.len() / 3;
        if end <= first {
            continue;
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&padded);
            if let Some(core) = encoded.get(first * 4..end * 4) {
                cores.push(core.as_bytes().to_vec());
            }
        }
    }
    cores
}

#[cfg(test)]
mod tests;
