//! A lockd gRPC server in the test's own runtime, over the memory backend, on 127.0.0.1:0.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use lockcore::{LockService, TokenIssuer};
use lockd_grpc::{serve, GrpcClient, GrpcConfig, GrpcOptions};
use tokio::sync::oneshot;

/// A running server: its address, the backend behind it, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub backend: Arc<dyn LockService>,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), lockd_grpc::ServeError>>,
}

impl Running {
    /// The server's `grpc://` URL.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// A client of this server, with `key` when given.
    pub fn client(&self, key: Option<&str>) -> GrpcClient {
        let mut config = GrpcConfig::from_url(self.url());
        if let Some(key) = key {
            config = config.with_api_key(key);
        }
        GrpcClient::new(config).expect("a valid client config")
    }

    /// Asks the server to stop and waits for it.
    pub async fn stop(mut self) -> Result<(), lockd_grpc::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .expect("the server task does not panic")
    }
}

/// The memory backend as the tests use it.
pub fn memory() -> Arc<dyn LockService> {
    Arc::new(MemoryLockService::new(
        MemoryStore::new(MemoryConfig::default()),
        TokenIssuer::random(),
    ))
}

/// Starts a server over `backend` with `options`.
pub async fn start_with(backend: Arc<dyn LockService>, options: GrpcOptions) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, backend.clone(), options, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        backend,
        stop: Some(stop),
        task,
    }
}

/// Starts an open server over a fresh memory backend.
pub async fn start() -> Running {
    start_with(memory(), GrpcOptions::default()).await
}
