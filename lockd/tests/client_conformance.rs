//! The whole shared conformance suite through the network: `lockd-client` -> the real `lockd`
//! binary -> memory, Redis (`LOCKD_TEST_REDIS_URL`) and Postgres (`LOCKD_TEST_POSTGRES_URL`).
//!
//! One server per backend is shared by every test of this binary (each check uses its own
//! object prefix, so they run in parallel against it). It is a child of a small `sh` that holds
//! the read end of a pipe from this process: when the test binary exits, for whatever reason,
//! the pipe closes and the shell stops lockd.
//!
//! The memory server runs with an API key, so every endpoint is also exercised authenticated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Setup failures should fail the test loudly.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lockcore::LockService;
use lockd_client::{ClientConfig, LockdClient};

/// The API key the shared memory server requires.
const API_KEY: &str = "client-conformance-key";

/// A lockd that lives as long as this test process.
struct SharedServer {
    url: String,
    _shell: Child,
    /// Closing this (at process exit) tells the shell to stop lockd.
    _lifeline: ChildStdin,
}

/// Starts `lockd serve --backend BACKEND` behind the lifeline shell and reads its URL.
fn start_shared(backend: &str, api_key: Option<&str>) -> Result<SharedServer, String> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#""$0" "$@" & pid=$!; read -r _line; kill -TERM "$pid" 2>/dev/null; wait "$pid""#)
        .arg(env!("CARGO_BIN_EXE_lockd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--backend", backend])
        .args(["--log", "error", "--shutdown-timeout", "1s"]);
    if let Some(key) = api_key {
        command.args(["--api-key", key]);
    }
    for var in support::LOCKD_ENV {
        command.env_remove(var);
    }
    let mut shell = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start sh for lockd: {e}"))?;
    let lifeline = shell.stdin.take().ok_or("no stdin pipe")?;
    let stdout = shell.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep draining so lockd never blocks on a full pipe.
        for _ in lines {}
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| format!("lockd --backend {backend} printed nothing within 60 s"))?
        .ok_or_else(|| format!("lockd --backend {backend} exited before listening (see stderr)"))?
        .map_err(|e| format!("cannot read lockd's stdout: {e}"))?;
    let url = first
        .strip_prefix("lockd listening on ")
        .ok_or_else(|| format!("unexpected first line from lockd: {first:?}"))?
        .trim()
        .to_owned();
    Ok(SharedServer {
        url,
        _shell: shell,
        _lifeline: lifeline,
    })
}

/// A client of the shared server for `backend`, started on first use.
fn client_of(
    cell: &'static OnceLock<Result<SharedServer, String>>,
    backend: &str,
    api_key: Option<&str>,
) -> Arc<dyn LockService> {
    let server = cell.get_or_init(|| start_shared(backend, api_key));
    let server = match server {
        Ok(server) => server,
        Err(e) => panic!("shared lockd for {backend} did not start: {e}"),
    };
    let mut config = ClientConfig::from_url(&server.url);
    config.api_key = api_key.map(str::to_owned);
    Arc::new(LockdClient::new(config).expect("client for the shared server"))
}

/// The backend URL from `var`, or a loud skip (a failure under `LOCKD_REQUIRE_BACKENDS=1`).
fn backend_from_env(var: &str, name: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            conformance_tests::skip_or_fail(
                &format!("lockd-client -> lockd -> {name}"),
                &format!("{var} is not set"),
            );
            None
        }
    }
}

mod through_lockd_on_memory {
    use super::*;

    static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        Some(client_of(&SERVER, "memory://", Some(API_KEY)))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}

mod through_lockd_on_redis {
    use super::*;

    static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        let backend = backend_from_env("LOCKD_TEST_REDIS_URL", "redis")?;
        Some(client_of(&SERVER, &backend, None))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}

mod through_lockd_on_postgres {
    use super::*;

    static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        let backend = backend_from_env("LOCKD_TEST_POSTGRES_URL", "postgres")?;
        Some(client_of(&SERVER, &backend, None))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}
