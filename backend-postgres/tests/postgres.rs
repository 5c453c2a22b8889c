//! Behaviour specific to the PostgreSQL backend: the fence floor comes from the database clock,
//! row reclamation never lets a fence go backwards, several lockd processes sharing a schema
//! exclude each other, wake each other's waiters and keep one arrival order, multi-object
//! requests lock their rows in one order and never deadlock, migrations stay inside their
//! schema and carry held locks across the upgrade, and every kind of database trouble is
//! `Unavailable`, never a grant.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_postgres::{PostgresLockService, PostgresStore};
use lockcore::fence::FENCE_CLOCK_SHIFT;
use lockcore::{
    AcquireRequest, Fence, LockError, LockMode, LockService, LockSpec, ObjectId, OwnerId,
};
use rand::Rng;

fn object(label: &str) -> ObjectId {
    let tag: u64 = rand::rng().random();
    ObjectId::new(format!("pgtest/{label}/{tag:x}")).expect("valid object id")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner id")
}

const LONG: Duration = Duration::from_secs(30);

async fn db_clock_micros(url: &str) -> u64 {
    let mut conn = common::admin(url).await;
    let micros: i64 =
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
            .fetch_one(&mut conn)
            .await
            .expect("database clock");
    u64::try_from(micros).expect("clock after 1970")
}

/// A first grant's fence is the database clock's floor, `unix_micros << FENCE_CLOCK_SHIFT`.
#[tokio::test]
async fn a_first_fence_is_the_database_clock_floor() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let service = common::connect(common::test_config(&url)).await;
    let before = db_clock_micros(&url).await;
    let lease = service
        .acquire(&object("floor"), &owner("a"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    let after = db_clock_micros(&url).await;
    assert!(
        lease.fence >= Fence::clock_floor(before),
        "{lease:?} below the floor at {before}"
    );
    assert!(
        lease.fence <= Fence::clock_floor(after),
        "{lease:?} above the floor at {after}"
    );
    assert_eq!(lease.fence.get() % (1 << FENCE_CLOCK_SHIFT), 0);
}

/// Objects rows are kept with their last fence; reaping them or even emptying the table does
/// not let the next fence go backwards, because the clock floor has moved past it.
#[tokio::test]
async fn fences_keep_increasing_after_rows_are_reaped_or_the_table_is_emptied() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let schema = common::private_schema("reap");
    let mut config = common::test_config(&url);
    config.schema = schema.clone();
    config.reap_interval = Duration::ZERO;
    let service = common::connect(config).await;
    let held = object("held");
    let freed = object("freed");

    let kept = service
        .acquire(&held, &owner("a"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    let first = service
        .acquire(&freed, &owner("a"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    service
        .release(&freed, &first.token)
        .await
        .expect("released");

    assert_eq!(
        service
            .store()
            .reap(Duration::from_secs(3600))
            .await
            .expect("reaped"),
        0,
        "too young"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        service
            .store()
            .reap(Duration::from_millis(1))
            .await
            .expect("reaped"),
        1,
        "only the free object's row"
    );
    let still = service
        .validate(&held, &kept.token)
        .await
        .expect("held lock untouched");
    assert_eq!(still.fence, kept.fence);

    let second = service
        .acquire(&freed, &owner("b"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    assert!(second.fence > first.fence, "{second:?} after {first:?}");

    let mut admin = common::admin(&url).await;
    sqlx::raw_sql(&format!(
        "TRUNCATE \"{schema}\".objects, \"{schema}\".holders, \"{schema}\".queue"
    ))
    .execute(&mut admin)
    .await
    .expect("emptied");
    let third = service
        .acquire(&freed, &owner("c"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    assert!(third.fence > second.fence, "{third:?} after {second:?}");
    drop(service);
    common::drop_schema(&url, &schema).await;
}

/// Two lockd processes on one schema (two services, two pools): one refuses while the other
/// holds, and the waiter in one is woken by the other's release through NOTIFY, well before
/// the released lease would have expired.
#[tokio::test]
async fn two_processes_share_locks_and_wake_each_others_waiters() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let first = common::connect(common::test_config(&url)).await;
    let second = Arc::new(common::connect(common::test_config(&url)).await);
    let target = object("shared");
    let lease = first
        .acquire(&target, &owner("one"), LONG, Duration::ZERO)
        .await
        .expect("granted");

    match second
        .acquire(&target, &owner("two"), LONG, Duration::ZERO)
        .await
    {
        Err(LockError::Locked {
            holder,
            retry_after,
            ..
        }) => {
            assert_eq!(holder.as_str(), "one");
            assert!(
                retry_after > Duration::from_secs(20) && retry_after <= LONG,
                "{retry_after:?}"
            );
        }
        other => panic!("expected Locked, got {other:?}"),
    }

    let waiter = {
        let (second, target) = (second.clone(), target.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let lease = second
                .acquire(&target, &owner("two"), LONG, Duration::from_secs(20))
                .await;
            (lease, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    first
        .release(&target, &lease.token)
        .await
        .expect("released");
    let (granted, waited) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("waiter finished")
        .expect("waiter task");
    let granted = granted.expect("granted after the other process released");
    assert!(granted.fence > lease.fence);
    assert!(waited < Duration::from_secs(10), "woken late: {waited:?}");
}

/// Holders from several processes never overlap on one object, and fences strictly increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_in_several_processes_never_overlap() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let services: Vec<Arc<PostgresLockService>> = vec![
        Arc::new(common::connect(common::test_config(&url)).await),
        Arc::new(common::connect(common::test_config(&url)).await),
        Arc::new(common::connect(common::test_config(&url)).await),
    ];
    let target = object("contended");
    let inside = Arc::new(AtomicBool::new(false));
    let last_fence = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let service = services[worker % services.len()].clone();
        let (target, inside, last_fence) = (target.clone(), inside.clone(), last_fence.clone());
        tasks.push(tokio::spawn(async move {
            let me = owner(&format!("w{worker}"));
            for _ in 0..15 {
                let lease = service
                    .acquire(
                        &target,
                        &me,
                        Duration::from_secs(10),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("granted within the wait");
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                let previous = last_fence.swap(lease.fence.get(), Ordering::SeqCst);
                assert!(
                    lease.fence.get() > previous,
                    "fence went from {previous} to {}",
                    lease.fence
                );
                tokio::task::yield_now().await;
                inside.store(false, Ordering::SeqCst);
                service
                    .release(&target, &lease.token)
                    .await
                    .expect("released");
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
}

/// Migrations create the schema, keep sqlx's history table inside it, and can run again.
#[tokio::test]
async fn migrations_stay_in_their_schema_and_run_idempotently() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let schema = common::private_schema("mig");
    let mut config = common::test_config(&url);
    config.schema = schema.clone();
    let first = common::connect(config.clone()).await;
    let again = common::connect(config).await;
    let lease = again
        .acquire(&object("m"), &owner("a"), LONG, Duration::ZERO)
        .await
        .expect("granted after re-running migrations");
    assert!(first
        .inspect(&lease.object)
        .await
        .expect("inspect")
        .is_some());

    let mut admin = common::admin(&url).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&mut admin)
    .await
    .expect("tables");
    assert_eq!(tables, ["_sqlx_migrations", "holders", "objects", "queue"]);
    drop((first, again));
    common::drop_schema(&url, &schema).await;
}

/// With migrations turned off and no schema in place, operations are unavailable, not granted.
#[tokio::test]
async fn a_missing_schema_without_migrations_is_unavailable() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let mut config = common::test_config(&url);
    config.schema = common::private_schema("none");
    config.run_migrations = false;
    let service = common::connect(config).await;
    let result = service
        .acquire(&object("x"), &owner("a"), LONG, Duration::ZERO)
        .await;
    assert!(
        matches!(
            result,
            Err(LockError::Unavailable {
                backend: "postgres",
                ..
            })
        ),
        "{result:?}"
    );
}

/// A database nobody listens on is `Unavailable` at connect time, within the connect timeout.
#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    let mut config =
        backend_postgres::PostgresConfig::from_url("postgres://postgres@127.0.0.1:1/test");
    config.connect_timeout = Duration::from_secs(1);
    config.statement_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let result = PostgresStore::connect(config).await;
    assert!(
        matches!(
            result,
            Err(LockError::Unavailable {
                backend: "postgres",
                ..
            })
        ),
        "{:?}",
        result.map(|_| ())
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A statement stuck behind a row lock until `statement_timeout` is `Unavailable` and grants
/// nothing; once the lock is gone the same service works again.
#[tokio::test]
async fn a_statement_timeout_is_unavailable_and_grants_nothing() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let mut config = common::test_config(&url);
    config.statement_timeout = Duration::from_millis(300);
    let service = common::connect(config).await;
    let target = object("stuck");
    let lease = service
        .acquire(
            &target,
            &owner("a"),
            Duration::from_millis(50),
            Duration::ZERO,
        )
        .await
        .expect("granted");
    tokio::time::sleep(Duration::from_millis(80)).await; // the lease has expired

    // Someone outside lockd holds the row lock in an open transaction.
    let mut admin = common::admin(&url).await;
    sqlx::raw_sql(&format!(
        "BEGIN; SELECT 1 FROM \"{}\".objects WHERE object = '{}' FOR UPDATE",
        common::run_schema(),
        target.as_str()
    ))
    .execute(&mut admin)
    .await
    .expect("row locked");

    let result = service
        .acquire(&target, &owner("b"), LONG, Duration::ZERO)
        .await;
    assert!(
        matches!(result, Err(LockError::Unavailable { .. })),
        "{result:?}"
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut admin)
        .await
        .expect("rolled back");

    assert_eq!(
        service.inspect(&target).await.expect("inspect"),
        None,
        "b was not granted"
    );
    let next = service
        .acquire(&target, &owner("b"), LONG, Duration::ZERO)
        .await
        .expect("granted once the row is free");
    assert!(next.fence > lease.fence);
}

/// Releases are announced only for objects with queued waiters (NOTIFY serialises commits
/// database-wide, so unwanted announcements would cap release throughput).
#[tokio::test]
async fn only_releases_someone_waits_for_are_announced() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let service = Arc::new(common::connect(common::test_config(&url)).await);
    let mut listener = sqlx::postgres::PgListener::connect(&url)
        .await
        .expect("listener");
    listener
        .listen(&format!("lockd_free_{}", common::run_schema()))
        .await
        .expect("LISTEN");

    let quiet = object("quiet");
    let lease = service
        .acquire(&quiet, &owner("a"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    service
        .release(&quiet, &lease.token)
        .await
        .expect("released");
    assert!(
        !announced(&mut listener, &quiet, Duration::from_millis(500)).await,
        "a release nobody waited for was announced"
    );

    // A blocking acquire that is granted at once never queues.
    let lease = service
        .acquire(&quiet, &owner("a"), LONG, Duration::from_secs(5))
        .await
        .expect("granted");
    service
        .release(&quiet, &lease.token)
        .await
        .expect("released");
    assert!(
        !announced(&mut listener, &quiet, Duration::from_millis(500)).await,
        "an uncontended blocking acquire's release was announced"
    );

    let wanted = object("wanted");
    let lease = service
        .acquire(&wanted, &owner("a"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    let waiter = {
        let (service, wanted) = (service.clone(), wanted.clone());
        tokio::spawn(async move {
            service
                .acquire(&wanted, &owner("b"), LONG, Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    service
        .release(&wanted, &lease.token)
        .await
        .expect("released");
    assert!(
        announced(&mut listener, &wanted, Duration::from_secs(5)).await,
        "the wanted release was not announced"
    );
    waiter.await.expect("waiter task").expect("waiter granted");
}

/// A waiter queued behind another in one process is woken by a release made through a third
/// process, even though it never made an attempt itself before the object was freed.
#[tokio::test]
async fn a_second_waiter_is_woken_by_a_release_through_another_process() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let holder = common::connect(common::test_config(&url)).await;
    let waiting = Arc::new(common::connect(common::test_config(&url)).await);
    let third = common::connect(common::test_config(&url)).await;
    let target = object("relay");
    let first_lease = holder
        .acquire(&target, &owner("h"), LONG, Duration::ZERO)
        .await
        .expect("granted");

    let spawn_waiter = |name: &'static str| {
        let (waiting, target) = (waiting.clone(), target.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let lease = waiting
                .acquire(&target, &owner(name), LONG, Duration::from_secs(25))
                .await;
            (lease, started.elapsed())
        })
    };
    let w1 = spawn_waiter("w1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let w2 = spawn_waiter("w2");
    tokio::time::sleep(Duration::from_millis(200)).await;

    holder
        .release(&target, &first_lease.token)
        .await
        .expect("released");
    let (w1_lease, _) = tokio::time::timeout(Duration::from_secs(10), w1)
        .await
        .expect("w1 woken")
        .expect("w1 task");
    let w1_lease = w1_lease.expect("w1 granted");
    // w1's lease is released through a third process (as a lockd server behind a load
    // balancer would): only NOTIFY can tell w2.
    third
        .release(&target, &w1_lease.token)
        .await
        .expect("released via the third process");
    let (w2_lease, waited) = tokio::time::timeout(Duration::from_secs(20), w2)
        .await
        .expect("w2 finished")
        .expect("w2 task");
    let w2_lease = w2_lease.expect("w2 granted");
    assert!(w2_lease.fence > w1_lease.fence);
    assert!(
        waited < Duration::from_secs(10),
        "w2 woken late: {waited:?}"
    );
}

/// Whether a release of `target` is announced within `limit` (other tests' announcements on
/// the shared schema are skipped).
async fn announced(
    listener: &mut sqlx::postgres::PgListener,
    target: &ObjectId,
    limit: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, listener.recv()).await {
            Err(_) => return false,
            Ok(Ok(notification)) if notification.payload() == target.as_str() => return true,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("LISTEN connection failed: {e}"),
        }
    }
}

/// A list cursor this backend could not have returned is an invalid argument, not an error of
/// the database.
#[tokio::test]
async fn a_bogus_list_cursor_is_an_invalid_argument() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let service = common::connect(common::test_config(&url)).await;
    let mut query = lockcore::ListQuery::new("pgtest/", 10);
    query.after = Some("bad\0cursor".to_owned());
    let result = service.list(&query).await;
    assert!(
        matches!(
            result,
            Err(LockError::InvalidArgument { field: "after", .. })
        ),
        "{result:?}"
    );
}

/// Inside PostgreSQL, a request takes its objects' row locks one at a time in byte order of
/// the names, whatever order it names them in: a request for `[y, x]` that finds `x` locked
/// waits for it without having locked `y`, so it can never hold `y` while waiting for `x`
/// (the deadlock of two requests naming the same objects in opposite orders).
#[tokio::test]
async fn a_request_locks_its_objects_in_name_order_whatever_order_it_names_them() {
    let Some(url) = common::database_url().await else {
        return;
    };
    // A name of its own, to find this service's statement among other tests' sessions.
    let mut config = common::test_config(&url);
    config.application_name = "lockd_test_order".to_owned();
    let service = Arc::new(common::connect(config).await);
    let tag: u64 = rand::rng().random();
    let x = ObjectId::new(format!("pgtest/order/{tag:x}/x")).expect("valid");
    let y = ObjectId::new(format!("pgtest/order/{tag:x}/y")).expect("valid");
    // Create both rows, then free them.
    let grant = service
        .acquire_with(&AcquireRequest::many(
            vec![
                LockSpec::exclusive(x.clone()),
                LockSpec::exclusive(y.clone()),
            ],
            owner("setup"),
            LONG,
        ))
        .await
        .expect("granted");
    for lease in &grant.leases {
        service
            .release(&lease.object, &lease.token)
            .await
            .expect("released");
    }

    let schema = common::run_schema();
    let mut outsider = common::admin(&url).await;
    sqlx::raw_sql(&format!(
        "BEGIN; SELECT 1 FROM \"{schema}\".objects WHERE object = '{}' FOR UPDATE",
        x.as_str()
    ))
    .execute(&mut outsider)
    .await
    .expect("x locked from outside");
    let request = {
        let (service, x, y) = (service.clone(), x.clone(), y.clone());
        tokio::spawn(async move {
            service
                .acquire_with(&AcquireRequest::many(
                    vec![LockSpec::exclusive(y), LockSpec::exclusive(x)],
                    owner("yx"),
                    LONG,
                ))
                .await
        })
    };
    // Wait until the request's statement is blocked in the database.
    let mut observer = common::admin(&url).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'lockd_test_order' AND wait_event_type = 'Lock' \
               AND query LIKE '%lockd_acquire%'",
        )
        .fetch_one(&mut observer)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the request never blocked on x");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // y, named first, is not locked: the request waits for x before touching y.
    sqlx::raw_sql(&format!(
        "SET lock_timeout = '1ms'; \
         BEGIN; SELECT 1 FROM \"{schema}\".objects WHERE object = '{}' FOR UPDATE NOWAIT; \
         ROLLBACK",
        y.as_str()
    ))
    .execute(&mut observer)
    .await
    .expect("y is free while the request waits for x");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut outsider)
        .await
        .expect("x unlocked");
    let grant = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("the request finished")
        .expect("request task")
        .expect("granted once x is free");
    assert_eq!(grant.leases[0].object, y);
    assert_eq!(grant.leases[1].object, x);
}

/// Many multi-object requests from several processes, each naming overlapping objects in its
/// own order (reversed, rotated), all wait and are granted in the end: none fails as
/// unavailable (PostgreSQL's deadlock detector would abort one of two requests that deadlock),
/// no object ever has two holders, and fences increase per object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_object_requests_in_opposite_orders_never_deadlock_across_processes() {
    let Some(url) = common::database_url().await else {
        return;
    };
    const OBJECTS: usize = 6;
    const WORKERS: usize = 6;
    const ROUNDS: usize = 12;
    let services: Vec<Arc<PostgresLockService>> = vec![
        Arc::new(common::connect(common::test_config(&url)).await),
        Arc::new(common::connect(common::test_config(&url)).await),
        Arc::new(common::connect(common::test_config(&url)).await),
    ];
    let tag: u64 = rand::rng().random();
    let objects: Arc<Vec<ObjectId>> = Arc::new(
        (0..OBJECTS)
            .map(|i| ObjectId::new(format!("pgtest/deadlock/{tag:x}/{i}")).expect("valid"))
            .collect(),
    );
    let held = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        ObjectId,
        (usize, u64),
    >::new()));
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let service = services[worker % services.len()].clone();
        let (objects, held) = (objects.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            let me = owner(&format!("w{worker}"));
            for round in 0..ROUNDS {
                // Four of the objects, rotated per worker and round, reversed for odd workers.
                let start = (worker + round) % OBJECTS;
                let mut names: Vec<ObjectId> = (0..4)
                    .map(|k| objects[(start + k) % OBJECTS].clone())
                    .collect();
                if worker % 2 == 1 {
                    names.reverse();
                }
                let mode = if round % 3 == 2 {
                    LockMode::Shared
                } else {
                    LockMode::Exclusive
                };
                let request = AcquireRequest::many(
                    names
                        .iter()
                        .cloned()
                        .map(|o| LockSpec::new(o, mode))
                        .collect(),
                    me.clone(),
                    Duration::from_secs(20),
                )
                .with_wait(Duration::from_secs(60));
                let grant = service
                    .acquire_with(&request)
                    .await
                    .unwrap_or_else(|e| panic!("worker {worker} round {round}: {e}"));
                if mode == LockMode::Exclusive {
                    let mut held = held.lock().expect("tracker");
                    for lease in &grant.leases {
                        if let Some((other, _)) = held.get(&lease.object) {
                            if *other != usize::MAX {
                                panic!("{} held by {other} and {worker}", lease.object);
                            }
                        }
                        let last = held.get(&lease.object).map(|(_, f)| *f).unwrap_or(0);
                        assert!(lease.fence.get() > last, "fence went backwards");
                        held.insert(lease.object.clone(), (worker, lease.fence.get()));
                    }
                }
                tokio::task::yield_now().await;
                if mode == LockMode::Exclusive {
                    let mut held = held.lock().expect("tracker");
                    for lease in &grant.leases {
                        held.insert(lease.object.clone(), (usize::MAX, lease.fence.get()));
                    }
                }
                let locks: Vec<_> = grant
                    .leases
                    .iter()
                    .map(|l| (l.object.clone(), l.token.clone()))
                    .collect();
                for outcome in service.release_many(&locks).await.expect("released") {
                    outcome.expect("each lease released");
                }
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("no worker hangs")
            .expect("worker");
    }
}

/// Fairness holds across processes: while a writer in one process waits for a reader of
/// another, a third process's new reader is refused (the writer's queue entry holds it back),
/// naming the writer; the writer is granted as soon as the first reader leaves.
#[tokio::test]
async fn a_waiting_writer_holds_back_readers_of_other_processes() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let reading = common::connect(common::test_config(&url)).await;
    let writing = Arc::new(common::connect(common::test_config(&url)).await);
    let late = common::connect(common::test_config(&url)).await;
    let target = object("fair");
    let reader = reading
        .acquire_in(
            &target,
            LockMode::Shared,
            &owner("reader"),
            LONG,
            Duration::ZERO,
        )
        .await
        .expect("granted");
    let writer = {
        let (writing, target) = (writing.clone(), target.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let lease = writing
                .acquire(&target, &owner("writer"), LONG, Duration::from_secs(20))
                .await;
            (lease, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    match late
        .acquire_in(
            &target,
            LockMode::Shared,
            &owner("late"),
            LONG,
            Duration::ZERO,
        )
        .await
    {
        Err(LockError::Locked { holder, .. }) => assert_eq!(holder.as_str(), "writer"),
        other => panic!("expected the late reader to be held back, got {other:?}"),
    }
    reading
        .release(&target, &reader.token)
        .await
        .expect("released");
    let (lease, waited) = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("writer finished")
        .expect("writer task");
    let lease = lease.expect("the writer is granted");
    assert_eq!(lease.mode, LockMode::Exclusive);
    assert!(waited < Duration::from_secs(5), "woken late: {waited:?}");
}

/// A downgrade in one process wakes shared waiters in another through NOTIFY, long before the
/// downgraded lease would expire.
#[tokio::test]
async fn a_downgrade_wakes_shared_waiters_of_another_process() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let writing = common::connect(common::test_config(&url)).await;
    let reading = Arc::new(common::connect(common::test_config(&url)).await);
    let target = object("downgrade");
    let writer = writing
        .acquire(&target, &owner("writer"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    let reader = {
        let (reading, target) = (reading.clone(), target.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let lease = reading
                .acquire_in(
                    &target,
                    LockMode::Shared,
                    &owner("reader"),
                    LONG,
                    Duration::from_secs(20),
                )
                .await;
            (lease, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shared = writing
        .downgrade(&target, &writer.token)
        .await
        .expect("downgraded");
    assert_eq!(
        (shared.mode, shared.fence),
        (LockMode::Shared, writer.fence)
    );
    let (lease, waited) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("reader finished")
        .expect("reader task");
    let lease = lease.expect("the reader joins the downgraded holder");
    assert!(lease.fence > writer.fence);
    assert!(waited < Duration::from_secs(5), "woken late: {waited:?}");
    let info = writing
        .inspect(&target)
        .await
        .expect("inspect")
        .expect("held");
    assert_eq!(info.mode, LockMode::Shared);
    assert_eq!(info.holders.len(), 2);
}

/// Upgrading a schema made by the previous migrations moves its data: a lock held under the
/// old one-row-per-object table stays held (exclusive, same token and fence) and can be
/// released, and a released object's next fence continues above its old one.
#[tokio::test]
async fn upgrading_keeps_held_locks_and_fences() {
    use sqlx::{ConnectOptions as _, Executor as _};
    let Some(url) = common::database_url().await else {
        return;
    };
    let schema = common::private_schema("upgrade");
    let mut admin = common::admin(&url).await;
    admin
        .execute(format!("CREATE SCHEMA \"{schema}\"").as_str())
        .await
        .expect("schema");
    // The migrations before this shape, applied by sqlx as an older lockd would have.
    let old = std::env::temp_dir().join(format!("lockd-old-migrations-{schema}"));
    std::fs::create_dir_all(&old).expect("temp dir");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&dir).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "20261129000005" {
            std::fs::copy(&path, old.join(&name)).expect("copy");
        }
    }
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&url)
        .expect("url")
        .options([("search_path", schema.as_str())]);
    let mut conn = options.connect().await.expect("connect in the schema");
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .expect("old migrations")
        .run(&mut conn)
        .await
        .expect("old migrations applied");
    std::fs::remove_dir_all(&old).ok();

    let issuer = common::issuer();
    let (kept, freed) = (object("kept"), object("freed"));
    let old_acquire = |object: &ObjectId, digest: lockcore::TokenDigest| {
        sqlx::query_scalar::<_, i64>(
            "SELECT r_fence FROM lockd_acquire($1, 'old', $2, 60000, 0, false)",
        )
        .bind(object.as_str().to_owned())
        .bind(digest.as_bytes().to_vec())
    };
    let pending = issuer.prepare_for(&LockSpec::exclusive(kept.clone()), &owner("old"), None);
    let fence = old_acquire(&kept, pending.digest())
        .fetch_one(&mut conn)
        .await
        .expect("old grant");
    let kept_token = issuer.seal(pending, &kept, Fence(u64::try_from(fence).expect("fence")));
    let pending = issuer.prepare_for(&LockSpec::exclusive(freed.clone()), &owner("old"), None);
    let digest = pending.digest();
    let freed_fence = old_acquire(&freed, digest)
        .fetch_one(&mut conn)
        .await
        .expect("old grant");
    sqlx::query("SELECT lockd_release($1, $2, $3)")
        .bind(freed.as_str())
        .bind(digest.as_bytes().to_vec())
        .bind(freed_fence)
        .execute(&mut conn)
        .await
        .expect("old release");

    let mut config = common::test_config(&url);
    config.schema = schema.clone();
    let service = common::connect(config).await;
    let lease = service
        .validate(&kept, &kept_token)
        .await
        .expect("the old lock is still held");
    assert_eq!(
        (lease.mode, lease.owner.as_str()),
        (LockMode::Exclusive, "old")
    );
    assert!(matches!(
        service
            .acquire(&kept, &owner("new"), LONG, Duration::ZERO)
            .await,
        Err(LockError::Locked { .. })
    ));
    service
        .release(&kept, &kept_token)
        .await
        .expect("released with the old token");
    let next = service
        .acquire(&freed, &owner("new"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    assert!(next.fence.get() > u64::try_from(freed_fence).expect("fence"));
    drop((service, conn));
    common::drop_schema(&url, &schema).await;
}

/// The buffers (8 kB pages) one acquire and one release touch, for a fresh object, read from
/// `EXPLAIN (ANALYZE, BUFFERS)` of the call (it counts every page the function reads or writes).
async fn pages_per_acquire_and_release(conn: &mut sqlx::PgConnection, object: &str) -> i64 {
    async fn pages(conn: &mut sqlx::PgConnection, statement: &str) -> i64 {
        let plan: serde_json::Value =
            sqlx::query_scalar::<_, sqlx::types::Json<serde_json::Value>>(&format!(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}"
            ))
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
    let acquire = pages(
        conn,
        &format!(
            "SELECT * FROM lockd_acquire('me', ARRAY['{object}'], '{{exclusive}}', '{{object}}', \
             ARRAY['\\xab'::bytea], 60000, 0, true, NULL, 6000)"
        ),
    )
    .await;
    let fence: i64 = sqlx::query_scalar("SELECT fence FROM holders WHERE object = $1")
        .bind(object)
        .fetch_one(&mut *conn)
        .await
        .expect("granted");
    let release = pages(
        conn,
        &format!(
            "SELECT * FROM lockd_release(ARRAY['{object}'], ARRAY['\\xab'::bytea], \
             ARRAY[{fence}::bigint])"
        ),
    )
    .await;
    acquire + release
}

/// An acquire and a release cost the same pages whether the schema holds nothing else or
/// tens of thousands of other objects with holders and waiters: every lookup is by primary key
/// (at most a B-tree level more), never a scan.
#[tokio::test]
async fn cost_does_not_grow_with_locks_on_other_objects() {
    use sqlx::ConnectOptions as _;
    let Some(url) = common::database_url().await else {
        return;
    };
    let schema = common::private_schema("cost");
    let mut config = common::test_config(&url);
    config.schema = schema.clone();
    config.reap_interval = Duration::ZERO;
    let service = common::connect(config).await;
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&url)
        .expect("url")
        .options([("search_path", schema.as_str())]);
    let mut conn = options.connect().await.expect("connect in the schema");
    // Warm up plan caches and catalogs on this connection.
    for i in 0..8 {
        pages_per_acquire_and_release(&mut conn, &format!("warm/{i}")).await;
    }
    let alone = pages_per_acquire_and_release(&mut conn, "probe/alone").await;

    const OTHERS: i64 = 30_000;
    sqlx::raw_sql(&format!(
        "INSERT INTO objects SELECT 'other/' || i, 1000 + i FROM generate_series(1, {OTHERS}) i; \
         INSERT INTO holders SELECT 'other/' || i, 1000 + i, '\\xcd', 'them', 'shared', \
                clock_timestamp(), clock_timestamp() + interval '1 hour', false \
           FROM generate_series(1, {OTHERS}) i; \
         INSERT INTO queue SELECT 'other/' || i, i, 'exclusive', 'waiter', \
                clock_timestamp() + interval '1 hour' \
           FROM generate_series(1, {OTHERS}) i; \
         ANALYZE objects; ANALYZE holders; ANALYZE queue"
    ))
    .execute(&mut conn)
    .await
    .expect("filled");
    for i in 0..8 {
        pages_per_acquire_and_release(&mut conn, &format!("warm2/{i}")).await;
    }
    let crowded = pages_per_acquire_and_release(&mut conn, "probe/crowded").await;
    eprintln!("pages per acquire + release: {alone} alone, {crowded} among {OTHERS} others");
    // Some lookups descend one B-tree level more; a scan would touch thousands of pages.
    assert!(
        crowded <= alone + alone / 2,
        "{crowded} pages with {OTHERS} other locks, {alone} alone"
    );
    drop((service, conn));
    common::drop_schema(&url, &schema).await;
}

/// The reaper deletes an object whose holder expired without a release (its holder row with
/// it), and leaves alone held objects, one of them with a waiter queued behind its holder, who
/// is granted at the holder's expiry as if no reaper had run.
#[tokio::test]
async fn the_reaper_clears_expired_holders_and_keeps_held_objects_and_their_queues() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let schema = common::private_schema("reap2");
    let mut config = common::test_config(&url);
    config.schema = schema.clone();
    config.reap_interval = Duration::ZERO;
    let service = Arc::new(common::connect(config).await);
    let (lapsed, held, awaited) = (object("lapsed"), object("held"), object("awaited"));
    service
        .acquire(
            &lapsed,
            &owner("a"),
            Duration::from_millis(20),
            Duration::ZERO,
        )
        .await
        .expect("granted");
    service
        .acquire(&held, &owner("a"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    // `awaited`: its holder expires soon, and a waiter is queued behind it meanwhile.
    service
        .acquire(
            &awaited,
            &owner("a"),
            Duration::from_millis(300),
            Duration::ZERO,
        )
        .await
        .expect("granted");
    let waiter = {
        let (service, awaited) = (service.clone(), awaited.clone());
        tokio::spawn(async move {
            service
                .acquire(&awaited, &owner("b"), LONG, Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        service
            .store()
            .reap(Duration::from_millis(1))
            .await
            .expect("reaped"),
        1,
        "only the lapsed object goes"
    );
    let mut admin = common::admin(&url).await;
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT t, count(*) FROM ( \
             SELECT 'objects' AS t FROM \"{schema}\".objects WHERE object = $1 \
             UNION ALL SELECT 'holders' FROM \"{schema}\".holders WHERE object = $1) x \
         GROUP BY t"
    ))
    .bind(lapsed.as_str())
    .fetch_all(&mut admin)
    .await
    .expect("rows");
    assert!(rows.is_empty(), "left behind: {rows:?}");
    let lease = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("waiter finished")
        .expect("waiter task")
        .expect("the waiter is granted once the holder expires");
    assert_eq!(lease.owner.as_str(), "b");
    assert!(service.inspect(&held).await.expect("inspect").is_some());
    drop(service);
    common::drop_schema(&url, &schema).await;
}
