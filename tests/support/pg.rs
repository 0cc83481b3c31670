//! Throw-away PostgreSQL databases for tests.
//!
//! The server comes from `HOOKBRIDGE_TEST_POSTGRES_URL` (a maintenance
//! connection allowed to `CREATE DATABASE`), defaulting to the local one.

use sqlx::{Connection, Executor, PgConnection};

pub(crate) const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub(crate) fn maintenance_url() -> String {
    std::env::var("HOOKBRIDGE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `url` with its database name replaced by `db`.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").unwrap();
    let authority = rest.split('/').next().unwrap();
    match query {
        Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
        None => format!("{scheme}://{authority}/{db}"),
    }
}

/// A fresh database, dropped (with its connections) when this is dropped.
pub(crate) struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub(crate) async fn create() -> TestDatabase {
        let admin = maintenance_url();
        let name = format!("hb_{}", ulid::Ulid::generate().to_string().to_lowercase());
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL for tests (set HOOKBRIDGE_TEST_POSTGRES_URL): {e}")
        });
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let _ = conn.close().await;
        TestDatabase {
            url: with_database(&admin, &name),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&maintenance_url()).await {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
