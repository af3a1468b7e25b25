import { createHash } from "node:crypto";

/**
 * Anti-entropy digest of an inventory (inventory.md): the count and a SHA-256 (first 16 bytes,
 * hex) over "id@resource_version\n" lines sorted by id. The agent computes it over its
 * instances, the aggregator over its view of that host: equal digests at the same version mean
 * the same instances at the same versions; any dropped, extra or stale entry changes it.
 */
export function inventoryDigest(entries: Iterable<{ id: string; resourceVersion: bigint }>): { count: number; hash: string } {
  const lines: string[] = [];
  for (const e of entries) lines.push(`${e.id}@${e.resourceVersion}\n`);
  lines.sort();
  const h = createHash("sha256");
  for (const l of lines) h.update(l);
  return { count: lines.length, hash: h.digest("hex").slice(0, 32) };
}
