#!/bin/sh
# An IronFunctions-style hot function in busybox sh (format "http"): reads one HTTP/1.1
# request at a time from stdin, answers "hello <body> from <Method>" with Content-Length.
cr=$(printf '\r')
while read -r line; do
  length=0
  method=
  while read -r header; do
    header=${header%"$cr"}
    [ -z "$header" ] && break
    case "$header" in
      [Cc]ontent-[Ll]ength:*) length=${header#*:}; length=${length# } ;;
      Method:*) method=${header#*:}; method=${method# } ;;
    esac
  done
  body=
  if [ "$length" -gt 0 ]; then
    body=$(dd bs=1 count="$length" 2>/dev/null)
  fi
  echo "call with $length bytes" >&2
  reply="hello $body from $method"
  printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s' "${#reply}" "$reply"
done
