#!/usr/bin/env bash
# Regenerates the Go code for protos/ into clients/go/ (or into the directory given as $1, which
# is how tests/test_go_client.py checks that the committed code is current).
#
# Uses Debian's protoc (protobuf-compiler), protoc-gen-go and protoc-gen-go-grpc
# (`.ci/setup-go.sh` installs them). The proto files carry no go_package option: the Go import
# path is mapped here, on the command line (M flags), so protos/ stays language-neutral.
# GO_IMPORT_PREFIX changes the import path, for a project that vendors the code elsewhere.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
protos="$here/../../protos"
out="${1:-$here}"
prefix="${GO_IMPORT_PREFIX:-aiplatform-gateway}"

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" > /dev/null || {
        echo "generate.sh: no $tool on PATH (run .ci/setup-go.sh, or apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc)" >&2
        exit 1
    }
done

cd "$protos"
files=$(find . -name '*.proto' | sed 's|^\./||' | sort)
mappings=()
for file in $files; do
    # aiplatform/v1/x.proto -> <prefix>/aiplatform/v1, package aiplatformv1 (buf's convention).
    dir="$(dirname "$file")"
    mappings+=("M$file=$prefix/$dir;$(echo "$dir" | tr -d '/')")
done
go_opts=(--go_opt=paths=source_relative)
grpc_opts=(--go-grpc_opt=paths=source_relative)
for mapping in "${mappings[@]}"; do
    go_opts+=("--go_opt=$mapping")
    grpc_opts+=("--go-grpc_opt=$mapping")
done
mkdir -p "$out"
# shellcheck disable=SC2086  # $files is a list of paths without spaces, one argument each
protoc -I. --go_out="$out" "${go_opts[@]}" --go-grpc_out="$out" "${grpc_opts[@]}" $files
