import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { claimStateDir } from "../../lib/state-dir.js";
import { readProcStat } from "../../lib/proc-stat-parser.js";
import { tempDir } from "../helpers/temp-dir.js";

describe("claimStateDir", () => {
  it("writes its pid and start time, refuses a live holder, takes over a dead or reused pid", async () => {
    const dir = tempDir("state-dir");
    const other = spawn("sleep", ["10"], { stdio: "ignore" });
    try {
      await once(other, "spawn");
      const pidFile = join(dir.path, "agent.pid");
      const otherStart = readProcStat(other.pid!)!.startTimeTicks;

      writeFileSync(pidFile, `${other.pid} ${otherStart}\n`);
      assert.throws(() => claimStateDir(dir.path, "agent"), new RegExp(`^Error: state dir ${dir.path} is in use by another agent \\(pid ${other.pid}\\)$`));

      // The same pid with another start time: the holder died and its pid was reused.
      writeFileSync(pidFile, `${other.pid} ${otherStart + 1n}\n`);
      const claim = claimStateDir(dir.path, "agent");
      assert.equal(readFileSync(pidFile, "utf8"), `${process.pid} ${readProcStat(process.pid)!.startTimeTicks}\n`);
      claim.release();
      assert.equal(existsSync(pidFile), false);

      other.kill();
      await once(other, "exit");
      writeFileSync(pidFile, `${other.pid} ${otherStart}\n`);
      claimStateDir(dir.path, "agent").release();
    } finally {
      other.kill();
      dir.remove();
    }
  });
});
