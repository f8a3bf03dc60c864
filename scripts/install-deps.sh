#!/usr/bin/env bash
# Installs what building and testing imagerelay needs on a fresh Debian machine:
# Debian packages (only the missing ones) and a project virtualenv with the Python tools.
# --fuzz (make fuzz): also clang and its libFuzzer runtime (libclang-rt-dev), which make test
# does not need.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(g++ make libsqlite3-dev libssl-dev libcurl4-openssl-dev nlohmann-json3-dev
              libgtest-dev libzstd-dev rsync openssl e2fsprogs zstd clang-format
              qemu-utils libpq-dev postgresql)
if [ "${1:-}" = "--fuzz" ]; then
  APT_PACKAGES+=(clang libclang-rt-dev)
fi
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.deps-stamp"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  echo "installing Python build and test tools into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "scikit-build-core>=0.11" "pybind11>=3.0" cmake ninja \
    "tqdm>=4.60" "PyYAML>=6" pytest "moto[server]>=5" nbclient nbformat ipykernel ipywidgets mypy pandas \
    "ansible-core>=2.15" "uvicorn>=0.30" "starlette>=0.40" "prometheus_client>=0.20" \
    "bce-python-sdk==0.9.79" "hypothesis>=6.100" "pytest-xdist>=3.5"
  touch "$stamp"
fi
