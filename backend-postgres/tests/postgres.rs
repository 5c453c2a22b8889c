//! Behaviour specific to the PostgreSQL backend: the fence floor comes from the database clock,
//! row reclamation never lets a fence go backwards, several lockd processes sharing a schema
//! exclude each other and wake each other's waiters, migrations stay inside their schema, and
//! every kind of database trouble is `Unavailable`, never a grant.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_postgres::{PostgresLockService, PostgresStore};
use lockcore::fence::FENCE_CLOCK_SHIFT;
use lockcore::{Fence, LockError, LockService, ObjectId, OwnerId};
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
    sqlx::raw_sql(&format!("TRUNCATE \"{schema}\".objects, \"{schema}\".holders, \"{schema}\".queue"))
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
