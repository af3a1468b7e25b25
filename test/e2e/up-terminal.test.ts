import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { FLEETLET_BIN } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { freePort } from "../helpers/up-process.js";

// `fleetlet up` on a real terminal (tmux): frames are redrawn in place on the alternate screen —
// the scrollback does not fill with one copy of the table per second — the STATE column is
// coloured, NO_COLOR turns colour off, and the last frame stays on the normal screen at the end.

const dir = tempDir("up-terminal");
const session = `fleetlet-up-${process.pid}`;
const tmux = (...args: string[]) => execFileSync("tmux", ["-L", session, ...args], { encoding: "utf8" });
afterAll(() => {
  try {
    tmux("kill-server");
  } catch {
    // Already gone with its last window.
  }
  dir.remove();
});

async function until(what: string, get: () => string, ok: (s: string) => boolean, ms: number): Promise<string> {
  const deadline = Date.now() + ms;
  let last = "";
  while (Date.now() < deadline) {
    last = get();
    if (ok(last)) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`${what}; the screen:\n${last}`);
}

describe("fleetlet up on a terminal", () => {
  it("redraws in place on the alternate screen, colours STATE (not with NO_COLOR), and leaves the last frame", async () => {
    for (const noColour of [false, true]) {
      const [aggPort, agentPort] = [await freePort(), await freePort()];
      const window = noColour ? "plain" : "colour";
      const command = [
        ...(noColour ? ["env", "NO_COLOR=1"] : []),
        process.execPath, FLEETLET_BIN, "up", "--duration", "8s", "--refresh", "500ms", "--state-dir", `${dir.path}/${window}`,
        "--aggregator-listen", `127.0.0.1:${aggPort}`, "--agent-listen", `127.0.0.1:${agentPort}`, "--agent-metrics-listen", "off", "--aggregator-metrics-listen", "off",
        ";", "sleep", "30",
      ].map((a) => (a === ";" ? ";" : `'${a}'`)).join(" ");
      if (noColour) tmux("new-window", "-d", "-n", window, command);
      else tmux("new-session", "-d", "-s", session, "-n", window, "-x", "160", "-y", "50", command);
      const target = `${session}:${window}`;
      const screen = (escapes = false) => tmux("capture-pane", "-p", ...(escapes ? ["-e"] : []), "-t", target);
      const live = await until("a frame with the demos", () => screen(true), (s) => /demo-idle/.test(s) && /\(Ctrl-C to stop\)/.test(s), 30_000);
      // Several refreshes later the scrollback is still empty: frames replaced each other.
      await new Promise((r) => setTimeout(r, 2500));
      assert.equal(tmux("display-message", "-p", "-t", target, "#{history_size}").trim(), "0", "nothing scrolled off while frames were drawn");
      const frames = screen().match(/^fleetlet fleet {2}\d{4}-/gm) ?? [];
      assert.equal(frames.length, 1, "one frame on the screen at a time");
      if (noColour) assert.doesNotMatch(live, /\x1b\[3[123]m(RUNNING|STANDBY)/);
      else assert.match(live, /\x1b\[32mRUNNING\x1b\[(0|39)?m/); // tmux re-renders the reset as "default colour"
      // At the end the normal screen is back, with what was printed before and the last frame.
      const after = await until("up ended", () => tmux("capture-pane", "-p", "-S", "-", "-t", target), (s) => /fleetlet up: stopped/.test(s), 30_000);
      assert.match(after, /fleetlet up: state and logs in/);
      assert.match(after, /local\s+demo-batch\s+batch \(busy\)\s+RUNNING\s/);
      assert.doesNotMatch(after, /\(Ctrl-C to stop\)/, "the live frames stayed on the alternate screen");
    }
  }, 120_000);
});
