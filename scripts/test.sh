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
log="$tmp/test-output.txt"
status=0
node --test --test-concurrency=2 "${files[@]}" 2>&1 | tee "$log" || status=$?
passed=$(grep -E '^# pass [0-9]+$' "$log" | tail -1 | awk '{print $3}')
failed=$(grep -E '^# fail [0-9]+$' "$log" | tail -1 | awk '{print $3}')
skipped=$(grep -E '^# skipped [0-9]+$' "$log" | tail -1 | awk '{print $3}')
summary="tests: ${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
if [[ $status -ne 0 || "${passed:-0}" -eq 0 ]]; then
  echo "$summary"
  exit 1
fi

echo "== bench smoke"
for b in dist/bench/*/main.js; do
  [[ -f "$b" ]] || continue
  echo "-- $b --smoke"
  node "$b" --smoke
done

# The test runner's summary once more, as the last line.
echo "$summary"
