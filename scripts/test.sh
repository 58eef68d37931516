#!/bin/sh
# Set up everything the tests need (packages, virtualenv, a running dockerd), type-check
# the package with mypy and run the whole suite: unit tests, contract suites on every
# backend (memory, SQLite, a throwaway Postgres and Redis the tests start themselves) and
# functional tests against the real Docker engine and a real daemon. Extra arguments go
# to pytest.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh --test
# The type check (mypy.ini: strict, mypy-zope) fails the run like a failing test.
.venv/bin/mypy --config-file mypy.ini
sh scripts/start-dockerd.sh
# PYTHONPATH=. so twistd finds the plugin of this checkout (twisted/plugins/).
PYTHONPATH=. exec .venv/bin/python -m pytest "$@"
