#!/usr/bin/env node
// Builds the agent's conntrack reader (agent/kernel/native/conntrack-reader.c) next to the
// compiled agent, as scripts/setup.sh does in a checkout. Run at `npm install` of the packed
// tarball (postinstall): the tarball carries the prebuilt JavaScript in dist/ and the C source,
// not a binary for one platform. Never fails the install: without gcc the agent starts and its
// standby answers UNSUPPORTED with the reason (docs/operations.md).
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const source = join(root, "agent", "kernel", "native", "conntrack-reader.c");
const target = join(root, "dist", "agent", "kernel", "conntrack-reader");

if (!existsSync(source)) process.exit(0);
if (existsSync(target) && statSync(target).mtimeMs >= statSync(source).mtimeMs) process.exit(0);
try {
  mkdirSync(dirname(target), { recursive: true });
  execFileSync("gcc", ["-O2", "-Wall", "-Wextra", "-Werror", "-o", target, source], { stdio: ["ignore", "inherit", "inherit"] });
} catch (e) {
  process.stderr.write(`fleetlet: the conntrack reader was not built (${e instanceof Error ? e.message.split("\n")[0] : e}): standby will answer UNSUPPORTED until gcc is installed and \`npm rebuild fleetlet\` runs\n`);
}
