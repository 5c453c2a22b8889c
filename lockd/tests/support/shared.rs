//! A `lockd serve` that lives as long as the test process, shared by every test of a binary.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// A lockd that lives as long as this test process.
///
/// It is a child of a small `sh` that holds the read end of a pipe from this process: when the
/// test binary exits, for whatever reason, the pipe closes and the shell stops lockd.
pub struct SharedServer {
    /// `http://127.0.0.1:PORT`, from lockd's first line of stdout.
    pub url: String,
    /// `grpc://127.0.0.1:PORT`, from lockd's second line of stdout.
    pub grpc_url: String,
    _shell: Child,
    /// Closing this (at process exit) tells the shell to stop lockd.
    _lifeline: ChildStdin,
}

impl SharedServer {
    /// Starts `lockd serve --backend BACKEND` (with `--api-key` and environment `envs`, if
    /// given) behind the lifeline shell and reads its URL.
    pub fn start(
        backend: &str,
        api_key: Option<&str>,
        envs: &[(&str, &str)],
    ) -> Result<SharedServer, String> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#""$0" "$@" & pid=$!; read -r _line; kill -TERM "$pid" 2>/dev/null; wait "$pid""#)
            .arg(env!("CARGO_BIN_EXE_lockd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--backend", backend])
            .args(["--grpc-listen", "127.0.0.1:0"])
            .args(["--log", "error", "--shutdown-timeout", "1s"]);
        if let Some(key) = api_key {
            command.args(["--api-key", key]);
        }
        for var in super::LOCKD_ENV {
            command.env_remove(var);
        }
        for (var, value) in envs {
            command.env(var, value);
        }
        let mut shell = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start sh for lockd: {e}"))?;
        let lifeline = shell.stdin.take().ok_or("no stdin pipe")?;
        let stdout = shell.stdout.take().ok_or("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let second = lines.next();
            let _ = tx.send((first, second));
            // Keep draining so lockd never blocks on a full pipe.
            for _ in lines {}
        });
        let (first, second) = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| format!("lockd --backend {backend} printed nothing within 60 s"))?;
        let first = first
            .ok_or_else(|| {
                format!("lockd --backend {backend} exited before listening (see stderr)")
            })?
            .map_err(|e| format!("cannot read lockd's stdout: {e}"))?;
        let url = first
            .strip_prefix("lockd listening on ")
            .ok_or_else(|| format!("unexpected first line from lockd: {first:?}"))?
            .trim()
            .to_owned();
        let second = second
            .ok_or_else(|| format!("lockd --backend {backend} printed no gRPC address"))?
            .map_err(|e| format!("cannot read lockd's stdout: {e}"))?;
        let grpc_url = second
            .strip_prefix("lockd grpc listening on ")
            .ok_or_else(|| format!("unexpected second line from lockd: {second:?}"))?
            .trim()
            .to_owned();
        Ok(SharedServer {
            url,
            grpc_url,
            _shell: shell,
            _lifeline: lifeline,
        })
    }
}

/// The backend URL from `var`, or a loud skip (a failure under `LOCKD_REQUIRE_BACKENDS=1`).
pub fn backend_from_env(var: &str, name: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            conformance_tests::skip_or_fail(name, &format!("{var} is not set"));
            None
        }
    }
}
