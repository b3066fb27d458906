#!/usr/bin/env bash
# Installs a headless Chromium (Debian package) and the playwright Python package (driving the system
# browser; no browser download) for the review app's browser tests. Tests skip without them.
set -u
if ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium"
fi
py="${VIRTUAL_ENV:-.venv}/bin/python"
"$py" -m pip install -q playwright || echo "could not install playwright"
