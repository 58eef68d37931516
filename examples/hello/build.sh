#!/bin/sh
# Build the hello function image locally, FROM scratch: no registry needed.
#   ./examples/hello/build.sh [tag]      (default tag: iron/hello:latest)
# Needs docker and busybox-static (apt-get install -y busybox-static).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tag=${1:-iron/hello:latest}
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$here/Dockerfile" "$here/func.sh" "$context/"
cp /bin/busybox "$context/busybox"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$context" >/dev/null
echo "$tag"
