#!/usr/bin/env bash
# Builds the example into $1 (default clients/go/bin/example), offline: GOPATH mode against
# Debian's Go packages in /usr/share/gocode, no module download. The benchmark's Go swarm
# (benchmarks/swarm) builds the same way.
#
# GOPATH mode finds a package at $GOPATH/src/<import path>, so this links clients/go into a
# temporary GOPATH as src/aiplatform-gateway: the repository stays the only copy of the code.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/bin/example}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

command -v go > /dev/null || {
    echo "build.sh: no go on PATH (run .ci/setup-go.sh, or apt-get install golang-go golang-google-grpc-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev)" >&2
    exit 1
}
gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src"
ln -s "$here" "$gopath/src/aiplatform-gateway"

GO111MODULE=off GOPATH="$gopath:${DEBIAN_GOPATH:-/usr/share/gocode}" \
    go build -o "$out" aiplatform-gateway/example
