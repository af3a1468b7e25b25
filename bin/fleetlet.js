#!/usr/bin/env node
// The `fleetlet` command; the TypeScript sources are compiled to dist/ by `npm run build`.
import { main } from "../dist/cli/main.js";

await main(process.argv);
