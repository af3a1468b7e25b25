import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let cached: string | undefined;

/**
 * fleetlet's own version (package.json), told to operators (the agent's ListInstances, AddHost
 * dry runs). Found by walking up from this file: it runs from lib/ (sources) and dist/lib/
 * (built), at different depths. "unknown" when no package.json says it.
 */
export function fleetletVersion(): string {
  if (cached !== undefined) return cached;
  cached = "unknown";
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: unknown; version?: unknown };
      if (pkg.name === "fleetlet" && typeof pkg.version === "string") {
        cached = pkg.version;
        break;
      }
    } catch {
      // No (readable) package.json here: look further up.
    }
    if (dirname(dir) === dir) break;
  }
  return cached;
}
