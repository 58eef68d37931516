#!/bin/sh
# Install what IronFunctions needs on a Debian 12 machine (as root) and build the
# project's virtualenv in ./.venv. Idempotent: packages already present are not
# fetched again, so a second run takes seconds.
#
#   scripts/setup.sh          the daemon's needs (Docker, Python)
#   scripts/setup.sh --test   also what the test suite needs (Postgres, Redis, HAProxy, gcc)
set -eu

cd "$(dirname "$0")/.."

# gcc + libc6-dev build the static bridge of HOT_TRANSPORT=socket (below).
PACKAGES="docker.io busybox-static python3 python3-venv python3-pip ca-certificates gcc libc6-dev"
if [ "${1:-}" = "--test" ]; then
    PACKAGES="$PACKAGES postgresql redis-server haproxy wrk procps iproute2"
fi

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# Postgres' Debian package starts a cluster of its own on 5432; the tests start
# throwaway ones on free ports and need nothing else running. Likewise HAProxy: the
# cluster tests (tests/cluster.py) run their own in the foreground on a free port.

# The static stdio bridge of HOT_TRANSPORT=socket, shipped in the package beside its source.
if [ ! -x ironfunctions/bridge/ifbridge ] || [ ironfunctions/bridge/ifbridge.c -nt ironfunctions/bridge/ifbridge ]; then
    gcc -static -O2 -o ironfunctions/bridge/ifbridge.tmp ironfunctions/bridge/ifbridge.c
    mv ironfunctions/bridge/ifbridge.tmp ironfunctions/bridge/ifbridge
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip >/dev/null
if [ "${1:-}" = "--test" ]; then
    .venv/bin/pip install -q --disable-pip-version-check ".[test]"
else
    .venv/bin/pip install -q --disable-pip-version-check .
fi
