#!/usr/bin/env bash
# Compiles fleetlet into dist/ (TypeScript, and the agent's conntrack reader) when a source is
# newer than the last build. Run by setup.sh, and by `npm pack` (prepack) so the tarball carries
# a current dist/.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build when any source is newer than the last build.
stamp=dist/.build-stamp
if [[ ! -f $stamp ]] || [[ -n "$(find agent aggregator lib cli gen test bench tsconfig.json package.json -newer "$stamp" -type f -print -quit 2>/dev/null)" ]]; then
  npx tsc -p tsconfig.json
  mkdir -p dist && touch "$stamp"
fi

# The conntrack reader: a small C program next to the compiled agent (see its header comment).
reader=dist/agent/kernel/conntrack-reader
if [[ ! -x $reader || agent/kernel/native/conntrack-reader.c -nt $reader ]]; then
  if command -v gcc >/dev/null; then
    mkdir -p "$(dirname "$reader")"
    gcc -O2 -Wall -Wextra -Werror -o "$reader" agent/kernel/native/conntrack-reader.c
  else
    echo "build: no gcc, the conntrack reader is not built: standby will answer UNSUPPORTED" >&2
  fi
fi
