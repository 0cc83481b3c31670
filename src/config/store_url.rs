//! `[store] url`: which store backs the daemon, and how a URL that may carry
//! a password is printed (never with the password).

use std::fmt;
use std::path::PathBuf;

/// Which store backs the daemon.
///
/// A PostgreSQL URL may carry a password (`postgres://app:pw@db/hb`), so
/// `Debug` prints it through [`redact_url`]; use `[store] password` to keep it
/// out of the URL altogether.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreUrl::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("`sqlite://` needs a file path, e.g. `sqlite://hookbridge.db`".into());
            }
            Ok(StoreUrl::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "unsupported store url `{}`; expected `sqlite://PATH` or `postgres://...`",
                redact_url(url)
            ))
        }
    }
}

/// A URL with any password replaced by `***`, for messages and logs: the
/// password of the userinfo (everything up to the last `@`, so a password
/// holding `/`, `?` or `@` is hidden whole; a query value holding `@` is
/// hidden too, which is safe) and `password=` style query parameters
/// (libpq's `password`, `sslpassword`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let mut out = format!("{scheme}://");
    let after_userinfo = match rest.rsplit_once('@') {
        Some((userinfo, after)) => {
            let user = userinfo.split([':', '/', '?']).next().unwrap_or("");
            out.push_str(&format!("{user}:***@"));
            after
        }
        None => rest,
    };
    let (before_query, query) = match after_userinfo.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (after_userinfo, None),
    };
    out.push_str(before_query);
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().contains("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/hb"),
            "postgres://app:***@db:5432/hb"
        );
        assert_eq!(redact_url("postgres://db/hb"), "postgres://db/hb");
        assert_eq!(
            redact_url("postgres://app:pa/ss@w0rd@db/hb"),
            "postgres://app:***@db/hb"
        );
        assert_eq!(
            redact_url("postgres://app:s3cr?et@127.0.0.1:1/hb"),
            "postgres://app:***@127.0.0.1:1/hb"
        );
        assert_eq!(
            redact_url("postgres://app:s3cr?et@db/hb?password=x"),
            "postgres://app:***@db/hb?password=***"
        );
        assert_eq!(
            redact_url("postgresql://db/hb?sslmode=require&password=s3cret"),
            "postgresql://db/hb?sslmode=require&password=***"
        );
    }

    proptest::proptest! {
        /// Whatever the password holds (`/`, `?`, `@`, `:` included), it is
        /// not in the redacted URL, with or without a query.
        #[test]
        fn no_password_survives_redaction(
            user in "[a-z]{1,8}",
            password in "[!-~]{6,24}",
            query in proptest::option::of("[a-z]{1,8}=[a-z0-9]{1,8}"),
        ) {
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            let url = format!("postgres://{user}:{password}@db.example:5432/hb{query}");
            let shown = redact_url(&url);
            proptest::prop_assume!(!format!("postgres://{user}:***@db.example:5432/hb{query}").contains(&password));
            proptest::prop_assert!(!shown.contains(&password), "{shown}");
        }
    }

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("sqlite://data/hb.db").unwrap(),
            StoreUrl::Sqlite(PathBuf::from("data/hb.db"))
        );
        assert!(StoreUrl::parse("mysql://x").is_err());
    }

    #[test]
    fn store_url_debug_hides_the_password() {
        let url = StoreUrl::parse("postgres://app:s3cret@db:5432/hb?sslmode=require").unwrap();
        let printed = format!("{url:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert_eq!(
            printed,
            "Postgres(\"postgres://app:***@db:5432/hb?sslmode=require\")"
        );
        assert_eq!(
            format!("{:?}", StoreUrl::Sqlite(PathBuf::from("hb.db"))),
            "Sqlite(\"hb.db\")"
        );
    }
}
