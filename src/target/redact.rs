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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOKEN: &str = "SECRET+canary/CCX9=tok";

    fn gone(r: &Redactor, text: &str) -> bool {
        !text.contains(TOKEN) && !r.text(text).contains("canary")
    }

    #[test]
    fn every_encoding_of_a_long_token_is_replaced() {
        let r = Redactor::new(TOKEN);
        let basic = STANDARD_NO_PAD.encode(format!("{TOKEN}:"));
        let user_basic = STANDARD_NO_PAD.encode(format!("ci:{TOKEN}"));
        let shifted = STANDARD_NO_PAD.encode(format!("x{TOKEN}"));
        let url_safe = URL_SAFE_NO_PAD.encode(format!("ab{TOKEN}"));
        for echo in [
            TOKEN.to_owned(),
            "SECRET+canary\\/CCX9=tok".to_owned(),
            "SECRET%2Bcanary%2FCCX9%3Dtok".to_owned(),
            "SECRET%2bcanary%2fCCX9%3dtok".to_owned(),
            "SECRET%2Bcanary/CCX9%3Dtok".to_owned(),
            basic,
            user_basic,
            shifted,
            url_safe,
        ] {
            let out = r.text(&format!("Location: https://ci/login?t={echo}&x=1"));
            assert!(out.contains("***"), "{echo}: {out}");
            // What is left of an encoded token is at most a few characters
            // of its edges, never a decodable run of it.
            let decoded_left = out.replace("***", "");
            assert!(!decoded_left.contains(&echo), "{echo}: {out}");
            assert!(gone(&r, &out), "{echo}: {out}");
        }
    }

    #[test]
    fn a_json_string_that_decodes_to_the_token_is_written_again_without_it() {
        let r = Redactor::new("glptt-SecretToken123");
        let escaped: String = "glptt-SecretToken123"
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let body = format!(r#"{{"message":"bad token {escaped}","n":1}}"#);
        let out = String::from_utf8(r.bytes(body.into_bytes())).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["message"], "bad token ***");
        assert_eq!(v["n"], 1);
        // Keys too.
        let out = r.bytes(format!(r#"{{"{escaped}":true}}"#).into_bytes());
        assert_eq!(out, br#"{"***":true}"#);
    }

    #[test]
    fn escaped_runs_are_replaced_in_any_text() {
        let token = "CCtok+long/Spec=ial-_.Z9q";
        let r = Redactor::new(token);
        let unicode: String = token.chars().map(|c| format!("\\u{:04X}", c as u32)).collect();
        let mixed: String = token
            .chars()
            .enumerate()
            .map(|(i, c)| match i % 3 {
                0 => format!("%{:02x}", c as u32),
                1 => format!("&#{};", c as u32),
                _ => c.to_string(),
            })
            .collect();
        let every_byte: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
        for echo in [
            unicode,
            mixed,
            every_byte,
            hex::encode(token),
            hex::encode_upper(token),
        ] {
            // Not JSON: a duplicate key, trailing data, a cut-off body.
            for body in [
                format!(r#"{{"message":"bad {echo}","message":"x"}} trailing"#),
                format!("<script>var t = \"{echo}\"; </script"),
            ] {
                let out = r.text(&body);
                assert!(out.contains("***"), "{echo}: {out}");
                assert!(!out.contains(&echo), "{echo}: {out}");
            }
        }
        // Escapes that decode to other text are kept as they are.
        let body = r#"{"path":"a%2Fb","x":"\u00e9&#233;"}"#;
        assert_eq!(r.text(body), body);
    }

    #[test]
    fn header_values_are_scrubbed_and_kept_in_order() {
        let r = Redactor::new(TOKEN);
        let mut h = http::HeaderMap::new();
        h.append("location", format!("https://ci/x?t={TOKEN}").parse().unwrap());
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        let out = r.headers(h);
        assert_eq!(out["location"], "https://ci/x?t=***");
        let cookies: Vec<_> = out.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn text_without_the_token_is_untouched() {
        let r = Redactor::new(TOKEN);
        let body = br#"{"message":"Project not found","b64":"aGVsbG8gd29ybGQ="}"#.to_vec();
        assert_eq!(r.bytes(body.clone()), body);
        let short = Redactor::new("t");
        assert_eq!(short.text("a token t."), "a token ***.");
        assert_eq!(short.text("tt"), "tt");
        // From 8 characters on, anywhere: inside a word too.
        let eight = Redactor::new("tok-ABCDEF123");
        assert_eq!(eight.text("aaaatok-ABCDEF123bbb"), "aaaa***bbb");
        assert_eq!(Redactor::new("tok-ABC").text("xtok-ABCx"), "xtok-ABCx");
    }

    proptest::proptest! {
        /// Any bytes, any token: an answer, never a panic; the token as sent
        /// is never left in what comes back.
        #[test]
        fn any_body_any_token(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), token in "[ -~]{8,24}") {
            let r = Redactor::new(&token);
            let out = r.bytes(body.clone());
            proptest::prop_assert!(find(&out, token.as_bytes()).is_none());
            let with = [body.as_slice(), token.as_bytes(), body.as_slice()].concat();
            proptest::prop_assert!(find(&r.bytes(with), token.as_bytes()).is_none());
        }

        /// A long token, percent-encoded or base64-encoded inside any text,
        /// leaves no run of its encoding behind; nothing panics.
        #[test]
        fn encoded_tokens_are_replaced(
            token in "[ -~]{16,40}",
            before in "[ -~]{0,8}",
            after in "[ -~]{0,8}",
        ) {
            let r = Redactor::new(&token);
            let pct = utf8_percent_encode(&token, COMPONENT).to_string();
            let b64 = STANDARD_NO_PAD.encode(format!("{before}{token}{after}"));
            for echo in [pct.clone(), pct.to_ascii_lowercase_hex(), b64.clone()] {
                let out = r.text(&format!("<{echo}>"));
                proptest::prop_assert!(out.contains("***"), "{echo} -> {out}");
            }
            // The longest run of the base64 text left is shorter than the
            // token's own core at this alignment.
            let out = r.text(&b64);
            let longest = out.split("***").map(str::len).max().unwrap_or(0);
            proptest::prop_assert!(longest < b64.len(), "{b64} -> {out}");
        }
    }
}
