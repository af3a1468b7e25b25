#!/usr/bin/env bash
# Installs what fleetlet needs on a fresh machine of this kind (Debian, Node 20, root or not)
# and builds it. Idempotent and quick when everything is already there.
#   scripts/setup.sh          npm dependencies + build (enough for `fleetlet up`)
#   scripts/setup.sh --test   also the system packages the test suite uses
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=false
[[ "${1:-}" == "--test" ]] && want_test=true

missing=()
# gcc builds the agent's conntrack reader (agent/kernel/native/conntrack-reader.c); without it
# the agent runs and answers standby calls with UNSUPPORTED.
command -v gcc >/dev/null || missing+=(gcc)
# better-sqlite3 (the aggregator's metering store) is compiled at npm install by node-gyp
# against /usr/include/node: it needs make, g++ and python3 (no prebuilt download here).
command -v make >/dev/null || missing+=(make)
command -v g++ >/dev/null || missing+=(g++)
command -v python3 >/dev/null || missing+=(python3)
if $want_test; then
  # Real kernel tests: ip (netns, veth), iptables (makes the kernel track flows in a test
  # namespace), conntrack (deletes a flow in a test), ps. kubectl comes with machines of
  # this kind (runtime.md); the Kubernetes fixture test needs it.
  command -v ip >/dev/null || missing+=(iproute2)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v ps >/dev/null || missing+=(procps)
  # A private Docker engine for the runtime tests (testing.md "Docker"), and busybox-static
  # for the image they import (no registry).
  command -v dockerd >/dev/null || missing+=(docker.io)
  [[ -x /bin/busybox ]] || missing+=(busybox-static)
  # Python's grpcio (C-core's gRPC stack) is a second foreign client in the wire tests
  # (test/e2e/rpc-wire.test.ts: error details, reflection v1 and v1alpha). Debian's package is
  # for the system python3, not a pyenv one that may come first on PATH.
  /usr/bin/python3 -c 'import grpc' 2>/dev/null || missing+=(python3-grpcio)
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing ${missing[*]}; install them as root (apt-get install -y ${missing[*]})" >&2
  else
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

# Install exactly the committed lock when node_modules is missing or older than it. The lock
# lists every platform's build of the packages that ship binaries (@bufbuild/buf, @biomejs/biome,
# rollup/rolldown under vitest), so `npm ci` takes it as it is and leaves `git status` clean.
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

bash scripts/build.sh
