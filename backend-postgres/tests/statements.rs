//! Proof that every lock operation is one statement in one round trip.
//!
//! The service talks to PostgreSQL through a small proxy in this test that reads the frontend
//! half of the wire protocol and counts the client's messages: `Query` (simple protocol: one
//! statement, one round trip), and for the extended protocol `Parse`, `Bind`, `Execute` and
//! `Sync`. The client waits for the server only after a `Sync` or a `Query`, so their sum is
//! the number of round trips; each `Execute` runs one statement; and since an implicit
//! transaction ends at each `Sync`, one `Sync` also means one transaction. After a warm-up
//! (statements prepared once per connection), every operation must cost exactly one
//! `Bind`/`Execute`/`Sync` and no `Parse`, including an acquire, renew or release of
//! [`MAX_OBJECTS_PER_REQUEST`] objects at once (the objects travel as arrays).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockcore::store::{Attempt, Attempted, Claim, Queueing};
use lockcore::{
    AcquireRequest, ListQuery, LockError, LockMode, LockService, LockSpec, LockStore, ObjectId,
    OwnerId, TokenDigest, MAX_OBJECTS_PER_REQUEST,
};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Client messages seen by the proxy, by kind.
#[derive(Debug, Default)]
struct Counts {
    query: AtomicU64,
    parse: AtomicU64,
    bind: AtomicU64,
    execute: AtomicU64,
    sync: AtomicU64,
}

/// A snapshot of [`Counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    query: u64,
    parse: u64,
    bind: u64,
    execute: u64,
    sync: u64,
}

impl Seen {
    fn round_trips(&self) -> u64 {
        self.sync + self.query
    }

    fn statements(&self) -> u64 {
        self.execute + self.query
    }
}

impl Counts {
    fn snapshot(&self) -> Seen {
        Seen {
            query: self.query.load(Ordering::SeqCst),
            parse: self.parse.load(Ordering::SeqCst),
            bind: self.bind.load(Ordering::SeqCst),
            execute: self.execute.load(Ordering::SeqCst),
            sync: self.sync.load(Ordering::SeqCst),
        }
    }

    fn since(&self, before: Seen) -> Seen {
        let now = self.snapshot();
        Seen {
            query: now.query - before.query,
            parse: now.parse - before.parse,
            bind: now.bind - before.bind,
            execute: now.execute - before.execute,
            sync: now.sync - before.sync,
        }
    }

    fn count(&self, kind: u8) {
        let counter = match kind {
            b'Q' => &self.query,
            b'P' => &self.parse,
            b'B' => &self.bind,
            b'E' => &self.execute,
            b'S' => &self.sync,
            _ => return,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// Starts the counting proxy in front of `upstream` (`host:port`); returns its port.
async fn start_proxy(upstream: String, counts: Arc<Counts>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
    let port = listener.local_addr().expect("proxy addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, counts) = (upstream.clone(), counts.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let _ = forward_counting(&mut client_read, &mut server_write, &counts).await;
            });
        }
    });
    port
}

/// Forwards the client's half of one connection, counting its typed messages.
async fn forward_counting(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    counts: &Counts,
) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSSENC_REQUEST: u32 = 80_877_104;
    // Untyped start-up messages: optional SSL/GSS requests (refused by the server with one
    // byte, since the test URL disables TLS), then the StartupMessage.
    loop {
        let len = from.read_u32().await?;
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        from.read_exact(&mut body).await?;
        to.write_u32(len).await?;
        to.write_all(&body).await?;
        let code = body
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if code != Some(SSL_REQUEST) && code != Some(GSSENC_REQUEST) {
            break;
        }
    }
    loop {
        let kind = from.read_u8().await?;
        let len = from.read_u32().await?;
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        from.read_exact(&mut body).await?;
        counts.count(kind);
        to.write_u8(kind).await?;
        to.write_u32(len).await?;
        to.write_all(&body).await?;
    }
}

/// Rewrites the test URL to point at the proxy, without TLS so the proxy can read it.
fn via_proxy(url: &str, port: u16) -> (String, String) {
    let mut parsed = url::Url::parse(url).expect("test URL parses");
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let upstream = format!("{host}:{}", parsed.port().unwrap_or(5432));
    parsed.set_host(Some("127.0.0.1")).expect("host");
    parsed.set_port(Some(port)).expect("port");
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "sslmode")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair("sslmode", "disable");
    (parsed.to_string(), upstream)
}

/// Every operation, granted or refused, is one statement, one round trip, one transaction,
/// and re-uses its prepared statement.
#[tokio::test]
async fn every_operation_is_one_statement_in_one_round_trip() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let counts = Arc::new(Counts::default());
    let (proxy_url, upstream) = via_proxy(&url, 0);
    let port = start_proxy(upstream, counts.clone()).await;
    let (proxy_url, _) = via_proxy(&proxy_url, port);
    let mut config = common::test_config(&proxy_url);
    // One pooled connection, so that the warm-up prepares every statement on it; no reaper.
    config.max_connections = 1;
    config.reap_interval = Duration::ZERO;
    let service = common::connect(config).await;

    let tag: u64 = rand::rng().random();
    let target = ObjectId::new(format!("stmt/{tag:x}/a")).expect("valid");
    let (a, b) = (
        OwnerId::new("a").expect("valid"),
        OwnerId::new("b").expect("valid"),
    );
    let ttl = Duration::from_secs(30);
    let listing = ListQuery::new(format!("stmt/{tag:x}/"), 10);

    // Warm-up: each statement once (the first use on a connection also prepares it).
    let lease = service
        .acquire(&target, &a, ttl, Duration::ZERO)
        .await
        .expect("granted");
    let _ = service.acquire(&target, &b, ttl, Duration::ZERO).await;
    service
        .renew(&target, &lease.token, ttl)
        .await
        .expect("renewed");
    service
        .validate(&target, &lease.token)
        .await
        .expect("valid");
    service.inspect(&target).await.expect("inspect");
    service.list(&listing).await.expect("list");
    service
        .list(&ListQuery::new("", 1))
        .await
        .expect("list all");
    service
        .release(&target, &lease.token)
        .await
        .expect("released");
    let many_objects: Vec<ObjectId> = (0..MAX_OBJECTS_PER_REQUEST)
        .map(|i| ObjectId::new(format!("stmt/{tag:x}/many/{i:02}")).expect("valid"))
        .collect();
    let many = AcquireRequest::many(
        many_objects
            .iter()
            .cloned()
            .map(LockSpec::exclusive)
            .collect(),
        a.clone(),
        ttl,
    );
    let grant = service.acquire_with(&many).await.expect("granted");
    let _ = service
        .acquire_with(&many.clone().with_mode(LockMode::Shared))
        .await;
    let held: Vec<(ObjectId, lockcore::LockToken)> = grant
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    service.renew_many(&held, ttl).await.expect("renewed");
    service
        .downgrade(&held[0].0, &held[0].1)
        .await
        .expect("downgraded");
    service.release_many(&held).await.expect("released");

    async fn measured<T>(
        counts: &Counts,
        what: &str,
        op: impl std::future::Future<Output = T>,
    ) -> T {
        let before = counts.snapshot();
        let result = op.await;
        let seen = counts.since(before);
        assert_eq!(seen.round_trips(), 1, "{what}: {seen:?}");
        assert_eq!(seen.statements(), 1, "{what}: {seen:?}");
        assert_eq!(
            seen.parse, 0,
            "{what} was not re-using its prepared statement: {seen:?}"
        );
        result
    }

    let lease = measured(
        &counts,
        "acquire",
        service.acquire(&target, &a, ttl, Duration::ZERO),
    )
    .await
    .expect("granted");
    let refused = measured(
        &counts,
        "refused acquire",
        service.acquire(&target, &b, ttl, Duration::ZERO),
    )
    .await;
    assert!(
        matches!(refused, Err(LockError::Locked { .. })),
        "{refused:?}"
    );
    measured(&counts, "renew", service.renew(&target, &lease.token, ttl))
        .await
        .expect("renewed");
    measured(&counts, "validate", service.validate(&target, &lease.token))
        .await
        .expect("valid");
    let info = measured(&counts, "inspect", service.inspect(&target))
        .await
        .expect("inspect");
    assert!(info.is_some());
    let page = measured(&counts, "list", service.list(&listing))
        .await
        .expect("list");
    assert_eq!(page.locks.len(), 1);
    measured(&counts, "release", service.release(&target, &lease.token))
        .await
        .expect("released");
    let again = measured(
        &counts,
        "refused release",
        service.release(&target, &lease.token),
    )
    .await;
    assert!(matches!(again, Err(LockError::NotHeld { .. })), "{again:?}");
    // A blocking acquire of a free object is one attempt, so also one statement.
    let lease = measured(
        &counts,
        "blocking acquire",
        service.acquire(&target, &b, ttl, Duration::from_secs(5)),
    )
    .await
    .expect("granted");
    measured(&counts, "release", service.release(&target, &lease.token))
        .await
        .expect("released");

    // However many objects a request names, each operation on them is still one statement.
    let grant = measured(&counts, "64-object acquire", service.acquire_with(&many))
        .await
        .expect("granted");
    assert_eq!(grant.leases.len(), MAX_OBJECTS_PER_REQUEST);
    let refused = measured(
        &counts,
        "refused 64-object acquire",
        service.acquire_with(&many.clone().with_mode(LockMode::Shared)),
    )
    .await;
    match refused {
        Err(LockError::Locked { conflicts, .. }) => {
            assert_eq!(conflicts.len(), MAX_OBJECTS_PER_REQUEST)
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let held: Vec<(ObjectId, lockcore::LockToken)> = grant
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    let renewed = measured(&counts, "64-lease renew", service.renew_many(&held, ttl))
        .await
        .expect("renewed");
    assert!(renewed.iter().all(Result::is_ok), "{renewed:?}");
    let lease = measured(
        &counts,
        "downgrade",
        service.downgrade(&held[0].0, &held[0].1),
    )
    .await
    .expect("downgraded");
    assert_eq!(lease.mode, LockMode::Shared);
    let released = measured(&counts, "64-lease release", service.release_many(&held))
        .await
        .expect("released");
    assert!(released.iter().all(Result::is_ok), "{released:?}");

    // The store's own primitives that lockcore::Locks calls around waiting and lost replies:
    // queueing, leaving the queue and taking back a grant are one statement each too.
    let store = service.store();
    let blocker = service
        .acquire(&target, &a, ttl, Duration::ZERO)
        .await
        .expect("granted");
    let claims: Vec<Claim> = many_objects
        .iter()
        .chain([&target])
        .enumerate()
        .map(|(i, object)| Claim {
            object: object.clone(),
            mode: LockMode::Exclusive,
            digest: TokenDigest::from_bytes(&[u8::try_from(i).expect("small"); 32])
                .expect("32 bytes"),
            scope: lockcore::LockScope::Object,
        })
        .collect();
    let queueing = Some(Queueing {
        ticket: None,
        keep_for: Duration::from_secs(5),
    });
    let attempt = |queueing| Attempt {
        owner: &b,
        claims: &claims,
        ttl,
        queueing,
        lock_delay: std::time::Duration::ZERO,
    };
    // Warm-up: each primitive once.
    let warm = store.try_acquire(attempt(queueing)).await.expect("refused");
    let Attempted::Refused {
        ticket: Some(warm_ticket),
        ..
    } = warm
    else {
        panic!("expected a queued refusal, got {warm:?}");
    };
    let everything: Vec<ObjectId> = claims.iter().map(|c| c.object.clone()).collect();
    store
        .leave_queue(warm_ticket, &everything)
        .await
        .expect("left");
    store.abandon(&claims).await.expect("abandoned");

    let queued = measured(
        &counts,
        "queued 65-object refusal",
        store.try_acquire(attempt(queueing)),
    )
    .await
    .expect("refused");
    let Attempted::Refused {
        ticket: Some(ticket),
        ..
    } = queued
    else {
        panic!("expected a queued refusal, got {queued:?}");
    };
    let again = measured(
        &counts,
        "queued retry",
        store.try_acquire(attempt(Some(Queueing {
            ticket: Some(ticket),
            keep_for: Duration::from_secs(5),
        }))),
    )
    .await
    .expect("refused");
    assert!(matches!(again, Attempted::Refused { .. }), "{again:?}");
    measured(
        &counts,
        "leave_queue",
        store.leave_queue(ticket, &everything),
    )
    .await
    .expect("left");
    service
        .release(&target, &blocker.token)
        .await
        .expect("released");
    let granted = store.try_acquire(attempt(None)).await.expect("granted");
    assert!(matches!(granted, Attempted::Granted(_)), "{granted:?}");
    let undo = measured(&counts, "abandon", store.abandon(&claims))
        .await
        .expect("taken back");
    assert_eq!(undo, lockcore::Undo::TookBack);
}

/// Subtree locks and lock-delay change nothing about the cost in round trips: a subtree
/// acquire (granted, refused behind a holder under it, queued with its blockers named, retried),
/// 64 subtree claims at once, a renewal and a release of a subtree holder (which take tree
/// keys), an inspect that finds a lock-delay and a listing are each one statement, one round
/// trip, one transaction, with no re-`Parse`.
#[tokio::test]
async fn subtree_and_lock_delay_operations_are_one_statement_each() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let counts = Arc::new(Counts::default());
    let (proxy_url, upstream) = via_proxy(&url, 0);
    let port = start_proxy(upstream, counts.clone()).await;
    let (proxy_url, _) = via_proxy(&proxy_url, port);
    let mut config = common::test_config(&proxy_url);
    config.max_connections = 1;
    config.reap_interval = Duration::ZERO;
    let service = common::connect(config).await;

    let tag: u64 = rand::rng().random();
    let root = format!("/stmt/{tag:x}");
    let dir = ObjectId::new(format!("{root}/dir")).expect("valid");
    let file = ObjectId::new(format!("{root}/dir/sub/file")).expect("valid");
    let lapsed = ObjectId::new(format!("{root}/lapsed")).expect("valid");
    let (a, b) = (
        OwnerId::new("a").expect("valid"),
        OwnerId::new("b").expect("valid"),
    );
    let ttl = Duration::from_secs(30);
    let subtree = |owner: &OwnerId| {
        AcquireRequest::many(
            vec![LockSpec::subtree(dir.clone(), LockMode::Exclusive)],
            owner.clone(),
            ttl,
        )
        .with_lock_delay(Duration::from_secs(1))
    };
    let many = AcquireRequest::many(
        (0..MAX_OBJECTS_PER_REQUEST)
            .map(|i| {
                LockSpec::subtree(
                    ObjectId::new(format!("{root}/many/{i:02}")).expect("valid"),
                    LockMode::Exclusive,
                )
            })
            .collect(),
        a.clone(),
        ttl,
    );
    let listing = ListQuery::new(format!("{root}/"), 10);
    let claims = [Claim {
        object: dir.clone(),
        mode: LockMode::Exclusive,
        scope: lockcore::LockScope::Subtree,
        digest: TokenDigest::from_bytes(&[3; 32]).expect("32 bytes"),
    }];
    let attempt = |ticket| Attempt {
        owner: &b,
        claims: &claims,
        ttl,
        lock_delay: Duration::from_secs(1),
        queueing: Some(Queueing {
            ticket,
            keep_for: Duration::from_secs(5),
        }),
    };
    let store = service.store();

    // Warm-up: each statement once on the one connection.
    let lease = service
        .acquire_with(&subtree(&a))
        .await
        .expect("granted")
        .leases[0]
        .clone();
    let _ = service.acquire_with(&subtree(&b)).await;
    service
        .renew(&dir, &lease.token, ttl)
        .await
        .expect("renewed");
    service.inspect(&dir).await.expect("inspect");
    service.list(&listing).await.expect("list");
    service.release(&dir, &lease.token).await.expect("released");
    let grant = service.acquire_with(&many).await.expect("granted");
    let _ = service.acquire_with(&many).await;
    let held: Vec<(ObjectId, lockcore::LockToken)> = grant
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    service.release_many(&held).await.expect("released");
    let under = service
        .acquire(&file, &a, ttl, Duration::ZERO)
        .await
        .expect("granted");
    let Attempted::Refused {
        ticket: Some(ticket),
        ..
    } = store.try_acquire(attempt(None)).await.expect("refused")
    else {
        panic!("expected a queued refusal");
    };
    store
        .leave_queue(ticket, std::slice::from_ref(&dir))
        .await
        .expect("left");

    let measured = |what: &'static str| {
        let before = counts.snapshot();
        let counts = counts.clone();
        move || {
            let seen = counts.since(before);
            assert_eq!(seen.round_trips(), 1, "{what}: {seen:?}");
            assert_eq!(seen.statements(), 1, "{what}: {seen:?}");
            assert_eq!(seen.parse, 0, "{what} was prepared again: {seen:?}");
        }
    };

    let done = measured("refused subtree acquire");
    let refused = service.acquire_with(&subtree(&b)).await;
    done();
    assert!(
        matches!(refused, Err(LockError::Locked { .. })),
        "{refused:?}"
    );
    let done = measured("queued subtree refusal naming its blockers");
    let queued = store.try_acquire(attempt(None)).await.expect("refused");
    done();
    let Attempted::Refused {
        ticket: Some(ticket),
        blockers,
        ..
    } = queued
    else {
        panic!("expected a queued refusal, got {queued:?}");
    };
    assert_eq!(blockers.len(), 1, "{blockers:?}");
    let done = measured("queued subtree retry");
    let again = store
        .try_acquire(attempt(Some(ticket)))
        .await
        .expect("refused");
    done();
    assert!(matches!(again, Attempted::Refused { .. }), "{again:?}");
    let done = measured("leave_queue of a subtree entry");
    store
        .leave_queue(ticket, std::slice::from_ref(&dir))
        .await
        .expect("left");
    done();
    service
        .release(&file, &under.token)
        .await
        .expect("released");

    let done = measured("subtree acquire with lock-delay");
    let lease = service
        .acquire_with(&subtree(&a))
        .await
        .expect("granted")
        .leases[0]
        .clone();
    done();
    let done = measured("subtree renew");
    service
        .renew(&dir, &lease.token, ttl)
        .await
        .expect("renewed");
    done();
    let done = measured("subtree release");
    service.release(&dir, &lease.token).await.expect("released");
    done();
    let done = measured("64-subtree acquire");
    let grant = service.acquire_with(&many).await.expect("granted");
    done();
    let done = measured("refused 64-subtree acquire");
    let refused = service.acquire_with(&many).await;
    done();
    match refused {
        Err(LockError::Locked { conflicts, .. }) => {
            assert_eq!(conflicts.len(), MAX_OBJECTS_PER_REQUEST)
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let held: Vec<(ObjectId, lockcore::LockToken)> = grant
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    let done = measured("64-subtree renew");
    service.renew_many(&held, ttl).await.expect("renewed");
    done();

    // A lease that lapses with a lock-delay: inspect finds the delay in one statement.
    service
        .acquire_with(
            &AcquireRequest::new(lapsed.clone(), a.clone(), Duration::from_millis(20))
                .with_lock_delay(Duration::from_secs(5)),
        )
        .await
        .expect("granted");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done = measured("inspect in lock-delay");
    let info = service.inspect(&lapsed).await.expect("inspect");
    done();
    assert!(info.and_then(|i| i.delay).is_some(), "no delay shown");
    let done = measured("list");
    let page = service.list(&listing).await.expect("list");
    done();
    assert_eq!(page.locks.len(), 10, "{page:?}");
}
