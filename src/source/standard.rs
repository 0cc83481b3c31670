//! Standard Webhooks (Svix and adopters): `webhook-id`, `webhook-timestamp`,
//! `webhook-signature` (space-separated `v1,<base64>` entries), `whsec_` keys,
//! and a timestamp tolerance against replays. Svix's `svix-*` header names are
//! accepted too. The event name is the body's `type`, by convention.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use super::signature::standard;
use super::{DescribeError, Inbound, Scheme, Verified, VerifyError, parse, required_secrets, whsec_keys};
use crate::config::loader::Loader;
use crate::config::raw::RawSource;
use crate::config::secret::HmacKey;
use crate::event::{Event, Provider};

pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Standard {
    /// The decoded `whsec_` keys; any one of them verifies (rotation).
    keys: Vec<HmacKey>,
    tolerance: Duration,
}

impl Standard {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let secrets = required_secrets(name, "secrets", raw.secrets.as_ref(), raw.kind.span(), loader);
        Standard {
            keys: whsec_keys(name, &secrets, loader),
            tolerance: raw
                .tolerance
                .as_ref()
                .map_or(DEFAULT_TOLERANCE, |t| t.get_ref().0),
        }
    }

    pub fn with_keys(keys: Vec<HmacKey>, tolerance: Duration) -> Self {
        Standard { keys, tolerance }
    }
}

/// A Standard Webhooks header, or its `svix-` twin.
fn header<'a>(inbound: &Inbound<'a>, name: &'static str) -> Result<&'a str, VerifyError> {
    inbound
        .header(name)
        .or_else(|| inbound.header(&name.replacen("webhook-", "svix-", 1)))
        .ok_or(VerifyError::MissingHeader(name.into()))
}

impl Scheme for Standard {
    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        let sig = header(inbound, "webhook-signature")?;
        let id = header(inbound, "webhook-id")?;
        let ts = header(inbound, "webhook-timestamp")?;
        if self.keys.is_empty() {
            return Err(VerifyError::NoSecret);
        }
        standard::verify(&self.keys, id, ts, sig, inbound.body, inbound.now, self.tolerance)?;
        Ok(Verified::new(Cow::Borrowed(inbound.body)))
    }

    fn describe(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError> {
        // Any JSON: the spec's payloads are objects with a string `type`;
        // other senders' are named `webhook`, as one without a type is.
        let body: serde_json::Value = parse(verified.payload())?;
        let name = body
            .get("type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("webhook")
            .to_owned();
        let delivery = header(inbound, "webhook-id")
            .map_or_else(|_| super::signature::body_digest(inbound.body), str::to_owned);
        Ok(Event::new(source, Provider::Standard, &name, &name, delivery))
    }

    fn sign(&self, body: &[u8], now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let key = self.keys.first().ok_or("the source has no secret to sign with")?;
        let id = format!("msg_{}", ulid::Ulid::generate());
        let ts = standard::unix_seconds(now).to_string();
        let sig = standard::sign(key, &id, &ts, body);
        Ok(vec![
            ("webhook-id".into(), id),
            ("webhook-timestamp".into(), ts),
            ("webhook-signature".into(), sig),
        ])
    }
}
