#!/usr/bin/env bash
# Installs everything mirrorcore needs on a fresh Debian machine, idempotently:
# system packages, a virtualenv in .venv and the Rust extension built into it.
# Re-running it is cheap: each step checks whether it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(fuse3 libfuse3-dev pkg-config iproute2 procps psmisc util-linux iputils-ping rsync)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: installing system packages needs root (run as root, or install: ${missing[*]})" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating virtualenv .venv"
    "$python" -m venv .venv
fi

# Rebuild the package (and its Rust extension) only when its inputs changed.
stamp=.venv/.mirrorcore-build
inputs=$(find pyproject.toml Cargo.toml Cargo.lock rust/src -type f -print0 | sort -z | xargs -0 cat | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$inputs" ] || ! .venv/bin/python -c 'import mirrorcore._native' 2>/dev/null; then
    echo "setup: installing mirrorcore and its development tools into .venv (builds the Rust extension)"
    .venv/bin/pip install -q --upgrade pip
    PYO3_PYTHON=$PWD/.venv/bin/python .venv/bin/pip install -q -e '.[dev]'
    echo "$inputs" > "$stamp"
fi
