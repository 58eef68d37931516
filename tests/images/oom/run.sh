#!/bin/sh
# Holds ${OOM_MB:-512} MiB in a shell variable: far beyond a small memory limit.
x=$(head -c $(( ${OOM_MB:-512} * 1048576 )) /dev/zero | tr "\0" a)
echo "survived ${#x}"
