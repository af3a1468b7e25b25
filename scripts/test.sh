#!/usr/bin/env bash
# The test command (README, .ci/run): installs everything, checks the protos and gen/, builds,
# runs every test, then the benchmarks' smoke modes.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --test

echo "== buf lint"
npx buf lint

echo "== gen/ up to date"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npx buf generate -o "$tmp"
if ! diff -r gen "$tmp/gen" >/dev/null; then
  diff -r gen "$tmp/gen" | head -20
  echo "gen/ is stale: run 'npx buf generate' and commit the result" >&2
  exit 1
fi

echo "== tests"
# Files run in parallel (one process each); e2e tests bind port 0 and use unique names.
mapfile -t files < <(find dist/test -name '*.test.js' | sort)
node --test --test-concurrency=2 "${files[@]}"

echo "== bench smoke"
for b in dist/bench/*/main.js; do
  [[ -f "$b" ]] || continue
  echo "-- $b --smoke"
  node "$b" --smoke
done
