//! Secrets by reference: `env:NAME`, `file:PATH` (with `${VAR}` expansion, for
//! systemd's `${CREDENTIALS_DIRECTORY}`), or a literal.
//!
//! A [`Secret`] never prints its value: not in `Debug`, not in `Display`, not in
//! error messages. Code that needs the bytes calls [`Secret::expose`] at the
//! point of use (an HMAC key, an outbound header) and nowhere else. An
//! [`HmacKey`] is the same promise for key bytes decoded from a secret.

use std::fmt;

use base64::Engine as _;
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Deserializer};

/// A resolved secret value.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The secret's value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The bytes an HMAC is keyed with, decoded once when the config loads.
///
/// Sources keep their keys in this type so that `{:?}` of a loaded config
/// cannot print them and no request copies them into plain buffers; the bytes
/// are zeroed when the key is dropped (a reload drops the old config's keys).
#[derive(Clone)]
pub struct HmacKey(SecretSlice<u8>);

/// Why a secret cannot be used as a Standard Webhooks key. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a Standard Webhooks secret must be `whsec_` followed by base64")]
    NotBase64,
    #[error("a Standard Webhooks secret must decode to at least one byte of key")]
    Empty,
}

impl HmacKey {
    /// The secret's own bytes as the key: GitHub, Bitbucket, Gitea, Forgejo,
    /// Gogs and generic HMAC senders key their MAC with the secret as typed.
    pub fn from_secret(secret: &Secret) -> Self {
        HmacKey(SecretSlice::from(secret.expose().as_bytes().to_vec()))
    }

    /// The key of a Standard Webhooks secret (`whsec_` + base64; GitLab signing
    /// tokens too): the base64-decoded bytes, not the text. A secret without the
    /// prefix is taken as base64 as well, as the reference libraries do. This is
    /// the one decoder of such secrets, used when the config loads.
    pub fn from_whsec(secret: &Secret) -> Result<Self, KeyError> {
        let text = secret.expose();
        let b64 = text.strip_prefix("whsec_").unwrap_or(text);
        // Padding or none, as the Standard Webhooks libraries take it.
        const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let mut decoded = LENIENT.decode(b64).map_err(|_| KeyError::NotBase64)?;
        // Copy into an exactly sized box and wipe the decoder's buffer, whose
        // capacity may exceed its length (so `into_boxed_slice` would reallocate
        // and leave the bytes behind unzeroed).
        let key: Box<[u8]> = Box::from(decoded.as_slice());
        decoded.zeroize();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(HmacKey(SecretSlice::from(key)))
    }

    /// Raw key bytes, for tests and tools that hold a key outside any config.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        HmacKey(SecretSlice::from(bytes.to_vec()))
    }

    /// The key bytes, for the HMAC that uses them and nothing else.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey(***)")
    }
}

/// Where a secret comes from, as the user wrote it. Safe to print.
#[derive(Clone)]
pub enum SecretRef {
    Env(String),
    File(String),
    Literal(SecretString),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{path}"),
            SecretRef::Literal(_) => f.write_str("<literal>"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl SecretRef {
    pub fn parse(text: &str) -> Result<SecretRef, String> {
        if let Some(name) = text.strip_prefix("env:") {
            let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("`env:{name}` is not a valid environment variable name"));
            }
            Ok(SecretRef::Env(name.to_owned()))
        } else if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err("`file:` needs a path".to_owned());
            }
            Ok(SecretRef::File(path.to_owned()))
        } else if text.is_empty() {
            Err("a secret cannot be empty".to_owned())
        } else {
            Ok(SecretRef::Literal(SecretString::from(text.to_owned())))
        }
    }

    pub fn is_literal(&self) -> bool {
        matches!(self, SecretRef::Literal(_))
    }

    /// Read the secret now. The error says what is missing, never a value.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            SecretRef::Literal(s) => Ok(Secret(s.clone())),
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) if v.is_empty() => Err(format!("environment variable `{name}` is empty")),
                Ok(v) => Ok(Secret::new(v)),
                Err(std::env::VarError::NotPresent) => {
                    Err(format!("environment variable `{name}` is not set"))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("environment variable `{name}` is not valid UTF-8"))
                }
            },
            SecretRef::File(raw) => {
                let path = expand_vars(raw)?;
                let text = read_secret_file(&path)?;
                // Files written by editors and `echo` end with a newline that is not part of the secret.
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    return Err(format!("secret file `{path}` is empty"));
                }
                Ok(Secret::new(value))
            }
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The most a secret file may hold (a key, a token, a certificate chain).
const MAX_SECRET_FILE: u64 = 64 << 10;

/// A secret file's text. Only a regular file (or a link to one) is read, and
/// at most [`MAX_SECRET_FILE`] bytes: a FIFO would block the loader (and with
/// it every later reload, and shutdown) until something wrote to it, and a
/// device such as `/dev/zero` never ends.
fn read_secret_file(path: &str) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read secret file `{path}`: {e}");
    // Opened without blocking (a FIFO would wait for a writer), then checked
    // on the handle itself, so nothing can be swapped in between.
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0));
    }
    let file = options.open(path).map_err(cannot)?;
    if !file.metadata().map_err(cannot)?.is_file() {
        return Err(format!("secret file `{path}` is not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "secret file `{path}` holds more than {} KiB; is it the right file?",
            MAX_SECRET_FILE >> 10
        ));
    }
    Ok(text)
}

/// Expand `${NAME}` from the environment (e.g. `${CREDENTIALS_DIRECTORY}/token`).
pub fn expand_vars(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{raw}`"))?;
        let name = &after[..end];
        let value = std::env::var(name)
            .map_err(|_| format!("`${{{name}}}` in `{raw}`: environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A secret reference plus its value when it could be read.
///
/// `check` loads configs without the production secrets; `serve` refuses to
/// start unless every slot holds a value.
#[derive(Clone, Debug)]
pub struct SecretSlot {
    pub reference: SecretRef,
    value: Result<Secret, String>,
}

impl SecretSlot {
    pub fn load(reference: SecretRef) -> Self {
        let value = reference.resolve();
        SecretSlot { reference, value }
    }

    pub fn literal(value: &str) -> Self {
        let reference = SecretRef::Literal(SecretString::from(value.to_owned()));
        SecretSlot::load(reference)
    }

    pub fn get(&self) -> Result<&Secret, &str> {
        self.value.as_ref().map_err(String::as_str)
    }

    pub fn missing(&self) -> Option<&str> {
        self.value.as_ref().err().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let r = SecretRef::parse("hunter2").unwrap();
        assert_eq!(format!("{r:?} {r}"), "<literal> <literal>");
        let slot = SecretSlot::load(r);
        assert!(!format!("{slot:?}").contains("hunter2"));
    }

    #[test]
    fn hmac_keys_never_print_their_bytes() {
        let whsec = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let key = HmacKey::from_whsec(&whsec).unwrap();
        assert_eq!(format!("{key:?}"), "HmacKey(***)");
        assert_eq!(key.expose().len(), 24);
        let plain = HmacKey::from_secret(&Secret::new("hunter2"));
        assert_eq!(plain.expose(), b"hunter2");
        assert_eq!(format!("{:?}", vec![plain]), "[HmacKey(***)]");
    }

    #[test]
    fn whsec_secrets_must_be_base64_and_not_empty() {
        let err = |s: &str| HmacKey::from_whsec(&Secret::new(s)).unwrap_err();
        assert_eq!(err("whsec_not base64!"), KeyError::NotBase64);
        assert_eq!(err("whsec_"), KeyError::Empty);
        // Without the prefix the text is still taken as base64.
        assert_eq!(
            HmacKey::from_whsec(&Secret::new("dGVzdA==")).unwrap().expose(),
            b"test"
        );
        // The message names the expected shape, never the secret.
        assert!(!err("whsec_sekrit!").to_string().contains("sekrit"));
    }

    #[test]
    fn parses_references() {
        assert_eq!(SecretRef::parse("env:A_B").unwrap().to_string(), "env:A_B");
        assert_eq!(SecretRef::parse("file:/x").unwrap().to_string(), "file:/x");
        assert!(SecretRef::parse("env:").is_err());
        assert!(SecretRef::parse("env:A-B").is_err());
        assert!(SecretRef::parse("").is_err());
    }

    #[test]
    fn file_secrets_drop_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        let r = SecretRef::parse(&format!("file:{}", path.display())).unwrap();
        assert_eq!(r.resolve().unwrap().expose(), "abc");
    }

    #[test]
    fn only_a_regular_file_of_sane_size_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |path: &std::path::Path| {
            SecretRef::parse(&format!("file:{}", path.display()))
                .unwrap()
                .resolve()
        };
        // A FIFO nobody writes to: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        assert!(resolve(&fifo).unwrap_err().contains("not a regular file"));
        assert!(
            resolve(std::path::Path::new("/dev/zero"))
                .unwrap_err()
                .contains("not a regular file")
        );
        assert!(resolve(dir.path()).unwrap_err().contains("not a regular file"));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; (MAX_SECRET_FILE + 1) as usize]).unwrap();
        assert!(resolve(&big).unwrap_err().contains("more than 64 KiB"));
        // A link to a regular file (how Kubernetes mounts secrets) is read.
        let link = dir.path().join("link");
        std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("token"), &link).unwrap();
        assert_eq!(resolve(&link).unwrap().expose(), "t0ken");
    }

    #[test]
    fn missing_env_is_reported_by_name() {
        let r = SecretRef::parse("env:HOOKBRIDGE_TEST_SURELY_UNSET").unwrap();
        let err = r.resolve().unwrap_err();
        assert!(err.contains("HOOKBRIDGE_TEST_SURELY_UNSET"));
    }

    #[test]
    fn file_paths_expand_credentials_directory() {
        // `set_var` is unsafe (and `unsafe_code` is forbidden), so this uses a
        // variable cargo sets for tests; tests/systemd.rs runs the daemon with a
        // real `CREDENTIALS_DIRECTORY`.
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        let r = SecretRef::parse("file:${CARGO_MANIFEST_DIR}/Cargo.toml").unwrap();
        assert_eq!(r.to_string(), "file:${CARGO_MANIFEST_DIR}/Cargo.toml");
        assert!(r.resolve().unwrap().expose().contains("name = \"hookbridge\""));
        assert_eq!(
            expand_vars("${CARGO_MANIFEST_DIR}/a/${CARGO_MANIFEST_DIR}").unwrap(),
            format!("{dir}/a/{dir}")
        );
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            let err = SecretRef::parse("file:${CREDENTIALS_DIRECTORY}/github-webhook-secret")
                .unwrap()
                .resolve()
                .unwrap_err();
            assert!(err.contains("`CREDENTIALS_DIRECTORY` is not set"), "{err}");
        }
        assert!(expand_vars("${UNCLOSED/x").unwrap_err().contains("unclosed"));
    }
}
