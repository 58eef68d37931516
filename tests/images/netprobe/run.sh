#!/bin/sh
# Network probe (tests/functional/test_network_isolation.py). Each stdin line is
#   tcp HOST PORT    -> "tcp HOST PORT <first line the server sent, or FAIL>"
#   http HOST PORT   -> the same after sending an HTTP request
#   dns NAME         -> "dns NAME ok|FAIL" (Docker's embedded DNS)
# Every connection attempt is bounded (nc -w 2, timeout 5).
while read -r kind host port; do
    case "$kind" in
        dns)
            if nslookup "$host" >/dev/null 2>&1; then echo "dns $host ok"; else echo "dns $host FAIL"; fi
            continue ;;
        http)
            out=$(printf 'GET /version HTTP/1.0\r\n\r\n' | timeout 5 nc -w 2 "$host" "$port" 2>/dev/null | head -n 1 | tr -d '\r') ;;
        *)
            out=$(timeout 5 nc -w 2 "$host" "$port" </dev/null 2>/dev/null | head -n 1) ;;
    esac
    echo "$kind $host $port ${out:-FAIL}"
done
