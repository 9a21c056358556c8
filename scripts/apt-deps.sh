#!/usr/bin/env bash
# Installs the Debian packages the tests need (given as arguments) when they are missing and apt
# is usable; otherwise says what to install by hand. Never fails the setup on its own: the tests
# that need a missing tool say so clearly.
set -u
missing=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "mmfuse setup: please install these Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "mmfuse setup: no apt-get here; install ${missing[*]} with your package manager" >&2
  exit 0
fi
echo "mmfuse setup: installing ${missing[*]} with apt-get"
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "mmfuse setup: apt-get install ${missing[*]} failed; install them by hand" >&2
