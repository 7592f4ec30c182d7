#!/usr/bin/env bash
# Build the lakeforge wheel for the cluster: dist/lakeforge-<version>-py3-none-any.whl (pip installs it
# into an image or a venv) and the same file as .zip, the form spark-submit --py-files ships to executors
# (PySpark puts only .zip/.egg/.jar on the executors' sys.path). Usage: scripts/build-dist.sh [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)
python=${PYTHON:-$root/.venv/bin/python}
[[ -x "$python" ]] || python=python3
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
# Built from a copy, so the work tree gets no build/ or egg-info; no build isolation, so setuptools
# comes from the environment (>= 77, see pyproject.toml) and no package index is needed.
mkdir -p "$build/src"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/lib" "$build/src/"
rm -rf "$build"/src/lib/*.egg-info
"$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$build/wheel" "$build/src"
wheel=$(ls "$build"/wheel/lakeforge-*.whl)
cp "$wheel" "$out/"
cp "$wheel" "$out/$(basename "$wheel" .whl).zip"
echo "$out/$(basename "$wheel")"
echo "$out/$(basename "$wheel" .whl).zip"
