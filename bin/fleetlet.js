#!/usr/bin/env node
// The `fleetlet` command; the TypeScript sources are compiled to dist/ by `npm run build`.
import v8 from "node:v8";

// A smaller young generation (V8's default lets it grow to 3 × 16 MiB): the daemons' garbage is
// short-lived and small, and the difference shows directly in RSS (bench/agent-rpc).
v8.setFlagsFromString("--max-semi-space-size=4");

const { main } = await import("../dist/cli/main.js");
await main(process.argv);
