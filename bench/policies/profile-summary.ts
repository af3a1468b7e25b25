/**
 * Summarises a V8 .cpuprofile (node --cpu-prof): self time per function (with its file), and
 * total (inclusive) time of the functions named on the command line.
 *
 *   node --cpu-prof --cpu-prof-dir=/tmp/prof dist/bench/policies/main.js --smoke
 *   node dist/bench/policies/profile-summary.js /tmp/prof/CPU.*.cpuprofile [top=40] [name ...]
 */
import { readFileSync } from "node:fs";

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

const [file, topArg, ...names] = process.argv.slice(2);
if (!file) {
  process.stderr.write("usage: profile-summary.js FILE.cpuprofile [top] [function names for inclusive time]\n");
  process.exit(2);
}
const prof = JSON.parse(readFileSync(file, "utf8")) as Profile;
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const selfUs = new Map<number, number>();
prof.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0)));
const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0);
const label = (n: Node) => `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.replace(/^.*\/(node_modules|dist)\//, "$1/")}:${n.callFrame.lineNumber + 1}`;

const self = new Map<string, number>();
for (const [id, us] of selfUs) {
  const key = label(byId.get(id)!);
  self.set(key, (self.get(key) ?? 0) + us);
}
const top = Number(topArg ?? 40);
process.stdout.write(`total ${(totalUs / 1000).toFixed(0)} ms sampled\nself time:\n`);
for (const [k, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  process.stdout.write(`${(us / 1000).toFixed(0).padStart(7)} ms ${((us / totalUs) * 100).toFixed(1).padStart(5)}%  ${k}\n`);
}

// Inclusive time of named functions (counted once per sample even when recursive).
if (names.length > 0) {
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inclusive = new Map<string, number>(names.map((n) => [n, 0]));
  for (const [id, us] of selfUs) {
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const fn = byId.get(cur)!.callFrame.functionName;
      if (inclusive.has(fn) && !seen.has(fn)) {
        seen.add(fn);
        inclusive.set(fn, inclusive.get(fn)! + us);
      }
    }
  }
  process.stdout.write("inclusive time:\n");
  for (const [fn, us] of inclusive) process.stdout.write(`${(us / 1000).toFixed(0).padStart(7)} ms ${((us / totalUs) * 100).toFixed(1).padStart(5)}%  ${fn}\n`);
}
