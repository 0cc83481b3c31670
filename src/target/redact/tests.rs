#![allow(clippy::unwrap_used)]

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
