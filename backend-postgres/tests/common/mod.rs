//! Shared set-up for the PostgreSQL tests: where the database is, and a fresh schema per run.
//!
//! The URL comes from `LOCKD_TEST_POSTGRES_URL`; without it, when a Docker daemon answers, one
//! PostgreSQL container is started for the whole test binary (testcontainers); otherwise the
//! tests skip with one loud line, or fail under `LOCKD_REQUIRE_BACKENDS=1`.
//!
//! Every test binary run uses its own schema `lockd_t_<unix seconds>_<random>`, so runs never
//! see each other's rows. There is no hook after the last test of a binary, so instead each run
//! drops the schemas of runs that started more than an hour ago.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backend_postgres::{PostgresConfig, PostgresLockService, PostgresStore};
use lockcore::{LockService, TokenIssuer};
use rand::Rng;

/// Environment variable naming the test database.
pub const URL_ENV: &str = "LOCKD_TEST_POSTGRES_URL";

/// The database URL for this test binary, or `None` after reporting the skip.
pub async fn database_url() -> Option<String> {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    let found = URL.get_or_init(|| {
        if let Ok(url) = std::env::var(URL_ENV) {
            return Ok(url);
        }
        if !docker_answers() {
            return Err(format!("{URL_ENV} is unset and no Docker daemon answers"));
        }
        start_container()
    });
    match found {
        Ok(url) => Some(url.clone()),
        Err(why) => {
            conformance_tests::skip_or_fail("postgres", why);
            None
        }
    }
}

/// This run's schema: the same for every test of the binary.
pub fn run_schema() -> &'static str {
    static SCHEMA: OnceLock<String> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let tag: u32 = rand::rng().random();
        format!("lockd_t_{secs}_{tag:08x}")
    })
}

/// A fresh schema name of its own (for tests that must not share state with others).
pub fn private_schema(label: &str) -> String {
    let tag: u64 = rand::rng().random();
    format!("lockd_t_{}_{label}_{tag:x}", now_secs())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A configuration for tests: this run's schema, a small pool, quick timeouts.
pub fn test_config(url: &str) -> PostgresConfig {
    let mut config = PostgresConfig::from_url(url);
    config.schema = run_schema().to_owned();
    config.max_connections = 3;
    config.connect_timeout = Duration::from_secs(5);
    config.statement_timeout = Duration::from_secs(5);
    config.application_name = "lockd_test".to_owned();
    config
}

/// A service on this run's schema, or `None` (skipped) when there is no database.
pub async fn service() -> Option<PostgresLockService> {
    let url = database_url().await?;
    Some(connect(test_config(&url)).await)
}

/// Connects with `config`, panicking with the cause when the database refuses.
pub async fn connect(config: PostgresConfig) -> PostgresLockService {
    drop_old_schemas(&config.url).await;
    let store = PostgresStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database failed: {e}"));
    PostgresLockService::new(store, issuer())
}

/// The factory the conformance suite calls once per test.
pub async fn postgres_backend() -> Option<Arc<dyn LockService>> {
    Some(Arc::new(service().await?))
}

/// An administrative connection to the test database (outside lockd).
pub async fn admin(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("admin connection to the test database failed: {e}"))
}

/// Drops `schema` and everything in it.
pub async fn drop_schema(url: &str, schema: &str) {
    let mut conn = admin(url).await;
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await;
}

/// Drops test schemas of runs that started over an hour ago (once per binary).
async fn drop_old_schemas(url: &str) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let mut conn = admin(url).await;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'lockd\\_t\\_%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        let cutoff = now_secs().saturating_sub(3600);
        for name in names {
            let started = name
                .split('_')
                .nth(2)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            if started < cutoff {
                let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .execute(&mut conn)
                    .await;
            }
        }
    })
    .await;
}

fn docker_answers() -> bool {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return true;
    }
    std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
}

/// Starts one PostgreSQL container for this test binary on a thread (and runtime) of its own,
/// so that it outlives every test's runtime; it is left running until the process exits.
fn start_container() -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = tx.send(Err(format!("no runtime for testcontainers: {e}")));
                return;
            }
        };
        runtime.block_on(async move {
            use testcontainers_modules::postgres::Postgres;
            use testcontainers_modules::testcontainers::runners::AsyncRunner;
            let node = match Postgres::default().start().await {
                Ok(node) => node,
                Err(e) => {
                    let _ = tx.send(Err(format!("starting a PostgreSQL container failed: {e}")));
                    return;
                }
            };
            let port = match node.get_host_port_ipv4(5432).await {
                Ok(port) => port,
                Err(e) => {
                    let _ = tx.send(Err(format!("PostgreSQL container has no port: {e}")));
                    return;
                }
            };
            let _ = tx.send(Ok(format!(
                "postgres://postgres:postgres@127.0.0.1:{port}/postgres"
            )));
            // Keep the container (owned by `node`) alive for the rest of the process.
            std::future::pending::<()>().await;
            drop(node);
        });
    });
    rx.recv_timeout(Duration::from_secs(180))
        .map_err(|_| "the PostgreSQL container did not start in time".to_owned())?
}

/// The token issuer of every service a test connects: one secret, as several lockd processes
/// sharing a backend must have (each checks the MAC of every token presented to it).
pub fn issuer() -> TokenIssuer {
    TokenIssuer::new(lockcore::TokenSecret::new([7u8; 32]).expect("32 bytes is long enough"))
}
