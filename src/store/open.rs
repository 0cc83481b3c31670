//! Opening the store the config names, and bringing its schema up to date.

use std::sync::Arc;

use super::{Store, StoreError, postgres, sqlite};

/// Who opens a store: the daemon (owns the queue) or a CLI client beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    Daemon,
    Client,
}

/// Open the store the config names.
pub async fn open(
    settings: &crate::config::StoreSettings,
    mode: OpenMode,
) -> Result<Arc<dyn Store>, StoreError> {
    match &settings.url {
        crate::config::StoreUrl::Sqlite(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || match mode {
                OpenMode::Daemon => sqlite::SqliteStore::open_exclusive(&path),
                OpenMode::Client => sqlite::SqliteStore::open(&path),
            })
            .await
            .map_err(StoreError::unavailable)??;
            Ok(Arc::new(store))
        }
        crate::config::StoreUrl::Postgres(_) => {
            // Several replicas share the database: nothing to take back at start,
            // a dead replica's leases expire instead.
            let _ = mode;
            Ok(Arc::new(postgres::PostgresStore::open(settings).await?))
        }
    }
}

/// Bring the store's schema up to date (`hookbridge migrate`); returns its version.
pub async fn migrate(settings: &crate::config::StoreSettings) -> Result<usize, StoreError> {
    match &settings.url {
        crate::config::StoreUrl::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                sqlite::SqliteStore::open(&path).map(|_| sqlite::schema_version())
            })
            .await
            .map_err(StoreError::unavailable)?
        }
        crate::config::StoreUrl::Postgres(_) => {
            postgres::migrate(&postgres::connect_options(settings)?).await
        }
    }
}
