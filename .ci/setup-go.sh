#!/usr/bin/env bash
# Installs the Go toolchain that tests/test_go_client.py needs, from Debian only (no Go module
# download: the example builds in GOPATH mode against /usr/share/gocode). Installs only what is
# missing, so a second run is a few dpkg queries.
#
# golang-github-golang-protobuf-1-5-dev, not the 1-3 package that golang-google-grpc-dev may
# pull in: github.com/golang/protobuf 1.3 predates the protobuf APIv2 and panics on code from
# Debian's protoc-gen-go 1.28 ("protobuf tag not enough fields in ListServicesResponse.state").
# The two conflict; apt replaces 1-3 with 1-5, which grpc-go and genproto accept as well.
set -euo pipefail

packages=(
    golang-go
    golang-google-grpc-dev
    golang-google-protobuf-dev
    golang-google-genproto-dev
    golang-github-golang-protobuf-1-5-dev
    protobuf-compiler
    protoc-gen-go
    protoc-gen-go-grpc
)

missing=()
for package in "${packages[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$package" 2> /dev/null)" != "install ok installed" ]; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup-go: all present ($(go version | cut -d' ' -f3), protoc $(protoc --version | cut -d' ' -f2))"
    exit 0
fi

"$(dirname "$0")/apt-install" setup-go "${missing[@]}"
