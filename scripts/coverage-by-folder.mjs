// `npm run coverage`: vitest's v8 coverage (json-summary) folded into one line per source folder.
// Only code that runs inside the test processes is counted: the daemons that e2e tests start as
// processes of their own run from dist/ and are not instrumented (docs/testing.md).
import { readFileSync } from "node:fs";
import { relative } from "node:path";

const summary = JSON.parse(readFileSync("dist/coverage/coverage-summary.json", "utf8"));
const folders = new Map();
for (const [file, s] of Object.entries(summary)) {
  if (file === "total") continue;
  const parts = relative(process.cwd(), file).split("/");
  const folder = parts.slice(0, Math.min(2, parts.length - 1)).join("/");
  const f = folders.get(folder) ?? { files: 0, lines: [0, 0], branches: [0, 0], functions: [0, 0] };
  f.files++;
  for (const k of ["lines", "branches", "functions"]) {
    f[k][0] += s[k].covered;
    f[k][1] += s[k].total;
  }
  folders.set(folder, f);
}
const pct = ([c, t]) => (t === 0 ? "-" : `${((100 * c) / t).toFixed(1)}%`);
const rows = [["FOLDER", "FILES", "LINES", "BRANCHES", "FUNCTIONS"]];
for (const [folder, f] of [...folders].sort(([a], [b]) => a.localeCompare(b))) rows.push([folder, String(f.files), pct(f.lines), pct(f.branches), pct(f.functions)]);
const t = summary.total;
rows.push(["total", String(folders.size ? [...folders.values()].reduce((n, f) => n + f.files, 0) : 0), `${t.lines.pct}%`, `${t.branches.pct}%`, `${t.functions.pct}%`]);
const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i])).join("  "));
