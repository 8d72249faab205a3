#!/usr/bin/env bash
# Installs Node.js and npm for tests/test_node_client.py when they are missing, then the Node
# client's pinned packages (npm ci in clients/node). A machine that has both is left as it is (this
# one has NodeSource's nodejs 20, which bundles npm), so a second run costs only the npm ci.
#
# The install is Debian's own nodejs and npm: Node.js 18 on bookworm, 20 on trixie. The client
# needs 18 or newer. Debian's npm conflicts with a nodejs that bundles its own (NodeSource's), so
# npm alone is never installed over such a node.
set -euo pipefail
cd "$(dirname "$0")/.."

MIN_NODE_MAJOR=18

missing=()
command -v node > /dev/null || missing+=(nodejs)
command -v npm > /dev/null || missing+=(npm)

if [ "${missing[*]}" = "npm" ]; then
    echo "setup-node: node $(node --version) is installed without npm: install npm from where node came from" >&2
    exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
    .ci/apt-install setup-node "${missing[@]}"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt "$MIN_NODE_MAJOR" ]; then
    echo "setup-node: node $(node --version) is too old: clients/node needs Node.js $MIN_NODE_MAJOR or newer" >&2
    exit 1
fi
echo "setup-node: node $(node --version), npm $(npm --version)"

# Exactly what package-lock.json pins (npm ci fails when package.json and the lock disagree).
# --ignore-scripts: none of the packages needs one (protobufjs's postinstall only prints warnings).
cd clients/node
npm ci --no-audit --no-fund --ignore-scripts
