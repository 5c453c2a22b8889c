//! Programs that embed lockd's backends through `connect_backend` do not build the HTTP server:
//! `lockd = { default-features = false, features = ["memory", "redis", "postgres"] }` (and
//! `"http"` for remote lockd URLs) leaves axum and the server's other dependencies out.
//!
//! CI also compiles the crate that way (`cargo check -p lockd --no-default-features --features
//! memory,redis,postgres`), and the `lockd-examples` crate depends on lockd like an embedder.

use std::process::Command;

/// Crates only the HTTP server needs.
const SERVER_ONLY: &[&str] = &[
    "axum",
    "prometheus-client",
    "tracing-subscriber",
    "toml",
    "clap",
];

/// The names of the normal (non-dev, non-build) dependencies of lockd built with `features`.
fn dependencies(features: Option<&str>) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args([
        "tree",
        "--offline",
        "--package",
        "lockd",
        "--edges",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]);
    if let Some(features) = features {
        command.args(["--no-default-features", "--features", features]);
    }
    let output = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Without the `server` feature, none of the server's dependencies are built.
#[test]
fn embedders_do_not_build_the_http_server() {
    for features in [
        "memory",
        "memory,redis,postgres",
        "memory,redis,postgres,http",
    ] {
        let built = dependencies(Some(features));
        assert!(built.iter().any(|name| name == "lockcore"), "{built:?}");
        for server_only in SERVER_ONLY {
            assert!(
                !built.iter().any(|name| name == server_only),
                "features {features} build {server_only}"
            );
        }
    }
}

/// The default features build the server (so the check above can fail).
#[test]
fn the_default_features_build_the_server() {
    let built = dependencies(None);
    for server_only in SERVER_ONLY {
        assert!(
            built.iter().any(|name| name == server_only),
            "the default features do not build {server_only}"
        );
    }
}
