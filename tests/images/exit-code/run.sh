#!/bin/sh
# Writes to both streams, then exits with $EXIT_CODE (default 3).
echo "about to exit"
echo "exiting with ${EXIT_CODE:-3}" >&2
exit "${EXIT_CODE:-3}"
