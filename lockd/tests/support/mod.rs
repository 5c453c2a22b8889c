//! Starting the real `lockd` binary on a free port and talking to it.
#![allow(dead_code, unreachable_pub)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod shared;

/// A running `lockd serve` child process.
pub struct Lockd {
    child: Child,
    /// `http://127.0.0.1:PORT` (`https://` with `--tls-cert`), from the first line of stdout.
    pub url: String,
    /// `grpc://127.0.0.1:PORT` (`grpcs://` with `--tls-cert`), from the second line of stdout
    /// (`None` with `--grpc-listen off`).
    pub grpc_url: Option<String>,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
    api_key: Option<String>,
}

/// Environment variables the tests must not inherit.
pub const LOCKD_ENV: &[&str] = &[
    "LOCKD_CONFIG",
    "LOCKD_LISTEN",
    "LOCKD_GRPC_LISTEN",
    "LOCKD_TLS_CERT",
    "LOCKD_TLS_KEY",
    "LOCKD_TLS_CLIENT_CA",
    "LOCKD_BACKEND",
    "LOCKD_API_KEYS",
    "LOCKD_TOKEN_SECRET",
    "LOCKD_TOKEN_SECRET_FILE",
    "LOCKD_MAX_TTL",
    "LOCKD_MAX_WAIT",
    "LOCKD_MAX_BODY_BYTES",
    "LOCKD_EVENTS_CAPACITY",
    "LOCKD_METRICS_PREFIX_DEPTH",
    "LOCKD_DATA_DIR",
    "LOCKD_INSECURE_NO_AUTH",
    "LOCKD_SHUTDOWN_TIMEOUT",
    "LOCKD_REQUEST_READ_TIMEOUT",
    "LOCKD_IDLE_TIMEOUT",
    "LOCKD_MAX_CONNECTIONS",
    "LOCKD_MAX_IN_FLIGHT",
    "LOCKD_MAX_WAITERS",
    "LOCKD_MAX_EVENT_STREAMS",
    "LOCKD_LOG",
];

fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockd"));
    cmd.arg("serve");
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    // Never the fixed default port 7071: tests run many servers at once.
    if !args.contains(&"--grpc-listen") {
        cmd.args(["--grpc-listen", "127.0.0.1:0"]);
    }
    cmd.args(args);
    for var in LOCKD_ENV {
        cmd.env_remove(var);
    }
    cmd.env("LOCKD_LOG", "info,lockd=debug");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// What a start that should fail printed.
#[derive(Debug)]
pub struct Failed {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Lockd {
    /// Starts `lockd serve --listen 127.0.0.1:0 ARGS` and waits for its "listening" line.
    pub async fn start(args: &[&str]) -> Lockd {
        Self::start_with_env(args, &[]).await
    }

    /// Like [`Lockd::start`] with extra environment variables.
    pub async fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Lockd {
        match Self::try_start(args, envs).await {
            Ok(lockd) => lockd,
            Err(failed) => panic!("lockd did not start: {failed:?}"),
        }
    }

    /// Starts lockd, or returns what it printed if it exited before listening.
    pub async fn try_start(args: &[&str], envs: &[(&str, &str)]) -> Result<Lockd, Failed> {
        let mut child = command(args, envs).spawn().expect("spawn lockd");
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let collected = Arc::new(Mutex::new(String::new()));
        let sink = collected.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[lockd] {line}");
                let mut all = sink.lock().expect("stderr buffer");
                all.push_str(&line);
                all.push('\n');
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("lockd printed nothing within 30 s")
            .expect("read stdout");
        let Some(first) = first else {
            let status = child.wait().await.expect("wait");
            // Let the stderr reader drain.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stderr = collected.lock().expect("stderr buffer").clone();
            return Err(Failed {
                code: status.code(),
                stdout: String::new(),
                stderr,
            });
        };
        let url = first
            .strip_prefix("lockd listening on ")
            .unwrap_or_else(|| panic!("unexpected first stdout line: {first:?}"))
            .to_owned();
        assert!(
            url.starts_with("http://") || url.starts_with("https://"),
            "{url}"
        );
        let grpc_off = args
            .windows(2)
            .any(|pair| pair[0] == "--grpc-listen" && pair[1].eq_ignore_ascii_case("off"));
        let grpc_url = if grpc_off {
            None
        } else {
            let second = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("lockd printed its gRPC address within 30 s")
                .expect("read stdout")
                .expect("lockd printed its gRPC address");
            let grpc_url = second
                .strip_prefix("lockd grpc listening on ")
                .unwrap_or_else(|| panic!("unexpected second stdout line: {second:?}"))
                .to_owned();
            assert!(
                grpc_url.starts_with("grpc://") || grpc_url.starts_with("grpcs://"),
                "{grpc_url}"
            );
            Some(grpc_url)
        };
        // Any further stdout would be a bug; drain it so the child never blocks.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[lockd stdout] {line}");
            }
        });
        Ok(Lockd {
            child,
            url,
            grpc_url,
            stderr: collected,
            http: reqwest::Client::new(),
            api_key: None,
        })
    }

    /// Sends requests through `http` from now on (one that trusts a test CA, say).
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Sends this key as `Authorization: Bearer` from now on.
    pub fn with_api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_owned());
        self
    }

    /// What lockd has logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    /// The child's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id().expect("running")).expect("pid fits")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("send SIGTERM");
    }

    /// Sends SIGKILL and reaps the child.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill lockd");
    }

    /// Waits (at most 30 s) for the child to exit and returns its exit code.
    pub async fn wait(mut self) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("lockd exits within 30 s")
            .expect("wait")
            .code()
    }

    /// A request builder with the API key, if any.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        request
    }

    /// POSTs JSON and returns the status and JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .request(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("request");
        status_and_json(response).await
    }

    /// GETs and returns the status and JSON body.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request");
        status_and_json(response).await
    }

    /// Waits (at most 10 s) until `/metrics` contains `needle`.
    pub async fn wait_for_metric(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = self
                .request(reqwest::Method::GET, "/metrics")
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            if metrics.contains(needle) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{needle:?} never appeared in:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Acquires `object` for `owner` and returns the response body, asserting success.
    pub async fn acquire(&self, object: &str, owner: &str, ttl_ms: u64) -> Value {
        let (status, body) = self
            .post(
                "/v1/locks/acquire",
                json!({"object": object, "owner": owner, "ttl_ms": ttl_ms}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// The status and the body parsed as JSON (panics with the text if it is not JSON).
pub async fn status_and_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?} (status {status})"));
    (status, value)
}

/// Asserts the error envelope with `code` and returns the error object.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) -> Value {
    assert_eq!(status, expected, "{body}");
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no error envelope: {body}"));
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
    error.clone()
}

/// A unique object name for one test.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "/test/{}/{}/{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
