#!/usr/bin/env bash
# Installs what radtriage needs on a fresh Debian machine with Python 3.11, and nothing when it is already there.
#   scripts/bootstrap.sh          runtime only (Python packages in .venv)
#   scripts/bootstrap.sh --dev    also test tools and the servers the tests start (Orthanc, PostgreSQL, dcmtk,
#                                 Chromium for the web pages' browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."

want_dev=0
[ "${1:-}" = "--dev" ] && want_dev=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "$want_dev" = 1 ]; then
  missing=()
  command -v Orthanc >/dev/null || missing+=(orthanc)
  [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v storescu >/dev/null || missing+=(dcmtk)
  # The Celery broker for the scale-out drills (tests/support/redis.py, tests/app/test_drills.py).
  command -v redis-server >/dev/null || missing+=(redis-server)
  # Headless browser for the web pages' end-to-end tests (tests/web/test_browser.py).
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  command -v firefox-esr >/dev/null || missing+=(firefox-esr)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

reqs=requirements.txt
[ "$want_dev" = 1 ] && reqs=requirements-dev.txt
stamp=".venv/.stamp-$(basename "$reqs" .txt)"
digest=$(cat requirements.txt requirements-dev.txt setup.py | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo "bootstrap: installing Python packages from $reqs (the first time takes several minutes: torch is large)"
  .venv/bin/pip install -q --disable-pip-version-check -r "$reqs"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$digest" > "$stamp"
fi
