//! `lockd-client` against the real `lockd` binary, for what the conformance suite does not
//! cover: API keys, the event log and stream, lock times, long blocking acquires, and the lease
//! guard over HTTP, including lockd going away under it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Setup failures should fail the test loudly.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lockcore::{ListQuery, LockError, LockService, ObjectId, OwnerId};
use lockd_client::{ClientConfig, LeaseGuard, LeaseState, LockdClient, LossReason};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `lockd serve` on memory:// for one test; killed when dropped.
struct Lockd {
    child: Child,
    url: String,
}

impl Lockd {
    async fn start(extra: &[&str]) -> Lockd {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lockd"));
        command.args(["serve", "--log", "error"]).args(extra);
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command.args(["--grpc-listen", "off"]);
        for var in support::LOCKD_ENV {
            command.env_remove(var);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn lockd");
        let stdout = child.stdout.take().expect("stdout pipe");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("lockd printed its address in time")
            .expect("read lockd's stdout")
            .expect("lockd exited before listening");
        let url = first
            .strip_prefix("lockd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Lockd { child, url }
    }

    fn client(&self) -> LockdClient {
        LockdClient::new(ClientConfig::from_url(&self.url)).unwrap()
    }

    fn client_with(&self, config: impl FnOnce(ClientConfig) -> ClientConfig) -> LockdClient {
        LockdClient::new(config(ClientConfig::from_url(&self.url))).unwrap()
    }
}

fn object(name: &str) -> ObjectId {
    ObjectId::new(format!("/client-api/{name}")).unwrap()
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).unwrap()
}

/// With API keys configured, a missing or wrong key is refused as an `api_key` argument error
/// (not retryable); the right key works.
#[tokio::test]
async fn a_missing_or_wrong_api_key_is_refused_as_an_argument_error() {
    let lockd = Lockd::start(&["--api-key", "right-key"]).await;
    let (object, owner) = (object("auth"), owner("a"));
    for client in [
        lockd.client(),
        lockd.client_with(|c| c.with_api_key("wrong-key")),
    ] {
        let err = client
            .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                LockError::InvalidArgument {
                    field: "api_key",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }
    let client = lockd.client_with(|c| c.with_api_key("right-key"));
    let lease = client
        .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    client.release(&object, &lease.token).await.unwrap();
    client.health().await.unwrap();
}

/// The event log records the grant and the release with owner and fence, and never a token.
#[tokio::test]
async fn the_event_log_records_grants_and_releases_without_tokens() {
    let lockd = Lockd::start(&[]).await;
    let client = lockd.client();
    let (object, owner) = (object("events"), owner("ev"));
    let lease = client
        .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    client.release(&object, &lease.token).await.unwrap();
    let refused = client.release(&object, &lease.token).await.unwrap_err();
    assert!(matches!(refused, LockError::NotHeld { .. }));

    let events = client.events(None, 1000).await.unwrap();
    let mine: Vec<_> = events
        .iter()
        .filter(|e| e.object == object.as_str())
        .collect();
    let kinds: Vec<_> = mine.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["grant", "release", "release_refused"]);
    assert_eq!(mine[0].owner.as_deref(), Some("ev"));
    assert_eq!(mine[0].fence, Some(lease.fence.get()));
    assert_eq!(mine[2].reason.as_deref(), Some("not_held"));
    assert!(mine.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(mine.iter().all(|e| e.time.is_some()));
    let json = serde_json::to_string(&events).unwrap();
    assert!(
        !json.contains(lease.token.expose()),
        "an event leaked a token"
    );

    let after_first = client.events(Some(mine[0].seq), 1000).await.unwrap();
    assert!(after_first.iter().all(|e| e.seq > mine[0].seq));
}

/// The live event stream delivers a grant made after it was opened.
#[tokio::test]
async fn the_event_stream_delivers_live_grants() {
    let lockd = Lockd::start(&[]).await;
    let client = lockd.client();
    let mut stream = client.event_stream(None).await.unwrap();
    let (object, owner) = (object("stream"), owner("live"));
    let lease = client
        .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = stream.next().await.expect("stream open").expect("an event");
            if event.object == object.as_str() {
                return event;
            }
        }
    })
    .await
    .expect("the grant arrives on the stream");
    assert_eq!(event.kind, "grant");
    assert_eq!(event.fence, Some(lease.fence.get()));
}

/// Inspect and list report the server's acquisition and expiry times.
#[tokio::test]
async fn inspect_and_list_report_lock_times() {
    let lockd = Lockd::start(&[]).await;
    let client = lockd.client();
    let (object, owner) = (object("times/a"), owner("t"));
    let before = SystemTime::now() - Duration::from_secs(1);
    let ttl = Duration::from_secs(20);
    client
        .acquire(&object, &owner, ttl, Duration::ZERO)
        .await
        .unwrap();
    let info = client.inspect(&object).await.unwrap().expect("held");
    assert!(info.acquired_at >= before, "{info:?}");
    assert!(info.expires_at > info.acquired_at);
    assert!(info.expires_at <= info.acquired_at + ttl + Duration::from_secs(1));
    assert!(info.ttl <= ttl);
    let page = client
        .list(&ListQuery::new("/client-api/times/", 10))
        .await
        .unwrap();
    assert_eq!(page.locks.len(), 1);
    assert_eq!(page.locks[0].fence, info.fence);
    assert_eq!(page.locks[0].owner, owner);
}

/// A blocking acquire may wait longer than the request timeout: its deadline includes the wait.
#[tokio::test]
async fn a_blocking_acquire_outlasts_the_request_timeout() {
    let lockd = Lockd::start(&[]).await;
    let client = lockd.client_with(|c| c.with_request_timeout(Duration::from_millis(300)));
    let object = object("long-wait");
    let first = client
        .acquire(
            &object,
            &owner("first"),
            Duration::from_millis(900),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let second = client
        .acquire(
            &object,
            &owner("second"),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(second.fence > first.fence);
}

/// A client keeps working across a lockd restart: its pooled connections to the old process
/// are dropped, not reused, and the old process's token is refused by the new one.
#[tokio::test]
async fn a_client_survives_a_lockd_restart() {
    let mut lockd = Lockd::start(&[]).await;
    let client = lockd.client();
    let object = object("restart");
    let before = client
        .acquire(
            &object,
            &owner("a"),
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let listen = lockd.url.trim_start_matches("http://").to_owned();
    lockd.child.kill().await.unwrap();
    lockd.child.wait().await.unwrap();

    let _restarted = Lockd::start(&["--listen", &listen]).await;
    // The same client, the same URL: the first request goes out on a fresh connection.
    assert_eq!(client.inspect(&object).await.unwrap(), None);
    // The restarted process signs with a new random secret: the old token is not one of its own.
    let err = client.release(&object, &before.token).await.unwrap_err();
    assert!(matches!(err, LockError::InvalidToken { .. }), "{err:?}");
    let after = client
        .acquire(
            &object,
            &owner("b"),
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(after.fence > before.fence, "fences never go backwards");
}

/// Over HTTP, a guard renews a short lease beyond its TTL, and reports a lock taken from it.
#[tokio::test]
async fn a_guard_over_http_renews_and_reports_a_stolen_lock() {
    let lockd = Lockd::start(&[]).await;
    let client: Arc<dyn LockService> = Arc::new(lockd.client());
    let object = object("guard-stolen");
    let ttl = Duration::from_millis(400);
    let guard = LeaseGuard::acquire(
        client.clone(),
        &object,
        &owner("holder"),
        ttl,
        Duration::ZERO,
    )
    .await
    .unwrap();
    tokio::time::sleep(ttl * 3).await;
    assert!(guard.is_held());
    client.validate(&object, &guard.token()).await.unwrap();

    client.release(&object, &guard.token()).await.unwrap();
    let thief = client
        .acquire(
            &object,
            &owner("thief"),
            Duration::from_secs(10),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let state = tokio::time::timeout(ttl * 5, guard.lost())
        .await
        .expect("loss reported");
    // Refused as TokenMismatch once the thief holds it, or NotHeld if a renew fell between the
    // release and the thief's grant.
    assert!(
        matches!(
            state,
            LeaseState::Lost(LossReason::Refused(
                LockError::TokenMismatch { .. } | LockError::NotHeld { .. }
            ))
        ),
        "{state:?}"
    );
    assert!(thief.fence > guard.fence());
}

/// When lockd goes away, the guard reports the lease lost by the time its TTL runs out, and the
/// client reports `Unavailable`.
#[tokio::test]
async fn a_guard_reports_loss_when_lockd_goes_away() {
    let mut lockd = Lockd::start(&[]).await;
    let client: Arc<dyn LockService> = Arc::new(lockd.client_with(|c| {
        c.with_request_timeout(Duration::from_millis(200))
            .with_connect_timeout(Duration::from_millis(200))
    }));
    let object = object("guard-gone");
    let ttl = Duration::from_millis(600);
    let guard = LeaseGuard::acquire(
        client.clone(),
        &object,
        &owner("holder"),
        ttl,
        Duration::ZERO,
    )
    .await
    .unwrap();
    let mut signal = guard.subscribe();

    lockd.child.kill().await.unwrap();

    tokio::time::timeout(ttl * 4, signal.wait_for(|s| !s.is_held()))
        .await
        .expect("the loss is reported once the lease runs out")
        .unwrap();
    match guard.state() {
        LeaseState::Lost(LossReason::Expired {
            last_error:
                Some(LockError::Unavailable {
                    backend: "http", ..
                }),
        }) => {}
        other => panic!("expected expiry with lockd unavailable, got {other:?}"),
    }
    let err = client.inspect(&object).await.unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Unavailable {
                backend: "http",
                ..
            }
        ),
        "{err:?}"
    );
    let err = guard.release().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

/// Over HTTP, one guard keeps a multi-object grant of mixed modes alive beyond its TTL with
/// batched renewals, while other readers join its shared object, and releases it in one request.
#[tokio::test]
async fn a_guard_over_http_keeps_a_multi_object_grant_of_mixed_modes() {
    use lockcore::{AcquireRequest, LockMode, LockSpec};
    let lockd = Lockd::start(&[]).await;
    let client: Arc<dyn LockService> = Arc::new(lockd.client());
    let (dir, file) = (object("guard-dir"), object("guard-file"));
    let ttl = Duration::from_millis(400);
    let request = AcquireRequest::many(
        vec![
            LockSpec::shared(dir.clone()),
            LockSpec::exclusive(file.clone()),
        ],
        owner("renamer"),
        ttl,
    );
    let guard = LeaseGuard::acquire_request(client.clone(), &request, Default::default())
        .await
        .unwrap();
    let reader = client
        .acquire_in(
            &dir,
            LockMode::Shared,
            &owner("reader"),
            ttl * 10,
            Duration::ZERO,
        )
        .await
        .unwrap();
    tokio::time::sleep(ttl * 3).await;
    assert!(guard.is_held(), "{:?}", guard.state());
    let modes: Vec<LockMode> = guard.leases().iter().map(|l| l.mode).collect();
    assert_eq!(modes, [LockMode::Shared, LockMode::Exclusive]);
    let info = client.inspect(&dir).await.unwrap().unwrap();
    assert_eq!(info.holders.len(), 2);
    assert!(matches!(
        client
            .acquire(&file, &owner("intruder"), ttl, Duration::ZERO)
            .await,
        Err(LockError::Locked { .. })
    ));

    let released = guard.release_all().await.unwrap();
    assert!(released.iter().all(Result::is_ok), "{released:?}");
    assert_eq!(client.inspect(&file).await.unwrap(), None);
    let info = client.inspect(&dir).await.unwrap().unwrap();
    assert_eq!(
        info.owner.as_str(),
        "reader",
        "the other reader keeps its lease"
    );
    client.release(&dir, &reader.token).await.unwrap();
}
