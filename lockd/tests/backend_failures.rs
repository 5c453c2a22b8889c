//! How backend failures reach clients: served in-process with `Server::bind_with_service` over a
//! test double whose every operation fails the way it is told to. An outage is `503
//! unavailable`, a bug is `500 internal` without its details, and `/readyz` reports the outage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockcore::{
    async_trait, AcquireRequest, Fence, Grant, Lease, ListQuery, LockError, LockInfo, LockPage,
    LockResult, LockService, LockToken, ObjectId,
};
use lockd::{Server, ServerConfig};
use serde_json::{json, Value};

/// A backend that answers every call with the configured error.
#[derive(Debug)]
struct Failing(Mutex<LockError>);

impl Failing {
    fn fail(&self) -> LockError {
        self.0.lock().expect("error slot").clone()
    }
}

#[async_trait]
impl LockService for Failing {
    fn backend(&self) -> &'static str {
        "failing"
    }
    async fn acquire_with(&self, _: &AcquireRequest) -> LockResult<Grant> {
        Err(self.fail())
    }
    async fn release_many(
        &self,
        _: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        Err(self.fail())
    }
    async fn renew_many(
        &self,
        _: &[(ObjectId, LockToken)],
        _: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        Err(self.fail())
    }
    async fn downgrade(&self, _: &ObjectId, _: &LockToken) -> LockResult<Lease> {
        Err(self.fail())
    }
    async fn release(&self, _: &ObjectId, _: &LockToken) -> LockResult<Fence> {
        Err(self.fail())
    }
    async fn renew(&self, _: &ObjectId, _: &LockToken, _: Duration) -> LockResult<Lease> {
        Err(self.fail())
    }
    async fn validate(&self, _: &ObjectId, _: &LockToken) -> LockResult<Lease> {
        Err(self.fail())
    }
    async fn inspect(&self, _: &ObjectId) -> LockResult<Option<LockInfo>> {
        Err(self.fail())
    }
    async fn list(&self, _: &ListQuery) -> LockResult<LockPage> {
        Err(self.fail())
    }
    async fn health(&self) -> LockResult<()> {
        Err(self.fail())
    }
}

async fn serve(error: LockError) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut config = ServerConfig::default();
    config.listen = ([127, 0, 0, 1], 0).into();
    let service = Arc::new(Failing(Mutex::new(error)));
    let server = Server::bind_with_service(config, service)
        .await
        .expect("binds");
    let url = server.url();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

async fn call(url: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let request = match body {
        Some(body) => client.post(format!("{url}{path}")).json(&body),
        None => client.get(format!("{url}{path}")),
    };
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

fn requests() -> Vec<(&'static str, Option<Value>)> {
    // A well-formed token, so the request reaches the backend.
    let issuer = lockcore::TokenIssuer::random();
    let object = ObjectId::new("o").expect("valid");
    let token = issuer.seal(issuer.prepare(), &object, Fence(1));
    let token = token.expose();
    vec![
        (
            "/v1/locks/acquire",
            Some(json!({"object": "o", "owner": "w", "ttl_ms": 1000})),
        ),
        (
            "/v1/locks/release",
            Some(json!({"object": "o", "token": token})),
        ),
        (
            "/v1/locks/renew",
            Some(json!({"object": "o", "token": token, "ttl_ms": 1000})),
        ),
        (
            "/v1/locks/validate",
            Some(json!({"object": "o", "token": token})),
        ),
        (
            "/v1/locks/acquire",
            Some(
                json!({"objects": [{"object": "o"}, {"object": "p", "mode": "shared"}],
                        "owner": "w", "ttl_ms": 1000}),
            ),
        ),
        (
            "/v1/locks/release",
            Some(json!({"locks": [{"object": "o", "token": token}]})),
        ),
        (
            "/v1/locks/renew",
            Some(json!({"locks": [{"object": "o", "token": token}], "ttl_ms": 1000})),
        ),
        (
            "/v1/locks/downgrade",
            Some(json!({"object": "o", "token": token})),
        ),
        ("/v1/locks/inspect", Some(json!({"object": "o"}))),
        ("/v1/locks", None),
    ]
}

#[tokio::test]
async fn a_backend_outage_is_unavailable_on_every_operation_and_readyz() {
    let (url, _stop) = serve(LockError::unavailable("redis", "connection refused")).await;
    for (path, body) in requests() {
        let (status, reply) = call(&url, path, body).await;
        assert_eq!(status, 503, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], "unavailable", "{path}");
    }
    let (status, reply) = call(&url, "/readyz", None).await;
    assert_eq!(status, 503);
    assert_eq!(reply["error"]["code"], "unavailable");
    let (status, _) = call(&url, "/healthz", None).await;
    assert_eq!(status, 200, "liveness does not depend on the backend");
}

#[tokio::test]
async fn a_backend_bug_is_internal_and_its_details_stay_in_the_log() {
    let (url, _stop) = serve(LockError::Internal("secret detail: row 42 corrupt".into())).await;
    for (path, body) in requests() {
        let (status, reply) = call(&url, path, body).await;
        assert_eq!(status, 500, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], "internal", "{path}");
        assert!(!reply.to_string().contains("row 42"), "{reply}");
    }
}
