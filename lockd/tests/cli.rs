//! The command-line helpers (`lockd acquire | renew | release | inspect | list | events`)
//! against a real server.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{unique, Lockd};
use tokio::io::{AsyncBufReadExt, BufReader};

fn lockd_cli(server: &str, args: &[&str], api_key: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockd"));
    cmd.args(args).args(["--server", server]);
    cmd.env_remove("LOCKD_API_KEY").env_remove("LOCKD_SERVER");
    if let Some(key) = api_key {
        cmd.env("LOCKD_API_KEY", key);
    }
    cmd.stdin(Stdio::null()).output().expect("run lockd")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

fn text_of(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

#[tokio::test]
async fn acquire_renew_list_release_and_events_from_the_shell() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("cli");
    let url = lockd.url.clone();

    let lease = json_of(&lockd_cli(
        &url,
        &[
            "acquire", &object, "--owner", "shell", "--ttl", "30s", "--json",
        ],
        None,
    ));
    assert_eq!(lease["owner"], "shell");
    assert_eq!(lease["ttl_ms"], 30_000);
    let token = lease["token"].as_str().expect("token").to_owned();

    // A second acquire is refused with the holder named, exit code 1.
    let refused = lockd_cli(
        &url,
        &[
            "acquire", &object, "--owner", "other", "--ttl", "1s", "--wait", "100ms",
        ],
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("lockd: error:") && stderr.contains("shell"),
        "{stderr}"
    );

    let renewed = json_of(&lockd_cli(
        &url,
        &["renew", &object, "--token", &token, "--ttl", "1m", "--json"],
        None,
    ));
    assert_eq!(renewed["fence"], lease["fence"]);
    assert_eq!(renewed["ttl_ms"], 60_000);

    let listed = json_of(&lockd_cli(
        &url,
        &["list", "--prefix", &object, "--json"],
        None,
    ));
    let locks = listed["locks"].as_array().expect("locks");
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0]["object"], object.as_str());
    let table = text_of(&lockd_cli(&url, &["list", "--prefix", &object], None));
    let mut lines = table.lines();
    assert!(
        lines.next().is_some_and(|h| h.starts_with("OBJECT")),
        "{table}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.contains(&object) && l.contains("shell")),
        "{table}"
    );

    let released = json_of(&lockd_cli(
        &url,
        &["release", &object, "--token", &token, "--json"],
        None,
    ));
    assert_eq!(released["fence"], lease["fence"]);
    let again = lockd_cli(&url, &["release", &object, "--token", &token], None);
    assert_eq!(again.status.code(), Some(1));

    let events = text_of(&lockd_cli(&url, &["events", "--json"], None));
    let kinds: Vec<String> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|e| e["object"] == object.as_str())
        .map(|e| e["kind"].as_str().expect("kind").to_owned())
        .collect();
    // The refused acquire waited 100 ms behind "shell": a `wanted` notice for it.
    assert_eq!(
        kinds,
        vec!["grant", "wanted", "renew", "release", "release_refused"]
    );
    assert!(
        !events.contains(&token),
        "the event log must not show tokens"
    );
    let table = text_of(&lockd_cli(&url, &["events"], None));
    assert!(table.starts_with("SEQ"), "{table}");
    assert!(
        table.contains("release_refused") && table.contains("not_held"),
        "{table}"
    );
}

#[tokio::test]
async fn events_follow_prints_new_events_as_they_happen() {
    let lockd = Lockd::start(&[]).await;
    let mut follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_lockd"))
        .args(["events", "--follow", "--json", "--server", &lockd.url])
        .env_remove("LOCKD_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn follower");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let object = unique("follow");
    lockd.acquire(&object, "watcher", 30_000).await;
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("an event within 10 s")
        .expect("read")
        .expect("a line");
    let event: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(event["kind"], "grant");
    assert_eq!(event["object"], object.as_str());
    follower.kill().await.expect("stop follower");
}

#[tokio::test]
async fn the_api_key_comes_from_lockd_api_key() {
    let key = "cli-key-0123456789abcdef";
    let lockd = Lockd::start(&["--api-key", key]).await;
    let without = lockd_cli(&lockd.url, &["list"], None);
    assert_eq!(without.status.code(), Some(1));
    let with = lockd_cli(&lockd.url, &["list", "--json"], Some(key));
    assert!(json_of(&with)["locks"].is_array());
}

/// `lockd acquire A B --shared` takes both objects together in shared mode; `release` and
/// `renew` take several objects with one `--token` each, in order; `downgrade` turns an
/// exclusive lock shared.
#[tokio::test]
async fn several_objects_shared_mode_batches_and_downgrade_from_the_shell() {
    let lockd = Lockd::start(&[]).await;
    let url = lockd.url.clone();
    let (a, b) = (unique("cli-a"), unique("cli-b"));

    let grant = json_of(&lockd_cli(
        &url,
        &[
            "acquire", &a, &b, "--shared", "--owner", "reader", "--ttl", "30s", "--json",
        ],
        None,
    ));
    assert_eq!(grant["owner"], "reader");
    let locks = grant["locks"].as_array().expect("locks");
    assert_eq!(locks.len(), 2);
    assert!(locks.iter().all(|l| l["mode"] == "shared"));
    assert_eq!(locks[0]["object"], a.as_str());
    let tokens: Vec<String> = locks
        .iter()
        .map(|l| l["token"].as_str().expect("token").to_owned())
        .collect();

    // Another reader joins; a writer is refused.
    let second = json_of(&lockd_cli(
        &url,
        &[
            "acquire", &a, "--shared", "--owner", "r2", "--ttl", "30s", "--json",
        ],
        None,
    ));
    assert_eq!(second["mode"], "shared");
    let refused = lockd_cli(&url, &["acquire", &a, "--owner", "w", "--ttl", "1s"], None);
    assert_eq!(refused.status.code(), Some(1));

    let table = text_of(&lockd_cli(
        &url,
        &[
            "acquire",
            &unique("cli-c"),
            &unique("cli-d"),
            "--owner",
            "x",
            "--ttl",
            "5s",
        ],
        None,
    ));
    assert!(
        table.contains("OBJECT") && table.contains("exclusive"),
        "{table}"
    );

    let renewed = json_of(&lockd_cli(
        &url,
        &[
            "renew", &a, &b, "--token", &tokens[0], "--token", &tokens[1], "--ttl", "1m", "--json",
        ],
        None,
    ));
    let results = renewed["results"].as_array().expect("results");
    assert!(results.iter().all(|r| r["ttl_ms"] == 60_000), "{renewed}");

    let mismatched = lockd_cli(&url, &["release", &a, &b, "--token", &tokens[0]], None);
    assert_eq!(mismatched.status.code(), Some(1));

    let released = text_of(&lockd_cli(
        &url,
        &[
            "release", &a, &b, "--token", &tokens[0], "--token", &tokens[1],
        ],
        None,
    ));
    assert_eq!(released.lines().count(), 2, "{released}");
    assert!(
        released.lines().all(|l| l.starts_with("released")),
        "{released}"
    );
    let again = lockd_cli(
        &url,
        &[
            "release", &a, &b, "--token", &tokens[0], "--token", &tokens[1], "--json",
        ],
        None,
    );
    assert_eq!(
        again.status.code(),
        Some(1),
        "every lock was already released"
    );
    let answer: Value = serde_json::from_slice(&again.stdout).expect("JSON on stdout");
    assert_eq!(answer["results"][1]["error"]["code"], "not_held");

    let writer = json_of(&lockd_cli(
        &url,
        &["acquire", &b, "--owner", "w", "--ttl", "30s", "--json"],
        None,
    ));
    let token = writer["token"].as_str().expect("token");
    let down = json_of(&lockd_cli(
        &url,
        &["downgrade", &b, "--token", token, "--json"],
        None,
    ));
    assert_eq!(down["mode"], "shared");
    assert_eq!(down["fence"], writer["fence"]);
}

/// `acquire --subtree --lock-delay` takes a subtree lock with a lock-delay; `inspect` shows the
/// holder's scope and waiters, then, once the lease expired, the lock-delay in force (and the
/// refusals name it); `list` shows waiters and delays too.
#[tokio::test]
async fn subtree_locks_lock_delays_and_inspect_from_the_shell() {
    let lockd = Lockd::start(&[]).await;
    let url = lockd.url.clone();
    let dir = unique("cli-dir");
    let file = format!("{dir}/x/y");

    let lease = json_of(&lockd_cli(
        &url,
        &[
            "acquire",
            &dir,
            "--subtree",
            "--lock-delay",
            "2s",
            "--owner",
            "renamer",
            "--ttl",
            "400ms",
            "--json",
        ],
        None,
    ));
    assert_eq!(lease["scope"], "subtree", "{lease}");
    let refused = lockd_cli(
        &url,
        &["acquire", &file, "--owner", "w", "--ttl", "1s"],
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("renamer"),
        "{refused:?}"
    );

    let held = text_of(&lockd_cli(&url, &["inspect", &dir], None));
    assert!(held.contains("waiters  0"), "{held}");
    assert!(
        held.lines()
            .any(|l| l.starts_with("renamer") && l.contains("subtree")),
        "{held}"
    );
    let described = json_of(&lockd_cli(&url, &["inspect", &dir, "--json"], None));
    assert_eq!(described["holders"][0]["scope"], "subtree");

    tokio::time::sleep(Duration::from_millis(600)).await;
    let refused = lockd_cli(
        &url,
        &["acquire", &file, "--owner", "w", "--ttl", "1s"],
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("lock-delay"), "{stderr}");
    let delayed = json_of(&lockd_cli(&url, &["inspect", &dir, "--json"], None));
    assert_eq!(delayed["delay"]["owner"], "renamer", "{delayed}");
    assert_eq!(delayed["delay"]["scope"], "subtree", "{delayed}");
    let text = text_of(&lockd_cli(&url, &["inspect", &dir], None));
    assert!(
        text.contains("delay ") && text.contains("holders  none"),
        "{text}"
    );
    let table = text_of(&lockd_cli(&url, &["list", "--prefix", &dir], None));
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("WAITERS") && h.contains("DELAY")),
        "{table}"
    );

    let free = text_of(&lockd_cli(&url, &["inspect", &unique("cli-free")], None));
    assert!(free.contains("is not locked"), "{free}");
    let free = text_of(&lockd_cli(
        &url,
        &["inspect", &unique("cli-free"), "--json"],
        None,
    ));
    assert_eq!(free.trim(), "null");
}
