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

/// A fresh database, dropped (with its connections) when this is dropped,
/// also when the test or the benchmark panics. (The load benchmark includes
/// this file too: `benches/load/postgres.rs`.)
pub(crate) struct TestDatabase {
    pub name: String,
    pub url: String,
    /// The maintenance connection it was created from, to drop it from.
    admin: String,
}

impl TestDatabase {
    /// `hb_<ulid>` on the server of [`maintenance_url`].
    pub(crate) async fn create() -> TestDatabase {
        TestDatabase::create_on(&maintenance_url(), "hb").await
    }

    /// `<prefix>_<ulid>` on the server `admin` connects to.
    pub(crate) async fn create_on(admin: &str, prefix: &str) -> TestDatabase {
        let name = format!("{prefix}_{}", ulid::Ulid::generate().to_string().to_lowercase());
        let mut conn = PgConnection::connect(admin).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL (set HOOKBRIDGE_TEST_POSTGRES_URL; the load benchmark also reads HOOKBRIDGE_BENCH_POSTGRES_URL): {e}")
        });
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let _ = conn.close().await;
        TestDatabase {
            url: with_database(admin, &name),
            name,
            admin: admin.to_owned(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), self.admin.clone());
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let dropped = match PgConnection::connect(&admin).await {
                    Ok(mut conn) => {
                        let dropped = conn
                            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                            .await
                            .map(drop);
                        let _ = conn.close().await;
                        dropped
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = dropped {
                    eprintln!("could not drop database {name}: {e}");
                }
            });
        })
        .join();
    }
}
