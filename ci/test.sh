#!/usr/bin/env bash
# The whole suite: lint (Python and Rust), Rust unit tests, then pytest.
# pytest exiting 5 (no tests collected) is a failure here, never a silent pass.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
export PYO3_PYTHON=$PWD/.venv/bin/python

echo "== lint"
ruff check python tests bench
ruff format --check python tests bench
mypy
python -m mypy.stubtest mirrorcore._native
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings

echo "== rust unit tests"
cargo test --quiet

echo "== python tests"
set +e
# bench/ runs too, each benchmark once and untimed: CI checks the suites work, `make bench` measures.
python -m pytest tests bench --benchmark-disable "$@"
status=$?
set -e
if [ $status -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit $status
