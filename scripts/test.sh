#!/usr/bin/env bash
# The test command (README, .ci/run): installs everything, lints the code and the protos, checks
# gen/ and the published API, builds, runs every test (vitest, from the TypeScript sources), then
# the benchmarks' smoke modes. Ends with the plain line `tests: N passed, N failed, N skipped`.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

bash scripts/setup.sh --test

echo "== lint (biome) and types"
npx biome ci --error-on-warnings .
npx tsc -p tsconfig.json --noEmit

echo "== buf lint"
npx buf lint

echo "== buf breaking (against the published v1 API, proto/baseline/v1.binpb)"
npx buf breaking --against proto/baseline/v1.binpb

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
# vitest.config.ts says which files need root and which must run alone.
report="$tmp/vitest.json"
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" || status=$?
summary=$(node -e '
  const r = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8"));
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
' "$report" 2>/dev/null || echo "tests: 0 passed, 1 failed, 0 skipped")
if [[ $status -ne 0 || "$summary" == "tests: 0 passed"* ]]; then
  echo "$summary"
  exit 1
fi

echo "== bench smoke"
for b in dist/bench/*/main.js; do
  [[ -f "$b" ]] || continue
  echo "-- $b --smoke"
  node "$b" --smoke
done

echo "== done in $((SECONDS - started)) s"
# The test runner's summary once more, as the last line.
echo "$summary"
