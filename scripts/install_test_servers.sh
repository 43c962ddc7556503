#!/usr/bin/env bash
# What the test suite runs beside the project, from Debian's packages (no tool's own downloads):
#   chromium      headless, for the Airflow UI test (tests/dags/test_ui.py)
#   redis-server  the sequence store's server; tests start their own on a free loopback port
#   postgresql    the server binaries `homefeed stack` runs as a private cluster (initdb / pg_ctl)
# Installed once. The tests never use a system service a package may start. Without apt or root
# it says so, and the tests that need a missing program skip with the reason.
set -u
wanted=()
[ -x /usr/bin/chromium ] || wanted+=(chromium)
command -v redis-server >/dev/null 2>&1 || wanted+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || wanted+=(postgresql)
[ ${#wanted[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_test_servers: no apt-get here; install ${wanted[*]} to run the tests that need them." >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "install_test_servers: not root; run 'apt-get install ${wanted[*]}' to run the tests that need them." >&2
    exit 0
  fi
fi
echo "installing Debian ${wanted[*]} for the tests (once)"
$sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${wanted[@]}" >/dev/null \
  || echo "install_test_servers: apt-get install ${wanted[*]} failed; the tests that need them will skip." >&2
exit 0
