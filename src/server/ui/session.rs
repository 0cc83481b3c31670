//! Who may use the dashboard, and proof that a button press came from it.
//!
//! With `[admin] token`, the login page trades the token for a session
//! cookie: `<expiry>.<nonce>.<mac>`, an HMAC-SHA256 under a key derived
//! from the token. The cookie holds nothing of the token; changing the
//! token ends every session; replicas with the same config accept each
//! other's cookies. Without a token the dashboard is served only to
//! requests addressed to a loopback name, as the API is, and the key is
//! this process's own.
//!
//! Every POST carries an anti-CSRF token (an HMAC of the session's nonce)
//! and must not come from another site (`Origin`, `Sec-Fetch-Site`).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Config;

/// The session cookie's name.
pub(super) const COOKIE: &str = "hookbridge_session";

/// How long a login lasts.
pub(super) const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The nonce of the session every loopback request shares when no token is
/// configured.
const LOOPBACK: &str = "loopback";

/// The key sessions and CSRF tokens are signed with.
#[derive(Clone)]
pub(super) struct Keys {
    key: [u8; 32],
    /// Whether a login is needed (`[admin] token` is set).
    pub(super) login: bool,
}

impl Keys {
    /// The keys of the live config.
    pub(super) fn of(config: &Config) -> Keys {
        match &config.admin.token {
            Some(token) => Keys {
                key: mac(token.expose().as_bytes(), &[b"hookbridge dashboard session v1"]),
                login: true,
            },
            None => {
                static OWN: OnceLock<[u8; 32]> = OnceLock::new();
                Keys {
                    key: *OWN.get_or_init(rand::random),
                    login: false,
                }
            }
        }
    }

    /// A new session's cookie value, valid for [`LIFETIME`] from `now`.
    pub(super) fn issue(&self, now: SystemTime) -> String {
        let expiry = (now + LIFETIME)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let tag = hex::encode(mac(
            &self.key,
            &[b"session", expiry.to_string().as_bytes(), nonce.as_bytes()],
        ));
        format!("{expiry}.{nonce}.{tag}")
    }

    /// The session a request carries: its nonce, when the cookie is one of
    /// ours and has not expired. Without a login every request shares one.
    pub(super) fn session(&self, headers: &HeaderMap, now: SystemTime) -> Option<String> {
        if !self.login {
            return Some(LOOPBACK.to_owned());
        }
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        cookies(headers).find_map(|value| {
            let mut parts = value.splitn(3, '.');
            let (expiry, nonce, tag) = (parts.next()?, parts.next()?, parts.next()?);
            let tag = hex::decode(tag).ok()?;
            let expected = mac(&self.key, &[b"session", expiry.as_bytes(), nonce.as_bytes()]);
            if !bool::from(expected.as_slice().ct_eq(&tag)) {
                return None;
            }
            (expiry.parse::<u64>().ok()? > now).then(|| nonce.to_owned())
        })
    }

    /// The anti-CSRF token of a session, put in every form.
    pub(super) fn csrf(&self, session: &str) -> String {
        hex::encode(mac(&self.key, &[b"csrf", session.as_bytes()]))
    }

    /// Whether a form's `csrf` field is the session's.
    pub(super) fn csrf_ok(&self, session: &str, given: &str) -> bool {
        self.csrf(session).as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// HMAC-SHA256 of `parts`, each prefixed by its length so that no two
/// different lists sign alike.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

/// The values of our session cookie in the request's `Cookie` headers.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

/// Whether the request reached us over TLS, as a proxy in front says
/// (`X-Forwarded-Proto: https`, `Forwarded: proto=https`): the cookie is
/// then marked `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| {
            first
                .split(';')
                .any(|kv| kv.trim().eq_ignore_ascii_case("proto=https"))
        });
    forwarded_proto || forwarded
}

/// The `Set-Cookie` value that starts a session (`value`) or ends it (`None`).
pub(super) fn set_cookie(value: Option<String>, headers: &HeaderMap) -> String {
    let ending = value.is_none();
    let mut c = Cookie::build((COOKIE, value.unwrap_or_default()))
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_tls(headers));
    c = if ending {
        c.max_age(cookie::time::Duration::ZERO)
    } else {
        c.max_age(cookie::time::Duration::seconds(
            i64::try_from(LIFETIME.as_secs()).unwrap_or(i64::MAX),
        ))
    };
    c.build().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn keys(token: &str) -> Keys {
        Keys {
            key: mac(token.as_bytes(), &[b"hookbridge dashboard session v1"]),
            login: true,
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("other=1; {COOKIE}={value}");
        h.insert(axum::http::header::COOKIE, HeaderValue::from_str(&v).unwrap());
        h
    }

    #[test]
    fn a_session_is_ours_until_it_expires_and_only_under_the_same_token() {
        let now = SystemTime::now();
        let k = keys("s3cret-token");
        let value = k.issue(now);
        assert!(!value.contains("s3cret"));
        let nonce = k.session(&with_cookie(&value), now).unwrap();
        assert_eq!(nonce.len(), 32);
        assert_eq!(k.session(&with_cookie(&value), now + LIFETIME), None);
        assert_eq!(keys("other-token").session(&with_cookie(&value), now), None);
        let forged = format!("9999999999.{nonce}.{}", &value[value.rfind('.').unwrap() + 1..]);
        assert_eq!(k.session(&with_cookie(&forged), now), None);
        assert_eq!(k.session(&HeaderMap::new(), now), None);
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let k = keys("t");
        let t = k.csrf("a");
        assert!(k.csrf_ok("a", &t));
        assert!(!k.csrf_ok("b", &t));
        assert!(!k.csrf_ok("a", ""));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_tls() {
        let mut h = HeaderMap::new();
        let plain = set_cookie(Some("v".into()), &h);
        assert!(
            plain.contains("HttpOnly") && plain.contains("SameSite=Strict"),
            "{plain}"
        );
        assert!(!plain.contains("Secure"), "{plain}");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(set_cookie(Some("v".into()), &h).contains("Secure"));
        assert!(set_cookie(None, &HeaderMap::new()).contains("Max-Age=0"));
    }

    proptest::proptest! {
        #[test]
        fn any_cookie_header_is_read_without_panic(text in "\\PC{0,200}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&text) {
                h.insert(axum::http::header::COOKIE, v);
            }
            let _ = keys("t").session(&h, SystemTime::now());
        }
    }
}
