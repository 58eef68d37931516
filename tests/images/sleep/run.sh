#!/bin/sh
# Sleeps $SLEEP seconds (default 60), then says so.
echo "sleeping ${SLEEP:-60}" >&2
sleep "${SLEEP:-60}"
echo "slept ${SLEEP:-60}"
