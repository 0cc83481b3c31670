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
//! - inside a JSON body, any string that holds the token once decoded
//!   (`\u0053…`): the body is written again with it replaced.
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
        body
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
