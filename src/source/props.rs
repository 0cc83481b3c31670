//! Property tests over every scheme's parsing of sender-controlled headers:
//! whatever the headers and body, `verify` returns (never panics), refuses
//! what it cannot authenticate with a 400 or 401, and accepts what the
//! scheme's own sender signs; `webhook-timestamp` is judged by its distance
//! from now for every `i64` and refused for every other string.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::signature::standard;
use super::{Inbound, Source, VerifyError};
use crate::config::{Config, HmacKey, LoadMode, Secret};

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One source of every type and every authentication variant.
fn every_source() -> Config {
    let toml = format!(
        r#"
[sources.github]
type = "github"
secrets = ["gh-secret", "gh-old"]
[sources.gitlab]
type = "gitlab"
secrets = ["gl-token"]
[sources.gitlab-signed]
type = "gitlab"
signing_secrets = ["{WHSEC}"]
[sources.gitlab-both]
type = "gitlab"
secrets = ["gl-token"]
signing_secrets = ["{WHSEC}"]
[sources.bitbucket]
type = "bitbucket"
secrets = ["bb-secret"]
[sources.bitbucket-dc]
type = "bitbucket"
secrets = ["bb-secret"]
basic_auth = ["user:pass"]
[sources.bitbucket-basic]
type = "bitbucket"
basic_auth = ["user:pass"]
[sources.gitea]
type = "gitea"
secrets = ["gt-secret"]
[sources.forgejo]
type = "forgejo"
secrets = ["fj-secret"]
[sources.gogs]
type = "gogs"
secrets = ["gg-secret"]
[sources.azure]
type = "azure-devops"
secrets = ["user:pass"]
[sources.standard]
type = "standard"
secrets = ["{WHSEC}"]
[sources.circleci]
type = "circleci"
secrets = ["cc-old", "cc-secret"]
[sources.hmac-hex]
type = "hmac"
secrets = ["hm-secret"]
header = "X-Signature"
prefix = "sha1="
algorithm = "sha1"
[sources.hmac-b64]
type = "hmac"
secrets = ["hm-secret"]
header = "X-Signature"
algorithm = "sha512"
encoding = "base64"
"#
    );
    match crate::config::parse(std::path::Path::new("props.toml"), &toml, LoadMode::Check) {
        Ok(loaded) => loaded.config,
        Err(report) => panic!("{report}"),
    }
}

/// Every header a scheme reads credentials or timestamps from.
const CREDENTIAL_HEADERS: &[&str] = &[
    "x-hub-signature-256",
    "x-hub-signature",
    "x-gitlab-token",
    "webhook-signature",
    "webhook-id",
    "webhook-timestamp",
    "svix-signature",
    "svix-id",
    "svix-timestamp",
    "x-gitea-signature",
    "x-forgejo-signature",
    "x-gogs-signature",
    "authorization",
    "x-signature",
    "circleci-signature",
    "content-type",
];

/// Header values shaped like each scheme's, and arbitrary text.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "sha(1|256|512)=[0-9a-fA-F]{0,140}",
        "[0-9a-f]{0,140}",
        "(v1|v1a|v2),[A-Za-z0-9+/=]{0,60}( (v1|v1a),[A-Za-z0-9+/=]{0,60}){0,3}",
        "(Basic|basic|Bearer) [A-Za-z0-9+/=:]{0,40}",
        "(v1|v2|v1 |)=[0-9a-fA-F]{0,70}(, ?(v1|v2)=[0-9a-fA-Fxz]{0,70}){0,3},?",
        "-?[0-9]{0,25}",
        "application/x-www-form-urlencoded(; charset=utf-8)?",
        "[ -~]{0,80}",
    ]
}

fn headers_from(values: &[(usize, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (i, v) in values {
        let name = HeaderName::from_static(CREDENTIAL_HEADERS[i % CREDENTIAL_HEADERS.len()]);
        // Values http cannot carry (control characters) never reach a scheme.
        if let Ok(value) = HeaderValue::from_bytes(v.as_bytes()) {
            map.append(name, value);
        }
    }
    map
}

fn header_map(pairs: Vec<(String, String)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            map.insert(k, v);
        }
    }
    map
}

/// Sources whose credential does not cover the body (tokens, basic auth).
fn signs_body(name: &str) -> bool {
    !matches!(name, "gitlab" | "azure" | "bitbucket-basic")
}

fn sources(config: &Config) -> Vec<&Source> {
    config.sources.values().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_headers_and_bodies_are_refused_without_panicking(
        values in proptest::collection::vec((0usize..64, header_value()), 0..10),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        now_secs in 0u64..=u64::from(u32::MAX),
    ) {
        let config = every_source();
        let headers = headers_from(&values);
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        for source in sources(&config) {
            let inbound = Inbound { headers: &headers, body: &body, now };
            match source.scheme.verify(&inbound) {
                // A random request carries no valid MAC, token or password.
                Ok(_) => prop_assert!(false, "{}: accepted an unsigned request", source.name),
                Err(e) => prop_assert!(
                    matches!(e.status().as_u16(), 400 | 401),
                    "{}: {e} -> {}", source.name, e.status()
                ),
            }
        }
    }

    #[test]
    fn what_a_sender_signs_verifies_and_any_change_does_not(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        flip in any::<prop::sample::Index>(),
        now_secs in 1_000_000u64..=u64::from(u32::MAX),
    ) {
        let config = every_source();
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        for source in sources(&config) {
            let headers = header_map(source.scheme.sign(&body, now).map_err(TestCaseError::fail)?);
            let inbound = Inbound { headers: &headers, body: &body, now };
            prop_assert!(source.scheme.verify(&inbound).is_ok(), "{}: own signature refused", source.name);
            if signs_body(&source.name) && !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 0x01;
                let inbound = Inbound { headers: &headers, body: &tampered, now };
                prop_assert_eq!(
                    source.scheme.verify(&inbound).err(),
                    Some(VerifyError::Mismatch),
                    "{}", source.name
                );
            }
        }
    }

    #[test]
    fn any_i64_timestamp_is_judged_by_its_distance_from_now(
        now_secs in 0u64..=u64::from(u32::MAX) * 4,
        // Near now, anywhere, and near both ends of i64 (where `now - ts` overflows).
        offset in prop_oneof![
            -1_000i64..1_000,
            any::<i64>(),
            i64::MIN..=i64::MIN + 1_000,
            i64::MAX - 1_000..=i64::MAX,
        ],
        absolute in any::<bool>(),
    ) {
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        let now_i = i64::try_from(now_secs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Small offsets are taken from now half of the time; large ones are absolute.
        let relative = !absolute && (-1_000..1_000).contains(&offset);
        let ts = if relative { now_i.saturating_add(offset) } else { offset };
        let tolerance = Duration::from_secs(300);
        let key = HmacKey::from_whsec(&Secret::new(WHSEC)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let body = b"{}";
        let sig = standard::sign(&key, "msg_1", &ts.to_string(), body);
        let result = standard::verify(&[key], "msg_1", &ts.to_string(), &sig, body, now, tolerance);
        let within = now_i.abs_diff(ts) <= tolerance.as_secs();
        if within {
            prop_assert_eq!(result, Ok(()));
        } else {
            let stale = matches!(result, Err(VerifyError::Stale { .. }));
            prop_assert!(stale, "{ts} at {now_i}: {result:?}");
        }
    }

    #[test]
    fn any_timestamp_text_is_refused_or_parsed_within_tolerance(
        text in prop_oneof![
            any::<String>(),
            "[-+]?[0-9]{0,30}",
            "[0-9]{10}(\\.[0-9]{1,3})?",
            " ?-92233720368547758[0-9]{2} ?",
            any::<i64>().prop_map(|t| t.to_string()),
        ],
        now_secs in 0u64..=u64::from(u32::MAX),
    ) {
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        let tolerance = Duration::from_secs(300);
        match standard::check_timestamp(&text, now, tolerance) {
            Ok(ts) => {
                prop_assert_eq!(text.trim().parse::<i64>().ok(), Some(ts));
                prop_assert!(standard::unix_seconds(now).abs_diff(ts) <= 300);
            }
            Err(e) => prop_assert_eq!(e.status().as_u16(), 401),
        }
        // Through both schemes that read the header, with a real signature.
        let config = every_source();
        let key = HmacKey::from_whsec(&Secret::new(WHSEC)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let sig = standard::sign(&key, "msg_1", text.trim(), b"{}");
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        headers.insert("webhook-signature", HeaderValue::try_from(sig).map_err(|e| TestCaseError::fail(e.to_string()))?);
        if let Ok(v) = HeaderValue::from_bytes(text.as_bytes()) {
            headers.insert("webhook-timestamp", v);
        }
        for name in ["standard", "gitlab-signed"] {
            let inbound = Inbound { headers: &headers, body: b"{}", now };
            let accepted = config.sources[name].scheme.verify(&inbound).is_ok();
            let fresh = inbound
                .header("webhook-timestamp")
                .and_then(|t| t.parse::<i64>().ok())
                .is_some_and(|t| standard::unix_seconds(now).abs_diff(t) <= 300);
            prop_assert_eq!(accepted, fresh, "{}: {:?}", name, text);
        }
    }
}

#[test]
fn the_current_time_signs_and_verifies_for_every_scheme() {
    let config = every_source();
    let now = SystemTime::now();
    for source in sources(&config) {
        let headers = header_map(source.scheme.sign(b"{\"a\":1}", now).unwrap_or_default());
        let inbound = Inbound {
            headers: &headers,
            body: b"{\"a\":1}",
            now,
        };
        assert!(source.scheme.verify(&inbound).is_ok(), "{}", source.name);
    }
}
