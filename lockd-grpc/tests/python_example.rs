//! The proto as another language uses it: Python stubs generated with grpcio-tools (from PyPI,
//! installed into a virtualenv under `target/`) drive one acquire and one release, see a
//! `locked` refusal with its details and an unauthenticated call refused
//! (`python/acquire_release.py`).
//!
//! It is an example, not a backend: when Python, the virtualenv or the packages cannot be had
//! here it skips loudly, even under `LOCKD_REQUIRE_BACKENDS=1`.

#![allow(clippy::unwrap_used)] // Test setup panics on failure by design.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockd_grpc::{Auth, GrpcOptions};

const KEY: &str = "python-example-key-0123456789";
const PIP_DEADLINE: Duration = Duration::from_secs(300);

fn skip(why: &str) {
    eprintln!("SKIPPED the Python gRPC example: {why}");
}

/// Runs `command` to completion within `deadline`; its stderr on failure.
fn run(command: &mut Command, deadline: Duration) -> Result<String, String> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown} took longer than {deadline:?}"));
            }
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A Python with grpcio-tools and grpcio-status, in a virtualenv under `target/` made on first
/// use.
fn python_with_grpc(venv: &Path) -> Result<PathBuf, String> {
    let python = venv.join("bin").join("python");
    let ready = |python: &Path| {
        run(
            Command::new(python).args(["-c", "import grpc_tools, grpc_status"]),
            Duration::from_secs(60),
        )
        .is_ok()
    };
    if python.exists() && ready(&python) {
        return Ok(python);
    }
    run(
        Command::new("python3").args(["-m", "venv"]).arg(venv),
        Duration::from_secs(120),
    )?;
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "grpcio-tools",
            "grpcio-status",
        ]),
        PIP_DEADLINE,
    )?;
    if ready(&python) {
        Ok(python)
    } else {
        Err("grpcio-tools installed but cannot be imported".into())
    }
}

/// Generates the Python stubs of `proto/lockd/v1/locks.proto` into `out`.
fn generate(python: &Path, repo: &Path, out: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let script = "import sys, importlib.resources as r\n\
                  from grpc_tools import protoc\n\
                  wkt = str(r.files('grpc_tools') / '_proto')\n\
                  sys.exit(protoc.main(['protoc', '-I' + sys.argv[1], '-I' + wkt,\n\
                      '--python_out=' + sys.argv[2], '--grpc_python_out=' + sys.argv[2],\n\
                      sys.argv[3]]))";
    let proto_root = repo.join("proto");
    run(
        Command::new(python)
            .args(["-c", script])
            .arg(&proto_root)
            .arg(out)
            .arg(proto_root.join("lockd/v1/locks.proto")),
        Duration::from_secs(120),
    )
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_by_grpcio_tools_acquires_and_releases() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = crate_dir.join("..");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let venv = tmp.join("lockd-grpc-python");
    let python = match tokio::task::spawn_blocking(move || python_with_grpc(&venv))
        .await
        .unwrap()
    {
        Ok(python) => python,
        Err(why) => return skip(&why),
    };
    let generated = tmp.join("lockd-grpc-python-stubs");
    {
        let (python, repo, generated) = (python.clone(), repo.clone(), generated.clone());
        let made = tokio::task::spawn_blocking(move || generate(&python, &repo, &generated))
            .await
            .unwrap();
        // grpcio-tools is installed, so a failure to compile the proto is the proto's fault.
        made.expect("grpcio-tools compiles proto/lockd/v1/locks.proto");
    }

    let server = support::start_with(
        support::memory(),
        GrpcOptions::default().with_auth(Auth::api_keys(&[KEY])),
    )
    .await;
    let target = server.addr.to_string();
    let script = crate_dir.join("python").join("acquire_release.py");
    let output = tokio::task::spawn_blocking(move || {
        run(
            Command::new(&python)
                .arg(&script)
                .arg(&generated)
                .arg(&target)
                .arg(KEY),
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap()
    .expect("the Python example runs");
    let report: serde_json::Value = serde_json::from_str(output.trim()).unwrap();

    assert_eq!(report["acquired"]["object"], "/vol/a/file.txt");
    assert_eq!(report["acquired"]["owner"], "python-node");
    assert_eq!(report["acquired"]["mode"], "LOCK_MODE_EXCLUSIVE");
    assert_eq!(report["acquired"]["token_prefix"], "lk2.");
    assert_eq!(report["locked"]["status"], "ABORTED");
    assert_eq!(report["locked"]["code"], "locked");
    assert_eq!(report["locked"]["holder"], "python-node");
    assert_eq!(
        report["locked"]["conflicts"],
        serde_json::json!(["/vol/a/file.txt"])
    );
    assert_eq!(report["anonymous"], "UNAUTHENTICATED");
    assert_eq!(report["released"]["fence"], report["acquired"]["fence"]);
    let object = lockcore::ObjectId::new("/vol/a/file.txt").unwrap();
    assert_eq!(server.backend.inspect(&object).await, Ok(None));
}
