import { spawn } from "node:child_process";
import { once } from "node:events";
import { chmodSync, chownSync, existsSync, lchownSync, mkdirSync, readFileSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
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

// security.md "State on disk": the state dir and what is in it belong to the daemon's user and
// nobody else can write them; 0755 / 0644 left by earlier versions are narrowed, not refused.
describe("claimStateDir: modes, owners and symlinks", () => {
  const mode = (p: string) => statSync(p).mode & 0o7777;

  it("refuses a state dir writable by others, naming it and its mode", () => {
    const dir = tempDir("state-dir-0777");
    try {
      chmodSync(dir.path, 0o777);
      assert.throws(() => claimStateDir(dir.path, "agent"), new RegExp(`^Error: state dir ${dir.path}: ${dir.path} is writable by group or others \\(mode 0777\\); refusing to start \\(chmod 700 ${dir.path}\\)$`));
      assert.equal(existsSync(join(dir.path, "agent.pid")), false);
    } finally {
      dir.remove();
    }
  });

  it("refuses a group-writable file in it, naming the file and its mode", () => {
    const dir = tempDir("state-dir-gw");
    try {
      mkdirSync(join(dir.path, "metering"), { mode: 0o700 });
      const file = join(dir.path, "metering", "ledger.json");
      writeFileSync(file, "{}");
      chmodSync(file, 0o664);
      assert.throws(() => claimStateDir(dir.path, "agent"), new RegExp(`^Error: state dir ${dir.path}: ${file} is writable by group or others \\(mode 0664\\); refusing to start \\(chmod 600 ${file}\\)$`));
    } finally {
      dir.remove();
    }
  });

  it("narrows what an earlier version left 0755 / 0644 to 0700 / 0600, and reports each path", () => {
    const dir = tempDir("state-dir-old");
    try {
      chmodSync(dir.path, 0o755);
      mkdirSync(join(dir.path, "metering"), { mode: 0o755 });
      chmodSync(join(dir.path, "metering"), 0o755);
      writeFileSync(join(dir.path, "instances.json"), "{}", { mode: 0o644 });
      chmodSync(join(dir.path, "instances.json"), 0o644);
      writeFileSync(join(dir.path, "metering", "ledger.json"), "{}", { mode: 0o600 });
      const told: string[] = [];
      const claim = claimStateDir(dir.path, "agent", (path, from, to) => told.push(`${path} ${from.toString(8)}>${to.toString(8)}`));
      claim.release();
      assert.deepEqual(told.sort(), [`${dir.path} 755>700`, `${dir.path}/instances.json 644>600`, `${dir.path}/metering 755>700`].sort());
      assert.equal(mode(dir.path), 0o700);
      assert.equal(mode(join(dir.path, "metering")), 0o700);
      assert.equal(mode(join(dir.path, "instances.json")), 0o600);
      assert.equal(mode(join(dir.path, "metering", "ledger.json")), 0o600);
    } finally {
      dir.remove();
    }
  });

  it("creates a missing state dir 0700 whatever the umask", () => {
    const dir = tempDir("state-dir-new");
    const before = process.umask(0);
    try {
      const state = join(dir.path, "a", "b");
      claimStateDir(state, "agent").release();
      assert.equal(mode(state), 0o700);
      assert.equal(mode(join(dir.path, "a")), 0o700);
    } finally {
      process.umask(before);
      dir.remove();
    }
  });

  it.skipIf(process.geteuid?.() !== 0)("refuses a state dir reached through a symlink owned by another user, and a file owned by another user; follows its own symlinks", () => {
    const dir = tempDir("state-dir-link");
    try {
      const real = join(dir.path, "real");
      mkdirSync(real, { mode: 0o700 });
      const link = join(dir.path, "link");
      symlinkSync(real, link);
      lchownSync(link, 65534, 65534);
      assert.throws(() => claimStateDir(join(link, "state"), "agent"), new RegExp(`^Error: state dir ${link}/state: ${link} is a symlink owned by uid 65534, not by this user \\(uid 0\\) or root; refusing to follow it$`));
      assert.equal(existsSync(join(real, "state")), false);
      // A symlink inside the state dir owned by another user: refused too.
      const inside = join(real, "metering");
      symlinkSync(dir.path, inside);
      lchownSync(inside, 65534, 65534);
      assert.throws(() => claimStateDir(real, "agent"), new RegExp(`^Error: state dir ${real}: ${inside} is a symlink owned by uid 65534`));
      // Ours (an operator's move of metering/ to another disk): followed.
      unlinkSync(inside);
      const disk = join(dir.path, "disk");
      mkdirSync(disk, { mode: 0o700 });
      symlinkSync(disk, inside);
      claimStateDir(real, "agent").release();
      // A file owned by another user.
      writeFileSync(join(disk, "ledger.json"), "{}", { mode: 0o600 });
      chownSync(join(disk, "ledger.json"), 65534, 65534);
      assert.throws(() => claimStateDir(real, "agent"), new RegExp(`^Error: state dir ${real}: ${inside}/ledger.json is owned by uid 65534, not by this user \\(uid 0\\); refusing to start \\(chown it\\)$`));
    } finally {
      dir.remove();
    }
  });
});
