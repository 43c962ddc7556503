#!/usr/bin/env bash
# Headless Chromium for the Airflow UI test (tests/dags/test_ui.py), from Debian's packages:
# browser tools' own downloads are not used. Without apt or root it says so and the test skips.
set -u
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get here; install Chromium at /usr/bin/chromium to run the UI test." >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "install_browser: not root; run 'apt-get install chromium' to run the UI test." >&2
    exit 0
  fi
fi
echo "installing Debian chromium for the UI test (once)"
$sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null \
  || echo "install_browser: apt-get install chromium failed; the UI test will skip." >&2
exit 0
