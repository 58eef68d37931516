#!/bin/sh
# Set up and start IronFunctions in the foreground on the embedded default (SQLite store
# and queue under ./data/), listening on $PORT (default 8080). Extra arguments go to
# `twistd ironfunctions` (see `.venv/bin/twistd -n ironfunctions --help`).
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
sh scripts/start-dockerd.sh
exec .venv/bin/twistd --nodaemon --pidfile= ironfunctions "$@"
