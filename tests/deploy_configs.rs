//! The configs shipped in deploy/ (systemd, container, Kubernetes) pass `check`.
#![allow(clippy::unwrap_used)]

mod support;

#[test]
fn every_deploy_config_passes_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let creds = tempfile::tempdir().unwrap();
    for name in [
        "github-webhook-secret",
        "gitlab-webhook-token",
        "circleci-token",
        "gitlab-trigger-token",
        "admin-token",
    ] {
        std::fs::write(creds.path().join(name), "x\n").unwrap();
    }
    for rel in [
        "deploy/systemd/hookbridge.toml",
        "deploy/container/hookbridge.toml",
        "deploy/kubernetes/base/hookbridge.toml",
        "deploy/kubernetes/overlays/postgres/hookbridge.toml",
    ] {
        let out = std::process::Command::new(support::daemon::BIN)
            .args(["check", "--config"])
            .arg(root.join(rel))
            .env("CREDENTIALS_DIRECTORY", creds.path())
            .env_remove("HOOKBRIDGE_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{rel}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
