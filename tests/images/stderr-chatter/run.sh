#!/bin/sh
# Writes $LINES lines (default 3) to stderr and "ok" to stdout.
i=1
while [ "$i" -le "${LINES:-3}" ]; do
  echo "chatter line $i" >&2
  i=$((i + 1))
done
echo ok
