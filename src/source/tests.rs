//! Unit tests of the shared source helpers: form decoding, delivery ids, verified payloads.

use proptest::prelude::*;

use super::*;

fn form(body: &[u8]) -> Result<Vec<u8>, VerifyError> {
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    Inbound::new(&h, body).form_payload()
}

proptest! {
    #[test]
    fn delivery_ids_are_kept_only_when_usable(id in "\\PC{0,300}|[\\x00-\\x7f]{0,40}") {
        match check_delivery_id(&id) {
            Ok(()) => {
                prop_assert!(!id.trim().is_empty() && id.len() <= MAX_DELIVERY_ID);
                prop_assert!(!id.chars().any(char::is_control));
            }
            Err(e) => prop_assert!(!e.to_string().contains(&id) || id.trim().is_empty()),
        }
    }
}

#[test]
fn real_delivery_ids_are_usable() {
    for id in [
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "{7c9f6bd0-7a4e-4f4a-8f0e-35a4b2b63a11}",
    ] {
        assert!(check_delivery_id(id).is_ok(), "{id}");
    }
    assert!(check_delivery_id(&"a".repeat(257)).is_err());
    assert!(check_delivery_id("a\nb").is_err());
    assert!(check_delivery_id(" ").is_err());
}

#[test]
fn form_payload_keeps_the_bytes_the_sender_encoded() {
    assert_eq!(form(b"a=1&payload=%7B%22x%22%3A+1%7D").unwrap(), br#"{"x": 1}"#);
    // Invalid UTF-8 stays invalid for `require_utf8` to refuse, not U+FFFD.
    let raw = form(b"payload=%7B%22x%22%3A%22%FF%22%7D").unwrap();
    assert_eq!(raw, b"{\"x\":\"\xff\"}");
    assert_eq!(
        require_utf8(&raw).unwrap_err().to_string(),
        "payload is not valid UTF-8 (the first invalid byte is at offset 6); webhook payloads are JSON, which is always UTF-8"
    );
    assert_eq!(form(b"pay=x&payloads=y"), Err(VerifyError::NoFormPayload));
    assert_eq!(form(b"payload").unwrap(), b"");
}

/// Form bodies made of the pieces that matter: names, separators, escapes
/// (valid, truncated, non-UTF-8) and arbitrary bytes.
fn form_body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"payload".to_vec()),
        Just(b"pay%6Coad".to_vec()),
        Just(b"=".to_vec()),
        Just(b"&".to_vec()),
        Just(b"+".to_vec()),
        Just(b"%".to_vec()),
        Just(b"%FF".to_vec()),
        "%[0-9a-fA-F]{2}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

proptest! {
    /// For any form body, the `payload` field decodes like `form_urlencoded`
    /// whenever that decoding is lossless (valid UTF-8), and never panics.
    #[test]
    fn form_payload_agrees_with_form_urlencoded(body in form_body()) {
        let ours = form(&body);
        let theirs = form_urlencoded::parse(&body).find(|(k, _)| k == "payload").map(|(_, v)| v.into_owned());
        match (ours, theirs) {
            (Ok(bytes), Some(text)) => {
                if let Ok(s) = std::str::from_utf8(&bytes) {
                    prop_assert_eq!(s, text);
                }
            }
            (Err(VerifyError::NoFormPayload), None) => {}
            // A key that only decodes to `payload` lossily is not `payload`.
            (Err(VerifyError::NoFormPayload), Some(_)) => {}
            (ours, theirs) => prop_assert!(false, "{ours:?} vs {theirs:?}"),
        }
    }

    #[test]
    fn require_utf8_accepts_exactly_utf8(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert_eq!(require_utf8(&bytes).is_ok(), std::str::from_utf8(&bytes).is_ok());
    }

    #[test]
    fn encoded_text_round_trips(text in any::<String>()) {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &text)
            .finish();
        prop_assert_eq!(form(body.as_bytes()).unwrap(), text.into_bytes());
    }
}

/// Credential headers a proxy or another sender may add never reach rules,
/// templates or the store; ordinary headers do.
#[test]
fn credential_headers_are_not_visible() {
    let source = Source {
        name: "gh".into(),
        kind: SourceKind::Github,
        scheme: Box::new(crate::source::github::GitHub::with_secrets(&[
            crate::config::Secret::new("s"),
        ])),
    };
    let mut h = HeaderMap::new();
    for name in [
        "authorization",
        "x-forwarded-authorization",
        "private-token",
        "circle-token",
        "x-api-key",
        "x-auth-token",
        "x-access-token",
        "cookie",
        "x-hub-signature-256",
        "job-token",
        "set-cookie",
    ] {
        h.insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static("credential-value"),
        );
    }
    h.insert("x-github-event", http::HeaderValue::from_static("push"));
    let visible = source.visible_headers(&h);
    assert_eq!(visible.keys().collect::<Vec<_>>(), ["x-github-event"]);
}
