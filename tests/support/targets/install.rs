//! Installs under `target/`, each once per machine: GitHub's OpenAPI
//! descriptions (npm `@octokit/openapi`) and the reference Standard Webhooks
//! library (npm `standardwebhooks`), which [`verify_standard_webhook`] runs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use axum::http::HeaderMap;
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

/// npm `@octokit/openapi`: GitHub's official OpenAPI description.
pub(crate) const OCTOKIT_OPENAPI: &str = "@octokit/openapi@23.0.2";
/// sha256 of its npm tarball, as in `tests/fixtures/openapi/SOURCES.md`.
pub(crate) const OCTOKIT_TARBALL_SHA256: &str =
    "71a18407dd5e8464f4e0525daf03deabbe65abd9287d6adc7b5d98f516cd0d0c";
/// sha256 of `package/generated/api.github.com.json`, as in `SOURCES.md`.
pub(crate) const OCTOKIT_SPEC_SHA256: &str =
    "829b4bebb19a53133289f7b0bc819f4f1118115821db2ca9f25e9ee995a7da2a";
/// sha256 of `package/generated/ghes-3.19.json` (GitHub Enterprise Server
/// 3.19), as in `SOURCES.md`.
pub(crate) const OCTOKIT_GHES_SPEC_SHA256: &str =
    "8c852cf1bde4d40ee19dffd9cdd18650bfad09f9dd0cd5039b9d775056104139";
/// The npm `standardwebhooks` version [`verify_standard_webhook`] runs.
pub(crate) const STANDARDWEBHOOKS_NPM: &str = "standardwebhooks@1.3.0";

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `<crate>/target`).
pub(crate) fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => manifest.join(dir),
        None => manifest.join("target"),
    }
}

/// `dest` if it exists; otherwise, holding the lock file `<dest>.lock` (so
/// parallel test processes install once), `build` fills a fresh scratch
/// directory and returns the path inside it that is then renamed to `dest`.
/// `dest` therefore only ever exists complete and checked.
fn install_once(dest: &Path, build: impl FnOnce(&Path) -> Result<PathBuf, String>) -> PathBuf {
    if dest.exists() {
        return dest.to_owned();
    }
    let parent = dest.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    let name = dest.file_name().unwrap().to_string_lossy().into_owned();
    let lock = std::fs::File::create(parent.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    if dest.exists() {
        return dest.to_owned();
    }
    let scratch = parent.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let result = build(&scratch);
    let outcome = result.and_then(|built| {
        std::fs::rename(&built, dest)
            .map_err(|e| format!("rename {} → {}: {e}", built.display(), dest.display()))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    drop(lock);
    if let Err(e) = outcome {
        panic!("installing {}: {e}", dest.display());
    }
    dest.to_owned()
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// The path of `package/generated/api.github.com.json` from npm
/// [`OCTOKIT_OPENAPI`], in `target/octokit-openapi/`. The first call on a
/// machine runs `npm pack` and `tar`, and checks both sha256 sums (the
/// tarball's and the file's) against `tests/fixtures/openapi/SOURCES.md`.
pub(crate) fn octokit_spec() -> PathBuf {
    octokit_file("api.github.com.json", OCTOKIT_SPEC_SHA256)
}

/// The path of `package/generated/ghes-3.19.json` (GitHub Enterprise Server
/// 3.19) from the same npm [`OCTOKIT_OPENAPI`], in `target/octokit-openapi/`,
/// installed and checked as [`octokit_spec`] is.
pub(crate) fn octokit_ghes_spec() -> PathBuf {
    octokit_file("ghes-3.19.json", OCTOKIT_GHES_SPEC_SHA256)
}

/// `package/generated/<file>` of [`OCTOKIT_OPENAPI`], whose sha256 is
/// `sha256`, installed once into `target/octokit-openapi/23.0.2/`.
fn octokit_file(file: &str, sha256: &str) -> PathBuf {
    let sources = std::fs::read_to_string(super::super::fixtures().join("openapi/SOURCES.md")).unwrap();
    for sum in [OCTOKIT_TARBALL_SHA256, sha256] {
        assert!(sources.contains(sum), "SOURCES.md does not list sha256 {sum}");
    }
    let dest = target_dir().join("octokit-openapi/23.0.2").join(file);
    install_once(&dest, |scratch| {
        run(Command::new("npm")
            .args(["pack", OCTOKIT_OPENAPI, "--silent", "--pack-destination"])
            .arg(scratch)
            .current_dir(scratch))?;
        let tarball = scratch.join("octokit-openapi-23.0.2.tgz");
        let sum = sha256_file(&tarball)?;
        if sum != OCTOKIT_TARBALL_SHA256 {
            return Err(format!("tarball sha256 {sum}, expected {OCTOKIT_TARBALL_SHA256}"));
        }
        let member = format!("package/generated/{file}");
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(scratch)
            .arg(&member))?;
        let extracted = scratch.join(&member);
        let sum = sha256_file(&extracted)?;
        if sum != sha256 {
            return Err(format!("{file} sha256 {sum}, expected {sha256}"));
        }
        Ok(extracted)
    })
}

/// The directory holding `node_modules/standardwebhooks` (npm
/// [`STANDARDWEBHOOKS_NPM`]), installed on first use into
/// `target/standardwebhooks-js/`.
pub(crate) fn standardwebhooks_dir() -> PathBuf {
    let dest = target_dir().join("standardwebhooks-js");
    install_once(&dest, |scratch| {
        let dir = scratch.join("standardwebhooks-js");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("package.json"), "{\"private\": true}\n").unwrap();
        run(Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--save-exact",
                STANDARDWEBHOOKS_NPM,
            ])
            .current_dir(&dir))?;
        if !dir.join("node_modules/standardwebhooks/package.json").exists() {
            return Err("npm install left no node_modules/standardwebhooks".into());
        }
        Ok(dir)
    })
}

/// Verifies a Standard Webhooks request (its `webhook-id`,
/// `webhook-timestamp`, `webhook-signature` headers and raw body) with the
/// reference library, npm `standardwebhooks`, run by
/// `tests/support/swhook_verify.mjs` under Node. `secret` is `whsec_<base64>`
/// or, otherwise, raw key text. `Err` carries the library's reason.
pub(crate) fn verify_standard_webhook(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let modules = {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(standardwebhooks_dir).clone()
    };
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        map.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    let input = json!({
        "secret": secret,
        "headers": map,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(body),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/swhook_verify.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(&modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("node: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) if stdout == "ok" => Ok(()),
        Some(1) => Err(stdout),
        _ => panic!(
            "swhook_verify.mjs failed ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
