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

# RADTRIAGE_BOOTSTRAP_SYSTEM=skip leaves Debian packages alone (images that provide them another way).
if [ "$want_dev" = 1 ] && [ "${RADTRIAGE_BOOTSTRAP_SYSTEM:-}" != skip ]; then
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

# One install record for both scripts (demo.sh installs the runtime, test.sh the dev set, a superset of it):
# ".venv/.installed" holds the digest of the requirement files and which set was installed for it. A runtime
# run after a dev install with the same digest installs nothing; so does a dev run after a dev install.
reqs=requirements.txt
wanted=runtime
if [ "$want_dev" = 1 ]; then reqs=requirements-dev.txt; wanted=dev; fi
record=.venv/.installed
digest=$(cat requirements.txt requirements-dev.txt setup.py | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
read -r have_digest have_set 2>/dev/null < "$record" || true
if [ "${have_digest:-}" = "$digest" ] && { [ "${have_set:-}" = dev ] || [ "$wanted" = runtime ]; }; then
  exit 0  # installed already: the same requirements, and this set or a larger one
fi
echo "bootstrap: installing Python packages from $reqs (the first time takes several minutes: torch is large)"
.venv/bin/pip install -q --disable-pip-version-check -r "$reqs"
.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "$digest $wanted" > "$record"
rm -f .venv/.stamp-requirements .venv/.stamp-requirements-dev  # the per-script records this one replaces
