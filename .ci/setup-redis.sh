#!/usr/bin/env bash
# Installs redis-server, which the rate-limit tests start on a free port of their own
# (tests/redis_server.py), when it is not on PATH. Debian's package is enough: the tests need no
# particular release, and start their instance themselves, so whether apt starts its own service on
# port 6379 does not matter to them.
set -euo pipefail

if ! command -v redis-server > /dev/null; then
    "$(dirname "$0")/apt-install" setup-redis redis-server
fi
echo "setup-redis: $(redis-server --version | cut -d' ' -f1-3)"
