#!/bin/sh
# A noisy hot function (format "http") in busybox sh: answers "ok" to each request.
# Request body "flood": after answering, writes $IDLE_LINES lines (default 5000) to
# stderr, while idle. Body "flood-call": writes $CALL_LINES lines (default 100000) to
# stderr before answering, during the call.
cr=$(printf '\r')
while read -r line; do
  length=0
  while read -r header; do
    header=${header%"$cr"}
    [ -z "$header" ] && break
    case "$header" in
      [Cc]ontent-[Ll]ength:*) length=${header#*:}; length=${length# } ;;
    esac
  done
  body=
  if [ "$length" -gt 0 ]; then
    body=$(dd bs=1 count="$length" 2>/dev/null)
  fi
  if [ "$body" = flood-call ]; then
    yes "call line of a noisy hot function" | head -n "${CALL_LINES:-100000}" >&2
    sleep 1  # stderr and stdout are two pipes: let the flood arrive before the answer
  fi
  printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok'
  if [ "$body" = flood ]; then
    sleep 1  # let the answer arrive first (two pipes): all of this is written while idle
    yes "idle line of a noisy hot function" | head -n "${IDLE_LINES:-5000}" >&2
  fi
done
