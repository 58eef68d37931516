#!/bin/sh
# Reports how the container is hardened (issue 11), one key=value a line: NoNewPrivs,
# CapEff and CapBnd (hex) from /proc/self/status, uid/gid, whether / and /tmp (and, on
# the socket transport, the bridge's socket directory) take a new file, the open-files
# limit, the cgroup's pids, cpu and memory (+swap) limits and, with $TMP_FILL_MB, how
# much memory a file of that size in /tmp is charged. As a hot function
# (FN_FORMAT=http) it answers every request with that report.
report() {
  grep -E '^(NoNewPrivs|CapEff|CapBnd):' /proc/self/status | tr -d ' \t' | sed 's/:/=/'
  echo "uid=$(id -u)"
  echo "gid=$(id -g)"
  for spot in root:/probe-file tmp:/tmp/probe-file sock:/.ifbridge/sock/probe-file; do
    name=${spot%%:*} path=${spot#*:}
    if [ "$name" = sock ] && [ ! -d /.ifbridge/sock ]; then echo "${name}_write=absent"; continue; fi
    if (echo x > "$path") 2>/dev/null; then echo "${name}_write=ok"; rm -f "$path"; else echo "${name}_write=fail"; fi
  done
  echo "nofile=$(ulimit -n)"
  echo "pids_max=$(cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null | head -n 1)"
  echo "cpu_shares=$(cat /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu.weight 2>/dev/null | head -n 1)"
  echo "memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null | head -n 1)"
  echo "memory_swap=$(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null | head -n 1)"
  if [ -n "$TMP_FILL_MB" ]; then  # how much of the memory limit a file in /tmp takes
    usage=/sys/fs/cgroup/memory/memory.usage_in_bytes
    before=$(cat $usage)
    dd if=/dev/zero of=/tmp/fill bs=1M count="$TMP_FILL_MB" 2>/dev/null
    echo "tmp_charged=$(( $(cat $usage) - before ))"
    rm -f /tmp/fill
  fi
}
if [ "$FN_FORMAT" != http ]; then
  report
  exit 0
fi
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
  [ "$length" -gt 0 ] && dd bs=1 count="$length" >/dev/null 2>&1
  body=$(report)
  printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s' "${#body}" "$body"
done
