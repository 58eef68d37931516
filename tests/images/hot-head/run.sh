#!/bin/sh
# A hot function (format "http") in busybox sh that answers each request with the head
# the daemon wrote: its request line and headers, one a line (CR dropped), so tests can
# see exactly what reached the function.
cr=$(printf '\r')
while read -r line; do
  head=${line%"$cr"}
  length=0
  while read -r header; do
    header=${header%"$cr"}
    [ -z "$header" ] && break
    head="$head
$header"
    case "$header" in
      [Cc]ontent-[Ll]ength:*) length=${header#*:}; length=${length# } ;;
    esac
  done
  if [ "$length" -gt 0 ]; then
    dd bs=1 count="$length" >/dev/null 2>&1
  fi
  printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s' "${#head}" "$head"
done
