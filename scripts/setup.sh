#!/usr/bin/env bash
# Set up everything avserve needs on a fresh Debian machine, idempotently:
#   1. Debian packages the tests and the monitoring command use (scripts/system-packages.txt);
#   2. a project-local virtualenv (.venv) with the package and the extras named in $AVSERVE_EXTRAS,
#      pinned by requirements/constraints.txt.
# Re-running is cheap: each step is skipped when its inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${AVSERVE_EXTRAS:-train,triton,dev}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

missing=()
while read -r pkg cmd; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  # "PACKAGE COMMAND": a COMMAND already on PATH (another package's) stands in for PACKAGE
  [[ -n "$cmd" ]] && command -v "$cmd" >/dev/null && continue
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < scripts/system-packages.txt
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
stamp=.venv/.avserve-installed
want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)-$EXTRAS"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing avserve[$EXTRAS] into .venv (pinned by requirements/constraints.txt)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
# 3. .venv-loadtest: locust (loadtests/locustfile.py) needs geventhttpclient>=2.3, which tritonclient[http]
#    in .venv caps at 2.0.2, so it gets its own environment, pinned by requirements/loadtest.txt.
[[ -x .venv-loadtest/bin/python ]] || "$PYTHON" -m venv .venv-loadtest
stamp=.venv-loadtest/.avserve-installed
want="$(sha256sum < requirements/loadtest.txt | cut -c1-16)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing locust into .venv-loadtest (pinned by requirements/loadtest.txt)"
  .venv-loadtest/bin/python -m pip install -q -r requirements/loadtest.txt
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv, extras: $EXTRAS; .venv-loadtest)"
