#!/bin/sh
# A noisy function: writes $LINES lines of $TEXT to stderr (default 100000 of a short
# line), or with $NEWLINES set that many bare newlines, $ROUNDS times (default 1, with $PAUSE seconds
# between rounds); then "ok" to stdout. For the bounded-stderr tests and
# bench/hostile_stderr.py.
round=1
while [ "$round" -le "${ROUNDS:-1}" ]; do
  if [ -n "$NEWLINES" ]; then
    head -c "$NEWLINES" /dev/zero | tr '\0' '\n' >&2
  else
    yes "${TEXT:-flood line of a noisy function}" | head -n "${LINES:-100000}" >&2
  fi
  [ "$round" -lt "${ROUNDS:-1}" ] && sleep "${PAUSE:-0}"
  round=$((round + 1))
done
echo ok
