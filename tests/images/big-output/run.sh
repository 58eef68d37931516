#!/bin/sh
# Writes $BYTES bytes of "x" (default 1 MiB) to stdout.
head -c "${BYTES:-1048576}" /dev/zero | tr "\0" x
