import { createHash } from "node:crypto";

/** What the digest hashes of an instance or a snapshot. */
export interface DigestEntry {
  id: string;
  resourceVersion: bigint;
}

/**
 * Anti-entropy digest of an inventory (inventory.md): the count and a SHA-256 (first 16 bytes,
 * hex) over "id@resource_version\n" lines of the instances and "snapshot/id@resource_version\n"
 * lines of the snapshots, sorted. The agent computes it over what it publishes, the aggregator
 * over its view of that host, both here: equal digests at the same version mean the same
 * instances and snapshots at the same versions; any dropped, extra or stale entry changes it.
 * Ids never contain "/", so a snapshot's line cannot equal an instance's; with no snapshots the
 * digest is the instances-only one (what an agent or aggregator from before snapshots computes).
 */
export function inventoryDigest(instances: Iterable<DigestEntry>, snapshots: Iterable<DigestEntry> = []): { count: number; hash: string } {
  const lines: string[] = [];
  for (const e of instances) lines.push(`${e.id}@${e.resourceVersion}\n`);
  for (const s of snapshots) lines.push(`snapshot/${s.id}@${s.resourceVersion}\n`);
  lines.sort();
  const h = createHash("sha256");
  for (const l of lines) h.update(l);
  return { count: lines.length, hash: h.digest("hex").slice(0, 32) };
}
