//! The proto follows `buf lint`'s STANDARD rules (but for the service's name, see
//! `proto/buf.yaml`). buf comes from npm (`@bufbuild/buf`, installed under `target/`); without
//! npm or the registry the check skips loudly, even under `LOCKD_REQUIRE_BACKENDS=1`: it
//! checks style, not behaviour.

use std::path::PathBuf;
use std::process::Command;

fn skip(why: &str) {
    eprintln!("SKIPPED buf lint: {why}");
}

#[test]
fn the_proto_passes_buf_lint() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let prefix = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lockd-grpc-buf");
    let buf = prefix.join("node_modules").join(".bin").join("buf");
    if !buf.exists() {
        let installed = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg("@bufbuild/buf")
            .output();
        match installed {
            Ok(out) if out.status.success() && buf.exists() => {}
            Ok(out) => {
                return skip(&format!(
                    "npm install @bufbuild/buf failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) => return skip(&format!("cannot run npm: {e}")),
        }
    }
    let lint = Command::new(&buf)
        .arg("lint")
        .arg("proto")
        .current_dir(&repo)
        .output();
    let lint = match lint {
        Ok(lint) => lint,
        Err(e) => return skip(&format!("cannot run buf: {e}")),
    };
    assert!(
        lint.status.success(),
        "buf lint found problems:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
}
