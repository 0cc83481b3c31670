//! docs/getting-started.md works: its `sh` blocks, run in order as one script
//! (the `cargo build` line aside: this test runs the binary cargo just built),
//! on free ports, must end with the rule's pipeline on the CI stand-in.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

/// The guide's `sh` blocks, in order.
fn script(guide: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in guide.lines() {
        if line.starts_with("```") {
            inside = !inside && line.trim() == "```sh";
            continue;
        }
        if inside && !line.starts_with("cargo build") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

/// Until `hookbridge sign` exists in this build, a stand-in that prints the
/// same `Header: value` lines for a GitHub source.
const SIGN_SHIM: &str = r#"#!/usr/bin/env bash
if [ "$1" = sign ]; then
  payload="${@: -1}"
  python3 - "$payload" <<'PY'
import hashlib, hmac, os, sys, uuid
body = open(sys.argv[1], "rb").read()
key = os.environ["GITHUB_WEBHOOK_SECRET"].encode()
print("X-Hub-Signature-256: sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest())
print("X-GitHub-Delivery: " + str(uuid.uuid4()))
PY
  exit 0
fi
exec "@BIN@" "$@"
"#;

#[test]
fn the_getting_started_guide_works() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/getting-started.md")).unwrap();
    let ports = [
        ("8080", free_port()),
        ("9090", free_port()),
        ("8999", free_port()),
    ];
    let swap = |text: &str| {
        ports
            .iter()
            .fold(text.to_owned(), |t, (from, to)| t.replace(from, to))
    };

    // A scratch copy of what the guide touches.
    let dir = tempfile::tempdir().unwrap();
    let at = |rel: &str| dir.path().join(rel);
    std::fs::create_dir_all(at("docs")).unwrap();
    std::fs::create_dir_all(at("config/tests/getting-started")).unwrap();
    std::fs::create_dir_all(at("target/release")).unwrap();
    std::fs::copy(root.join("docs/ci-stand-in.py"), at("docs/ci-stand-in.py")).unwrap();
    std::fs::copy(
        root.join("config/tests/getting-started/push.json"),
        at("config/tests/getting-started/push.json"),
    )
    .unwrap();
    let config = std::fs::read_to_string(root.join("config/getting-started.toml")).unwrap();
    std::fs::write(at("config/getting-started.toml"), swap(&config)).unwrap();

    let has_sign = Command::new(support::daemon::BIN)
        .args(["sign", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    let bin = at("target/release/hookbridge");
    if has_sign {
        std::os::unix::fs::symlink(support::daemon::BIN, &bin).unwrap();
    } else {
        std::fs::write(&bin, SIGN_SHIM.replace("@BIN@", support::daemon::BIN)).unwrap();
        Command::new("chmod").arg("+x").arg(&bin).status().unwrap();
    }

    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}",
        swap(&script(&guide))
    );
    let out = Command::new("timeout")
        .args(["120", "bash", "-c", &script])
        .current_dir(dir.path())
        .env_remove("HOOKBRIDGE_CONFIG")
        .output()
        .unwrap();
    let log = |name: &str| std::fs::read_to_string(at(name)).unwrap_or_default();
    assert!(
        out.status.success(),
        "the guide failed:\n{script}\nstdout:\n{}\nstderr:\n{}\nhookbridge.log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log("hookbridge.log")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#""rule":"pipeline-on-main""#), "{stdout}");
    assert!(
        log("stand-in.log").contains(
            r#"POST /api/v2/project/gh/acme/app/pipeline {"branch":"main","parameters":{"sha":"6113728f27ae82c7b1a177c8d03f9e96e0adf246"}}"#
        ),
        "{}",
        log("stand-in.log")
    );
}
