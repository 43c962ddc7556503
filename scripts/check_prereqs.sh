#!/usr/bin/env bash
# Fail early, in words, when the machine lacks what the platform runs on.
set -u
python_bin="${1:-python3.11}"
if ! command -v "$python_bin" >/dev/null 2>&1; then
  echo "homefeed needs Python 3.11 ('$python_bin' not found on PATH)." >&2
  exit 1
fi
if ! "$python_bin" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "homefeed needs Python 3.11; '$python_bin' is $("$python_bin" --version 2>&1)." >&2
  exit 1
fi
if ! command -v java >/dev/null 2>&1; then
  echo "homefeed needs Java 17 for Spark (no 'java' on PATH; install openjdk-17-jre-headless)." >&2
  exit 1
fi
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
if [ "${java_major:-0}" -lt 17 ]; then
  echo "homefeed needs Java 17 or newer for Spark 4; found Java ${java_major:-unknown}." >&2
  exit 1
fi
