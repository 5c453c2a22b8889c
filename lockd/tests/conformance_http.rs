//! The whole conformance suite, through lockd's HTTP API: a lockd server runs in-process (one
//! per backend, shared by all checks), and each check talks to it through
//! `connect_backend("http://...")`, i.e. `lockd-client`.
//!
//! Suites:
//! - `memory`: lockd on `memory://`;
//! - `memory_with_data_dir`: lockd on `memory://` with restart protection (the state file
//!   written on every grant must not change any behaviour);
//!
//! lockd on Redis and on Postgres runs the suite through the real binary in
//! `client_conformance.rs`; it is not repeated here.

use std::sync::{Arc, OnceLock};

use lockcore::{LockService, TokenIssuer};
use lockd::{connect_backend, BackendOptions, Server, ServerConfig};

/// Starts a lockd on `backend` in a thread of its own (so it outlives each test's runtime) and
/// returns its URL.
fn start_shared_server(
    backend: String,
    data_dir: Option<std::path::PathBuf>,
) -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        runtime.block_on(async move {
            let mut config = ServerConfig::default();
            config.listen = ([127, 0, 0, 1], 0).into();
            config.backend = backend;
            config.data_dir = data_dir;
            match Server::bind(config).await {
                Ok(server) => {
                    let _ = tx.send(Ok(server.url()));
                    let _ = server.run_until(std::future::pending()).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    rx.recv().map_err(|e| e.to_string())?
}

async fn client(url: &str) -> Arc<dyn LockService> {
    connect_backend(url, &BackendOptions::new(TokenIssuer::random()))
        .await
        .expect("an http:// backend for the shared server")
}

async fn memory() -> Option<Arc<dyn LockService>> {
    static URL: OnceLock<String> = OnceLock::new();
    let url = URL.get_or_init(|| {
        start_shared_server("memory://".into(), None).expect("lockd on memory:// starts")
    });
    Some(client(url).await)
}

async fn memory_with_data_dir() -> Option<Arc<dyn LockService>> {
    static URL: OnceLock<String> = OnceLock::new();
    let url = URL.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        start_shared_server("memory://".into(), Some(dir)).expect("lockd on memory:// starts")
    });
    Some(client(url).await)
}

/// A lockd on the backend named by `var`, or a loud skip.
mod over_memory {
    conformance_tests::conformance_suite!(
        super::memory,
        conformance_tests::Capabilities::default()
    );
}

mod over_memory_with_data_dir {
    conformance_tests::conformance_suite!(
        super::memory_with_data_dir,
        conformance_tests::Capabilities::default()
    );
}
