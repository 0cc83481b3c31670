//! sqlx errors as [`StoreError`]s, classified here at the driver boundary so
//! callers decide on the kind: a constraint violation is not retried as if
//! the server were away, and an unreadable row is not answered "try again".
//! The sqlx error is kept as the source.

use crate::store::{StoreError, StoreErrorKind};

/// The server answered with an error for a statement (any SQLSTATE), or the
/// batch could not be encoded: not an outage. The statement did not commit,
/// and the same call may be written again (alone).
pub(super) fn refused_by_server(e: &StoreError) -> bool {
    e.kind() != StoreErrorKind::Unavailable
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<sqlx::Error>())
            .is_some_and(|s| matches!(s, sqlx::Error::Database(_)))
}

/// A driver error as a [`StoreError`] of its [`kind`].
pub(super) fn db(e: sqlx::Error) -> StoreError {
    StoreError::from_driver(kind(&e), e)
}

/// What a driver error means for the caller.
///
/// - the server or the connection (pool timeout or closed, I/O, TLS, protocol,
///   a row gone between two statements, and every server error not named
///   below: connection, serialization failure, deadlock, statement timeout,
///   shutdown, no space, read-only transaction, a schema another version
///   changed) → [`StoreErrorKind::Unavailable`], as before this split: the
///   same call may succeed later;
/// - an integrity constraint (SQLSTATE class 23: unique, foreign key, not
///   null, check) → [`StoreErrorKind::Conflict`];
/// - a value or row that cannot be decoded, and the server's own "data
///   corrupted" (`XX001`, `XX002`) → [`StoreErrorKind::Corrupt`];
/// - options or arguments sqlx refuses → [`StoreErrorKind::Invalid`].
pub(super) fn kind(e: &sqlx::Error) -> StoreErrorKind {
    use sqlx::Error as E;
    match e {
        E::Database(db) => {
            let code = db.code().unwrap_or_default();
            if code.starts_with("23") {
                StoreErrorKind::Conflict
            } else if code == "XX001" || code == "XX002" {
                StoreErrorKind::Corrupt
            } else {
                StoreErrorKind::Unavailable
            }
        }
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. } => StoreErrorKind::Corrupt,
        E::Configuration(_) | E::InvalidArgument(_) | E::Encode(_) => StoreErrorKind::Invalid,
        _ => StoreErrorKind::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_errors_get_the_kind_callers_decide_on() {
        let cases = [
            (sqlx::Error::PoolTimedOut, StoreErrorKind::Unavailable),
            (sqlx::Error::PoolClosed, StoreErrorKind::Unavailable),
            (
                sqlx::Error::Io(std::io::Error::other("connection reset")),
                StoreErrorKind::Unavailable,
            ),
            (sqlx::Error::RowNotFound, StoreErrorKind::Unavailable),
            (
                sqlx::Error::ColumnNotFound("summary".into()),
                StoreErrorKind::Corrupt,
            ),
            (
                sqlx::Error::Decode("invalid utf-8".into()),
                StoreErrorKind::Corrupt,
            ),
            (
                sqlx::Error::Configuration("bad option".into()),
                StoreErrorKind::Invalid,
            ),
        ];
        for (e, expected) in cases {
            let shown = e.to_string();
            let e = db(e);
            assert_eq!(e.kind(), expected, "{shown}");
            assert!(std::error::Error::source(&e).is_some(), "{shown}");
        }
    }
}
