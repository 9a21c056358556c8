#!/usr/bin/env bash
# Runs pytest from the project venv; pytest's exit 5 ("no tests collected") is a failure here,
# because a suite that silently runs nothing proves nothing.
set -u
BIN="$(dirname "$0")/../.venv/bin"
"$BIN/python" -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: treating as failure" >&2
  exit 1
fi
exit $rc
