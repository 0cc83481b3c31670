//! Any other HMAC sender: the signature header, hash (sha1, sha256, sha512),
//! encoding (hex, base64) and prefix are configured; the event name comes from
//! a header or is fixed; the delivery id comes from a header or a body digest.

use std::borrow::Cow;
use std::time::SystemTime;

use super::signature::{self, Algorithm, Encoding};
use super::{DescribeError, Inbound, Scheme, Verified, VerifyError, hmac_keys, required_secrets};
use crate::config::diagnostic::Diagnostic;
use crate::config::loader::Loader;
use crate::config::raw::RawSource;
use crate::config::secret::HmacKey;
use crate::event::{Event, Provider};

#[derive(Debug)]
pub struct GenericHmac {
    /// The secrets as HMAC keys; any one of them verifies.
    keys: Vec<HmacKey>,
    /// Lower-cased header name.
    header: String,
    algorithm: Algorithm,
    encoding: Encoding,
    prefix: String,
    event_header: Option<String>,
    event: Option<String>,
    delivery_header: Option<String>,
}

fn lower(s: &Option<toml::Spanned<String>>) -> Option<String> {
    s.as_ref().map(|s| s.get_ref().trim().to_ascii_lowercase())
}

impl GenericHmac {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let secrets = required_secrets(name, "secrets", raw.secrets.as_ref(), raw.kind.span(), loader);
        let keys = hmac_keys(secrets.iter().map(|(s, _)| s));
        let header = match &raw.header {
            Some(h) if http::HeaderName::from_bytes(h.get_ref().as_bytes()).is_ok() => {
                h.get_ref().to_ascii_lowercase()
            }
            Some(h) => {
                loader.push(Diagnostic::error(
                    format!("source `{name}`: `{}` is not a valid header name", h.get_ref()),
                    Some(h.span()),
                ));
                String::new()
            }
            None => {
                loader.push(
                    Diagnostic::error(
                        format!("source `{name}`: `header` is required for hmac sources"),
                        Some(raw.kind.span()),
                    )
                    .with_help("name the header that carries the signature, e.g. `header = \"X-Signature\"`"),
                );
                String::new()
            }
        };
        let algorithm = match &raw.algorithm {
            None => Algorithm::Sha256,
            Some(a) => Algorithm::parse(a.get_ref()).unwrap_or_else(|| {
                loader.push(Diagnostic::error(
                    format!(
                        "source `{name}`: unknown algorithm `{}`; expected sha1, sha256 or sha512",
                        a.get_ref()
                    ),
                    Some(a.span()),
                ));
                Algorithm::Sha256
            }),
        };
        let encoding = match &raw.encoding {
            None => Encoding::Hex,
            Some(e) => Encoding::parse(e.get_ref()).unwrap_or_else(|| {
                loader.push(Diagnostic::error(
                    format!(
                        "source `{name}`: unknown encoding `{}`; expected hex or base64",
                        e.get_ref()
                    ),
                    Some(e.span()),
                ));
                Encoding::Hex
            }),
        };
        GenericHmac {
            keys,
            header,
            algorithm,
            encoding,
            prefix: raw
                .prefix
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_default(),
            event_header: lower(&raw.event_header),
            event: raw.event.as_ref().map(|e| e.get_ref().clone()),
            delivery_header: lower(&raw.delivery_header),
        }
    }
}

impl Scheme for GenericHmac {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        self.event_header
            .iter()
            .map(|h| (h.clone(), event.to_owned()))
            .collect()
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        let value = inbound
            .header(&self.header)
            .ok_or_else(|| VerifyError::MissingHeader(self.header.clone().into()))?;
        let encoded = value.strip_prefix(self.prefix.as_str()).ok_or_else(|| {
            VerifyError::Malformed(
                self.header.clone().into(),
                format!("expected the prefix `{}`", self.prefix),
            )
        })?;
        let expected = self
            .encoding
            .decode(encoded)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                VerifyError::Malformed(self.header.clone().into(), "cannot decode the signature".into())
            })?;
        if self.keys.is_empty() {
            return Err(VerifyError::NoSecret);
        }
        if signature::verify_any(self.algorithm, &self.keys, &[inbound.body], &expected) {
            Ok(Verified::new(Cow::Borrowed(inbound.body)))
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn describe(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError> {
        super::parse::<serde::de::IgnoredAny>(verified.payload())?;
        let from_header = self.event_header.as_deref().and_then(|h| inbound.header(h));
        let name = match (from_header, &self.event, &self.event_header) {
            (Some(n), _, _) => n.to_owned(),
            (None, Some(fixed), _) => fixed.clone(),
            (None, None, Some(h)) => return Err(DescribeError::MissingEventHeader(h.clone().into())),
            (None, None, None) => "webhook".to_owned(),
        };
        let delivery = self
            .delivery_header
            .as_deref()
            .and_then(|h| inbound.header(h))
            .map_or_else(|| signature::body_digest(inbound.body), str::to_owned);
        Ok(Event::new(source, Provider::Hmac, &name, &name, delivery))
    }

    fn sign(&self, body: &[u8], _now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let key = self.keys.first().ok_or("the source has no secret to sign with")?;
        let mac = signature::hmac(self.algorithm, key.expose(), &[body]);
        let mut out = vec![(
            self.header.clone(),
            format!("{}{}", self.prefix, self.encoding.encode(&mac)),
        )];
        if let Some(h) = &self.event_header {
            out.push((h.clone(), self.event.clone().unwrap_or_else(|| "webhook".into())));
        }
        if let Some(h) = &self.delivery_header {
            out.push((h.clone(), ulid::Ulid::generate().to_string()));
        }
        Ok(out)
    }

    fn credential_headers(&self) -> Vec<String> {
        vec![self.header.clone()]
    }
}
