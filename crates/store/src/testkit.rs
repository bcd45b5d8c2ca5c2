//! Test databases: a SQLite file in a temporary directory, and a fresh PostgreSQL database with a
//! random name on the local server, dropped when the handle is.
//!
//! PostgreSQL is a real server: `BURSAR_TEST_POSTGRES_URL` (an admin URL, such as
//! `postgres://postgres@127.0.0.1:5432/postgres`) or, without it, 127.0.0.1:5432 with trust auth
//! as `postgres` or `root`. When none answers, [`TempPostgres::create`] panics with what to do:
//! the PostgreSQL tests fail, they never skip.

use std::path::{Path, PathBuf};

use rand::Rng;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// Names an admin URL of the test PostgreSQL server.
pub const POSTGRES_URL_ENV: &str = "BURSAR_TEST_POSTGRES_URL";
/// Tried in order when [`POSTGRES_URL_ENV`] is unset.
pub const POSTGRES_ADMIN_URLS_DEFAULT: [&str; 2] = [
    "postgres://postgres@127.0.0.1:5432/postgres",
    "postgres://root@127.0.0.1:5432/postgres",
];

/// A SQLite ledger file in its own temporary directory.
#[derive(Debug)]
pub struct TempSqlite {
    directory: tempfile::TempDir,
    path: PathBuf,
}

impl TempSqlite {
    pub fn new() -> TempSqlite {
        let directory = tempfile::tempdir().expect("create a temporary directory");
        let path = directory.path().join("ledger.sqlite");
        TempSqlite { directory, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    pub fn url(&self) -> String {
        crate::sqlite_file_url(&self.path)
    }
}

impl Default for TempSqlite {
    fn default() -> Self {
        TempSqlite::new()
    }
}

/// A fresh database on the test PostgreSQL server, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct TempPostgres {
    admin_url: String,
    name: String,
    url: String,
}

impl TempPostgres {
    /// Creates `bursar_test_<random>`. Panics, saying how to fix it, when no server answers.
    pub async fn create() -> TempPostgres {
        let candidates: Vec<String> = match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) => vec![url],
            Err(_) => POSTGRES_ADMIN_URLS_DEFAULT
                .iter()
                .map(|url| url.to_string())
                .collect(),
        };
        let mut failures = Vec::new();
        for admin_url in candidates {
            match PgConnection::connect(&admin_url).await {
                Ok(mut admin) => {
                    let name = format!("bursar_test_{:016x}", rand::rng().random::<u64>());
                    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                        .execute(&mut admin)
                        .await
                        .unwrap_or_else(|error| panic!("cannot create database {name}: {error}"));
                    let _ = admin.close().await;
                    let url = database_url(&admin_url, &name);
                    return TempPostgres {
                        admin_url,
                        name,
                        url,
                    };
                }
                Err(error) => failures.push(format!("{admin_url}: {error}")),
            }
        }
        panic!(
            "the PostgreSQL ledger tests need a real server and none answered ({}). Start PostgreSQL \
             on 127.0.0.1:5432 with trust auth for user postgres or root, or set {POSTGRES_URL_ENV} \
             to an admin URL such as postgres://user:password@host:5432/postgres",
            failures.join("; ")
        );
    }

    /// The URL of the fresh database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs outside any async context we could borrow: use a short-lived runtime on a
        // thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .map_err(|error| error.to_string())?;
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut admin)
                    .await
                    .map_err(|error| error.to_string())?;
                let _ = admin.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

/// `admin_url` with its database path replaced by `database`.
fn database_url(admin_url: &str, database: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}
