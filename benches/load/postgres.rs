//! The PostgreSQL side of `--store postgres`: a throw-away database per
//! replica count, the CPU time the server spends, read from `/proc`, and
//! the WAL it writes.
//!
//! The server comes from `HOOKBRIDGE_BENCH_POSTGRES_URL`, else the tests'
//! `HOOKBRIDGE_TEST_POSTGRES_URL`, else the local one: a maintenance
//! connection allowed to `CREATE DATABASE`.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::pg::{TestDatabase, maintenance_url};
use crate::servers::{self, ProcStat};

/// A fresh database `hb_bench_<ulid>`, dropped (with its connections) when
/// this is dropped, also when the run panics: the tests' [`TestDatabase`].
pub(crate) struct BenchDatabase {
    db: TestDatabase,
}

impl BenchDatabase {
    pub(crate) async fn create() -> BenchDatabase {
        let admin = std::env::var("HOOKBRIDGE_BENCH_POSTGRES_URL").unwrap_or_else(|_| maintenance_url());
        BenchDatabase {
            db: TestDatabase::create_on(&admin, "hb_bench").await,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.db.name
    }

    pub(crate) fn url(&self) -> &str {
        &self.db.url
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(self.url()).await.unwrap()
    }

    /// The server and the settings an ack's durability depends on, for the header.
    pub(crate) async fn describe(&self) -> String {
        let mut conn = self.connect().await;
        let (version, sync, fsync): (String, String, String) = sqlx::query_as(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'), \
             current_setting('fsync')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
        // The host only: the URL may carry a password.
        let authority = self.url().split('/').nth(2).unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        format!("PostgreSQL {version} at {host} (synchronous_commit = {sync}, fsync = {fsync})")
    }

    pub(crate) async fn stored_deliveries(&self) -> u64 {
        let mut conn = self.connect().await;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        n as u64
    }

    /// The WAL the whole server has written so far, in bytes (other
    /// databases' writes count too); a delta over a window is its WAL in it.
    pub(crate) async fn wal_bytes(&self) -> u64 {
        let mut conn = self.connect().await;
        let n: i64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        u64::try_from(n).unwrap_or(0)
    }

    /// The server's processes, if they run on this machine.
    pub(crate) async fn server_cpu(&self) -> Option<ServerCpu> {
        let mut conn = self.connect().await;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let postmaster = ServerCpu::postmaster_of(backend as u32);
        let _ = conn.close().await;
        postmaster.map(|postmaster| ServerCpu { postmaster })
    }
}

/// CPU time of one PostgreSQL server: the postmaster and its children (the
/// backends and the checkpointer, WAL writer and other helpers), plus what
/// the postmaster has reaped from children that exited.
///
/// The processes belong to the postgres user, so `/proc/<pid>/exe` may be
/// unreadable; `stat` is readable by anyone. Children of *this* postmaster,
/// found through the bench's own backend, leave out any other cluster on the
/// machine. Other clients of the same server (a test run) do count.
pub(crate) struct ServerCpu {
    postmaster: u32,
}

impl ServerCpu {
    /// The parent of our backend, if both are postgres processes here (not
    /// when the server is on another machine or in another PID namespace).
    fn postmaster_of(backend: u32) -> Option<u32> {
        let is_postgres = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| matches!(c.trim(), "postgres" | "postmaster"))
        };
        let parent = servers::proc_stat(backend)?.ppid;
        (is_postgres(backend) && is_postgres(parent)).then_some(parent)
    }

    /// CPU time so far; a delta over a window is the server's work in it.
    pub(crate) fn cpu(&self) -> Duration {
        let Some(postmaster) = servers::proc_stat(self.postmaster) else {
            return Duration::ZERO;
        };
        let children: u64 = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter_map(servers::proc_stat)
            .filter(|child: &ProcStat| child.ppid == self.postmaster)
            .map(|child| child.utime + child.stime)
            .sum();
        servers::ticks(postmaster.utime + postmaster.stime + postmaster.cutime + postmaster.cstime + children)
    }
}
