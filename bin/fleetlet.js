#!/usr/bin/env node
// The `fleetlet` command; the TypeScript sources are compiled to dist/ by `npm run build`.

// A smaller young generation (V8's default lets it grow to 2 × 16 MiB here): the daemons' garbage
// is short-lived and small, and the difference shows directly in RSS (bench/agent-rpc). Set from
// inside, as `--max-semi-space-size=4` on the command line would, which v8.setFlagsFromString
// cannot do once the heap exists (lib/young-generation.ts).
const { capYoungGeneration } = await import("../dist/lib/young-generation.js");
capYoungGeneration(4);

const { main } = await import("../dist/cli/main.js");
await main(process.argv);
