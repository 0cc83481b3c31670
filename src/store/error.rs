//! [`StoreError`]: what went wrong in a store, as a kind callers decide on,
//! a message fit for an operator, and the driver's error as its source.
//!
//! The kinds and who does what with them are the error policy in the
//! [`store`](super) module doc. Messages never carry secrets: a driver's text
//! names tables, constraints and files, never a connection string.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// What kind of failure a [`StoreError`] is; callers decide on this alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The store cannot do it now (down, busy, locked, full disk, I/O):
    /// nothing was written, the same call may succeed later.
    Unavailable,
    /// The write contradicts what is stored (a constraint): retrying the same
    /// call fails the same way.
    Conflict,
    /// No such delivery (or job of it).
    NotFound,
    /// The key names several deliveries; the caller must say which.
    Ambiguous,
    /// What is stored cannot be read back (bad JSON, unknown state, damaged file).
    Corrupt,
    /// The request or the setup is wrong (a newer schema, a bad URL, a store
    /// another daemon holds): a person must change something.
    Invalid,
}

/// A failure of the store: a kind, a message and, from a driver, its source.
///
/// Cheap to clone (the source is shared), so one answer can be handed to
/// several callers (the readiness cache does).
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    detail: String,
    source: Option<Arc<dyn Error + Send + Sync + 'static>>,
}

impl StoreError {
    /// An error of `kind`; `detail` is what the message shows after the kind's prefix.
    pub fn new(kind: StoreErrorKind, detail: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            detail: detail.into(),
            source: None,
        }
    }

    /// "store unavailable: {detail}".
    pub fn unavailable(detail: impl fmt::Display) -> StoreError {
        StoreError::new(StoreErrorKind::Unavailable, detail.to_string())
    }

    /// "store conflict: {detail}".
    pub fn conflict(detail: impl fmt::Display) -> StoreError {
        StoreError::new(StoreErrorKind::Conflict, detail.to_string())
    }

    /// "no delivery `{what}`".
    pub fn not_found(what: impl fmt::Display) -> StoreError {
        StoreError::new(StoreErrorKind::NotFound, what.to_string())
    }

    /// The message as given (it names the choices).
    pub fn ambiguous(message: impl fmt::Display) -> StoreError {
        StoreError::new(StoreErrorKind::Ambiguous, message.to_string())
    }

    /// "stored data is unreadable: {detail}".
    pub fn corrupt(detail: impl fmt::Display) -> StoreError {
        StoreError::new(StoreErrorKind::Corrupt, detail.to_string())
    }

    /// The message as given (it says what to change).
    pub fn invalid(message: impl fmt::Display) -> StoreError {
        StoreError::new(StoreErrorKind::Invalid, message.to_string())
    }

    /// The same error, caused by `source` (returned by [`Error::source`]).
    pub fn with_source(mut self, source: impl Error + Send + Sync + 'static) -> StoreError {
        self.source = Some(Arc::new(source));
        self
    }

    /// A driver error of `kind`: its text is the detail and it is the source.
    pub fn from_driver(kind: StoreErrorKind, e: impl Error + Send + Sync + 'static) -> StoreError {
        StoreError::new(kind, e.to_string()).with_source(e)
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// May the same call succeed later (the kind is [`StoreErrorKind::Unavailable`])?
    pub fn is_unavailable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }

    /// The message without the kind's prefix.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = &self.detail;
        match self.kind {
            StoreErrorKind::Unavailable => write!(f, "store unavailable: {detail}"),
            StoreErrorKind::Conflict => write!(f, "store conflict: {detail}"),
            StoreErrorKind::NotFound => write!(f, "no delivery `{detail}`"),
            StoreErrorKind::Corrupt => write!(f, "stored data is unreadable: {detail}"),
            StoreErrorKind::Ambiguous | StoreErrorKind::Invalid => f.write_str(detail),
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_wording() {
        let cases = [
            (
                StoreError::unavailable("disk I/O error"),
                "store unavailable: disk I/O error",
            ),
            (
                StoreError::conflict("UNIQUE constraint failed: jobs.id"),
                "store conflict: UNIQUE constraint failed: jobs.id",
            ),
            (StoreError::not_found("guid-1"), "no delivery `guid-1`"),
            (
                StoreError::corrupt("expected value"),
                "stored data is unreadable: expected value",
            ),
            (StoreError::ambiguous("pick one"), "pick one"),
            (StoreError::invalid("upgrade hookbridge"), "upgrade hookbridge"),
        ];
        for (e, shown) in cases {
            assert_eq!(e.to_string(), shown);
        }
    }

    #[test]
    fn the_driver_error_is_the_source() {
        let io = std::io::Error::other("no space left on device");
        let e = StoreError::from_driver(StoreErrorKind::Unavailable, io);
        assert_eq!(e.kind(), StoreErrorKind::Unavailable);
        assert!(e.is_unavailable());
        assert_eq!(e.to_string(), "store unavailable: no space left on device");
        assert_eq!(e.source().unwrap().to_string(), "no space left on device");
        let copy = e.clone();
        assert!(copy.source().is_some());
        assert!(StoreError::not_found("x").source().is_none());
    }
}
