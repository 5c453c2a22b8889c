//! Subtree locks and lock-delay on PostgreSQL (migration 6): what the shared conformance suite
//! cannot see from outside.
//!
//! * The phantom problem: a subtree claim and a claim under it, decided by concurrent
//!   transactions, never both see the other's row missing; several processes racing them
//!   never hold conflicting locks at once, and a claim waits for an uncommitted grant it could
//!   conflict with instead of reading past it.
//! * Lock-delay runs on the database clock, keeps the expired holder's row until the delay
//!   ends, and lets the next acquire delete it.
//! * Wake-ups across processes name subtrees, blockers are reported, lockd refuses isolation
//!   levels under which its locking would be wrong, and a subtree claim or a list page costs
//!   the same among many unrelated locks.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_postgres::PostgresLockService;
use lockcore::path::conflicts;
use lockcore::store::{Attempt, Attempted, Claim, Queueing};
use lockcore::{
    AcquireRequest, ConflictCause, LockError, LockMode, LockScope, LockService, LockSpec,
    LockStore, ObjectId, OwnerId, TokenDigest,
};
use rand::Rng;

const LONG: Duration = Duration::from_secs(30);

/// A fresh tree root of its own: `pgtest/<label>/<random>`.
fn root(label: &str) -> String {
    let tag: u64 = rand::rng().random();
    format!("pgtest/{label}/{tag:x}")
}

fn id(path: &str) -> ObjectId {
    ObjectId::new(path).expect("valid object id")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner id")
}

/// A connection in `schema`, as lockd's own are (outside lockd's pool).
async fn connect_in(url: &str, schema: &str) -> sqlx::PgConnection {
    use sqlx::ConnectOptions as _;
    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
        .expect("url")
        .options([("search_path", schema)])
        .connect()
        .await
        .expect("connect in the schema")
}

/// The kind of the first row `lockd_acquire` answers for one claim by `who`.
fn one_claim(who: &str, object: &str, mode: &str, scope: &str) -> String {
    format!(
        "SELECT r_kind FROM lockd_acquire('{who}', ARRAY['{object}'], '{{{mode}}}', \
         '{{{scope}}}', ARRAY['\\x01'::bytea], 60000, 0, false, NULL, 0) LIMIT 1"
    )
}

/// Waits until a statement of `application_name` is blocked on a lock inside PostgreSQL.
async fn blocked_on_a_lock(url: &str, application_name: &str) {
    let mut observer = common::admin(url).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(application_name)
        .fetch_one(&mut observer)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the request never waited for the uncommitted grant"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One claim a racing task may make.
#[derive(Debug, Clone, Copy)]
struct Kind {
    path: &'static str,
    scope: LockScope,
    mode: LockMode,
}

/// A racing task's grant while it holds it: its number, object, scope and mode.
type HeldRecord = (usize, String, LockScope, LockMode);

/// What the tasks of [`race`] saw.
#[derive(Debug, Default)]
struct RaceOutcome {
    /// Grants found in conflict with a grant their holder still held.
    overlaps: AtomicUsize,
    subtree_grants: AtomicUsize,
    object_grants: AtomicUsize,
}

/// 16 tasks on `services` (round robin), each making 40 random claims over a small tree under
/// `root`: subtree claims on the root and on a directory, object claims on and under them. A
/// task that is granted enters its claim in a shared record of current holders, checks it
/// against every other entry there, holds briefly, removes it and only then releases: so two
/// entries in conflict at once mean two conflicting holders at once.
async fn race(services: &[Arc<PostgresLockService>], root: &str) -> Arc<RaceOutcome> {
    use LockMode::{Exclusive, Shared};
    use LockScope::{Object, Subtree};
    const KINDS: [Kind; 8] = [
        Kind {
            path: "",
            scope: Subtree,
            mode: Exclusive,
        },
        Kind {
            path: "",
            scope: Subtree,
            mode: Shared,
        },
        Kind {
            path: "/a",
            scope: Subtree,
            mode: Exclusive,
        },
        Kind {
            path: "/a",
            scope: Object,
            mode: Exclusive,
        },
        Kind {
            path: "/a/x",
            scope: Object,
            mode: Exclusive,
        },
        Kind {
            path: "/a/x",
            scope: Object,
            mode: Shared,
        },
        Kind {
            path: "/b/y",
            scope: Object,
            mode: Exclusive,
        },
        Kind {
            path: "",
            scope: Object,
            mode: Exclusive,
        },
    ];
    let outcome = Arc::new(RaceOutcome::default());
    let held: Arc<Mutex<Vec<HeldRecord>>> = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let service = services[worker % services.len()].clone();
        let (outcome, held, root) = (outcome.clone(), held.clone(), root.to_owned());
        tasks.push(tokio::spawn(async move {
            let me = owner(&format!("racer{worker}"));
            for round in 0..40 {
                let (kind, wait, pause) = {
                    let mut rng = rand::rng();
                    let kind = KINDS[rng.random_range(0..KINDS.len())];
                    let wait = if rng.random_bool(0.25) {
                        Duration::from_millis(500)
                    } else {
                        Duration::ZERO
                    };
                    (kind, wait, Duration::from_micros(rng.random_range(0..2000)))
                };
                let object = id(&format!("{root}{}", kind.path));
                let request = AcquireRequest::many(
                    vec![LockSpec::new(object.clone(), kind.mode).with_scope(kind.scope)],
                    me.clone(),
                    LONG,
                )
                .with_wait(wait);
                let grant = match service.acquire_with(&request).await {
                    Ok(grant) => grant,
                    Err(LockError::Locked { .. }) => continue,
                    Err(other) => panic!("racer {worker}: {other}"),
                };
                let ticket = worker * 1000 + round;
                {
                    let mut held = held.lock().expect("record");
                    let mine = (object.as_str(), kind.scope, kind.mode);
                    for (_, other, scope, mode) in held.iter() {
                        if conflicts(mine, (other.as_str(), *scope, *mode)) {
                            eprintln!(
                                "OVERLAP: {mine:?} granted while {other} {scope} {mode} held"
                            );
                            outcome.overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    held.push((ticket, object.as_str().to_owned(), kind.scope, kind.mode));
                }
                match kind.scope {
                    Subtree => outcome.subtree_grants.fetch_add(1, Ordering::SeqCst),
                    Object => outcome.object_grants.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(pause).await;
                held.lock().expect("record").retain(|(t, ..)| *t != ticket);
                let lease = &grant.leases[0];
                service
                    .release(&lease.object, &lease.token)
                    .await
                    .expect("released");
            }
        }));
    }
    for task in tasks {
        task.await.expect("racer");
    }
    outcome
}

/// Two lockd processes (two stores, two pools) race subtree locks on a root and on a
/// directory against object locks on and under them, from 16 tasks: conflicting holders never
/// overlap, by the holders' own records, and both kinds of lock are granted many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtree_and_object_locks_racing_across_processes_never_overlap() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let mut config = common::test_config(&url);
    config.max_connections = 4;
    let services = vec![
        Arc::new(common::connect(config.clone()).await),
        Arc::new(common::connect(config).await),
    ];
    let outcome = race(&services, &root("phantom")).await;
    eprintln!("{outcome:?}");
    assert_eq!(outcome.overlaps.load(Ordering::SeqCst), 0, "{outcome:?}");
    assert!(
        outcome.subtree_grants.load(Ordering::SeqCst) >= 20,
        "{outcome:?}"
    );
    assert!(
        outcome.object_grants.load(Ordering::SeqCst) >= 20,
        "{outcome:?}"
    );
}

/// The same race in a schema whose `lockd_lock_tree` takes no locks: the phantom problem
/// shows, so the race above can fail. Timing-dependent, hence ignored by default:
/// `cargo test -p backend-postgres --test subtrees -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a demonstration that the race test can fail; timing-dependent"]
async fn without_tree_keys_the_same_race_overlaps() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let schema = common::private_schema("notree");
    let mut config = common::test_config(&url);
    config.schema = schema.clone();
    config.max_connections = 4;
    let first = Arc::new(common::connect(config.clone()).await);
    let mut conn = connect_in(&url, &schema).await;
    sqlx::raw_sql(
        "CREATE OR REPLACE FUNCTION lockd_lock_tree(p_roots text[], p_objects text[]) \
         RETURNS void LANGUAGE sql AS 'SELECT'",
    )
    .execute(&mut conn)
    .await
    .expect("tree keys disabled");
    let services = vec![first, Arc::new(common::connect(config).await)];
    let mut overlaps = 0;
    for _ in 0..5 {
        let outcome = race(&services, &root("notree")).await;
        overlaps += outcome.overlaps.load(Ordering::SeqCst);
    }
    drop((services, conn));
    common::drop_schema(&url, &schema).await;
    assert!(overlaps > 0, "no overlap without tree keys");
}

/// An object claim under a root whose subtree grant is not committed yet waits for that
/// transaction instead of reading past it, and is refused once it commits (it would be
/// granted, and overlap, if it had decided on what it saw before).
#[tokio::test]
async fn an_object_claim_under_an_uncommitted_subtree_grant_waits_for_it() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let mut config = common::test_config(&url);
    config.application_name = format!("lockd_test_phantom_{:x}", rand::rng().random::<u32>());
    let application_name = config.application_name.clone();
    let service = Arc::new(common::connect(config).await);
    let tree = root("uncommitted");
    let mut outsider = connect_in(&url, common::run_schema()).await;
    sqlx::raw_sql("BEGIN")
        .execute(&mut outsider)
        .await
        .expect("BEGIN");
    let kind: String = sqlx::query_scalar(&one_claim("outsider", &tree, "exclusive", "subtree"))
        .fetch_one(&mut outsider)
        .await
        .expect("uncommitted subtree grant");
    assert_eq!(kind, "granted");

    let under = id(&format!("{tree}/dir/file"));
    let claim = {
        let (service, under) = (service.clone(), under.clone());
        tokio::spawn(async move {
            service
                .acquire(&under, &owner("inside"), LONG, Duration::ZERO)
                .await
        })
    };
    blocked_on_a_lock(&url, &application_name).await;
    sqlx::raw_sql("COMMIT")
        .execute(&mut outsider)
        .await
        .expect("committed");
    let result = tokio::time::timeout(Duration::from_secs(10), claim)
        .await
        .expect("the claim finished")
        .expect("claim task");
    match result {
        Err(LockError::Locked {
            holder, conflicts, ..
        }) => {
            assert_eq!(holder.as_str(), "outsider");
            assert_eq!(conflicts[0].cause, ConflictCause::Held);
        }
        other => panic!("expected Locked by the subtree holder, got {other:?}"),
    }
}

/// The converse: a subtree claim over an uncommitted object grant under its root waits for
/// that transaction, and is refused once it commits.
#[tokio::test]
async fn a_subtree_claim_over_an_uncommitted_grant_under_it_waits_for_it() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let mut config = common::test_config(&url);
    config.application_name = format!("lockd_test_phantom_{:x}", rand::rng().random::<u32>());
    let application_name = config.application_name.clone();
    let service = Arc::new(common::connect(config).await);
    let tree = root("uncommitted");
    let mut outsider = connect_in(&url, common::run_schema()).await;
    sqlx::raw_sql("BEGIN")
        .execute(&mut outsider)
        .await
        .expect("BEGIN");
    let kind: String = sqlx::query_scalar(&one_claim(
        "outsider",
        &format!("{tree}/dir/file"),
        "shared",
        "object",
    ))
    .fetch_one(&mut outsider)
    .await
    .expect("uncommitted object grant");
    assert_eq!(kind, "granted");

    let claim = {
        let (service, tree) = (service.clone(), id(&tree));
        tokio::spawn(async move {
            service
                .acquire_with(&AcquireRequest::many(
                    vec![LockSpec::subtree(tree, LockMode::Exclusive)],
                    owner("above"),
                    LONG,
                ))
                .await
        })
    };
    blocked_on_a_lock(&url, &application_name).await;
    sqlx::raw_sql("COMMIT")
        .execute(&mut outsider)
        .await
        .expect("committed");
    let result = tokio::time::timeout(Duration::from_secs(10), claim)
        .await
        .expect("the claim finished")
        .expect("claim task");
    match result {
        Err(LockError::Locked { holder, .. }) => assert_eq!(holder.as_str(), "outsider"),
        other => panic!("expected Locked by the holder under the root, got {other:?}"),
    }
}

/// lockd's tree keys are only sound when every statement sees what committed before it, so
/// its functions refuse to run in a REPEATABLE READ (or SERIALIZABLE) transaction.
#[tokio::test]
async fn lockd_refuses_isolation_levels_its_locking_is_not_sound_under() {
    let Some(url) = common::database_url().await else {
        return;
    };
    // Make sure this run's schema exists.
    let _service = common::connect(common::test_config(&url)).await;
    let mut conn = connect_in(&url, common::run_schema()).await;
    let refused = sqlx::raw_sql(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; {}",
        one_claim("rr", &root("isolation"), "exclusive", "object")
    ))
    .execute(&mut conn)
    .await;
    match refused {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("25000"), "{e}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

/// An expired holder granted with a lock-delay keeps its row, blocks conflicting claims with
/// cause `LockDelay` until expiry + delay (on the database clock), is no holder meanwhile,
/// shows in `inspect`, and its row is deleted by the first acquire after the delay.
#[tokio::test]
async fn an_expired_holder_blocks_until_its_lock_delay_ends_then_its_row_goes() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let service = common::connect(common::test_config(&url)).await;
    let tree = root("delay");
    let dir = id(&tree);
    let request = AcquireRequest::many(
        vec![LockSpec::subtree(dir.clone(), LockMode::Exclusive)],
        owner("gone"),
        Duration::from_millis(200),
    )
    .with_lock_delay(Duration::from_millis(1500));
    let grant = service.acquire_with(&request).await.expect("granted");
    let lease = grant.leases[0].clone();
    tokio::time::sleep(Duration::from_millis(400)).await;

    let under = id(&format!("{tree}/file"));
    let started = Instant::now();
    match service
        .acquire(&under, &owner("next"), LONG, Duration::ZERO)
        .await
    {
        Err(LockError::Locked {
            holder, conflicts, ..
        }) => {
            assert_eq!(holder.as_str(), "gone");
            assert_eq!(conflicts[0].cause, ConflictCause::LockDelay);
            // Expired about 200 ms ago; 1 300 ms of delay left at most.
            let left = conflicts[0].retry_after;
            assert!(
                left > Duration::from_millis(500) && left <= Duration::from_millis(1300),
                "{left:?}"
            );
        }
        other => panic!("expected Locked by the lock-delay, got {other:?}"),
    }
    assert!(matches!(
        service.validate(&dir, &lease.token).await,
        Err(LockError::NotHeld { .. })
    ));
    let info = service
        .inspect(&dir)
        .await
        .expect("inspect")
        .expect("a delay in force is shown");
    assert!(info.holders.is_empty(), "{info:?}");
    let delay = info.delay.expect("the delay");
    assert_eq!(delay.owner.as_str(), "gone");
    assert_eq!(delay.scope, LockScope::Subtree);
    assert_eq!(delay.fence, lease.fence);

    let mut admin = common::admin(&url).await;
    let count_rows = format!(
        "SELECT count(*) FROM \"{}\".holders WHERE object = $1",
        common::run_schema()
    );
    let rows = |object: &ObjectId| {
        sqlx::query_scalar::<_, i64>(&count_rows).bind(object.as_str().to_owned())
    };
    assert_eq!(
        rows(&dir).fetch_one(&mut admin).await.expect("count"),
        1,
        "the expired holder's row is kept while its delay is in force"
    );

    // A blocking acquire is granted once the delay ends, without a release to wake it.
    let lease = service
        .acquire(&under, &owner("next"), LONG, Duration::from_secs(10))
        .await
        .expect("granted after the delay");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    service
        .release(&under, &lease.token)
        .await
        .expect("released");
    // The next acquire of the root deletes the row whose delay has ended.
    let again = service
        .acquire(&dir, &owner("again"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    assert_eq!(
        rows(&dir).fetch_one(&mut admin).await.expect("count"),
        1,
        "only the new holder's row is left"
    );
    assert!(again.fence > grant.leases[0].fence);
}

/// A released subtree holder is announced as a subtree (`<object>\tsubtree`), and a waiter for
/// an object under it in another lockd process is woken and granted.
#[tokio::test]
async fn a_released_subtree_wakes_waiters_under_it_in_another_process() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let holder = common::connect(common::test_config(&url)).await;
    let waiting = Arc::new(common::connect(common::test_config(&url)).await);
    let mut listener = sqlx::postgres::PgListener::connect(&url)
        .await
        .expect("listener");
    listener
        .listen(&format!("lockd_free_{}", common::run_schema()))
        .await
        .expect("LISTEN");
    let tree = root("wake");
    let grant = holder
        .acquire_with(&AcquireRequest::many(
            vec![LockSpec::subtree(id(&tree), LockMode::Exclusive)],
            owner("dir"),
            LONG,
        ))
        .await
        .expect("granted");
    let under = id(&format!("{tree}/a/b"));
    let waiter = {
        let (waiting, under) = (waiting.clone(), under.clone());
        tokio::spawn(async move {
            waiting
                .acquire(&under, &owner("file"), LONG, Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lease = &grant.leases[0];
    holder
        .release(&lease.object, &lease.token)
        .await
        .expect("released");
    let expected = format!("{tree}\tsubtree");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, listener.recv()).await {
            Err(_) => panic!("the release was not announced as {expected:?}"),
            Ok(Ok(notification)) if notification.payload() == expected => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("LISTEN connection failed: {e}"),
        }
    }
    let granted = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter finished")
        .expect("waiter task")
        .expect("granted once the subtree was released");
    assert_eq!(granted.owner.as_str(), "file");
}

/// A refused attempt that draws a ticket names every live holder in conflict with its claims
/// (on the claim's object, subtree holders above it, holders under a subtree claim), once
/// each, with the mode wanted; a retry with the ticket does not pay for them.
#[tokio::test]
async fn a_refusal_that_draws_a_ticket_names_the_holders_it_waits_behind() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let service = common::connect(common::test_config(&url)).await;
    let tree = root("blockers");
    let take = |path: String, mode: LockMode, scope: LockScope, who: &'static str| {
        let service = &service;
        async move {
            service
                .acquire_with(&AcquireRequest::many(
                    vec![LockSpec::new(id(&path), mode).with_scope(scope)],
                    owner(who),
                    LONG,
                ))
                .await
                .expect("granted")
                .leases[0]
                .clone()
        }
    };
    let above = take(tree.clone(), LockMode::Shared, LockScope::Subtree, "above").await;
    let first = take(
        format!("{tree}/d/one"),
        LockMode::Shared,
        LockScope::Object,
        "one",
    )
    .await;
    let second = take(
        format!("{tree}/d/x/two"),
        LockMode::Shared,
        LockScope::Object,
        "two",
    )
    .await;
    // Unrelated: a sibling directory of `d` and a name that only starts like it.
    take(
        format!("{tree}/e"),
        LockMode::Shared,
        LockScope::Subtree,
        "three",
    )
    .await;
    take(
        format!("{tree}/d0"),
        LockMode::Shared,
        LockScope::Object,
        "four",
    )
    .await;

    let claims = [Claim {
        object: id(&format!("{tree}/d")),
        mode: LockMode::Exclusive,
        scope: LockScope::Subtree,
        digest: TokenDigest::from_bytes(&[9; 32]).expect("32 bytes"),
    }];
    let me = owner("rename");
    let attempt = |ticket| Attempt {
        owner: &me,
        claims: &claims,
        ttl: LONG,
        lock_delay: Duration::ZERO,
        queueing: Some(Queueing {
            ticket,
            keep_for: Duration::from_secs(5),
        }),
    };
    let store = service.store();
    let Attempted::Refused {
        conflicts,
        ticket: Some(ticket),
        blockers,
    } = store.try_acquire(attempt(None)).await.expect("answered")
    else {
        panic!("expected a queued refusal");
    };
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].cause, ConflictCause::Held);
    let mut named: Vec<(String, String, u64)> = blockers
        .iter()
        .map(|b| {
            assert_eq!(b.wanted, LockMode::Exclusive);
            (b.object.to_string(), b.owner.to_string(), b.fence.get())
        })
        .collect();
    named.sort();
    let mut expected = vec![
        (
            above.object.to_string(),
            "above".to_owned(),
            above.fence.get(),
        ),
        (
            first.object.to_string(),
            "one".to_owned(),
            first.fence.get(),
        ),
        (
            second.object.to_string(),
            "two".to_owned(),
            second.fence.get(),
        ),
    ];
    expected.sort();
    assert_eq!(named, expected);

    let Attempted::Refused { blockers, .. } = store
        .try_acquire(attempt(Some(ticket)))
        .await
        .expect("answered")
    else {
        panic!("expected a refusal");
    };
    assert!(blockers.is_empty(), "{blockers:?}");
    store
        .leave_queue(ticket, &[claims[0].object.clone()])
        .await
        .expect("left");
}

/// The buffers (8 kB pages) a statement touches, from `EXPLAIN (ANALYZE, BUFFERS)`.
async fn pages(conn: &mut sqlx::PgConnection, statement: &str) -> i64 {
    let plan: serde_json::Value = sqlx::query_scalar::<_, sqlx::types::Json<serde_json::Value>>(
        &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}"),
    )
    .fetch_one(&mut *conn)
    .await
    .expect("explain")
    .0;
    let top = &plan[0]["Plan"];
    ["Shared Hit Blocks", "Shared Read Blocks"]
        .iter()
        .map(|k| top[*k].as_i64().expect("buffer counts"))
        .sum()
}

/// The pages of a refused exclusive subtree claim on `<dir>` (over a holder under it), a
/// granted object claim deep under `<dir>`'s sibling, and a list page of `<dir>/`.
async fn pages_of_tree_operations(conn: &mut sqlx::PgConnection, dir: &str) -> i64 {
    sqlx::raw_sql(&format!(
        "SELECT 1 FROM lockd_acquire('me', ARRAY['{dir}/held'], '{{shared}}', '{{object}}', \
         ARRAY['\\xab'::bytea], 60000, 0, false, NULL, 0)"
    ))
    .execute(&mut *conn)
    .await
    .expect("held");
    let subtree = pages(
        conn,
        &format!(
            "SELECT * FROM lockd_acquire('me', ARRAY['{dir}'], '{{exclusive}}', '{{subtree}}', \
             ARRAY['\\xac'::bytea], 60000, 0, false, NULL, 0)"
        ),
    )
    .await;
    let deep = pages(
        conn,
        &format!(
            "SELECT * FROM lockd_acquire('me', ARRAY['{dir}x/a/b/c/d'], '{{exclusive}}', \
             '{{object}}', ARRAY['\\xad'::bytea], 60000, 0, false, NULL, 0)"
        ),
    )
    .await;
    let list = pages(
        conn,
        &format!(
            "WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now) \
             SELECT DISTINCT h.object FROM holders h, c \
              WHERE h.expires_at > c.now AND h.object >= '{dir}/' AND h.object > '' \
                AND h.object < '{dir}0' ORDER BY h.object LIMIT 101"
        ),
    )
    .await;
    subtree + deep + list
}

/// Adds unrelated holders and queue entries `from..to` around `/vol/crowd/dir`: objects
/// `/vol/crowd/d<i>` (some holding their subtree), directories `/vol/crowd/dir<i>` (byte-wise
/// neighbours of `/vol/crowd/dir/`) with a file held, object holders of `/vol` itself, and
/// waiters under `/vol/crowd/d<i>`, half of them for subtrees.
async fn fill(conn: &mut sqlx::PgConnection, from: i64, to: i64) {
    sqlx::raw_sql(&format!(
        "INSERT INTO objects SELECT '/vol/crowd/d' || i, 1000 + i \
           FROM generate_series({from}, {to} - 1) i; \
         INSERT INTO holders (object, fence, digest, owner, mode, acquired_at, expires_at, \
                              scope) \
         SELECT CASE WHEN i % 3 = 0 THEN '/vol/crowd/d' || i \
                     WHEN i % 3 = 1 THEN '/vol/crowd/dir' || i || '/f' \
                     ELSE '/vol' END, \
                1000 + i, '\\xcd', 'them', 'shared', clock_timestamp(), \
                clock_timestamp() + interval '1 hour', \
                CASE WHEN i % 7 = 0 AND i % 3 = 0 THEN 'subtree' ELSE 'object' END \
           FROM generate_series({from}, {to} - 1) i; \
         INSERT INTO queue (object, ticket, mode, owner, expires_at, scope) \
         SELECT '/vol/crowd/d' || i || '/q', i, 'exclusive', 'waiter', \
                clock_timestamp() + interval '1 hour', \
                CASE WHEN i % 2 = 0 THEN 'subtree' ELSE 'object' END \
           FROM generate_series({from}, {to} - 1) i; \
         ANALYZE objects; ANALYZE holders; ANALYZE queue"
    ))
    .execute(conn)
    .await
    .expect("filled");
}

/// Every plan node of `EXPLAIN (FORMAT JSON) <statement>`, depth first.
async fn plan_nodes(conn: &mut sqlx::PgConnection, statement: &str) -> Vec<serde_json::Value> {
    let plan: serde_json::Value = sqlx::query_scalar::<_, sqlx::types::Json<serde_json::Value>>(
        &format!("EXPLAIN (FORMAT JSON) {statement}"),
    )
    .fetch_one(&mut *conn)
    .await
    .expect("explain")
    .0;
    let mut nodes = Vec::new();
    let mut stack = vec![plan[0]["Plan"].clone()];
    while let Some(node) = stack.pop() {
        if let Some(children) = node["Plans"].as_array() {
            stack.extend(children.iter().cloned());
        }
        nodes.push(node);
    }
    nodes
}

/// The generic plans (as PL/pgSQL caches them) of the lookups a claim makes, and of a list
/// page, read no table sequentially: the claim's object, each ancestor's subtree rows and the
/// range under a subtree claim are index conditions, and so are a list page's bounds.
async fn assert_lookups_use_indexes(conn: &mut sqlx::PgConnection) {
    sqlx::raw_sql(
        "SET plan_cache_mode = force_generic_plan; \
         PREPARE holders_in_conflict(text, text, boolean, timestamptz) AS \
             SELECT * FROM lockd_conflicting_holders($1, $2, $3, $4); \
         PREPARE entries_in_conflict(text, text, boolean, timestamptz, bigint) AS \
             SELECT * FROM lockd_conflicting_entries($1, $2, $3, $4, $5); \
         PREPARE list_page(text, text, bigint, text) AS \
             WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now) \
             SELECT DISTINCT h.object FROM holders h, c \
              WHERE h.expires_at > c.now AND h.object >= $1 AND h.object > $2 \
                AND h.object < $4 ORDER BY h.object LIMIT $3",
    )
    .execute(&mut *conn)
    .await
    .expect("prepared");
    for (statement, indexes) in [
        (
            "EXECUTE holders_in_conflict('/vol/crowd/d3/x', 'exclusive', true, now())",
            &["holders_pkey", "holders_subtrees"][..],
        ),
        (
            "EXECUTE entries_in_conflict('/vol/crowd/d3/x', 'exclusive', true, now(), NULL)",
            &["queue_pkey", "queue_subtrees"][..],
        ),
        (
            "EXECUTE list_page('/vol/crowd/d3', '', 101, '/vol/crowd/d4')",
            &["holders_pkey"][..],
        ),
    ] {
        let nodes = plan_nodes(conn, statement).await;
        let scans: Vec<&str> = nodes
            .iter()
            .filter_map(|n| n["Node Type"].as_str())
            .filter(|t| t.contains("Scan") && !t.contains("CTE"))
            .collect();
        assert!(
            scans
                .iter()
                .all(|t| t.contains("Index") || *t == "Bitmap Heap Scan"),
            "{statement}: {scans:?}"
        );
        let used: Vec<&str> = nodes
            .iter()
            .filter_map(|n| n["Index Name"].as_str())
            .collect();
        for index in indexes {
            assert!(
                used.contains(index),
                "{statement}: {index} unused: {used:?}"
            );
        }
        let ranges = nodes
            .iter()
            .filter_map(|n| n["Index Cond"].as_str())
            .filter(|c| c.contains("object >=") && c.contains("object <"))
            .count();
        assert!(ranges >= 1, "{statement}: no index range");
    }
    sqlx::raw_sql("DEALLOCATE ALL; RESET plan_cache_mode")
        .execute(&mut *conn)
        .await
        .expect("reset");
}

/// A subtree claim, a deep object claim (one lookup per ancestor) and a list page cost the
/// same pages, up to a B-tree level, among 20 000 or 200 000 unrelated holders and waiters:
/// siblings of the directory (its neighbours in the index), object holders of an ancestor,
/// subtree holders and waiters elsewhere. Every lookup is an index probe, or an index range
/// over what the claim covers.
#[tokio::test]
async fn tree_lookups_and_list_pages_cost_the_same_among_many_unrelated_locks() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let schema = common::private_schema("treecost");
    let mut config = common::test_config(&url);
    config.schema = schema.clone();
    config.reap_interval = Duration::ZERO;
    let service = common::connect(config).await;
    let mut conn = connect_in(&url, &schema).await;
    // 20 000 unrelated rows first, then ten times more: the only growth allowed is a B-tree
    // level more on some indexes (a page more per probe).
    fill(&mut conn, 0, 20_000).await;
    for i in 0..8 {
        pages_of_tree_operations(&mut conn, &format!("/vol/warm/v{i}/dir")).await;
    }
    let few = pages_of_tree_operations(&mut conn, "/vol/crowd/few").await;
    fill(&mut conn, 20_000, 200_000).await;
    for i in 0..8 {
        pages_of_tree_operations(&mut conn, &format!("/vol/warm2/v{i}/dir")).await;
    }
    let many = pages_of_tree_operations(&mut conn, "/vol/crowd/dir").await;
    assert_lookups_use_indexes(&mut conn).await;
    eprintln!("pages of the tree operations: {few} among 20 000 others, {many} among 200 000");
    // A scan of the unrelated rows would touch thousands of pages more.
    assert!(
        many <= few + few / 2,
        "{many} pages among 200 000 other locks, {few} among 20 000"
    );
    drop((service, conn));
    common::drop_schema(&url, &schema).await;
}
