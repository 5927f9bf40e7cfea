#!/usr/bin/env bash
# Run a command inside a fresh network namespace that has nothing but loopback, so WebRTC tests can never
# reach (or announce) the machine's LAN address. Without root (or without unshare), run it as it is: the tests
# then rely on their loopback-only ICE configuration.
set -euo pipefail
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null && unshare --net true 2>/dev/null; then
  exec unshare --net -- bash -c 'ip link set lo up && exec "$@"' bash "$@"
fi
echo "note: not root or no unshare; running without a private network namespace (loopback-only ICE config)" >&2
exec "$@"
