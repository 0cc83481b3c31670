//! Connection options from `[store]`: URL, password secret, TLS mode and
//! statement timeout, with the URL's password kept out of every error.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::config::{StoreSettings, redact_url};
use crate::store::StoreError;

/// Connection options from `[store]`: URL, password secret, TLS mode, statement timeout.
pub fn connect_options(settings: &StoreSettings) -> Result<PgConnectOptions, StoreError> {
    let crate::config::StoreUrl::Postgres(url) = &settings.url else {
        return Err(StoreError::invalid("not a PostgreSQL store url"));
    };
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::invalid(format!("invalid store url `{}`: {e}", redact_url(url))))?;
    if let Some(password) = &settings.password {
        options = options.password(password.expose());
    }
    // An explicit `sslmode` in the URL wins over `[store] tls`.
    if !url.contains("sslmode=") {
        let mode = PgSslMode::from_str(&settings.tls).map_err(|_| {
            StoreError::invalid(format!(
                "unknown `[store] tls` mode `{}`; expected disable, prefer, require, verify-ca or verify-full",
                settings.tls
            ))
        })?;
        options = options.ssl_mode(mode);
    }
    let timeout_ms = settings.statement_timeout.as_millis().max(1);
    // `hookbridge:<pid>`: which replica a session in `pg_stat_activity` is.
    let name = format!("hookbridge:{}", std::process::id());
    Ok(options.application_name(&name).options([
        ("statement_timeout", format!("{timeout_ms}")),
        ("plan_cache_mode", "force_custom_plan".to_owned()),
    ]))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Secret, StoreUrl};

    fn settings(url: &str, tls: &str) -> StoreSettings {
        StoreSettings {
            url: StoreUrl::Postgres(url.into()),
            retention: Duration::from_secs(60),
            password: Some(Secret::new("hunter2")),
            pool_size: 4,
            statement_timeout: Duration::from_secs(5),
            tls: tls.into(),
        }
    }

    #[test]
    fn options_take_the_password_secret_and_tls_mode() {
        let o = connect_options(&settings("postgres://app@db:5433/hb", "require")).unwrap();
        assert_eq!(o.get_host(), "db");
        assert_eq!(o.get_port(), 5433);
        assert_eq!(o.get_database(), Some("hb"));
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Require));
        // An explicit sslmode in the URL wins.
        let o = connect_options(&settings("postgres://app@db/hb?sslmode=disable", "require")).unwrap();
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Disable));
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = connect_options(&settings("postgres://app:s3cret@db:notaport/hb", "prefer"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("invalid store url"), "{e}");
        assert!(!e.contains("s3cret") && !e.contains("hunter2"), "{e}");
        let e = connect_options(&settings("postgres://app@db/hb", "sometimes"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("`sometimes`") && !e.contains("hunter2"), "{e}");
    }
}
